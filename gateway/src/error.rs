//! Why the gateway did not start: one enum for every start-up failure, which the binary
//! prints as a config or policy error's `FILE:LINE:COL: error: …` lines, or as one
//! `error: …` line for anything else.

use std::net::SocketAddr;
use std::path::PathBuf;

use policy::LoadError;

use crate::app::AppError;
use crate::auth::feide::FeideError;
use crate::config::ConfigError;
use crate::keys::KeysError;
use crate::tls::TlsError;

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Every mistake in the config file, each as `FILE:LINE:COL: error: …`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The policy does not load: every diagnostic, each with its place.
    #[error(
        "the policy in {} does not load; the gateway will not start on a broken policy:\n{error}",
        dir.display()
    )]
    Policy { dir: PathBuf, error: LoadError },
    #[error(transparent)]
    Key(#[from] KeysError),
    #[error(transparent)]
    PseudonymKey(#[from] policy::pseudonym::KeyTooShort),
    #[error("the pseudonym key cannot key an HMAC")]
    UsageKey,
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    RedisUrl(#[from] store::redis::BadUrl),
    /// Every mistake in the card backends, one per line (`card_backend[N]: …`).
    #[error("{}", .0.join("\n"))]
    CardBackends(Vec<String>),
    #[error(transparent)]
    Signing(#[from] federation::FederationError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    PreviousCertificate {
        path: PathBuf,
        source: federation::FederationError,
    },
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the usage counters: {0}")]
    Usage(#[from] usage::UsageError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Feide(#[from] FeideError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not bind (`what` names it; `hint` says what to try).
    #[error("cannot listen on {addr}{what}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A part of `portvakt demo` that could not start.
    #[error("{0}")]
    Demo(String),
}

impl StartError {
    /// Whether the message already says where each mistake is (`FILE:LINE:COL: error: …`
    /// lines), so it is printed as it is rather than after `error: `.
    pub fn is_located(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Policy { .. })
    }
}
