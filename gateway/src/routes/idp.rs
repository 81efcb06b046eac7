//! The identity provider for vendors in the request path: the SAML identity provider's
//! `/saml/metadata` and `/saml/sso`, the OpenID provider's `/oidc/authorize` (its token,
//! JWKS, userinfo and discovery endpoints are the `federation` crate's own router, merged
//! in `routes`), and the entry-link answers for `saml` and `oidc` services.
//!
//! A vendor-initiated request from a browser without a session is kept across the login:
//! a GET request travels as the login's `next` (a relative URL to one of these two
//! endpoints, nothing else); a POST-binding AuthnRequest is parked in a single-use ticket
//! and resumed from `/saml/sso?resume=…`. Then the decision, exactly as for entry links,
//! and a signed answer with nothing outside the service's `release`.

use std::sync::Arc;

use ::federation::oidc::{AuthorizeError, AuthorizeParams, OidcError};
use ::federation::saml::SpRequest;
use axum::extract::{Form, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use policy::subject::Subject;
use policy::{Access, Decision, Permit, Policy, decide};
use serde::{Deserialize, Serialize};
use store::session::{Ticket, TicketKind};

use super::session;
use crate::app::App;
use crate::counting;
use crate::web::pages::{self, Texts};
use crate::web::redirect::login_then;
use crate::web::{Peer, Refusal, see_other};

/// How long a vendor's POST-binding request waits for the patron to log in.
const PARKED_REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(900);

/// The answer of an entry link to a `saml` or `oidc` service, after a permit.
pub fn entry(
    app: &App,
    t: &'static Texts,
    policy: &Policy,
    permit: &Permit,
    subject: &Subject,
    authn_instant: Timestamp,
) -> Result<Response, Refusal> {
    let Some(svc) = policy.service(permit.service.as_str()) else {
        return Err(Refusal::not_found(t));
    };
    match &svc.access {
        Access::Oidc(o) => Ok(see_other(o.start_url.as_str())),
        Access::Saml(sp) => {
            let Some(idp) = &app.idp else {
                return Err(Refusal::not_configured(t));
            };
            let release = policy::release(policy, permit, subject, Some(&app.pseudonym_key));
            match idp.unsolicited_response(sp, &release, authn_instant, app.clock.now()) {
                Ok(post) => Ok(post.into_response()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make a SAML response");
                    Err(Refusal::error(
                        t,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        t.try_again,
                    ))
                }
            }
        }
        _ => Err(Refusal::not_found(t)),
    }
}

/// `GET /saml/metadata`.
pub async fn saml_metadata(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    match &app.idp {
        Some(idp) => Ok(::federation::saml::metadata_handler(State(idp.clone())).await),
        None => Err(Refusal::not_configured(pages::language(&headers, None))),
    }
}

/// The session's subject and login instant, or the login page with `next` set.
async fn subject_or_login(
    app: &App,
    headers: &HeaderMap,
    service: &str,
    next: &str,
) -> Result<(Subject, Timestamp), Response> {
    match session::current(app, headers).await {
        Some((_, data)) => Ok((data.subject(), data.created_at)),
        None => Err(see_other(&login_then(service, next))),
    }
}

#[derive(Debug, Deserialize)]
pub struct Resume {
    resume: Option<String>,
}

#[derive(Deserialize, Serialize)]
pub struct PostedRequest {
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
pub async fn saml_sso_get(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(resume): Query<Resume>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, None);
    let Some(idp) = app.idp.clone() else {
        return Err(Refusal::not_configured(t));
    };
    if let Some(ticket) = resume.resume {
        let Ok(ticket) = Ticket::parse(&ticket) else {
            return Err(Refusal::sso_refused(t, StatusCode::BAD_REQUEST));
        };
        let taken = app
            .store
            .take_ticket_json::<PostedRequest>(TicketKind::SamlRequest, &ticket, app.clock.now())
            .await;
        return match taken {
            Ok(Some(posted)) => answer_post(&app, peer, &headers, posted, true).await,
            _ => Err(Refusal::error(t, StatusCode::BAD_REQUEST, t.entry_expired)),
        };
    }
    let raw = raw.unwrap_or_default();
    let policy = app.policy();
    let request = idp.parse_redirect(&policy, &raw).map_err(|e| {
        tracing::info!(error = %e, "AuthnRequest refused");
        Refusal::sso_refused(t, e.status())
    })?;
    let (subject, instant) = match subject_or_login(
        &app,
        &headers,
        request.service.as_str(),
        &format!("/saml/sso?{raw}"),
    )
    .await
    {
        Ok(s) => s,
        Err(login) => return Ok(login),
    };
    respond_saml(
        &app, t, peer, &headers, &policy, &request, &subject, instant,
    )
}

/// `POST /saml/sso`: the HTTP-POST binding.
pub async fn saml_sso_post(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<PostedRequest>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, None);
    let Ok(Form(posted)) = form else {
        return Err(Refusal::sso_refused(t, StatusCode::BAD_REQUEST));
    };
    answer_post(&app, peer, &headers, posted, false).await
}

async fn answer_post(
    app: &Arc<App>,
    peer: Peer,
    headers: &HeaderMap,
    posted: PostedRequest,
    resumed: bool,
) -> Result<Response, Refusal> {
    let t = pages::language(headers, None);
    let Some(idp) = app.idp.clone() else {
        return Err(Refusal::not_configured(t));
    };
    let policy = app.policy();
    let request = idp
        .parse_post(&policy, &posted.saml_request, posted.relay_state.as_deref())
        .map_err(|e| {
            tracing::info!(error = %e, "AuthnRequest refused");
            Refusal::sso_refused(t, e.status())
        })?;
    let (subject, instant) = match session::current(app, headers).await {
        Some((_, data)) => (data.subject(), data.created_at),
        None if resumed => return Err(Refusal::sso_refused(t, StatusCode::FORBIDDEN)),
        None => {
            // Park the request (it may be signed, so it cannot travel as a URL) and log in.
            let now = app.clock.now();
            let unavailable = || Refusal::sso_refused(t, StatusCode::SERVICE_UNAVAILABLE);
            let ticket = Ticket::generate().map_err(|_| unavailable())?;
            app.store
                .put_ticket_json(
                    TicketKind::SamlRequest,
                    &ticket,
                    &posted,
                    PARKED_REQUEST_TTL,
                    now,
                )
                .await
                .map_err(|_| unavailable())?;
            let next = format!("/saml/sso?resume={}", ticket.expose());
            return Ok(see_other(&login_then(request.service.as_str(), &next)));
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
    request: &SpRequest,
    subject: &Subject,
    instant: Timestamp,
) -> Result<Response, Refusal> {
    let ip = app.client_ip(peer.0.ip(), headers);
    let service = request.service.as_str();
    let permit = match decide(policy, subject, service, Some(ip), Timestamp::now()) {
        Decision::Permit(permit) => permit,
        Decision::Deny(reason) => {
            let credited = counting::credited(policy, ip, subject);
            return Err(counting::deny(
                app,
                t,
                headers,
                service,
                &credited,
                Some(subject),
                reason,
            ));
        }
    };
    counting::permitted(app, &permit, subject);
    let (Some(idp), Some(svc)) = (&app.idp, policy.service(service)) else {
        return Err(Refusal::not_configured(t));
    };
    let Access::Saml(sp) = &svc.access else {
        return Err(Refusal::sso_refused(t, StatusCode::BAD_REQUEST));
    };
    let release = policy::release(policy, &permit, subject, Some(&app.pseudonym_key));
    match idp.response_to(request, sp, &release, instant, app.clock.now()) {
        Ok(post) => Ok(post.into_response()),
        Err(e) => {
            tracing::info!(error = %e, "SAML response refused");
            Err(Refusal::sso_refused(t, e.status()))
        }
    }
}

/// `GET /oidc/authorize`: check the client's request, then the session and the decision,
/// then a single-use code back to the client's redirect URI.
pub async fn oidc_authorize(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(params): Query<AuthorizeParams>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, None);
    let Some(provider) = app.oidc.clone() else {
        return Err(Refusal::not_configured(t));
    };
    let policy = app.policy();
    let request = match provider.authorize(&policy, &params) {
        Ok(r) => r,
        Err(AuthorizeError::Redirect { location, .. }) => return Ok(see_other(&location)),
        Err(AuthorizeError::Page(e)) => {
            tracing::info!(error = %e, "authorization request refused");
            return Err(Refusal::sso_refused(t, e.status()));
        }
    };
    let next = format!("/oidc/authorize?{}", raw.unwrap_or_default());
    let (subject, instant) =
        match subject_or_login(&app, &headers, request.service.as_str(), &next).await {
            Ok(s) => s,
            Err(login) => return Ok(login),
        };
    let ip = app.client_ip(peer.0.ip(), &headers);
    let service = request.service.as_str();
    match decide(&policy, &subject, service, Some(ip), Timestamp::now()) {
        Decision::Deny(reason) => {
            // Counted like any denial; the client learns access_denied, the patron's
            // browser is sent back to it.
            let credited = counting::credited(&policy, ip, &subject);
            counting::denial(&app, service, &credited, Some(&subject), reason);
            Ok(see_other(&request.error_redirect(
                &provider.issuer,
                &OidcError::AccessDenied(reason.as_str().to_owned()),
            )))
        }
        Decision::Permit(permit) => {
            counting::permitted(&app, &permit, &subject);
            let release = policy::release(&policy, &permit, &subject, Some(&app.pseudonym_key));
            provider
                .issue_code(
                    app.store.as_ref(),
                    &request,
                    &release,
                    instant,
                    app.clock.now(),
                )
                .await
                .map(|location| see_other(&location))
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot issue a code");
                    Refusal::store_down(t)
                })
        }
    }
}
