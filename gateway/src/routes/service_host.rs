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
//!
//! This is the hot path of every proxied page view, image and script: it is reached from
//! the server's host dispatch with no router in between, and answers a plain [`Response`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use policy::{Decision, DenyReason};
use serde::{Deserialize, Serialize};
use store::session::{SessionId, Ticket, TicketKind};

use crate::app::App;
use crate::counting::{self, PendingRequest};
use crate::web::pages;
use crate::web::redirect::go_location_for_host;
use crate::web::request::clean_path;
use crate::web::{Cookie, Refusal, see_other};

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

impl std::fmt::Debug for EntryTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryTicket")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// The session a service-host cookie names, if its binding to `label` holds, with the
/// session id as the cookie spells it (which is [`SessionId::expose`]: `parse` takes only
/// that one spelling).
fn session_from_cookie<'h>(
    app: &App,
    headers: &'h HeaderMap,
    label: &str,
) -> Option<(SessionId, &'h str)> {
    let value = app.cookies.get(Cookie::Service, headers)?;
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
    let Some((svc, proxy_settings, origin)) = policy.proxy_origin(&label) else {
        return Refusal::not_found(t()).into_response();
    };
    let service = svc.id.as_str();

    if req.uri().path() == ENTER_PATH {
        return enter(&app, &label, service, headers, req.uri().query())
            .await
            .into_response();
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let back_to_entry = || {
        let location = app.public_url(&go_location_for_host(service, Some(path_and_query), &label));
        see_other(&location)
    };

    let Some((session_id, session)) = session_from_cookie(&app, headers, &label) else {
        return back_to_entry();
    };
    let data = match app.store.get_session(&session_id, app.clock.now()).await {
        Ok(Some(d)) => d,
        Ok(None) => return back_to_entry(),
        Err(e) => {
            tracing::warn!(error = %e, "the session store is not answering");
            return Refusal::store_down(t()).into_response();
        }
    };
    let subject = data.subject_ref();
    let ip = app.client_ip(peer.ip(), headers);
    let decision = policy::decide(&policy, subject, service, Some(ip), jiff::Timestamp::now());
    let permit = match decision {
        Decision::Permit(p) => p,
        Decision::Deny(reason) => {
            let credited = counting::credited(&policy, ip, subject);
            return counting::deny(
                &app,
                t(),
                headers,
                service,
                &credited,
                Some(subject),
                reason,
            )
            .into_response();
        }
    };
    if let Some(rate) = svc.rate_per_user
        && !app
            .rate_limits
            .check(service, rate, &data.subject_key, app.clock.now())
            .await
    {
        return counting::deny(
            &app,
            t(),
            headers,
            service,
            permit.institution.as_str(),
            Some(subject),
            DenyReason::RateLimited,
        )
        .into_response();
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
    let kind = counting::kind_of(proxy_settings, path_and_query);
    let pending = PendingRequest {
        usage: app.usage.clone(),
        age_band: policy::AgeBand::of(subject.age, permit.day),
        institution: permit.institution,
        service: svc.id.clone(),
        affiliation: subject.affiliation,
        // Only searches and items need the session (double clicks, uniqueness).
        session: if kind == counting::Kind::Plain {
            String::new()
        } else {
            session.to_owned()
        },
        kind,
    };
    // The patron's page language, for an error page, before the request is handed on.
    let t = t();
    match proxy::forward(&app.upstreams, &forward, req).await {
        Ok(resp) => counting::count_response(pending, resp),
        Err(e) => {
            tracing::warn!(service, reason = e.reason(), "proxied request failed");
            let status = e.status();
            let text = match status.as_u16() {
                504 => t.upstream_slow,
                400 => t.bad_request,
                _ => t.upstream_down,
            };
            Refusal::error(t, status, text)
                .with_action("", t.try_again)
                .into_response()
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
) -> Result<Response, Refusal> {
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
        Refusal::error(t, StatusCode::FORBIDDEN, t.entry_expired)
            .with_action(app.public_url(&format!("/go/{service}")), t.try_again)
    };
    let ticket =
        q.t.as_deref()
            .and_then(|s| Ticket::parse(s).ok())
            .ok_or_else(expired)?;
    let now = app.clock.now();
    let taken = app
        .store
        .take_ticket_json::<EntryTicket>(TicketKind::ProxyEntry, &ticket, now)
        .await;
    let Ok(Some(entry)) = taken else {
        return Err(expired());
    };
    if entry.label != label {
        return Err(expired());
    }
    let session = SessionId::parse(&entry.session).map_err(|_| expired())?;
    // The session must still be live: a ticket does not outlive a logout.
    if !matches!(app.store.get_session(&session, now).await, Ok(Some(_))) {
        return Err(expired());
    }
    let path = clean_path(q.path.as_deref()).unwrap_or_else(|| "/".to_owned());
    let mut resp = see_other(&path);
    // `<session id>.<mac>`, the mac binding the session to this host label.
    let id = session.expose();
    let value = format!("{id}.{}", app.service_cookie_mac(&id, label));
    resp.headers_mut().append(
        header::SET_COOKIE,
        app.cookies.set(Cookie::Service, &value, None),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
