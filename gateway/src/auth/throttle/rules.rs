//! The throttle's rules, the same in this process and in Redis: the limits for cards and
//! for client addresses, and the refusal a patron sees.

use std::time::Duration;

/// How long an unreported try keeps counting as in progress; longer than any backend's
/// timeout.
pub const PENDING_TTL: Duration = Duration::from_secs(60);

/// A refused try, with how long to wait. Shown to the patron; carries no card number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// Past the free failures: wait before the next try.
    #[error("too many failed logins; try again in {}", wait_text(*retry_after))]
    Slowed { retry_after: Duration },
    /// Too many failures in the window: refused for a while.
    #[error("too many failed logins; try again in {}", wait_text(*retry_after))]
    Refused { retry_after: Duration },
}

impl ThrottleError {
    /// For a `Retry-After` header.
    pub fn retry_after(&self) -> Duration {
        match *self {
            Self::Slowed { retry_after } | Self::Refused { retry_after } => retry_after,
        }
    }
}

/// "1 second", "45 seconds", "15 minutes": rounded up, so the patron never comes back early.
fn wait_text(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (n, unit) = if secs < 60 {
        (secs, "second")
    } else {
        (secs.div_ceil(60), "minute")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The limits for one kind of key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Failures in the window that need no delay.
    pub free_failures: u32,
    /// The delay after the first failure past the free ones; it doubles with each further.
    pub first_delay: Duration,
    /// The delay never grows above this.
    pub max_delay: Duration,
    /// This many failures within `window` start a refusal.
    pub refuse_after: u32,
    /// How far back failures count.
    pub window: Duration,
    /// How long a refusal lasts.
    pub refusal: Duration,
}

impl Limits {
    pub const CARD: Limits = Limits {
        free_failures: 3,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        refuse_after: 10,
        window: Duration::from_secs(15 * 60),
        refusal: Duration::from_secs(15 * 60),
    };
    pub const ADDRESS: Limits = Limits {
        free_failures: 10,
        refuse_after: 30,
        ..Self::CARD
    };

    /// The wait after the `n`th failure in the window.
    pub(super) fn delay(&self, n: usize) -> Duration {
        let free = self.free_failures as usize;
        if n <= free {
            return Duration::ZERO;
        }
        let doublings = u32::try_from(n - free - 1).unwrap_or(u32::MAX).min(31);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// All the throttle's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    pub card: Limits,
    pub address: Limits,
    /// Most entries (cards and addresses together) kept.
    pub max_entries: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            card: Limits::CARD,
            address: Limits::ADDRESS,
            max_entries: 100_000,
        }
    }
}
