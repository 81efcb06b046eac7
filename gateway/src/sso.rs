//! The federated access modes in the request path: the SAML identity provider's
//! `/saml/metadata` and `/saml/sso`, the OpenID provider's `/oidc/authorize` (its token,
//! JWKS, userinfo and discovery endpoints come from `federation::oidc::routes`), and the
//! entry-link answers for `saml` and `oidc` services.
//!
//! A vendor-initiated request from a browser without a session is kept across the login:
//! a GET request travels as the login's `next` (a relative URL to one of these two
//! endpoints, nothing else); a POST-binding AuthnRequest is parked in a single-use ticket
//! and resumed from `/saml/sso?resume=…`. Then the decision, exactly as for entry links,
//! and a signed answer with nothing outside the service's `release`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::pages::{self, Texts};
use crate::pipeline::{self, Peer};
use federation::oidc::{AuthorizeError, AuthorizeParams, OidcEndpoints, OidcError};
use policy::subject::Subject;
use policy::{Access, Decision, Policy};
use store::session::{Ticket, TicketKind};

pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/saml/metadata", get(saml_metadata))
        .route("/saml/sso", get(saml_sso_get).post(saml_sso_post))
        .route("/oidc/authorize", get(oidc_authorize))
        .with_state(app.clone());
    if let Some(provider) = app.oidc.clone() {
        let policy_app = app.clone();
        r = r.merge(federation::oidc::routes(OidcEndpoints {
            provider,
            store: app.store.clone(),
            clock: app.clock.clone(),
            policy: Arc::new(move || policy_app.policy()),
        }));
    }
    r
}

fn not_configured(t: &'static Texts) -> Response {
    pipeline::message(t, StatusCode::NOT_FOUND, t.not_yet_title, t.not_yet, None)
}

/// The answer of an entry link to a `saml` or `oidc` service, after a permit.
pub(crate) fn entry(
    app: &App,
    t: &'static Texts,
    policy: &Policy,
    permit: &policy::Permit,
    subject: &Subject,
    authn_instant: Timestamp,
) -> Response {
    let Some(svc) = policy.service(permit.service.as_str()) else {
        return pipeline::not_found_page(t);
    };
    match &svc.access {
        Access::Oidc(o) => pipeline::see_other(o.start_url.as_str()),
        Access::Saml(sp) => {
            let Some(idp) = &app.idp else {
                return not_configured(t);
            };
            let release = policy::release(policy, permit, subject, Some(&app.pseudonym_key));
            match idp.unsolicited_response(sp, &release, authn_instant, app.clock.now()) {
                Ok(post) => post.into_response(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make a SAML response");
                    pipeline::message(
                        t,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        t.error_title,
                        t.try_again,
                        None,
                    )
                }
            }
        }
        _ => pipeline::not_found_page(t),
    }
}

async fn saml_metadata(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let t = pages::language(&headers, None);
    match &app.idp {
        Some(idp) => federation::saml::metadata_handler(State(idp.clone())).await,
        None => not_configured(t),
    }
}

/// The session's subject and login instant, or the login page with `next` set.
async fn subject_or_login(
    app: &App,
    headers: &HeaderMap,
    service: &str,
    next: &str,
) -> Result<(Subject, Timestamp), Response> {
    match pipeline::session(app, headers).await {
        Some((_, data)) => Ok((data.subject(), data.created_at)),
        None => {
            let q = serde_urlencoded::to_string([("service", service), ("next", next)])
                .unwrap_or_default();
            Err(pipeline::see_other(&format!("/login?{q}")))
        }
    }
}

#[derive(Deserialize)]
struct Resume {
    resume: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct PostedRequest {
    #[serde(rename = "SAMLRequest")]
    saml_request: String,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

impl std::fmt::Debug for PostedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostedRequest")
    }
}

/// `GET /saml/sso`: the HTTP-Redirect binding, or a parked POST request after login.
async fn saml_sso_get(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(resume): Query<Resume>,
) -> Response {
    let t = pages::language(&headers, None);
    let Some(idp) = app.idp.clone() else {
        return not_configured(t);
    };
    if let Some(ticket) = resume.resume {
        let Ok(ticket) = Ticket::parse(&ticket) else {
            return saml_error(t, StatusCode::BAD_REQUEST);
        };
        let taken = app
            .store
            .take_ticket_json::<PostedRequest>(TicketKind::SamlRequest, &ticket, app.clock.now())
            .await;
        return match taken {
            Ok(Some(posted)) => answer_post(&app, peer, &headers, posted, true).await,
            _ => pipeline::message(
                t,
                StatusCode::BAD_REQUEST,
                t.error_title,
                t.entry_expired,
                None,
            ),
        };
    }
    let raw = raw.unwrap_or_default();
    let policy = app.policy();
    let request = match idp.parse_redirect(&policy, &raw) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "AuthnRequest refused");
            return saml_error(t, e.status());
        }
    };
    let (subject, instant) = match subject_or_login(
        &app,
        &headers,
        request.service.as_str(),
        &format!("/saml/sso?{raw}"),
    )
    .await
    {
        Ok(s) => s,
        Err(login) => return login,
    };
    respond_saml(
        &app, t, peer, &headers, &policy, &request, &subject, instant,
    )
}

/// `POST /saml/sso`: the HTTP-POST binding.
async fn saml_sso_post(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<PostedRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let t = pages::language(&headers, None);
    let Ok(Form(posted)) = form else {
        return saml_error(t, StatusCode::BAD_REQUEST);
    };
    answer_post(&app, peer, &headers, posted, false).await
}

async fn answer_post(
    app: &Arc<App>,
    peer: Peer,
    headers: &HeaderMap,
    posted: PostedRequest,
    resumed: bool,
) -> Response {
    let t = pages::language(headers, None);
    let Some(idp) = app.idp.clone() else {
        return not_configured(t);
    };
    let policy = app.policy();
    let request = match idp.parse_post(&policy, &posted.saml_request, posted.relay_state.as_deref())
    {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "AuthnRequest refused");
            return saml_error(t, e.status());
        }
    };
    let (subject, instant) = match pipeline::session(app, headers).await {
        Some((_, data)) => (data.subject(), data.created_at),
        None if resumed => return saml_error(t, StatusCode::FORBIDDEN),
        None => {
            // Park the request (it may be signed, so it cannot travel as a URL) and log in.
            let now = app.clock.now();
            let Ok(ticket) = Ticket::generate() else {
                return saml_error(t, StatusCode::SERVICE_UNAVAILABLE);
            };
            let parked = app
                .store
                .put_ticket_json(
                    TicketKind::SamlRequest,
                    &ticket,
                    &posted,
                    std::time::Duration::from_secs(900),
                    now,
                )
                .await;
            if parked.is_err() {
                return saml_error(t, StatusCode::SERVICE_UNAVAILABLE);
            }
            let next = format!("/saml/sso?resume={}", ticket.expose());
            let q = serde_urlencoded::to_string([
                ("service", request.service.as_str()),
                ("next", next.as_str()),
            ])
            .unwrap_or_default();
            return pipeline::see_other(&format!("/login?{q}"));
        }
    };
    respond_saml(app, t, peer, headers, &policy, &request, &subject, instant)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one request's whole context, passed once"
)]
fn respond_saml(
    app: &App,
    t: &'static Texts,
    peer: Peer,
    headers: &HeaderMap,
    policy: &Policy,
    request: &federation::saml::SpRequest,
    subject: &Subject,
    instant: Timestamp,
) -> Response {
    let ip = app.client_ip(peer.0.ip(), headers);
    let service = request.service.as_str();
    match policy::decide(policy, subject, service, Some(ip), jiff::Timestamp::now()) {
        Decision::Deny(reason) => {
            let credited = pipeline::credited(policy, ip, subject);
            pipeline::deny(app, t, headers, service, &credited, Some(subject), reason)
        }
        Decision::Permit(permit) => {
            pipeline::count_access(app, &permit, subject);
            let (Some(idp), Some(svc)) = (&app.idp, policy.service(service)) else {
                return not_configured(t);
            };
            let Access::Saml(sp) = &svc.access else {
                return saml_error(t, StatusCode::BAD_REQUEST);
            };
            let release = policy::release(policy, &permit, subject, Some(&app.pseudonym_key));
            match idp.response_to(request, sp, &release, instant, app.clock.now()) {
                Ok(post) => post.into_response(),
                Err(e) => {
                    tracing::info!(error = %e, "SAML response refused");
                    saml_error(t, e.status())
                }
            }
        }
    }
}

fn saml_error(t: &'static Texts, status: StatusCode) -> Response {
    pipeline::message(t, status, t.error_title, t.sso_refused, None)
}

/// `GET /oidc/authorize`: check the client's request, then the session and the decision,
/// then a single-use code back to the client's redirect URI.
async fn oidc_authorize(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    let t = pages::language(&headers, None);
    let Some(provider) = app.oidc.clone() else {
        return not_configured(t);
    };
    let policy = app.policy();
    let request = match provider.authorize(&policy, &params) {
        Ok(r) => r,
        Err(AuthorizeError::Redirect { location, .. }) => return pipeline::see_other(&location),
        Err(AuthorizeError::Page(e)) => {
            tracing::info!(error = %e, "authorization request refused");
            return pipeline::message(t, e.status(), t.error_title, t.sso_refused, None);
        }
    };
    let next = format!("/oidc/authorize?{}", raw.unwrap_or_default());
    let (subject, instant) =
        match subject_or_login(&app, &headers, request.service.as_str(), &next).await {
            Ok(s) => s,
            Err(login) => return login,
        };
    let ip = app.client_ip(peer.0.ip(), &headers);
    let service = request.service.as_str();
    match policy::decide(&policy, &subject, service, Some(ip), jiff::Timestamp::now()) {
        Decision::Deny(reason) => {
            let credited = pipeline::credited(&policy, ip, &subject);
            // Counted like any denial; the client learns access_denied, the patron's
            // browser is sent back to it.
            let _ = pipeline::deny(
                &app,
                t,
                &headers,
                service,
                &credited,
                Some(&subject),
                reason,
            );
            pipeline::see_other(&request.error_redirect(
                &provider.issuer,
                &OidcError::AccessDenied(reason.as_str().to_owned()),
            ))
        }
        Decision::Permit(permit) => {
            pipeline::count_access(&app, &permit, &subject);
            let release = policy::release(&policy, &permit, &subject, Some(&app.pseudonym_key));
            match provider
                .issue_code(
                    app.store.as_ref(),
                    &request,
                    &release,
                    instant,
                    app.clock.now(),
                )
                .await
            {
                Ok(location) => pipeline::see_other(&location),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot issue a code");
                    pipeline::message(
                        t,
                        StatusCode::SERVICE_UNAVAILABLE,
                        t.error_title,
                        t.store_down,
                        None,
                    )
                }
            }
        }
    }
}
