//! The HTTP client the `openidconnect` crate talks to Feide through: hyper-util's pooled
//! client with rustls (ring) and the Mozilla roots, the same stack as the proxy, so no
//! reqwest, native-tls or aws-lc is built.
//!
//! A request goes: scheme check → one attempt with a deadline over connect, answer and
//! body → the body read up to [`MAX_BODY`]. Redirects are not followed (the crate expects
//! that: a token endpoint that redirects is misconfigured, and following would carry the
//! client secret elsewhere). `http://` is allowed only to loopback addresses, so a test
//! provider works and a production token can never travel in clear text.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};
use rustls_pki_types::CertificateDer;

/// Largest answer read from the identity provider (discovery, keys, tokens, userinfo are
/// all a few kilobytes).
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("refusing {0}: only https, or http to a loopback address")]
    Scheme(String),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no answer from {host}: {message}")]
    Connect { host: String, message: String },
    #[error("no answer from {host} within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("the answer from {host} broke off or was larger than {MAX_BODY} bytes")]
    Body { host: String },
}

impl HttpError {
    /// Whether the provider could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. })
    }
}

type Connector = HttpsConnector<HttpConnector>;

/// Cheap to clone; one per Feide client.
#[derive(Clone, Debug)]
pub struct FeideHttp {
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

impl FeideHttp {
    /// `timeout` bounds each request as a whole; `extra_roots` are trusted beside the
    /// Mozilla set (a test provider's CA).
    pub fn new(
        timeout: Duration,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots.add(cert.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .build(connector);
        Ok(Self { client, timeout })
    }

    /// One request, whole answer in memory.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or("").to_owned();
        let allowed = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => is_loopback(&host),
            _ => false,
        };
        if !allowed {
            // The URL may carry a query; the scheme and host say enough.
            return Err(HttpError::Scheme(format!(
                "{}://{host}",
                uri.scheme_str().unwrap_or("?")
            )));
        }
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Connect {
                    host: host.clone(),
                    message: error_chain(&e),
                })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|_| HttpError::Body { host: host.clone() })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                host,
                secs: self.timeout.as_secs().max(1),
            }),
        }
    }
}

impl<'c> AsyncHttpClient<'c> for FeideHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// `localhost`, `127.0.0.0/8` and `::1` (as a URI host, in brackets).
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// hyper-util's error says only "client error (Connect)"; the cause is in its sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
