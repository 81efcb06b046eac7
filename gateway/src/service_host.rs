//! Requests on a service host, `<label>.<public_host>`: the entry ticket, the host-only
//! cookie, the decision on every request, the per-person rate limit, then the proxy.
//!
//! Phase by phase: label → (service, origin) from the policy → `/__portvakt/enter` trades
//! a single-use ticket for this host's cookie → every other request: cookie (bound by an
//! HMAC to its session and this host label, so it is worthless on any other host) →
//! session in the store → `decide` with the current policy (so a reload, an emergency
//! brake or an ended entitlement stops running sessions at once) → rate limit → release →
//! `proxy::forward`. A request without a valid cookie is sent back through the entry link
//! `/go/{service}` with the same path, which logs the patron in if need be.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::pages;
use crate::pipeline;
use policy::{Decision, DenyReason, Rate};
use store::session::{SessionId, Ticket, TicketKind};

/// The entry path on every service host; never forwarded to a vendor.
pub const ENTER_PATH: &str = "/__portvakt/enter";
/// How long an entry ticket lives.
pub const TICKET_TTL: Duration = Duration::from_secs(60);

/// What an entry ticket stands for: a session, and the host it may be redeemed on.
#[derive(Serialize, Deserialize)]
pub struct EntryTicket {
    pub session: String,
    pub label: String,
}

/// The service host cookie: `__Host-portvakt-svc` under https, `portvakt-svc` otherwise.
pub fn cookie_name(app: &App) -> &'static str {
    if app.secure_cookies {
        "__Host-portvakt-svc"
    } else {
        "portvakt-svc"
    }
}

/// `<session id>.<mac>`, the mac binding the session to one host label.
pub fn cookie_value(app: &App, session: &SessionId, label: &str) -> String {
    let id = session.expose();
    format!("{id}.{}", app.service_cookie_mac(&id, label))
}

/// The session a service-host cookie names, if its binding to `label` holds, with the
/// session id as the cookie spells it (which is [`SessionId::expose`]: `parse` takes only
/// that one spelling).
fn session_from_cookie<'h>(
    app: &App,
    headers: &'h HeaderMap,
    label: &str,
) -> Option<(SessionId, &'h str)> {
    let value = pipeline::cookie(headers, cookie_name(app))?;
    let (id, mac) = proxy::text::split_once_ascii(value, b'.')?;
    if let Some(session) = app.verified_cookies.get(value, label) {
        return Some((session, id));
    }
    let expected = app.service_cookie_mac(id, label);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        mac.as_bytes(),
        expected.as_bytes(),
    )) {
        return None;
    }
    let session = SessionId::parse(id).ok()?;
    app.verified_cookies.insert(value, label, &session);
    Some((session, id))
}

/// Service-host cookies whose mac has been checked, each with the host label it binds to:
/// a browser sends the same cookie with every request, and checking its HMAC-SHA-256 each
/// time was a tenth of a proxied request's instructions. Only a cookie that passed the
/// check is kept, and only for its label, so the answer is the check's. Bounded: emptied
/// when it passes [`VerifiedCookies::MAX`] cookies. The cookie names a session, which the
/// store is still asked for on every request (an ended session ends access at once).
#[derive(Default)]
pub struct VerifiedCookies {
    // FxHash, not SipHash: every key in here was made by the gateway (a random id or its
    // SHA-256), so a client cannot pick keys that collide; a client's key is only looked up.
    labels: Mutex<FxHashMap<Box<str>, Verified>>,
}

/// A checked cookie's host label and the session it names.
type Verified = (Box<str>, SessionId);

impl std::fmt::Debug for VerifiedCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifiedCookies")
    }
}

impl VerifiedCookies {
    pub const MAX: usize = 100_000;

    /// The session of a cookie checked before for `label`.
    fn get(&self, cookie: &str, label: &str) -> Option<SessionId> {
        let m = self.labels.lock().ok()?;
        let (l, session) = m.get(cookie)?;
        (**l == *label).then(|| session.clone())
    }

    fn insert(&self, cookie: &str, label: &str, session: &SessionId) {
        // Worked out now, so that every copy handed out carries it.
        let _ = session.lookup_key();
        if let Ok(mut m) = self.labels.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(cookie.into(), (label.into(), session.clone()));
        }
    }
}

impl std::fmt::Debug for EntryTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryTicket")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// One limiter per service and rate; a person is a key within it.
type Limiters = HashMap<(String, Rate), Arc<DefaultKeyedRateLimiter<u64>>>;

/// Per-service keyed rate limiters, rebuilt when a service's rate changes. With the Redis
/// store the limit is cluster-wide ([`store::redis::SharedRate`]); while Redis does
/// not answer, each replica falls back to its own in-process limiter, so a patron is never
/// stopped by an outage of ours, and the cluster allows at most the rate times the number
/// of replicas until Redis is back.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<Limiters>,
    hasher: std::collections::hash_map::RandomState,
    shared: Option<store::redis::SharedRate>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

impl RateLimits {
    /// In-process limits, or shared through Redis when `redis` is given (keyed by hashes
    /// under `secret`, which every replica must share).
    pub fn new(secret: &[u8; 32], redis: Option<store::redis::RedisConn>) -> Self {
        Self {
            shared: redis.map(|conn| store::redis::SharedRate::new(conn, secret)),
            ..Self::default()
        }
    }

    /// Whether one more request of this person to this service is within its rate at
    /// `now` (the shared limiter's time; the in-process one keeps its own clock).
    pub async fn check(
        &self,
        service: &str,
        rate: Rate,
        subject_key: &str,
        now: jiff::Timestamp,
    ) -> bool {
        if let Some(shared) = &self.shared {
            match shared
                .check(service, rate.count, rate.per, subject_key, now)
                .await
            {
                Ok(allowed) => return allowed,
                Err(e) => {
                    tracing::debug!(error = %e, "shared rate limit unavailable; limiting on this replica");
                }
            }
        }
        self.check_local(service, rate, subject_key)
    }

    /// The in-process limit. The person is a keyed hash of the subject key, so no
    /// identifier is kept.
    fn check_local(&self, service: &str, rate: Rate, subject_key: &str) -> bool {
        let limiter = {
            let Ok(mut map) = self.limiters.lock() else {
                return true;
            };
            if map.len() > 1024 {
                map.clear();
            }
            map.entry((service.to_owned(), rate))
                .or_insert_with(|| Arc::new(governor::RateLimiter::keyed(quota(rate))))
                .clone()
        };
        let mut h = self.hasher.build_hasher();
        subject_key.hash(&mut h);
        service.hash(&mut h);
        let allowed = limiter.check_key(&h.finish()).is_ok();
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        allowed
    }
}

/// The released attributes as headers, per session and service, so the pseudonym's HMAC
/// and the headers are made once per session rather than on every request. An entry holds
/// for the policy it was made under (a reload makes new ones), the permit's institution and
/// day (an age turns over at midnight); the subject is the session's and does not change.
/// Bounded: emptied when it passes [`ReleaseCache::MAX_SESSIONS`] sessions.
#[derive(Default)]
pub struct ReleaseCache {
    // FxHash, not SipHash: every key in here was made by the gateway (a random id or its
    // SHA-256), so a client cannot pick keys that collide; a client's key is only looked up.
    by_session: Mutex<FxHashMap<String, Vec<ReleaseEntry>>>,
}

struct ReleaseEntry {
    /// Compared by address; the `Weak` keeps the address from being reused by a new policy.
    policy: std::sync::Weak<policy::Policy>,
    service: policy::ids::ServiceId,
    institution: u32,
    day: jiff::civil::Date,
    headers: Arc<[(http::HeaderName, HeaderValue)]>,
}

impl std::fmt::Debug for ReleaseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseCache")
    }
}

impl ReleaseCache {
    pub const MAX_SESSIONS: usize = 100_000;

    fn get_or_insert(
        &self,
        session: &str,
        policy: &Arc<policy::Policy>,
        permit: &policy::Permit,
        make: impl FnOnce() -> Vec<(http::HeaderName, HeaderValue)>,
    ) -> Arc<[(http::HeaderName, HeaderValue)]> {
        let matches = |e: &ReleaseEntry| {
            std::ptr::eq(e.policy.as_ptr(), Arc::as_ptr(policy))
                && e.service == permit.service
                && e.institution == permit.institution_index()
                && e.day == permit.day
        };
        if let Ok(map) = self.by_session.lock()
            && let Some(e) = map
                .get(session)
                .and_then(|es| es.iter().find(|e| matches(e)))
        {
            return Arc::clone(&e.headers);
        }
        let headers: Arc<[_]> = make().into();
        if let Ok(mut map) = self.by_session.lock() {
            if map.len() >= Self::MAX_SESSIONS {
                map.clear();
            }
            let entries = map.entry(session.to_owned()).or_default();
            // Entries of an older policy, institution or day are never used again.
            entries.retain(|e| e.service != permit.service);
            entries.push(ReleaseEntry {
                policy: Arc::downgrade(policy),
                service: permit.service.clone(),
                institution: permit.institution_index(),
                day: permit.day,
                headers: Arc::clone(&headers),
            });
        }
        headers
    }
}

/// `count` per `per`, as a steady rate with a burst of `count`.
fn quota(rate: Rate) -> Quota {
    let count = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
    let period = rate.per / rate.count.max(1);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(count))
        .allow_burst(count)
}

/// Handles one request on a service host.
pub async fn handle(
    app: Arc<App>,
    label: String,
    req: Request<Body>,
    peer: std::net::SocketAddr,
) -> Response {
    let headers = req.headers();
    // The page language is worked out only for a page of our own (errors, refusals).
    let t = || pages::language(headers, None);
    let policy = app.policy();
    let Some((svc, proxy, origin)) = policy.proxy_origin(&label) else {
        return pipeline::not_found_page(t());
    };
    let service = svc.id.as_str();

    if req.uri().path() == ENTER_PATH {
        return enter(&app, &label, service, headers, req.uri().query()).await;
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let back_to_entry = || {
        let location = app.public_url(&pipeline::go_location_for_host(
            service,
            Some(path_and_query),
            &label,
        ));
        pipeline::see_other(&location)
    };

    let Some((session_id, session)) = session_from_cookie(&app, headers, &label) else {
        return back_to_entry();
    };
    let data = match app.store.get_session(&session_id, app.clock.now()).await {
        Ok(Some(d)) => d,
        Ok(None) => return back_to_entry(),
        Err(e) => {
            tracing::warn!(error = %e, "the session store is not answering");
            let t = t();
            return pipeline::message(
                t,
                StatusCode::SERVICE_UNAVAILABLE,
                t.error_title,
                t.store_down,
                None,
            );
        }
    };
    let subject = data.subject_ref();
    let ip = app.client_ip(peer.ip(), headers);
    let decision = policy::decide(&policy, subject, service, Some(ip), jiff::Timestamp::now());
    let permit = match decision {
        Decision::Permit(p) => p,
        Decision::Deny(reason) => {
            let credited = pipeline::credited(&policy, ip, subject);
            return pipeline::deny(
                &app,
                t(),
                headers,
                service,
                &credited,
                Some(subject),
                reason,
            );
        }
    };
    if let Some(rate) = svc.rate_per_user
        && !app
            .rate_limits
            .check(service, rate, &data.subject_key, app.clock.now())
            .await
    {
        return pipeline::deny(
            &app,
            t(),
            headers,
            service,
            permit.institution.as_str(),
            Some(subject),
            DenyReason::RateLimited,
        );
    }
    let release = app
        .release_cache
        .get_or_insert(session, &policy, &permit, || {
            let released = policy::release(&policy, &permit, subject, Some(&app.pseudonym_key));
            let attributes: Vec<(String, String)> = released
                .attributes
                .iter()
                .map(|(a, v)| (a.name(), v.as_text()))
                .collect();
            proxy::release_headers(attributes.iter().map(|(a, v)| (a.as_str(), v.as_str())))
        });
    let hosts = app.hosts();
    let forward = proxy::Forward {
        origin,
        hosts: &hosts,
        service,
        release: &release,
        gateway_cookies: &app.gateway_cookies,
        timeouts: Default::default(),
    };
    let kind = crate::counting::kind_of(proxy, path_and_query);
    let pending = crate::counting::PendingRequest {
        usage: app.usage.clone(),
        age_band: policy::AgeBand::of(subject.age, permit.day),
        institution: permit.institution,
        service: svc.id.clone(),
        affiliation: subject.affiliation,
        // Only searches and items need the session (double clicks, uniqueness).
        session: if kind == crate::counting::Kind::Plain {
            String::new()
        } else {
            session.to_owned()
        },
        kind,
    };
    // The patron's page language, for an error page, before the request is handed on.
    let t = t();
    match proxy::forward(&app.upstreams, &forward, req).await {
        Ok(resp) => crate::counting::count_response(pending, resp),
        Err(e) => {
            tracing::warn!(service, reason = e.reason(), "proxied request failed");
            let status = e.status();
            let text = match status.as_u16() {
                504 => t.upstream_slow,
                400 => t.bad_request,
                _ => t.upstream_down,
            };
            pipeline::message(t, status, t.error_title, text, Some(("", t.try_again)))
        }
    }
}

/// `GET /__portvakt/enter?t=TICKET&path=/x`: a single-use ticket for this host becomes
/// this host's cookie.
async fn enter(
    app: &App,
    label: &str,
    service: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response {
    let t = pages::language(headers, None);
    #[derive(Deserialize)]
    struct Q {
        t: Option<String>,
        path: Option<String>,
    }
    let q: Q = serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or(Q {
        t: None,
        path: None,
    });
    let expired = || {
        pipeline::message(
            t,
            StatusCode::FORBIDDEN,
            t.error_title,
            t.entry_expired,
            Some((&app.public_url(&format!("/go/{service}")), t.try_again)),
        )
    };
    let Some(ticket) = q.t.as_deref().and_then(|s| Ticket::parse(s).ok()) else {
        return expired();
    };
    let now = app.clock.now();
    let taken = app
        .store
        .take_ticket_json::<EntryTicket>(TicketKind::ProxyEntry, &ticket, now)
        .await;
    let Ok(Some(entry)) = taken else {
        return expired();
    };
    if entry.label != label {
        return expired();
    }
    let Ok(session) = SessionId::parse(&entry.session) else {
        return expired();
    };
    // The session must still be live: a ticket does not outlive a logout.
    if !matches!(app.store.get_session(&session, now).await, Ok(Some(_))) {
        return expired();
    }
    let path = pipeline::clean_path(q.path.as_deref()).unwrap_or_else(|| "/".to_owned());
    let mut resp = pipeline::see_other(&path);
    let mut c = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax",
        cookie_name(app),
        cookie_value(app, &session, label)
    );
    if app.secure_cookies {
        c.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.into_response()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use jiff::Timestamp;

    use super::*;
    use policy::ids::{InstitutionId, SubjectKey};
    use policy::subject::{Affiliation, Age, Subject};
    use policy::{Permit, Policy};

    #[test]
    fn a_verified_cookie_holds_only_for_its_label_and_the_cache_is_bounded() {
        let c = VerifiedCookies::default();
        let s = SessionId::generate().unwrap();
        assert!(c.get("abc.mac", "avis").is_none());
        c.insert("abc.mac", "avis", &s);
        assert!(c.get("abc.mac", "avis") == Some(s.clone()));
        assert!(c.get("abc.mac", "film").is_none(), "another host's label");
        assert!(c.get("abc.maC", "avis").is_none(), "another mac");
        for i in 0..VerifiedCookies::MAX {
            c.insert(&format!("s{i}.m"), "avis", &s);
        }
        // Emptied on passing the bound, then filled again.
        assert!(c.get("abc.mac", "avis").is_none());
        assert!(
            c.get(&format!("s{}.m", VerifiedCookies::MAX - 1), "avis")
                .is_some()
        );
        assert!(c.labels.lock().unwrap().len() <= VerifiedCookies::MAX);
    }

    const POLICY: &str = r#"
[[institution]]
id = "NO-2390700"
name = "Sandefjordbiblioteket"
kind = "public_library"

[[institution]]
id = "NO-2390500"
name = "Tønsberg bibliotek"
kind = "public_library"

[[service]]
id = "avis"
name = "Avis"
access = "proxy"
release = ["pseudonym", "institution"]
[service.proxy]
origin = "https://avis.example"

[[entitlement]]
institution = "NO-2390700"
service = "avis"
from = 2020-01-01

[[entitlement]]
institution = "NO-2390500"
service = "avis"
from = 2020-01-01
"#;

    fn policy() -> Arc<Policy> {
        let (p, _) = policy::load_files(vec![("p.toml".into(), POLICY.into())]).unwrap();
        Arc::new(p)
    }

    fn permit(policy: &Policy, home: &str, at: &str) -> Permit {
        let subject = Subject {
            key: SubjectKey::new("card:NO-2390700:1"),
            affiliation: Affiliation::Patron,
            institutions: vec![InstitutionId::new(home)],
            age: Age::Unknown,
        };
        let now: Timestamp = at.parse().unwrap();
        match policy::decide(policy, &subject, "avis", None, now) {
            Decision::Permit(p) => p,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    #[test]
    fn release_headers_are_made_again_for_a_new_policy_institution_day_or_session() {
        let cache = ReleaseCache::default();
        let made = Cell::new(0);
        let get = |session: &str, policy: &Arc<Policy>, permit: &Permit| {
            cache.get_or_insert(session, policy, permit, || {
                made.set(made.get() + 1);
                vec![(
                    http::HeaderName::from_static("x-portvakt-n"),
                    HeaderValue::from(made.get()),
                )]
            })
        };
        let first = policy();
        let today = permit(&first, "NO-2390700", "2026-12-02T10:00:00Z");
        let a = get("s1", &first, &today);
        let again = get("s1", &first, &today);
        assert_eq!(made.get(), 1, "the same session, policy and permit: cached");
        assert_eq!(a, again);

        get("s2", &first, &today);
        assert_eq!(made.get(), 2, "another session has its own");

        let tomorrow = permit(&first, "NO-2390700", "2026-12-03T10:00:00Z");
        get("s1", &first, &tomorrow);
        assert_eq!(made.get(), 3, "a new day (an age can turn over)");

        let elsewhere = permit(&first, "NO-2390500", "2026-12-03T10:00:00Z");
        get("s1", &first, &elsewhere);
        assert_eq!(made.get(), 4, "another institution");

        let reloaded = policy();
        let after_reload = permit(&reloaded, "NO-2390500", "2026-12-03T10:00:00Z");
        let fresh = get("s1", &reloaded, &after_reload);
        assert_eq!(
            made.get(),
            5,
            "a reloaded policy (its release list may differ)"
        );
        assert_eq!(fresh[0].1, HeaderValue::from(5));
        get("s1", &reloaded, &after_reload);
        assert_eq!(made.get(), 5);
    }
}
