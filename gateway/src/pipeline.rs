//! The public request path, phase by phase: client address → session → decision →
//! access mode → counting. Handlers here are the patron's pages: the start page, login and
//! logout, and the entry link `/go/{service}`.
//!
//! Every redirect the gateway builds from request input is relative and built from checked
//! parts (a service slug, a path starting with a single `/`), so there is no open redirect.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::app::App;
use crate::auth::library_card::CardOutcome;
use crate::auth::throttle::LoginRefusal;
use crate::pages::{self, LoginPage, MessagePage, ServiceLink, StartPage, Texts};
use crate::telemetry::{self, log_ip};
use policy::ids::InstitutionId;
use policy::subject::{Affiliation, Subject, card_subject_key};
use policy::{Access, Decision, DenyReason, Policy};
use store::session::{LoginMethod, SessionData, SessionId};

/// The peer address of the connection, put in each request's extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Largest login form accepted (a library id, a card number, a PIN, a token).
const FORM_LIMIT: usize = 16 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(start))
        .route("/login", get(login_form).post(login_submit))
        .route("/logout", post(logout))
        .route("/go/{service}", get(go))
        .route(
            crate::auth::feide::START_PATH,
            get(crate::auth::feide::start),
        )
        .route(
            crate::auth::feide::CALLBACK_PATH,
            get(crate::auth::feide::callback),
        )
        .fallback(not_found)
        .with_state(app.clone())
        .merge(crate::sso::router(app.clone()))
        .merge({
            let policy_app = app.clone();
            usage::router(
                app.usage.clone(),
                move || policy_app.policy(),
                app.statisticians.clone(),
                app.k_anonymity,
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
}

/// Names of the cookies; `__Host-` (Secure, no Domain, Path=/) when served over https.
pub(crate) fn session_cookie(app: &App) -> &'static str {
    if app.secure_cookies {
        "__Host-portvakt"
    } else {
        "portvakt"
    }
}

pub(crate) fn login_cookie(app: &App) -> &'static str {
    if app.secure_cookies {
        "__Host-portvakt-login"
    } else {
        "portvakt-login"
    }
}

pub(crate) fn set_cookie(app: &App, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if app.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// The value of the first cookie called `name` in the request's `Cookie` headers (a
/// header that is not visible ASCII is passed over). Every proxied request looks up the
/// service host's cookie, so this goes by bytes: `;` by [`proxy::text::find_byte`], no text searcher.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_in(v, name))
}

/// `name`'s value in one `Cookie` header's `a=1; b=2`.
fn cookie_in<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = header;
    loop {
        let (pair, next) = match proxy::text::split_once_ascii(rest, b';') {
            Some((pair, next)) => (pair, Some(next)),
            None => (rest, None),
        };
        // A visible-ASCII header has no other whitespace than spaces and tabs.
        if let Some(value) = pair
            .trim_ascii()
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
        {
            return Some(value);
        }
        rest = next?;
    }
}

/// The session of this request, if its cookie names a live one. A malformed id is
/// refused before any store lookup.
pub(crate) async fn session(
    app: &App,
    headers: &HeaderMap,
) -> Option<(SessionId, Arc<SessionData>)> {
    let id = SessionId::parse(cookie(headers, session_cookie(app))?).ok()?;
    match app.store.get_session(&id, app.clock.now()).await {
        Ok(Some(data)) => Some((id, data)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the session store is not answering");
            None
        }
    }
}

fn client_ip(app: &App, peer: Peer, headers: &HeaderMap) -> IpAddr {
    app.client_ip(peer.0.ip(), headers)
}

#[derive(Debug, Default, Deserialize)]
pub struct LangQuery {
    lang: Option<String>,
}

fn other_lang_href(t: &Texts, base: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}lang={}", t.other_lang)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn message(
    t: &'static Texts,
    status: StatusCode,
    heading: &str,
    text: &str,
    action: Option<(&str, &str)>,
) -> Response {
    let page = MessagePage {
        t,
        other_lang_href: other_lang_href(t, ""),
        heading,
        message: text,
        class: if status.is_success() { "note" } else { "alert" },
        action_href: action.map(|a| a.0),
        action_label: action.map_or("", |a| a.1),
    };
    html(status, pages::render(&page))
}

pub(crate) fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}

async fn not_found(headers: HeaderMap, Query(q): Query<LangQuery>) -> Response {
    not_found_page(pages::language(&headers, q.lang.as_deref()))
}

pub(crate) fn not_found_page(t: &'static Texts) -> Response {
    message(
        t,
        StatusCode::NOT_FOUND,
        t.not_found_title,
        t.not_found,
        None,
    )
}

/// A subject from a session.
fn subject_of(data: &SessionData) -> Subject {
    data.subject()
}

/// The services a subject may use now, in name order.
fn usable_services(policy: &Policy, subject: &Subject, ip: IpAddr) -> Vec<ServiceLink> {
    let now = jiff::Timestamp::now();
    let mut list: Vec<ServiceLink> = policy
        .services()
        .iter()
        .filter(|s| policy::decide(policy, subject, s.id.as_str(), Some(ip), now).is_permit())
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
async fn start(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<LangQuery>,
) -> Response {
    let t = pages::language(&headers, q.lang.as_deref());
    let policy = app.policy();
    let ip = client_ip(&app, peer, &headers);
    let (who, services, logged_in, csrf) = match session(&app, &headers).await {
        Some((_, data)) => {
            let subject = subject_of(&data);
            let home = subject
                .institutions
                .first()
                .and_then(|i| policy.institution(i.as_str()))
                .map_or_else(String::new, |i| i.name.clone());
            (
                Some(format!(
                    "{} {home}.",
                    match data.login_method {
                        LoginMethod::Feide => crate::auth::feide::texts(t).logged_in,
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
        other_lang_href: other_lang_href(t, "/"),
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

/// Where a login may return to besides an entry link: a vendor's pending federated
/// request on this host, and nowhere else.
fn clean_next(n: Option<&str>) -> Option<String> {
    clean_path(n).filter(|n| n.starts_with("/saml/sso?") || n.starts_with("/oidc/authorize?"))
}

/// Only a service slug may travel through the login form; anything else is dropped.
pub(crate) fn clean_service(s: Option<&str>) -> Option<String> {
    s.filter(|s| {
        !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
    .map(str::to_owned)
}

/// A deep-link path: starts with exactly one `/`, no backslash, no control characters.
pub(crate) fn clean_path(p: Option<&str>) -> Option<String> {
    p.filter(|p| {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.contains('\\')
            && !p.chars().any(char::is_control)
            && p.len() <= 2048
    })
    .map(str::to_owned)
}

pub(crate) fn go_location(service: &str, path: Option<&str>) -> String {
    match path {
        Some(p) => format!(
            "/go/{service}?{}",
            serde_urlencoded::to_string([("path", p)]).unwrap_or_default()
        ),
        None => format!("/go/{service}"),
    }
}

pub(crate) fn random_token() -> String {
    let mut b = [0u8; 24];
    // Without randomness there can be no safe token; an all-zero nonce would still be
    // unguessable to nobody, so fail the request instead (see login_form).
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    data_encoding::BASE64URL_NOPAD.encode(&b)
}

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
fn login_page(app: &App, policy: &Policy, r: LoginRender<'_>) -> Response {
    let nonce = random_token();
    if nonce.is_empty() {
        return message(
            r.t,
            StatusCode::INTERNAL_SERVER_ERROR,
            r.t.error_title,
            r.t.backend_down,
            None,
        );
    }
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
        other_lang_href: other_lang_href(r.t, &base),
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
            .map(|_| crate::auth::feide::login_button(r.t, r.service, r.path)),
    };
    let mut resp = html(r.status, pages::render(&page));
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(app, login_cookie(app), &nonce, Some(3600)),
    );
    if let Some(secs) = r.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// `GET /login`.
async fn login_form(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
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
async fn login_submit(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let policy = app.policy();
    if let Err(rejection) = &form
        && rejection.status() == StatusCode::PAYLOAD_TOO_LARGE
    {
        let t = pages::language(&headers, None);
        return message(
            t,
            StatusCode::PAYLOAD_TOO_LARGE,
            t.error_title,
            t.fill_in,
            Some(("/login", t.try_again)),
        );
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
    let ip = client_ip(&app, peer, &headers);
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

    let csrf_ok = cookie(&headers, login_cookie(&app))
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
            count_login(&app, library.id.as_str(), "throttled");
            crate::counting::login_failure(&app, library.id.as_str());
            return render(
                StatusCode::TOO_MANY_REQUESTS,
                t.too_many_tries,
                Some(e.retry_after().as_secs().max(1)),
            );
        }
        // Never let a login through unthrottled: without the shared store, no login.
        Err(LoginRefusal::Unavailable(e)) => {
            count_login(&app, library.id.as_str(), "store_unavailable");
            tracing::warn!(error = %e, "login refused: the store is not answering");
            return render(StatusCode::SERVICE_UNAVAILABLE, t.store_down, None);
        }
    }

    let outcome = verifier.verify(&library.id, &form.card, &form.pin).await;
    let institution = library.id.as_str();
    match outcome {
        Err(e) => {
            app.throttle.abandoned(&form.card, ip).await;
            count_login(&app, institution, "backend_unavailable");
            crate::counting::login_failure(&app, institution);
            tracing::warn!(institution, reason = e.reason(), client = %log_ip(ip), "library system not answering");
            render(StatusCode::SERVICE_UNAVAILABLE, t.backend_down, None)
        }
        Ok(CardOutcome::WrongCardOrPin) => {
            app.throttle.failed(&form.card, ip).await;
            count_login(&app, institution, "wrong_card_or_pin");
            crate::counting::login_failure(&app, institution);
            tracing::info!(institution, client = %log_ip(ip), "login refused: wrong card or PIN");
            render(StatusCode::UNAUTHORIZED, t.wrong_pin, None)
        }
        Ok(CardOutcome::Blocked { lost }) => {
            app.throttle.succeeded(&form.card, ip).await;
            count_login(
                &app,
                institution,
                if lost { "card_lost" } else { "card_blocked" },
            );
            crate::counting::login_failure(&app, institution);
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
                begin_session(&app, &headers, &subject, institution, LoginMethod::Card).await
            else {
                count_login(&app, institution, "store_unavailable");
                return render(StatusCode::SERVICE_UNAVAILABLE, t.store_down, None);
            };
            count_login(&app, institution, "ok");
            tracing::info!(institution, client = %log_ip(ip), "login");
            let location = match (&next, &service) {
                (Some(n), _) => n.clone(),
                (None, Some(s)) => go_location(s, path.as_deref()),
                (None, None) => "/".to_owned(),
            };
            let mut resp = see_other(&location);
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(&app, session_cookie(&app), &id.expose(), None),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(&app, login_cookie(&app), "", Some(0)),
            );
            resp
        }
    }
}

/// Starts the session of a successful login (card or Feide): a new id, idle and absolute
/// expiry, and the session the browser came with deleted, so an id planted before the
/// login is worth nothing. `None` when the store cannot keep it (already logged).
/// The login is counted for usage under `institution`, where the patron logged in.
pub(crate) async fn begin_session(
    app: &App,
    headers: &HeaderMap,
    subject: &Subject,
    institution: &str,
    method: LoginMethod,
) -> Option<SessionId> {
    let now = app.clock.now();
    let data = SessionData::new(subject, method, now).ok()?;
    let created = app
        .store
        .create_session(
            data,
            app.session_ttl.min(crate::app::SESSION_IDLE),
            app.session_ttl,
            now,
        )
        .await;
    let id = match created {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot store the session");
            return None;
        }
    };
    if let Some((old, _)) = session(app, headers).await {
        let _ = app.store.delete_session(&old).await;
    }
    crate::counting::login(app, institution, subject);
    Some(id)
}

fn count_login(app: &App, institution: &str, outcome: &str) {
    app.metrics.inc(
        telemetry::LOGINS,
        &[("institution", institution), ("outcome", outcome)],
    );
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: ends the session in the store, so every service host that relies on
/// it stops at once.
async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let t = pages::language(&headers, None);
    let Some((id, data)) = session(&app, &headers).await else {
        let mut resp = see_other("/");
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(&app, session_cookie(&app), "", Some(0)),
        );
        return resp;
    };
    let token_ok = form.is_ok_and(|Form(f)| data.csrf_matches(&f.csrf));
    if !token_ok {
        return message(
            t,
            StatusCode::FORBIDDEN,
            t.error_title,
            t.form_expired,
            Some(("/", t.back_to_start)),
        );
    }
    if let Err(e) = app.store.delete_session(&id).await {
        // Saying "logged out" here would be a lie another replica could act on.
        tracing::warn!(error = %e, "logout failed: the store is not answering");
        return message(
            t,
            StatusCode::SERVICE_UNAVAILABLE,
            t.error_title,
            t.logout_failed,
            Some(("/", t.back_to_start)),
        );
    }
    let mut resp = message(t, StatusCode::OK, t.logout, t.logged_out, None);
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app, session_cookie(&app), "", Some(0)),
    );
    resp
}

#[derive(Debug, Default, Deserialize)]
pub struct GoQuery {
    path: Option<String>,
    lang: Option<String>,
    /// A host label of this service other than its main one (`avis--1`).
    host: Option<String>,
}

/// `GET /go/{service}`: the entry link.
async fn go(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(service): Path<String>,
    headers: HeaderMap,
    Query(q): Query<GoQuery>,
) -> Response {
    let t = pages::language(&headers, q.lang.as_deref());
    let policy = app.policy();
    let ip = client_ip(&app, peer, &headers);
    let path = clean_path(q.path.as_deref());
    let Some(service) = clean_service(Some(&service)) else {
        return deny(
            &app,
            t,
            &headers,
            "-",
            "-",
            None,
            DenyReason::UnknownService,
        );
    };
    let now = jiff::Timestamp::now();

    let mut session_id = None;
    let mut authn_instant = app.clock.now();
    let subject = match session(&app, &headers).await {
        Some((id, data)) => {
            session_id = Some(id);
            authn_instant = data.created_at;
            subject_of(&data)
        }
        None => {
            // A walk-in on an on-site network gets the decision without logging in; when
            // walk-in access is refused, logging in may still help, so offer it.
            let walk_in_site = policy
                .onsite_institution(ip)
                .filter(|i| i.walk_in)
                .is_some();
            if walk_in_site {
                let d = policy::decide(&policy, &Subject::walk_in(), &service, Some(ip), now);
                match d {
                    Decision::Permit(_) => Subject::walk_in(),
                    Decision::Deny(
                        r @ (DenyReason::UnknownService | DenyReason::ServiceSuspended),
                    ) => {
                        let credited = policy
                            .onsite_institution(ip)
                            .map_or_else(|| "-".to_owned(), |i| i.id.to_string());
                        let walk_in = Subject::walk_in();
                        return deny(&app, t, &headers, &service, &credited, Some(&walk_in), r);
                    }
                    Decision::Deny(_) => {
                        return see_other(&login_location(&service, path.as_deref()));
                    }
                }
            } else {
                if policy.service(&service).is_none() {
                    return deny(
                        &app,
                        t,
                        &headers,
                        &service,
                        "-",
                        None,
                        DenyReason::UnknownService,
                    );
                }
                return see_other(&login_location(&service, path.as_deref()));
            }
        }
    };

    let decision = policy::decide(&policy, &subject, &service, Some(ip), now);
    let home = subject
        .institutions
        .first()
        .map_or("-", |i| i.as_str())
        .to_owned();
    match decision {
        Decision::Deny(reason) => {
            let credited = credited(&policy, ip, &subject);
            deny(
                &app,
                t,
                &headers,
                &service,
                &credited,
                Some(&subject),
                reason,
            )
        }
        Decision::Permit(permit) => {
            count_access(&app, &permit, &subject);
            let Some(svc) = policy.service(&service) else {
                return deny(
                    &app,
                    t,
                    &headers,
                    &service,
                    &home,
                    Some(&subject),
                    DenyReason::UnknownService,
                );
            };
            match &svc.access {
                Access::Link { url } => see_other(url.as_str()),
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
                    crate::sso::entry(&app, t, &policy, &permit, &subject, authn_instant)
                }
            }
        }
    }
}

/// The entry link back from a service host that has no valid cookie: the same path, and
/// the host label so the ticket is made for that host.
pub(crate) fn go_location_for_host(service: &str, path: Option<&str>, label: &str) -> String {
    let mut pairs = Vec::new();
    if let Some(p) = path {
        pairs.push(("path", p));
    }
    if label != service {
        pairs.push(("host", label));
    }
    if pairs.is_empty() {
        return format!("/go/{service}");
    }
    format!(
        "/go/{service}?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
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
) -> Response {
    let now = app.clock.now();
    let unavailable = || {
        message(
            t,
            StatusCode::SERVICE_UNAVAILABLE,
            t.error_title,
            t.store_down,
            None,
        )
    };
    let session_id = match session_id {
        Some(id) => id,
        None => {
            let Ok(random) = store::session::Ticket::generate() else {
                return unavailable();
            };
            let walk_in = Subject {
                key: policy::ids::SubjectKey::new(format!("walk-in:{}", random.expose())),
                ..subject.clone()
            };
            let Ok(data) = SessionData::new(&walk_in, LoginMethod::Card, now) else {
                return unavailable();
            };
            match app
                .store
                .create_session(
                    data,
                    crate::app::SESSION_IDLE.min(app.session_ttl),
                    app.session_ttl,
                    now,
                )
                .await
            {
                Ok(id) => id,
                Err(_) => return unavailable(),
            }
        }
    };
    let Ok(ticket) = store::session::Ticket::generate() else {
        return unavailable();
    };
    let entry = crate::service_host::EntryTicket {
        session: session_id.expose(),
        label: label.to_owned(),
    };
    let stored = app
        .store
        .put_ticket_json(
            store::session::TicketKind::ProxyEntry,
            &ticket,
            &entry,
            crate::service_host::TICKET_TTL,
            now,
        )
        .await;
    if stored.is_err() {
        return unavailable();
    }
    let mut query = vec![("t", ticket.expose())];
    if let Some(p) = path {
        query.push(("path", p.to_owned()));
    }
    let location = format!(
        "{}://{label}.{}{}?{}",
        app.public_scheme.as_str(),
        app.public_host,
        crate::service_host::ENTER_PATH,
        serde_urlencoded::to_string(query).unwrap_or_default()
    );
    see_other(&location)
}

/// A permitted access, for the metrics and the usage counters.
pub(crate) fn count_access(app: &App, permit: &policy::Permit, subject: &Subject) {
    crate::counting::access(app, permit, subject);
    app.metrics.inc(
        telemetry::DECISIONS,
        &[
            ("service", permit.service.as_str()),
            ("institution", permit.institution.as_str()),
            ("decision", "permit"),
            ("reason", ""),
        ],
    );
}

fn login_location(service: &str, path: Option<&str>) -> String {
    let mut pairs = vec![("service", service)];
    if let Some(p) = path {
        pairs.push(("path", p));
    }
    format!(
        "/login?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

/// The institution a denial is credited to: the one whose network the client is on,
/// else the patron's home institution, else `-` (not counted in usage).
pub(crate) fn credited(policy: &Policy, ip: IpAddr, subject: &Subject) -> String {
    policy.onsite_institution(ip).map_or_else(
        || {
            subject
                .institutions
                .first()
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        },
        |i| i.id.to_string(),
    )
}

/// The deny page (or JSON) with the status of policy.md, counted by reason (in the
/// metrics, and in usage when an institution can be credited; `who` gives the
/// affiliation and age band there).
pub(crate) fn deny(
    app: &App,
    t: &'static Texts,
    headers: &HeaderMap,
    service: &str,
    institution: &str,
    who: Option<&Subject>,
    reason: DenyReason,
) -> Response {
    crate::counting::denial(app, service, institution, who, reason);
    // Unknown services are not counted per service: the label would be unbounded.
    let service_label = if reason == DenyReason::UnknownService {
        "-"
    } else {
        service
    };
    app.metrics.inc(
        telemetry::DECISIONS,
        &[
            ("service", service_label),
            ("institution", institution),
            ("decision", "deny"),
            ("reason", reason.as_str()),
        ],
    );
    let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    let text = pages::deny_message(t, reason);
    if pages::wants_json(headers) {
        let body = serde_json::json!({ "reason": reason.as_str(), "message": text });
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let heading = if reason == DenyReason::UnknownService {
        t.not_found_title
    } else {
        t.denied_title
    };
    message(t, status, heading, text, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slugs_and_local_paths_travel() {
        assert_eq!(clean_service(Some("avis")), Some("avis".into()));
        assert_eq!(clean_service(Some("https://evil.example")), None);
        assert_eq!(clean_service(Some("AVIS")), None);
        assert_eq!(
            clean_path(Some("/artikkel/1?x=2")),
            Some("/artikkel/1?x=2".into())
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "x",
            "/a\r\nb",
        ] {
            assert_eq!(clean_path(Some(bad)), None, "{bad}");
        }
        assert_eq!(go_location("avis", Some("/a b")), "/go/avis?path=%2Fa+b");
        assert_eq!(login_location("avis", None), "/login?service=avis");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "portvakt-login=a; portvakt=b".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "portvakt"), Some("b"));
        assert_eq!(cookie(&h, "portvakt-login"), Some("a"));
        assert_eq!(cookie(&h, "other"), None);
    }

    #[test]
    fn cookies_are_found_in_any_header_with_any_spacing() {
        let mut h = HeaderMap::new();
        // Not visible ASCII: the whole header is passed over.
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"portvakt=\xff").unwrap(),
        );
        h.append(
            header::COOKIE,
            ";; xportvakt=c;portvakt-x=d".parse().unwrap(),
        );
        h.append(
            header::COOKIE,
            "a=1;\t portvakt=v=w \t; portvakt=second".parse().unwrap(),
        );
        h.append(header::COOKIE, "empty=; last=z".parse().unwrap());
        assert_eq!(cookie(&h, "portvakt"), Some("v=w"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "empty"), Some(""));
        assert_eq!(cookie(&h, "last"), Some("z"));
        assert_eq!(cookie(&h, "portvakt-x"), Some("d"));
        assert_eq!(cookie(&h, "x"), None);
        assert_eq!(cookie(&h, ""), None);
    }
}
