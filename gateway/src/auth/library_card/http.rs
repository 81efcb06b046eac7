//! A JSON patron API as a card backend: card and PIN → `POST url` with
//! `{"library","card","pin"}` (and `Authorization: Bearer <token>`) → a [`CardOutcome`].
//!
//! The answer must be a 2xx with a JSON object holding `"valid": bool`; `"blocked": true`
//! marks a barred card, `"birth_date"` is `"YYYY-MM-DD"` or absent or null, `"home_library"`
//! a string or absent or null, `"patron_id"` and any other member are ignored. `valid` =
//! false is [`CardOutcome::WrongCardOrPin`] (whatever `blocked` says, so a card's status is
//! never shown without its PIN). Anything else — another status (redirects are not
//! followed, so the PIN never goes elsewhere), a timeout, a body over 64 KiB, invalid JSON,
//! a missing `valid`, a malformed birth date — is [`VerifyError::Unavailable`].
//!
//! `http://` and `https://` URLs both work; https uses rustls (ring) with the Mozilla roots
//! compiled in (webpki-roots), so it needs no system certificate store: the gateway runs in
//! slim images. Connections are kept alive and reused by hyper-util's pooled client.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::verifier::{
    CardOutcome, PatronInfo, PatronVerifier, VerifyError, VerifyFuture, error_chain, read_secret,
};
use crate::config::card_backend::FileCardBackend;
use policy::ids::InstitutionId;
use policy::subject::Age;

/// The largest answer we read; a patron record is far smaller.
const MAX_BODY: usize = 64 * 1024;

/// Errors of building an http backend; each names the config key.
#[derive(Debug, thiserror::Error)]
pub enum HttpBackendError {
    #[error("kind \"http\" needs \"url\" (the patron API's http:// or https:// URL)")]
    MissingUrl,
    #[error("\"url\" must be an http:// or https:// URL with a host")]
    BadUrl,
    #[error("\"token_file\": the token is not a valid header value")]
    BadToken,
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Checks cards against a JSON patron API.
pub struct HttpVerifier {
    url: Uri,
    /// `Bearer <token>`, marked sensitive so hyper never logs it.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for HttpVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpVerifier")
            .field("url", &self.url)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpVerifier {
    /// `url` must be http or https; `token` is sent as a bearer token when given.
    pub fn new(
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, HttpBackendError> {
        let url: Uri = url.parse().map_err(|_| HttpBackendError::BadUrl)?;
        let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
        if !scheme_ok || url.host().is_none_or(str::is_empty) {
            return Err(HttpBackendError::BadUrl);
        }
        let authorization = token
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| HttpBackendError::BadToken)?;
                v.set_sensitive(true);
                Ok::<_, HttpBackendError>(v)
            })
            .transpose()?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            url,
            authorization,
            timeout,
            client,
        })
    }

    pub(super) fn from_config(
        cfg: &FileCardBackend,
        base_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, Vec<String>> {
        let Some(url) = &cfg.url else {
            return Err(vec![HttpBackendError::MissingUrl.to_string()]);
        };
        let token = match &cfg.token_file {
            Some(file) => Some(read_secret("token_file", file, base_dir).map_err(|e| vec![e])?),
            None => None,
        };
        let verifier =
            Self::new(url, token.as_deref(), timeout).map_err(|e| vec![e.to_string()])?;
        if verifier.url.scheme_str() == Some("http") && !is_loopback(&verifier.url) {
            tracing::warn!(
                url = %verifier.url,
                "card backend sends PINs over plain http; use https outside a closed network"
            );
        }
        Ok(verifier)
    }

    async fn ask(
        &self,
        library: &InstitutionId,
        card: &str,
        pin: &str,
    ) -> Result<CardOutcome, VerifyError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "library": library.as_str(),
            "card": card.trim(),
            "pin": pin,
        }))
        .map_err(|_| unavailable("cannot encode the request"))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json");
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| unavailable("cannot build the request"))?;
        // hyper's errors name the failure (connect, TLS, closed), never the request body.
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| unavailable(format!("request failed: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("status {}", status.as_u16())));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| unavailable("reading the answer failed or it is over 64 KiB"))?
            .to_bytes();
        outcome(&body)
    }
}

impl PatronVerifier for HttpVerifier {
    fn verify<'a>(
        &'a self,
        library: &'a InstitutionId,
        card: &'a str,
        pin: &'a str,
    ) -> VerifyFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.ask(library, card, pin))
                .await
                .map_err(|_| unavailable("timeout"))?
        })
    }
}

/// The answer's members we read. Unknown members are allowed: the API may tell more.
#[derive(Deserialize)]
struct Answer {
    valid: bool,
    #[serde(default)]
    blocked: Option<bool>,
    #[serde(default)]
    birth_date: Option<String>,
    #[serde(default)]
    home_library: Option<String>,
}

/// The mapping of the module doc, from a 2xx body.
fn outcome(body: &[u8]) -> Result<CardOutcome, VerifyError> {
    // serde_json's message could quote a value from the body (a name, a date): not logged.
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| unavailable("the answer is not the expected JSON (needs \"valid\": bool)"))?;
    if !answer.valid {
        return Ok(CardOutcome::WrongCardOrPin);
    }
    if answer.blocked == Some(true) {
        return Ok(CardOutcome::Blocked { lost: false });
    }
    let age = match answer.birth_date.as_deref().map(str::trim) {
        None | Some("") => Age::Unknown,
        Some(s) => Age::BirthDate(
            policy::parse_date(s).ok_or_else(|| unavailable("\"birth_date\" is not YYYY-MM-DD"))?,
        ),
    };
    let home_library = answer
        .home_library
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Ok(CardOutcome::Accepted(PatronInfo { age, home_library }))
}

fn is_loopback(url: &Uri) -> bool {
    match url.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn unavailable(reason: impl Into<String>) -> VerifyError {
    VerifyError::Unavailable(reason.into())
}
