//! What every card backend is: a [`PatronVerifier`] that answers a [`CardOutcome`] or a
//! [`VerifyError`], and the two helpers the backends share.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use policy::ids::InstitutionId;
use policy::subject::Age;

/// The future [`PatronVerifier::verify`] returns, boxed so the trait stays dyn-compatible.
pub type VerifyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CardOutcome, VerifyError>> + Send + 'a>>;

/// Checks a card and PIN against one library system.
pub trait PatronVerifier: Send + Sync + fmt::Debug {
    /// Asks about `card` and `pin` as the patron typed them. `library` is the institution the
    /// patron chose on the login page (its policy id); a backend serving several institutions
    /// (the http one) passes it on, a single-library one (sip2, file) ignores it.
    fn verify<'a>(
        &'a self,
        library: &'a InstitutionId,
        card: &'a str,
        pin: &'a str,
    ) -> VerifyFuture<'a>;
}

/// What the library system said about a card and PIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardOutcome {
    /// The card and PIN are right and the card may be used.
    Accepted(PatronInfo),
    /// The card is unknown or the PIN is wrong; the two are never told apart.
    WrongCardOrPin,
    /// Right card and PIN, but the card is reported lost (`lost`) or otherwise barred.
    Blocked { lost: bool },
}

/// What an accepted login tells about the patron.
#[derive(Clone, PartialEq, Eq)]
pub struct PatronInfo {
    pub age: Age,
    /// The home library as the library system gave it (an id, a bare library number or an
    /// alias); the caller resolves it through `Policy::institution`.
    pub home_library: Option<String>,
}

impl fmt::Debug for PatronInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Age's own Debug hides the date; the home library is shown only as present or not,
        // since together with an age it narrows a person down.
        f.debug_struct("PatronInfo")
            .field("age", &self.age)
            .field(
                "home_library",
                &self.home_library.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a check got no outcome. Shown to the patron as "the library system is not
/// answering"; the reason (for logs and metrics) never carries personal data.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the library system is not answering")]
    Unavailable(String),
}

impl VerifyError {
    /// The reason for the log, such as "timeout" or "status 503".
    pub fn reason(&self) -> &str {
        match self {
            Self::Unavailable(reason) => reason,
        }
    }
}

/// A secret from its file (`key` names the setting in errors): the content less one
/// trailing newline (`\n` or `\r\n`); an empty file is an error.
pub fn read_secret(key: &str, file: &Path, base_dir: &Path) -> Result<String, String> {
    let path = base_dir.join(file);
    let mut s = std::fs::read_to_string(&path)
        .map_err(|e| format!("\"{key}\": cannot read {}: {e}", path.display()))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err(format!("\"{key}\": {} is empty", path.display()));
    }
    Ok(s)
}

/// An error and its sources, `a: b: c`. Only for errors known to carry no personal data
/// (the sip2 and i/o errors do not).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
