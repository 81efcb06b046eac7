//! The entry link, `GET /go/{service}`: the session (or a walk-in on an on-site network),
//! the decision, then the service's access mode — a ticket for the service host (proxy), a
//! signed answer (SAML), the vendor's login page (OIDC) or its URL (link) — or a refusal.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use policy::subject::Subject;
use policy::{Access, Decision, DenyReason, decide};
use serde::Deserialize;
use store::session::{LoginMethod, SessionData, SessionId, Ticket, TicketKind};

use super::service_host::{ENTER_PATH, EntryTicket, TICKET_TTL};
use super::{idp, session};
use crate::app::{App, SESSION_IDLE};
use crate::counting;
use crate::web::pages::{self, Texts};
use crate::web::redirect::login_location;
use crate::web::request::{clean_path, clean_service};
use crate::web::{Peer, Refusal, see_other};

#[derive(Debug, Default, Deserialize)]
pub struct GoQuery {
    path: Option<String>,
    lang: Option<String>,
    /// A host label of this service other than its main one (`avis--1`).
    host: Option<String>,
}

/// `GET /go/{service}`: the entry link.
pub async fn go(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(service): Path<String>,
    headers: HeaderMap,
    Query(q): Query<GoQuery>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, q.lang.as_deref());
    let policy = app.policy();
    let ip = app.client_ip(peer.0.ip(), &headers);
    let path = clean_path(q.path.as_deref());
    let Some(service) = clean_service(Some(&service)) else {
        return Err(counting::deny(
            &app,
            t,
            &headers,
            "-",
            "-",
            None,
            DenyReason::UnknownService,
        ));
    };
    let now = jiff::Timestamp::now();

    let mut session_id = None;
    let mut authn_instant = app.clock.now();
    let subject = match session::current(&app, &headers).await {
        Some((id, data)) => {
            session_id = Some(id);
            authn_instant = data.created_at;
            data.subject()
        }
        None => {
            // A walk-in on an on-site network gets the decision without logging in; when
            // walk-in access is refused, logging in may still help, so offer it.
            let walk_in_site = policy
                .onsite_institution(ip)
                .filter(|i| i.walk_in)
                .is_some();
            if !walk_in_site {
                if policy.service(&service).is_none() {
                    return Err(counting::deny(
                        &app,
                        t,
                        &headers,
                        &service,
                        "-",
                        None,
                        DenyReason::UnknownService,
                    ));
                }
                return Ok(see_other(&login_location(&service, path.as_deref())));
            }
            match decide(&policy, &Subject::walk_in(), &service, Some(ip), now) {
                Decision::Permit(_) => Subject::walk_in(),
                Decision::Deny(r @ (DenyReason::UnknownService | DenyReason::ServiceSuspended)) => {
                    let credited = policy
                        .onsite_institution(ip)
                        .map_or_else(|| "-".to_owned(), |i| i.id.to_string());
                    let walk_in = Subject::walk_in();
                    return Err(counting::deny(
                        &app,
                        t,
                        &headers,
                        &service,
                        &credited,
                        Some(&walk_in),
                        r,
                    ));
                }
                Decision::Deny(_) => {
                    return Ok(see_other(&login_location(&service, path.as_deref())));
                }
            }
        }
    };

    let permit = match decide(&policy, &subject, &service, Some(ip), now) {
        Decision::Permit(permit) => permit,
        Decision::Deny(reason) => {
            let credited = counting::credited(&policy, ip, &subject);
            return Err(counting::deny(
                &app,
                t,
                &headers,
                &service,
                &credited,
                Some(&subject),
                reason,
            ));
        }
    };
    counting::permitted(&app, &permit, &subject);
    let Some(svc) = policy.service(&service) else {
        let home = subject.institutions.first().map_or("-", |i| i.as_str());
        return Err(counting::deny(
            &app,
            t,
            &headers,
            &service,
            home,
            Some(&subject),
            DenyReason::UnknownService,
        ));
    };
    match &svc.access {
        Access::Link { url } => Ok(see_other(url.as_str())),
        Access::Proxy(_) => {
            let label = q
                .host
                .filter(|l| {
                    policy
                        .proxy_origin(l)
                        .is_some_and(|(s, ..)| s.id.as_str() == service)
                })
                .unwrap_or_else(|| service.clone());
            proxy_entry(&app, t, session_id, &subject, &label, path.as_deref()).await
        }
        Access::Saml(_) | Access::Oidc(_) => {
            idp::entry(&app, t, &policy, &permit, &subject, authn_instant)
        }
    }
}

/// A permitted proxy entry: a single-use ticket for the service host, bound to the
/// session (a walk-in gets an anonymous session of its own, with a random key, so its
/// pseudonym links nobody), then off to `<label>.<public_host>/__portvakt/enter`.
async fn proxy_entry(
    app: &App,
    t: &'static Texts,
    session_id: Option<SessionId>,
    subject: &Subject,
    label: &str,
    path: Option<&str>,
) -> Result<Response, Refusal> {
    let now = app.clock.now();
    let unavailable = || Refusal::store_down(t);
    let session_id = match session_id {
        Some(id) => id,
        None => {
            let random = Ticket::generate().map_err(|_| unavailable())?;
            let walk_in = Subject {
                key: policy::ids::SubjectKey::new(format!("walk-in:{}", random.expose())),
                ..subject.clone()
            };
            let data =
                SessionData::new(&walk_in, LoginMethod::Card, now).map_err(|_| unavailable())?;
            app.store
                .create_session(
                    data,
                    SESSION_IDLE.min(app.session_ttl),
                    app.session_ttl,
                    now,
                )
                .await
                .map_err(|_| unavailable())?
        }
    };
    let ticket = Ticket::generate().map_err(|_| unavailable())?;
    let entry = EntryTicket {
        session: session_id.expose(),
        label: label.to_owned(),
    };
    app.store
        .put_ticket_json(TicketKind::ProxyEntry, &ticket, &entry, TICKET_TTL, now)
        .await
        .map_err(|_| unavailable())?;
    let mut query = vec![("t", ticket.expose())];
    if let Some(p) = path {
        query.push(("path", p.to_owned()));
    }
    let location = format!(
        "{}://{label}.{}{ENTER_PATH}?{}",
        app.public_scheme.as_str(),
        app.public_host,
        serde_urlencoded::to_string(query).unwrap_or_default()
    );
    Ok(see_other(&location))
}
