//! The patron's own pages on the public host: the start page (`GET /`), the library-card
//! login (`GET, POST /login`) and `POST /logout`.
//!
//! A card login goes: CSRF (an HMAC of the login cookie's nonce under the session key) →
//! the failed-login throttle → the library system → a new session → back to the service,
//! the deep link, or a vendor's pending federated request.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use policy::ids::InstitutionId;
use policy::subject::{Affiliation, Subject, card_subject_key};
use policy::{Policy, decide};
use serde::Deserialize;
use store::session::LoginMethod;

use super::feide::login_button;
use super::session;
use crate::app::App;
use crate::auth::library_card::CardOutcome;
use crate::auth::throttle::LoginRefusal;
use crate::counting;
use crate::telemetry::log_ip;
use crate::web::pages::{self, LoginPage, ServiceLink, StartPage, Texts, feide_texts};
use crate::web::redirect::go_location;
use crate::web::request::{clean_next, clean_path, clean_service, random_token};
use crate::web::{Cookie, Peer, Refusal, html, message, see_other};

#[derive(Debug, Default, Deserialize)]
pub struct LangQuery {
    lang: Option<String>,
}

/// Any path nobody answers: 404 in the patron's language.
pub async fn not_found(headers: HeaderMap, Query(q): Query<LangQuery>) -> Refusal {
    Refusal::not_found(pages::language(&headers, q.lang.as_deref()))
}

/// The services a subject may use now, in name order.
fn usable_services(policy: &Policy, subject: &Subject, ip: IpAddr) -> Vec<ServiceLink> {
    let now = jiff::Timestamp::now();
    let mut list: Vec<ServiceLink> = policy
        .services()
        .iter()
        .filter(|s| decide(policy, subject, s.id.as_str(), Some(ip), now).is_permit())
        .map(|s| ServiceLink {
            id: s.id.to_string(),
            name: s.name.clone(),
            vendor: s.vendor.clone(),
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// `GET /`: the services this patron can use, or a login button.
pub async fn start(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    let t = pages::language(&headers, q.lang.as_deref());
    let policy = app.policy();
    let ip = app.client_ip(peer.0.ip(), &headers);
    let (who, services, logged_in, csrf) = match session::current(&app, &headers).await {
        Some((_, data)) => {
            let subject = data.subject();
            let home = subject
                .institutions
                .first()
                .and_then(|i| policy.institution(i.as_str()))
                .map_or_else(String::new, |i| i.name.clone());
            (
                Some(format!(
                    "{} {home}.",
                    match data.login_method {
                        LoginMethod::Feide => feide_texts(t).logged_in,
                        LoginMethod::Card => t.logged_in_as_patron,
                    }
                )),
                usable_services(&policy, &subject, ip),
                true,
                data.csrf.clone(),
            )
        }
        None => {
            let walk_in = policy
                .onsite_institution(ip)
                .filter(|i| i.walk_in)
                .is_some();
            let services = if walk_in {
                usable_services(&policy, &Subject::walk_in(), ip)
            } else {
                Vec::new()
            };
            if services.is_empty() {
                (None, services, false, String::new())
            } else {
                (
                    Some(t.walk_in_here.to_owned()),
                    services,
                    false,
                    String::new(),
                )
            }
        }
    };
    let page = StartPage {
        t,
        other_lang_href: pages::other_lang_href(t, "/"),
        who,
        services,
        logged_in,
        csrf: &csrf,
    };
    html(StatusCode::OK, pages::render(&page))
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    service: Option<String>,
    path: Option<String>,
    lang: Option<String>,
    next: Option<String>,
}

/// The libraries whose cards this gateway can check, in name order.
fn libraries(app: &App, policy: &Policy) -> Vec<(String, String)> {
    let mut libs: Vec<(String, String)> = policy
        .institutions()
        .iter()
        .filter(|i| app.verifier_for(policy, i.id.as_str()).is_some())
        .map(|i| (i.id.to_string(), i.name.clone()))
        .collect();
    libs.sort_by(|a, b| a.1.cmp(&b.1));
    libs
}

struct LoginRender<'a> {
    t: &'static Texts,
    status: StatusCode,
    service: Option<&'a str>,
    path: Option<&'a str>,
    next: Option<&'a str>,
    error: Option<&'a str>,
    selected: &'a str,
    retry_after: Option<u64>,
}

/// The login form with a fresh CSRF nonce cookie.
fn login_page(app: &App, policy: &Policy, r: LoginRender<'_>) -> Result<Response, Refusal> {
    let Some(nonce) = random_token() else {
        return Err(Refusal::error(
            r.t,
            StatusCode::INTERNAL_SERVER_ERROR,
            r.t.backend_down,
        ));
    };
    let csrf = app.login_csrf(&nonce);
    let service_name = r
        .service
        .and_then(|s| policy.service(s))
        .map(|s| s.name.clone());
    let base = match r.service {
        Some(s) => format!("/login?service={s}"),
        None => "/login".to_owned(),
    };
    let page = LoginPage {
        t: r.t,
        other_lang_href: pages::other_lang_href(r.t, &base),
        service: r.service,
        service_name: service_name.as_deref(),
        error: r.error,
        libraries: libraries(app, policy),
        selected: r.selected,
        csrf: &csrf,
        path: r.path,
        next: r.next,
        feide: app
            .feide
            .as_ref()
            .map(|_| login_button(r.t, r.service, r.path)),
    };
    let mut resp = html(r.status, pages::render(&page));
    resp.headers_mut().append(
        header::SET_COOKIE,
        app.cookies.set(Cookie::Login, &nonce, Some(3600)),
    );
    if let Some(secs) = r.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(resp)
}

/// `GET /login`.
pub async fn login_form(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, q.lang.as_deref());
    let policy = app.policy();
    let service = clean_service(q.service.as_deref());
    let path = clean_path(q.path.as_deref());
    let next = clean_next(q.next.as_deref());
    login_page(
        &app,
        &policy,
        LoginRender {
            t,
            status: StatusCode::OK,
            service: service.as_deref(),
            path: path.as_deref(),
            next: next.as_deref(),
            error: None,
            selected: "",
            retry_after: None,
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    library: String,
    #[serde(default)]
    card: String,
    #[serde(default)]
    pin: String,
    #[serde(default)]
    csrf: String,
    service: Option<String>,
    path: Option<String>,
    lang: Option<String>,
    next: Option<String>,
}

// The form holds a card number and a PIN: never print it.
impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginForm(<redacted>)")
    }
}

/// `POST /login`: CSRF → throttle → library system → new session → back to the service.
pub async fn login_submit(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Refusal> {
    let policy = app.policy();
    if let Err(rejection) = &form
        && rejection.status() == StatusCode::PAYLOAD_TOO_LARGE
    {
        let t = pages::language(&headers, None);
        return Err(Refusal::error(t, StatusCode::PAYLOAD_TOO_LARGE, t.fill_in)
            .with_action("/login", t.try_again));
    }
    let Ok(Form(form)) = form else {
        let t = pages::language(&headers, None);
        return login_page(
            &app,
            &policy,
            LoginRender {
                t,
                status: StatusCode::BAD_REQUEST,
                service: None,
                path: None,
                next: None,
                error: Some(t.fill_in),
                selected: "",
                retry_after: None,
            },
        );
    };
    let t = pages::language(&headers, form.lang.as_deref());
    let service = clean_service(form.service.as_deref());
    let path = clean_path(form.path.as_deref());
    let next = clean_next(form.next.as_deref());
    let ip = app.client_ip(peer.0.ip(), &headers);
    let render = |status, error: &'static str, retry_after: Option<u64>| {
        login_page(
            &app,
            &policy,
            LoginRender {
                t,
                status,
                service: service.as_deref(),
                path: path.as_deref(),
                next: next.as_deref(),
                error: Some(error),
                selected: &form.library,
                retry_after,
            },
        )
    };

    let csrf_ok = app
        .cookies
        .get(Cookie::Login, &headers)
        .is_some_and(|nonce| app.check_login_csrf(nonce, &form.csrf));
    if !csrf_ok {
        return render(StatusCode::FORBIDDEN, t.form_expired, None);
    }
    let Some(library) = policy.institution(&form.library) else {
        return render(StatusCode::BAD_REQUEST, t.choose_library, None);
    };
    let Some(verifier) = app.verifier_for(&policy, library.id.as_str()).cloned() else {
        return render(StatusCode::BAD_REQUEST, t.choose_library, None);
    };
    if form.card.trim().is_empty() || form.pin.is_empty() {
        return render(StatusCode::BAD_REQUEST, t.fill_in, None);
    }
    match app.throttle.check(&form.card, ip).await {
        Ok(()) => {}
        Err(LoginRefusal::Throttled(e)) => {
            counting::login_outcome(&app, library.id.as_str(), "throttled");
            counting::login_failure(&app, library.id.as_str());
            return render(
                StatusCode::TOO_MANY_REQUESTS,
                t.too_many_tries,
                Some(e.retry_after().as_secs().max(1)),
            );
        }
        // Never let a login through unthrottled: without the shared store, no login.
        Err(LoginRefusal::Unavailable(e)) => {
            counting::login_outcome(&app, library.id.as_str(), "store_unavailable");
            tracing::warn!(error = %e, "login refused: the store is not answering");
            return render(StatusCode::SERVICE_UNAVAILABLE, t.store_down, None);
        }
    }

    let outcome = verifier.verify(&library.id, &form.card, &form.pin).await;
    let institution = library.id.as_str();
    match outcome {
        Err(e) => {
            app.throttle.abandoned(&form.card, ip).await;
            counting::login_outcome(&app, institution, "backend_unavailable");
            counting::login_failure(&app, institution);
            tracing::warn!(institution, reason = e.reason(), client = %log_ip(ip), "library system not answering");
            render(StatusCode::SERVICE_UNAVAILABLE, t.backend_down, None)
        }
        Ok(CardOutcome::WrongCardOrPin) => {
            app.throttle.failed(&form.card, ip).await;
            counting::login_outcome(&app, institution, "wrong_card_or_pin");
            counting::login_failure(&app, institution);
            tracing::info!(institution, client = %log_ip(ip), "login refused: wrong card or PIN");
            render(StatusCode::UNAUTHORIZED, t.wrong_pin, None)
        }
        Ok(CardOutcome::Blocked { lost }) => {
            app.throttle.succeeded(&form.card, ip).await;
            counting::login_outcome(
                &app,
                institution,
                if lost { "card_lost" } else { "card_blocked" },
            );
            counting::login_failure(&app, institution);
            tracing::info!(institution, lost, client = %log_ip(ip), "login refused: card blocked");
            render(
                StatusCode::FORBIDDEN,
                if lost { t.card_lost } else { t.card_blocked },
                None,
            )
        }
        Ok(CardOutcome::Accepted(info)) => {
            app.throttle.succeeded(&form.card, ip).await;
            // Home institution first (as the library system names it), then the library
            // the card was checked against.
            let mut institutions: Vec<InstitutionId> = Vec::new();
            if let Some(home) = info
                .home_library
                .as_deref()
                .and_then(|h| policy.institution(h))
            {
                institutions.push(home.id.clone());
            }
            if !institutions.contains(&library.id) {
                institutions.push(library.id.clone());
            }
            let subject = Subject {
                key: card_subject_key(&library.id, &form.card),
                affiliation: Affiliation::Patron,
                institutions,
                age: info.age,
            };
            let Some(id) =
                session::begin(&app, &headers, &subject, institution, LoginMethod::Card).await
            else {
                counting::login_outcome(&app, institution, "store_unavailable");
                return render(StatusCode::SERVICE_UNAVAILABLE, t.store_down, None);
            };
            counting::login_outcome(&app, institution, "ok");
            tracing::info!(institution, client = %log_ip(ip), "login");
            let location = match (&next, &service) {
                (Some(n), _) => n.clone(),
                (None, Some(s)) => go_location(s, path.as_deref()),
                (None, None) => "/".to_owned(),
            };
            let mut resp = see_other(&location);
            session::set_cookies(&app, &mut resp, &id);
            Ok(resp)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: ends the session in the store, so every service host that relies on
/// it stops at once.
pub async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, None);
    let Some((id, data)) = session::current(&app, &headers).await else {
        let mut resp = see_other("/");
        resp.headers_mut()
            .append(header::SET_COOKIE, app.cookies.clear(Cookie::Session));
        return Ok(resp);
    };
    let token_ok = form.is_ok_and(|Form(f)| data.csrf_matches(&f.csrf));
    if !token_ok {
        return Err(Refusal::error(t, StatusCode::FORBIDDEN, t.form_expired)
            .with_action("/", t.back_to_start));
    }
    if let Err(e) = app.store.delete_session(&id).await {
        // Saying "logged out" here would be a lie another replica could act on.
        tracing::warn!(error = %e, "logout failed: the store is not answering");
        return Err(
            Refusal::error(t, StatusCode::SERVICE_UNAVAILABLE, t.logout_failed)
                .with_action("/", t.back_to_start),
        );
    }
    let mut resp = message(t, StatusCode::OK, t.logout, t.logged_out, None);
    resp.headers_mut()
        .append(header::SET_COOKIE, app.cookies.clear(Cookie::Session));
    Ok(resp)
}
