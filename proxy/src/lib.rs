//! The hostname reverse proxy: one patron request in, one vendor request out, and the
//! vendor's answer back, rewritten so the patron stays on the gateway's service hosts.
//!
//! Data flows through [`forward`] in four steps:
//!
//! 1. **Target.** Only an origin-form target (`/path?query`) is accepted; an absolute-form
//!    target over HTTP/1 or `CONNECT` is a [`ProxyError::BadRequest`] before anything goes
//!    upstream, so the only hosts ever contacted are the configured origins.
//! 2. **Scrub** ([`headers::scrub_request`]). Hop-by-hop headers, every header that names the
//!    patron's address, any forged `X-Portvakt-*`, the gateway's own cookies and a login-host
//!    `Referer`/`Origin` are removed; a service-host `Referer`/`Origin` is mapped back to the
//!    vendor's origin; the released attributes are added as `X-Portvakt-<Name>`.
//! 3. **Send** over the pooled [`Upstreams`] client, the request body streaming through with
//!    backpressure. The wait for the response head is bounded by
//!    [`Timeouts::response_header`]. HTTP/1.1 is portvakt's own (`client.rs`: framing
//!    checked to RFC 9112, spoken in the request's own task, so a page costs one write and
//!    one read upstream and no hand-over between tasks); HTTP/2, when a TLS origin picks
//!    it by ALPN, is hyper's.
//! 4. **Answer** ([`headers::rewrite_response`], [`html::Relay`]). Redirects, `Refresh`,
//!    `Content-Location` and `Set-Cookie` are mapped onto the service hosts ([`HostMap`]);
//!    an HTML body is decoded and its links rewritten chunk by chunk as it arrives; any other
//!    body streams through untouched, still encoded.
//!
//! A failure before the response head is a [`ProxyError`] the caller turns into a status
//! ([`ProxyError::status`]); a failure in the middle of a body can only end that body, which
//! the server then reports to the browser by closing the stream.

mod client;
mod headers;
mod hosts;
mod html;
pub mod net;
mod scan;
#[cfg(test)]
mod tests;
pub mod text;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::{HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use rustls_pki_types::CertificateDer;
use url::Url;

pub use hosts::{HostMap, HostMapError, Scheme, ServiceHost};

/// Who caused a [`ProxyError`], for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The patron's browser sent something we will not forward.
    Client,
    /// The vendor's origin was slow, unreachable or answered badly.
    Upstream,
    /// Our own configuration or code.
    Gateway,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the request body from the client failed: {0}")]
    ClientBody(#[source] BoxError),
    #[error("the origin did not answer in time")]
    Timeout,
    #[error("the origin is unreachable: {0}")]
    Unreachable(#[source] BoxError),
    #[error("the origin's response failed: {0}")]
    Upstream(#[source] BoxError),
    #[error("the origin's response body failed: {0}")]
    UpstreamBody(#[source] io::Error),
    #[error("the origin's response body could not be decoded: {0}")]
    Decode(#[source] io::Error),
    #[error("rewriting the origin's HTML failed: {0}")]
    Rewrite(String),
    #[error("the TLS client could not be configured: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the upstream request could not be built: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status the browser gets, when the error comes before the response head.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unreachable(_)
            | Self::Upstream(_)
            | Self::UpstreamBody(_)
            | Self::Decode(_)
            | Self::Rewrite(_) => StatusCode::BAD_GATEWAY,
            Self::Tls(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::BadRequest(_) | Self::ClientBody(_) => Fault::Client,
            Self::Timeout
            | Self::Unreachable(_)
            | Self::Upstream(_)
            | Self::UpstreamBody(_)
            | Self::Decode(_) => Fault::Upstream,
            Self::Rewrite(_) | Self::Tls(_) | Self::Internal(_) => Fault::Gateway,
        }
    }

    /// A bounded label for metrics (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::ClientBody(_) => "client_body",
            Self::Timeout => "upstream_timeout",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::Upstream(_) => "upstream_error",
            Self::UpstreamBody(_) => "upstream_body",
            Self::Decode(_) => "upstream_decode",
            Self::Rewrite(_) => "rewrite",
            Self::Tls(_) => "tls_config",
            Self::Internal(_) => "internal",
        }
    }
}

/// How [`Upstreams`] connects. The defaults suit a public vendor on the internet.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// TCP connect timeout per attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per origin. Default 1024.
    pub pool_max_idle_per_host: usize,
    /// Roots trusted beside the Mozilla set (webpki-roots): a test or demo origin's CA.
    /// Default none.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            // At least the number of requests in flight to one vendor at busy times: a
            // smaller pool closes and reopens connections under load, which costs both
            // sides far more than the idle sockets do.
            pool_max_idle_per_host: 1024,
            extra_roots: Vec::new(),
        }
    }
}

/// Per-request time limits.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From sending the request (its body included) until the response head has arrived.
    /// Past it: [`ProxyError::Timeout`], 504. Default 60 s.
    pub response_header: Duration,
    /// Longest wait for the next piece of the response body; past it the body ends with
    /// an error. `None`: wait for ever. Default 60 s.
    pub body_idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            response_header: Duration::from_secs(60),
            body_idle: Some(Duration::from_secs(60)),
        }
    }
}

/// The one pooled client to every origin, `https` (HTTP/1.1 or HTTP/2 by ALPN, Mozilla
/// roots through webpki-roots, so no system store is needed in a container) and plain
/// `http` (HTTP/1.1): see [`client`]. Cheap to clone; share one per process.
#[derive(Clone, Debug)]
pub struct Upstreams {
    client: client::Client,
}

impl Upstreams {
    pub fn new(settings: &UpstreamSettings) -> Result<Self, ProxyError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &settings.extra_roots {
            roots.add(cert.clone()).map_err(ProxyError::Tls)?;
        }
        // The provider is named rather than taken from the process default, so no other
        // crate's choice (or the lack of one) can make this fail at run time.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(ProxyError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let client = client::Client::new(
            tls,
            settings.connect_timeout,
            settings.pool_idle_timeout,
            settings.pool_max_idle_per_host,
        );
        Ok(Self { client })
    }
}

/// Everything [`forward`] needs to know about one request beyond the request itself.
#[derive(Clone, Debug)]
pub struct Forward<'a> {
    /// The origin to send to (`scheme://host[:port]`): the service's main origin or one of
    /// its `hosts`, as [`HostMap::lookup`] found it for the request's host.
    pub origin: &'a Url,
    /// The installation's hosts: whose links to rewrite, and which host is the login host
    /// (its `Referer`/`Origin` never reach a vendor). Shared with the streaming rewriter,
    /// which outlives this call.
    pub hosts: &'a Arc<HostMap>,
    /// The service whose origins are rewritten (only its own, never another's).
    pub service: &'a str,
    /// The released attributes as their `X-Portvakt-<Name>` headers
    /// ([`release_headers`]).
    pub release: &'a [(HeaderName, HeaderValue)],
    /// Names of the gateway's own cookies: removed from `Cookie`, and a vendor's
    /// `Set-Cookie` of the same name is dropped so it cannot overwrite them.
    pub gateway_cookies: &'a [String],
    pub timeouts: Timeouts,
}

/// Sends one request to `f.origin` and returns the vendor's answer, rewritten for the
/// service host. Errors before the response head are returned; errors in the body end the
/// body (see the module docs).
pub async fn forward(
    up: &Upstreams,
    f: &Forward<'_>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = upstream_uri(&parts.method, parts.version, &parts.uri, f.origin)?;
    // The client negotiates HTTP/2 by ALPN; an HTTP/2 version here would make it insist on
    // HTTP/2 even to a plain-http origin that cannot speak it.
    parts.version = Version::HTTP_11;
    headers::scrub_request(&mut parts.headers, f);
    let method = parts.method.clone();

    let sent = up.client.send(Request::from_parts(parts, body));
    let resp = tokio::time::timeout(f.timeouts.response_header, sent)
        .await
        .map_err(|_| ProxyError::Timeout)??;

    let (mut parts, incoming) = resp.into_parts();
    let plan = headers::rewrite_response(&mut parts, &method, f);
    let relay = html::Relay::new(incoming, plan, f);
    Ok(Response::from_parts(parts, Body::new(relay)))
}

/// The origin's URI for an origin-form target; everything else is refused here.
fn upstream_uri(
    method: &Method,
    version: Version,
    target: &Uri,
    origin: &Url,
) -> Result<Uri, ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not proxied"));
    }
    // Over HTTP/2 the scheme and authority come from pseudo-headers and are always set;
    // over HTTP/1 they are set only by an absolute-form target, which a proxy client
    // sends to reach some other host.
    let http1 = matches!(
        version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    if http1 && (target.scheme().is_some() || target.authority().is_some()) {
        return Err(ProxyError::BadRequest("absolute-form request target"));
    }
    let pq = target
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !pq.as_str().starts_with('/') {
        return Err(ProxyError::BadRequest("request target is not origin-form"));
    }
    // Scheme and authority from the origin as `Url` serializes it (punycode, no default
    // port); the target's path and query as they came, without a copy.
    Uri::builder()
        .scheme(origin.scheme())
        .authority(&origin[url::Position::BeforeHost..url::Position::AfterPort])
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Internal(e.to_string()))
}

/// The released attributes, `(name, value)`, as the headers [`Forward::release`] takes:
/// computed once where they can be kept (per session and service), not per request.
/// Bytes, not str, for the value: one may be UTF-8 (a name with ø); only CR, LF and NUL
/// are refused, and such a value is left out rather than sent broken.
pub fn release_headers<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(HeaderName, HeaderValue)> {
    attributes
        .into_iter()
        .filter_map(|(name, value)| {
            let header = match name {
                "pseudonym" => Some(HeaderName::from_static("x-portvakt-pseudonym")),
                "institution" => Some(HeaderName::from_static("x-portvakt-institution")),
                "affiliation" => Some(HeaderName::from_static("x-portvakt-affiliation")),
                _ => HeaderName::from_bytes(release_header_name(name).as_bytes()).ok(),
            };
            match (header, HeaderValue::from_bytes(value.as_bytes())) {
                (Some(k), Ok(v)) => Some((k, v)),
                _ => {
                    tracing::warn!(attribute = %name, "released attribute not sendable as a header");
                    None
                }
            }
        })
        .collect()
}

/// `x-portvakt-<name>`: the header for a released attribute. `age_over_18` becomes
/// `X-Portvakt-Age-Over-18` (title case per `_`-separated word, as `docs/vendors.md` writes it;
/// on the wire header names are case-insensitive and HTTP/2 lowercases them anyway).
pub fn release_header_name(attribute: &str) -> String {
    let words: Vec<String> = attribute
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(c) => c.to_ascii_uppercase().to_string() + &cs.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect();
    format!("X-Portvakt-{}", words.join("-"))
}

/// The proxy's inner steps, for `benches/proxy.rs`; not an API.
#[doc(hidden)]
pub mod bench {
    use std::sync::Arc;

    use http::{HeaderMap, Method};

    use super::headers::{Coding, HtmlPlan};
    use super::{Forward, HostMap, ProxyError};

    /// A whole HTML body, gzip-encoded or not, through the decoder and rewriter as
    /// [`super::forward`] streams it, chunk by chunk.
    pub fn rewrite_html(
        hosts: &Arc<HostMap>,
        service: &str,
        gzip: bool,
        chunks: &[&[u8]],
    ) -> Result<Vec<u8>, ProxyError> {
        let plan = HtmlPlan {
            coding: if gzip { Coding::Gzip } else { Coding::Identity },
            charset: None,
        };
        super::html::rewrite_body(&plan, hosts, service, chunks)
    }

    pub fn scrub_request(h: &mut HeaderMap, f: &Forward<'_>) {
        super::headers::scrub_request(h, f);
    }

    /// Whether the body would be rewritten.
    pub fn rewrite_response(parts: &mut http::response::Parts, f: &Forward<'_>) -> bool {
        super::headers::rewrite_response(parts, &Method::GET, f)
            .html
            .is_some()
    }
}
