//! Slows down and then refuses repeated failed logins, per card and per client address,
//! without locking a patron out for long. [`LoginThrottle`] is what the login uses: the
//! in-process [`Throttle`] (one table for the whole process) with the memory store, or
//! [`shared::SharedThrottle`] (the same rules in Redis, for all replicas) with Redis.
//!
//! A login asks [`Throttle::check`] first, then reports how it went: [`Throttle::failed`]
//! for a wrong card or PIN, [`Throttle::succeeded`] for an accepted (or blocked) card, and
//! [`Throttle::abandoned`] when the library system did not answer (that is no guess, so it
//! does not count). The instant is always a parameter, so tests never sleep.
//!
//! # The numbers
//!
//! | | per card | per client address |
//! |---|---|---|
//! | failures without delay | 3 | 10 |
//! | then, before the next try | 1 s, 2 s, 4 s, … doubling, at most 60 s | the same |
//! | refused for 15 minutes after | 10 failures in 15 minutes | 30 failures in 15 minutes |
//!
//! So a patron who mistypes a few times waits seconds, and even one who keeps trying is back
//! within 15 minutes; a guesser gets about 10 tries per card each half hour. An address is a
//! whole IPv4 address or an IPv6 /64 (one household or one device gets a whole /64); its
//! limits are higher because a school or a library sits behind one NAT address. A success
//! clears the card's counter, but not the address's: otherwise one known card would let a
//! guesser reset the address limit at will. After a refusal has passed, the count starts
//! afresh.
//!
//! Once a key is past its free failures, only one try at a time is let through (a try in
//! progress counts), so firing guesses in parallel gains nothing; a try never reported back
//! stops counting after a minute.
//!
//! # Memory
//!
//! Cards are keyed by an HMAC of the normalized number under a per-process secret, so the
//! table holds no card number. An entry lives while it can still affect a decision (its
//! failures are in the window, a refusal or delay is running, or a try is in progress). The
//! table holds at most `max_entries` (100 000 by default); when full, expired entries go
//! first, then the longest untouched tenth.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use policy::subject::normalize_card;

pub mod rules;
pub mod shared;

use rules::PENDING_TTL;
pub use rules::{Limits, ThrottleError, ThrottleSettings};

/// Why a login may not be tried now.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefusal {
    #[error(transparent)]
    Throttled(#[from] ThrottleError),
    /// The shared throttle cannot be asked: the login is refused, never let through
    /// unchecked.
    #[error(transparent)]
    Unavailable(#[from] store::StoreError),
}

/// The throttle a login goes through, in-process or shared; one interface for both.
#[derive(Debug)]
pub enum LoginThrottle {
    Local(Throttle),
    Shared(shared::SharedThrottle),
}

impl LoginThrottle {
    /// Shared through Redis when the store is Redis, else in this process.
    pub fn new(
        secret: [u8; 32],
        redis: Option<store::redis::RedisConn>,
        clock: std::sync::Arc<dyn store::Clock>,
    ) -> Self {
        match redis {
            Some(conn) => Self::Shared(shared::SharedThrottle::new(
                conn,
                &secret,
                ThrottleSettings::default(),
                clock,
            )),
            None => Self::Local(Throttle::new(secret, ThrottleSettings::default())),
        }
    }

    /// See [`Throttle::check`].
    pub async fn check(&self, card: &str, ip: IpAddr) -> Result<(), LoginRefusal> {
        match self {
            Self::Local(t) => Ok(t.check(card, ip, Instant::now())?),
            Self::Shared(t) => Ok(t.check_at(card, ip, t.now()).await??),
        }
    }

    /// See [`Throttle::failed`]. A shared throttle that cannot record it logs and counts
    /// the error (the login itself has already been decided).
    pub async fn failed(&self, card: &str, ip: IpAddr) {
        match self {
            Self::Local(t) => t.failed(card, ip, Instant::now()),
            Self::Shared(t) => report(t.failed_at(card, ip, t.now()).await),
        }
    }

    /// See [`Throttle::succeeded`].
    pub async fn succeeded(&self, card: &str, ip: IpAddr) {
        match self {
            Self::Local(t) => t.succeeded(card, ip, Instant::now()),
            Self::Shared(t) => report(t.succeeded_at(card, ip, t.now()).await),
        }
    }

    /// See [`Throttle::abandoned`].
    pub async fn abandoned(&self, card: &str, ip: IpAddr) {
        match self {
            Self::Local(t) => t.abandoned(card, ip, Instant::now()),
            Self::Shared(t) => report(t.abandoned_at(card, ip, t.now()).await),
        }
    }
}

fn report(result: Result<(), store::StoreError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "the login throttle could not record a try");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// The first 16 bytes of the HMAC of the normalized card number.
    Card([u8; 16]),
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

#[derive(Debug)]
struct Entry {
    /// Failures in the window, oldest first; at most `refuse_after` kept.
    failures: VecDeque<Instant>,
    refused_until: Option<Instant>,
    /// Tries let through and not yet reported.
    pending: u32,
    /// When the last try was let through.
    pending_since: Instant,
    last_touched: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            failures: VecDeque::new(),
            refused_until: None,
            pending: 0,
            pending_since: now,
            last_touched: now,
        }
    }

    /// Drops what no longer counts at `now`.
    fn refresh(&mut self, limits: &Limits, now: Instant) {
        if self.refused_until.is_some_and(|t| t <= now) {
            self.refused_until = None;
            self.failures.clear();
        }
        while self
            .failures
            .front()
            .is_some_and(|&t| t + limits.window <= now)
        {
            self.failures.pop_front();
        }
        if self.pending > 0 && self.pending_since + PENDING_TTL <= now {
            self.pending = 0;
        }
    }

    /// Whether the entry can no longer affect a decision.
    fn expired(&self, limits: &Limits, now: Instant) -> bool {
        let refused = self.refused_until.is_some_and(|t| t > now);
        let failures = self
            .failures
            .back()
            .is_some_and(|&t| t + limits.window > now);
        let pending = self.pending > 0 && self.pending_since + PENDING_TTL > now;
        !(refused || failures || pending)
    }

    /// `Ok` when a try may start now.
    fn admits(&self, limits: &Limits, now: Instant) -> Result<(), ThrottleError> {
        if let Some(until) = self.refused_until {
            return Err(ThrottleError::Refused {
                retry_after: until.saturating_duration_since(now),
            });
        }
        let n = self.failures.len();
        if n + (self.pending as usize) < limits.free_failures as usize {
            return Ok(());
        }
        if self.pending > 0 {
            // One try at a time once past the free failures.
            return Err(ThrottleError::Slowed {
                retry_after: limits.first_delay,
            });
        }
        let Some(&last) = self.failures.back() else {
            return Ok(());
        };
        let wait = (last + limits.delay(n)).saturating_duration_since(now);
        if wait.is_zero() {
            Ok(())
        } else {
            Err(ThrottleError::Slowed { retry_after: wait })
        }
    }

    fn record_failure(&mut self, limits: &Limits, now: Instant) {
        self.failures.push_back(now);
        if self.failures.len() >= limits.refuse_after as usize {
            self.refused_until = Some(now + limits.refusal);
            self.failures.clear();
        }
    }

    fn release_pending(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }
}

/// The failed-login throttle; share one per process.
pub struct Throttle {
    secret: Hmac<Sha256>,
    settings: ThrottleSettings,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("settings", &self.settings)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// `secret` keys the card hashes; 32 random bytes, new each start (the table is in
    /// memory, so nothing needs to match across restarts).
    pub fn new(secret: [u8; 32], settings: ThrottleSettings) -> Self {
        // HMAC takes a key of any length, so this cannot fail; an all-zero key is the
        // fallback that keeps the type honest without a panic.
        let secret = Hmac::<Sha256>::new_from_slice(&secret)
            .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
        Self {
            secret,
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a login with `card` from `ip` may be tried at `now`. On `Ok`, the try counts
    /// as in progress until reported through `failed`, `succeeded` or `abandoned`.
    pub fn check(&self, card: &str, ip: IpAddr, now: Instant) -> Result<(), ThrottleError> {
        let keys = self.keys(card, ip);
        let mut entries = self.lock();
        let mut wait: Option<ThrottleError> = None;
        for (key, limits) in keys {
            if let Some(entry) = entries.get_mut(&key) {
                entry.refresh(limits, now);
                if let Err(e) = entry.admits(limits, now) {
                    wait = Some(match wait {
                        Some(w) if w.retry_after() >= e.retry_after() => w,
                        _ => e,
                    });
                }
            }
        }
        if let Some(e) = wait {
            return Err(e);
        }
        for (key, _) in keys {
            let entry = self.entry(&mut entries, key, now);
            entry.pending += 1;
            entry.pending_since = now;
        }
        Ok(())
    }

    /// The card or PIN was wrong.
    pub fn failed(&self, card: &str, ip: IpAddr, now: Instant) {
        let keys = self.keys(card, ip);
        let mut entries = self.lock();
        for (key, limits) in keys {
            let entry = self.entry(&mut entries, key, now);
            entry.refresh(limits, now);
            entry.release_pending();
            entry.record_failure(limits, now);
        }
    }

    /// The card and PIN were right: the card's counter is cleared, the address's is not.
    pub fn succeeded(&self, card: &str, ip: IpAddr, now: Instant) {
        let [(card_key, _), (address_key, _)] = self.keys(card, ip);
        let mut entries = self.lock();
        entries.remove(&card_key);
        if let Some(entry) = entries.get_mut(&address_key) {
            entry.release_pending();
            entry.last_touched = now;
        }
    }

    /// No answer from the library system: the try did not count.
    pub fn abandoned(&self, card: &str, ip: IpAddr, now: Instant) {
        let keys = self.keys(card, ip);
        let mut entries = self.lock();
        for (key, _) in keys {
            if let Some(entry) = entries.get_mut(&key) {
                entry.release_pending();
                entry.last_touched = now;
            }
        }
    }

    /// Drops every entry that can no longer affect a decision; for a periodic task.
    pub fn prune(&self, now: Instant) {
        let mut entries = self.lock();
        self.drop_expired(&mut entries, now);
    }

    /// Entries held now (cards and addresses); for metrics and tests.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn keys(&self, card: &str, ip: IpAddr) -> [(Key, &Limits); 2] {
        let mut mac = self.secret.clone();
        mac.update(normalize_card(card).as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut card_key = [0; 16];
        card_key.copy_from_slice(&digest[..16]);
        let address = match ip.to_canonical() {
            IpAddr::V4(v4) => Key::V4(u32::from(v4)),
            IpAddr::V6(v6) => Key::V6((u128::from(v6) >> 64) as u64),
        };
        [
            (Key::Card(card_key), &self.settings.card),
            (address, &self.settings.address),
        ]
    }

    fn limits(&self, key: &Key) -> &Limits {
        match key {
            Key::Card(_) => &self.settings.card,
            Key::V4(_) | Key::V6(_) => &self.settings.address,
        }
    }

    /// The entry for `key`, made room for and created when missing.
    fn entry<'m>(
        &self,
        entries: &'m mut HashMap<Key, Entry>,
        key: Key,
        now: Instant,
    ) -> &'m mut Entry {
        if !entries.contains_key(&key) && entries.len() >= self.settings.max_entries.max(1) {
            self.make_room(entries, now);
        }
        let entry = entries.entry(key).or_insert_with(|| Entry::new(now));
        entry.last_touched = now;
        entry
    }

    /// Expired entries first; if the table is still full, the longest untouched entries, down
    /// to nine tenths of the cap. A whole batch at once keeps a flood of new keys from
    /// costing a scan each.
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        self.drop_expired(entries, now);
        let max = self.settings.max_entries.max(1);
        if entries.len() < max {
            return;
        }
        let keep = (max - max / 10).min(max - 1);
        let drop = entries.len() - keep;
        let mut touched: Vec<Instant> = entries.values().map(|e| e.last_touched).collect();
        let (_, &mut cutoff, _) = touched.select_nth_unstable(drop - 1);
        // Everything older than the `drop`th oldest goes, then as many ties as needed.
        entries.retain(|_, e| e.last_touched >= cutoff);
        let mut ties = entries.len().saturating_sub(keep);
        entries.retain(|_, e| {
            if ties > 0 && e.last_touched == cutoff {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }

    fn drop_expired(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        entries.retain(|key, e| !e.expired(self.limits(key), now));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // The table stays consistent between statements; a panic elsewhere cannot break it.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
