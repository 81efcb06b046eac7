//! What can go wrong in a Feide login, for logs and for choosing the patron's page. No
//! variant carries a user id, a name, a code or a token.

use std::path::PathBuf;

use super::http::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum FeideError {
    #[error("[feide] client_secret_file {}: {message}", path.display())]
    Secret { path: PathBuf, message: String },
    #[error("[feide] {0}")]
    Config(String),
    #[error("cannot make the HTTP client for Feide: {0}")]
    Http(#[source] HttpError),
    #[error("Feide is not answering: {0}")]
    Unreachable(#[source] HttpError),
    #[error("Feide's answer cannot be used: {0}")]
    Provider(String),
    #[error("Feide refused the code exchange: {0}")]
    Refused(String),
    #[error("the id_token was refused: {0}")]
    IdToken(String),
    #[error("Feide gave no usable Feide user id (user@realm)")]
    NoUserId,
    #[error("no randomness for the login state: {0}")]
    Random(#[from] store::session::SessionError),
}

impl FeideError {
    /// Feide could not be reached or did not answer in time (the page says "try later"),
    /// as opposed to answering with something wrong.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }

    pub(super) fn from_http(e: HttpError) -> Self {
        if e.is_unreachable() {
            Self::Unreachable(e)
        } else {
            Self::Provider(e.to_string())
        }
    }
}
