//! The running gateway's shared state: the current policy (swapped whole on reload), the
//! store, the card backends, keys, throttle and metrics. One `Arc<App>` is shared by every
//! connection; nothing in it is per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use sha2::Sha256;

use policy::pseudonym::PseudonymKey;
use policy::{Diagnostic, LoadError, Policy};
use store::{Clock, Store};

use crate::auth::feide::FeideClient;
use crate::auth::library_card::PatronVerifier;
use crate::auth::throttle::LoginThrottle;
use crate::config::Scheme;
use crate::rate_limit::RateLimits;
use crate::release_cache::ReleaseCache;
use crate::telemetry::{self, Metrics};
use crate::verified_cookies::VerifiedCookies;
use crate::web::cookies::{self, Cookies};

/// Everything a request handler may need.
pub struct App {
    policy: ArcSwap<Policy>,
    /// Service hosts ⇄ vendor origins, rebuilt with every policy.
    hosts: ArcSwap<proxy::HostMap>,
    /// The pooled connections to vendors.
    pub upstreams: proxy::Upstreams,
    /// Every name of the gateway's own cookies, never sent to a vendor.
    pub gateway_cookies: Vec<String>,
    /// The gateway's cookies as this installation names them (`__Host-` under https).
    pub cookies: Cookies,
    /// The SAML identity provider, when a signing key is configured.
    pub idp: Option<Arc<federation::saml::Idp>>,
    /// The OpenID provider, when a signing key is configured.
    pub oidc: Option<Arc<federation::oidc::Provider>>,
    pub policy_dir: PathBuf,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Institution reference (id, number or alias, as configured) → its card backend.
    pub verifiers: HashMap<String, Arc<dyn PatronVerifier>>,
    /// In-process, or shared through Redis with the Redis store.
    pub throttle: LoginThrottle,
    pub pseudonym_key: PseudonymKey,
    /// Keys the CSRF tokens of the login form (before there is a session).
    csrf_key: Hmac<Sha256>,
    /// Keys the binding of a service-host cookie to its session and host.
    binding_key: Hmac<Sha256>,
    /// Per-person, per-service request rates (`rate_per_user`); cluster-wide with Redis.
    pub rate_limits: RateLimits,
    /// Released attribute headers per session and service (the pseudonym is an HMAC).
    pub release_cache: ReleaseCache,
    pub verified_cookies: VerifiedCookies,
    /// `bib.example.no` or `bib.localhost:8080`, lower case.
    pub public_host: String,
    pub public_scheme: Scheme,
    /// Absolute session lifetime.
    pub session_ttl: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub metrics: Metrics,
    /// The Feide login, when `[feide]` is configured.
    pub feide: Option<Arc<FeideClient>>,
    /// The usage counters, and who may read them.
    pub usage: Arc<usage::Usage>,
    pub statisticians: Arc<usage::Statisticians>,
    pub k_anonymity: u32,
}

/// Why the shared state could not be made from its parts.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the session key cannot key an HMAC")]
    SessionKey,
    #[error("the policy's service hosts: {0}")]
    Hosts(#[from] proxy::HostMapError),
    #[error("cannot set up connections to vendors: {0}")]
    Upstreams(#[from] proxy::ProxyError),
}

/// A session unused for this long ends, even before `session_ttl`: a library computer
/// left logged in should not stay open for a whole day.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("public_host", &self.public_host)
            .field("policy_dir", &self.policy_dir)
            .finish_non_exhaustive()
    }
}

/// What `App::new` needs besides the policy.
pub struct AppParts {
    pub policy: Policy,
    pub policy_dir: PathBuf,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub verifiers: HashMap<String, Arc<dyn PatronVerifier>>,
    pub pseudonym_key: PseudonymKey,
    /// Secret for CSRF tokens and the throttle's keyed hashes.
    pub session_key: [u8; 32],
    pub public_host: String,
    pub public_scheme: Scheme,
    pub session_ttl: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Connections to vendors (timeouts, extra CAs for tests).
    pub upstream_settings: proxy::UpstreamSettings,
    /// The Feide login, when `[feide]` is configured.
    pub feide: Option<Arc<FeideClient>>,
    /// The signing key for SAML and OIDC, with the keys rotated out (still published).
    pub signing: Option<Signing>,
    /// The usage counters (`Usage::open`), shared with the flusher.
    pub usage: Arc<usage::Usage>,
    /// `[[statistician]]`: the keys of the native API and SUSHI.
    pub statisticians: usage::Statisticians,
    /// `[usage] k_anonymity`.
    pub k_anonymity: u32,
}

/// Federation settings: one key signs SAML responses and id_tokens.
#[derive(Debug)]
pub struct Signing {
    pub key: federation::SigningKey,
    /// Certificates of keys rotated out, kept in the JWKS until their tokens expire.
    pub previous: Vec<federation::Jwk>,
    /// `[saml] entity_id`; default `<scheme>://<public_host>/saml/metadata`.
    pub saml_entity_id: Option<String>,
    /// `[saml] scope`; default the public host without its port.
    pub saml_scope: Option<String>,
}

impl std::fmt::Debug for AppParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppParts")
            .field("public_host", &self.public_host)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn new(parts: AppParts) -> Result<Arc<App>, AppError> {
        let csrf_key =
            Hmac::<Sha256>::new_from_slice(&parts.session_key).map_err(|_| AppError::SessionKey)?;
        // A separate key for each use, derived from the session key.
        let mut derive = csrf_key.clone();
        derive.update(b"portvakt-service-cookie-key");
        let binding_key = Hmac::<Sha256>::new_from_slice(&derive.finalize().into_bytes())
            .map_err(|_| AppError::SessionKey)?;
        let metrics = Metrics::default();
        record_policy(&metrics, &parts.policy);
        let hosts = host_map(&parts.policy, &parts.public_host, parts.public_scheme)?;
        let upstreams = proxy::Upstreams::new(&parts.upstream_settings)?;
        let gateway_cookies = cookies::all_names();
        let base = format!("{}://{}", parts.public_scheme.as_str(), parts.public_host);
        let (idp, oidc) = match parts.signing {
            None => (None, None),
            Some(s) => {
                let scope = s.saml_scope.unwrap_or_else(|| {
                    parts
                        .public_host
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                });
                let idp = federation::saml::Idp {
                    entity_id: s
                        .saml_entity_id
                        .unwrap_or_else(|| format!("{base}/saml/metadata")),
                    sso_url: format!("{base}/saml/sso"),
                    scope,
                    key: s.key.clone(),
                };
                let provider = federation::oidc::Provider {
                    issuer: base.clone(),
                    key: s.key,
                    previous: s.previous,
                };
                (Some(Arc::new(idp)), Some(Arc::new(provider)))
            }
        };
        // With the Redis store, the throttle and rate limits are shared through it too.
        let redis = parts.store.redis();
        let throttle = LoginThrottle::new(parts.session_key, redis.clone(), parts.clock.clone());
        let rate_limits = RateLimits::new(&parts.session_key, redis);
        Ok(Arc::new(App {
            idp,
            oidc,
            policy: ArcSwap::from_pointee(parts.policy),
            hosts: ArcSwap::from_pointee(hosts),
            upstreams,
            gateway_cookies,
            cookies: Cookies::new(parts.public_scheme == Scheme::Https),
            policy_dir: parts.policy_dir,
            store: parts.store,
            clock: parts.clock,
            verifiers: parts.verifiers,
            throttle,
            pseudonym_key: parts.pseudonym_key,
            csrf_key,
            binding_key,
            rate_limits,
            release_cache: Default::default(),
            verified_cookies: Default::default(),
            public_host: parts.public_host.to_ascii_lowercase(),
            public_scheme: parts.public_scheme,
            session_ttl: parts.session_ttl,
            trusted_proxies: parts.trusted_proxies,
            metrics,
            feide: parts.feide,
            usage: parts.usage,
            statisticians: Arc::new(parts.statisticians),
            k_anonymity: parts.k_anonymity,
        }))
    }

    /// The current service hosts.
    pub fn hosts(&self) -> Arc<proxy::HostMap> {
        self.hosts.load_full()
    }

    /// The current policy. Cheap; a request keeps the one it started with.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Reads the policy directory again. A broken policy leaves the running one in place
    /// and returns every error; a good one replaces it whole.
    pub fn reload(&self) -> Result<Vec<Diagnostic>, LoadError> {
        match policy::load_dir(&self.policy_dir) {
            Ok((new, warnings)) => {
                record_policy(&self.metrics, &new);
                let scheme = self.public_scheme;
                let hosts = match host_map(&new, &self.public_host, scheme) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!("policy reload refused: {e}");
                        return Err(LoadError {
                            diagnostics: vec![Diagnostic {
                                file: self.policy_dir.display().to_string(),
                                position: None,
                                severity: policy::Severity::Error,
                                message: e.to_string(),
                            }],
                        });
                    }
                };
                // Policy first: a request that sees the new host map finds its service.
                self.policy.store(Arc::new(new));
                self.hosts.store(Arc::new(hosts));
                self.metrics
                    .inc(telemetry::POLICY_RELOADS, &[("result", "ok")]);
                tracing::info!(summary = %self.policy().summary(), "policy reloaded");
                Ok(warnings)
            }
            Err(e) => {
                self.metrics
                    .inc(telemetry::POLICY_RELOADS, &[("result", "error")]);
                tracing::error!(
                    errors = e.error_count(),
                    "policy reload refused; the previous policy stays in force:\n{e}"
                );
                Err(e)
            }
        }
    }

    /// The card backend for an institution the patron chose (by its policy id).
    pub fn verifier_for(
        &self,
        policy: &Policy,
        institution: &str,
    ) -> Option<&Arc<dyn PatronVerifier>> {
        let inst = policy.institution(institution)?;
        self.verifiers.iter().find_map(|(reference, v)| {
            policy
                .institution(reference)
                .is_some_and(|i| i.id == inst.id)
                .then_some(v)
        })
    }

    /// A CSRF token for a login form, bound to the browser's login cookie value.
    pub fn login_csrf(&self, nonce: &str) -> String {
        let mut mac = self.csrf_key.clone();
        mac.update(b"portvakt-login-csrf\0");
        mac.update(nonce.as_bytes());
        data_encoding::BASE64URL_NOPAD.encode(&mac.finalize().into_bytes())
    }

    pub fn check_login_csrf(&self, nonce: &str, token: &str) -> bool {
        let mut mac = self.csrf_key.clone();
        mac.update(b"portvakt-login-csrf\0");
        mac.update(nonce.as_bytes());
        match data_encoding::BASE64URL_NOPAD.decode(token.as_bytes()) {
            Ok(tag) => mac.verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    }

    /// The MAC that binds a service-host cookie to its session id and host label.
    pub fn service_cookie_mac(&self, session: &str, label: &str) -> String {
        let mut mac = self.binding_key.clone();
        mac.update(label.as_bytes());
        mac.update(b"\0");
        mac.update(session.as_bytes());
        data_encoding::BASE64URL_NOPAD.encode(&mac.finalize().into_bytes()[..16])
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in which case
    /// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(v) = value.to_str() else {
                return peer;
            };
            for part in v.split(',') {
                match parse_hop(part.trim()) {
                    Some(ip) => hops.push(canonical(ip)),
                    // A garbled chain cannot be trusted past this point.
                    None => return peer,
                }
            }
        }
        hops.into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Absolute URL on the public host.
    pub fn public_url(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            self.public_scheme.as_str(),
            self.public_host
        )
    }
}

/// The key of usage counting's person tokens, derived from the pseudonym key: secret,
/// the same on every replica and across restarts, and never stored under `data_dir`.
pub fn usage_salt_key(pseudonym_key: &[u8]) -> Option<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(pseudonym_key).ok()?;
    mac.update(b"portvakt-usage-salt-key");
    Some(mac.finalize().into_bytes().into())
}

/// The memory store, swept every minute so expired sessions do not pile up.
pub fn memory_store(clock: &Arc<dyn Clock>) -> Arc<dyn Store> {
    let store = Arc::new(store::memory::MemoryStore::new());
    store.spawn_sweeper(clock.clone(), std::time::Duration::from_secs(60));
    store
}

/// The Redis store behind this replica's session cache. No connection is made here: a
/// Redis that is down at start leaves the gateway running but not ready (`/readyz` 503,
/// logins refused with a clear page) and connecting again by itself until Redis answers,
/// so replicas and Redis may start in any order. A malformed URL stops the start.
pub fn redis_store(url: &str) -> Result<Arc<dyn Store>, store::redis::BadUrl> {
    let conn = store::redis::RedisConn::open(url)?;
    let redis: Arc<dyn Store> = Arc::new(store::redis::RedisStore::new(conn));
    Ok(Arc::new(store::cache::CachedStore::new(redis)))
}

/// The service hosts of every proxied service in a policy.
fn host_map(
    policy: &Policy,
    public_host: &str,
    scheme: Scheme,
) -> Result<proxy::HostMap, proxy::HostMapError> {
    let services = policy.services().iter().filter_map(|s| match &s.access {
        policy::Access::Proxy(p) => Some((s.id.clone(), p.origin.clone(), p.hosts.clone())),
        _ => None,
    });
    proxy::HostMap::new(public_host, scheme, services)
}

fn record_policy(metrics: &Metrics, policy: &Policy) {
    let s = policy.summary();
    metrics.set("portvakt_policy_institutions", &[], s.institutions as f64);
    metrics.set("portvakt_policy_services", &[], s.services as f64);
    metrics.set("portvakt_policy_entitlements", &[], s.entitlements as f64);
    let now = jiff::Timestamp::now().as_second() as f64;
    metrics.set(telemetry::POLICY_LOADED, &[], now);
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) are the IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|a| a.parse().ok())
}
