//! The two steps of a Feide login in the browser: `GET /auth/feide/start` sends the
//! patron to Feide with a fresh state, nonce and PKCE challenge kept in a single-use
//! ticket; `GET /auth/feide/callback` takes that ticket back, lets the client
//! (`auth::feide`) exchange the code and check the id_token, and turns the identity into a
//! session, exactly as a library-card login ends.
//!
//! The ticket holds the SHA-256 of the browser's login cookie (set at the start when
//! missing), and the callback must come with the same cookie, so a callback link planted by
//! someone else cannot log a browser into the planter's account (login CSRF).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::session::{LoginMethod, Ticket, TicketKind};

use super::session;
use crate::app::App;
use crate::auth::feide::{FeideError, Refusal as NoService, subject_for};
use crate::counting;
use crate::telemetry::log_ip;
use crate::web::pages::{self, Texts, feide_texts};
use crate::web::redirect::{go_location, login_again};
use crate::web::request::{clean_path, clean_service, random_token};
use crate::web::{Cookie, Peer, Refusal, see_other};

/// Where the login starts (the button on the login page links here).
pub const START_PATH: &str = "/auth/feide/start";
/// The redirect URI registered with Feide: `<scheme>://<public_host>/auth/feide/callback`.
pub const CALLBACK_PATH: &str = "/auth/feide/callback";
/// How long a login may take at Feide (password, MFA) before its state expires.
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);

/// The login page's Feide button: its label and `/auth/feide/start` with the service and
/// deep-link path the page was opened for.
pub fn login_button(
    t: &Texts,
    service: Option<&str>,
    path: Option<&str>,
) -> (&'static str, String) {
    let mut pairs = Vec::new();
    if let Some(s) = service {
        pairs.push(("service", s));
        if let Some(p) = path {
            pairs.push(("path", p));
        }
    }
    if t.lang == "en" {
        pairs.push(("lang", "en"));
    }
    let href = if pairs.is_empty() {
        START_PATH.to_owned()
    } else {
        format!(
            "{START_PATH}?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    };
    (feide_texts(t).button, href)
}

/// What the Feide login ticket holds between start and callback.
#[derive(Serialize, Deserialize)]
struct LoginState {
    nonce: String,
    pkce_verifier: String,
    /// base64url SHA-256 of the browser's login cookie.
    browser: String,
    service: Option<String>,
    path: Option<String>,
}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginState(<redacted>)")
    }
}

fn browser_binding(cookie: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(cookie.as_bytes()))
}

/// A login cookie worth reusing: what `random_token` makes, give or take.
fn plausible_cookie(v: &str) -> bool {
    (16..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn failure_outcome(e: &FeideError) -> &'static str {
    if e.is_unreachable() {
        "idp_unreachable"
    } else {
        "idp_error"
    }
}

/// The page for a failure talking to Feide: "try later" when it did not answer, "could
/// not be completed" when it answered wrongly.
fn feide_failed(t: &'static Texts, e: &FeideError, service: Option<&str>) -> Refusal {
    let ft = feide_texts(t);
    let (status, text) = if e.is_unreachable() {
        (StatusCode::SERVICE_UNAVAILABLE, ft.down)
    } else {
        (StatusCode::BAD_GATEWAY, ft.failed)
    };
    Refusal::new(t, status, ft.title, text).with_action(login_again(service), t.try_again)
}

#[derive(Debug, Default, Deserialize)]
pub struct StartQuery {
    service: Option<String>,
    path: Option<String>,
    lang: Option<String>,
}

/// `GET /auth/feide/start`: off to Feide with a fresh state, nonce and PKCE challenge.
pub async fn start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, q.lang.as_deref());
    let Some(feide) = app.feide.clone() else {
        return Err(Refusal::not_found(t));
    };
    let service = clean_service(q.service.as_deref());
    // A deep link only makes sense inside a service.
    let path = service.as_ref().and_then(|_| clean_path(q.path.as_deref()));
    let (browser, fresh) = match app
        .cookies
        .get(Cookie::Login, &headers)
        .filter(|v| plausible_cookie(v))
    {
        Some(v) => (v.to_owned(), false),
        None => (random_token().ok_or_else(|| Refusal::store_down(t))?, true),
    };
    let redirect_uri = app.public_url(CALLBACK_PATH);
    let (url, pending) = match feide.begin(&redirect_uri).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a Feide login");
            counting::login_outcome(&app, "-", failure_outcome(&e));
            return Err(feide_failed(t, &e, service.as_deref()));
        }
    };
    let state = LoginState {
        nonce: pending.nonce,
        pkce_verifier: pending.pkce_verifier,
        browser: browser_binding(&browser),
        service,
        path,
    };
    let stored = app
        .store
        .put_ticket_json(
            TicketKind::FeideLogin,
            &pending.state,
            &state,
            LOGIN_TTL,
            app.clock.now(),
        )
        .await;
    if let Err(e) = stored {
        tracing::error!(error = %e, "cannot store a Feide login state");
        return Err(Refusal::store_down(t));
    }
    let mut resp = see_other(&url);
    if fresh {
        resp.headers_mut().append(
            header::SET_COOKIE,
            app.cookies.set(Cookie::Login, &browser, Some(3600)),
        );
    }
    Ok(resp)
}

#[derive(Default, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

// The code is a credential until it is used: never print it.
impl fmt::Debug for CallbackQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackQuery")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// `GET /auth/feide/callback`: state → code exchange and checks → subject → session.
pub async fn callback(
    State(app): State<Arc<App>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let t = pages::language(&headers, None);
    let ft = feide_texts(t);
    let ip = app.client_ip(peer.0.ip(), &headers);
    let Some(feide) = app.feide.clone() else {
        return Err(Refusal::not_found(t));
    };
    let expired = |service: Option<&str>| {
        Refusal::new(t, StatusCode::BAD_REQUEST, ft.title, ft.expired)
            .with_action(login_again(service), t.try_again)
    };
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let Some(ticket) = q.state.as_deref().and_then(|s| Ticket::parse(s).ok()) else {
        counting::login_outcome(&app, "-", "expired");
        return Err(expired(None));
    };
    let now = app.clock.now();
    let state: LoginState = match app
        .store
        .take_ticket_json(TicketKind::FeideLogin, &ticket, now)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::info!(client = %log_ip(ip), "Feide callback with an unknown, used or expired state");
            counting::login_outcome(&app, "-", "expired");
            return Err(expired(None));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read a Feide login state");
            return Err(Refusal::store_down(t));
        }
    };
    let service = state.service.as_deref();
    let same_browser = app.cookies.get(Cookie::Login, &headers).is_some_and(|c| {
        subtle::ConstantTimeEq::ct_eq(browser_binding(c).as_bytes(), state.browser.as_bytes())
            .into()
    });
    if !same_browser {
        tracing::info!(client = %log_ip(ip), "Feide callback from another browser than the one that started it");
        counting::login_outcome(&app, "-", "expired");
        return Err(expired(service));
    }
    if let Some(error) = q.error.as_deref() {
        let again = login_again(service);
        if error == "access_denied" {
            counting::login_outcome(&app, "-", "cancelled");
            return Err(
                Refusal::new(t, StatusCode::BAD_REQUEST, ft.title, ft.cancelled)
                    .with_action(again, t.try_again),
            );
        }
        // An error code is a short token from a fixed list; keep anything else out of logs.
        let code =
            if error.len() <= 40 && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                error
            } else {
                "other"
            };
        tracing::warn!(error = code, "Feide answered the login with an error");
        counting::login_outcome(&app, "-", "idp_error");
        return Err(
            Refusal::new(t, StatusCode::BAD_GATEWAY, ft.title, ft.failed)
                .with_action(again, t.try_again),
        );
    }
    if let Some(iss) = q.iss.as_deref()
        && iss != feide.issuer()
    {
        tracing::warn!("Feide callback names another issuer (mix-up?)");
        counting::login_outcome(&app, "-", "idp_error");
        return Err(feide_failed(
            t,
            &FeideError::Provider("wrong iss".into()),
            service,
        ));
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        counting::login_outcome(&app, "-", "expired");
        return Err(expired(service));
    };
    let redirect_uri = app.public_url(CALLBACK_PATH);
    let identity = match feide
        .complete(&redirect_uri, code, &state.nonce, &state.pkce_verifier)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, client = %log_ip(ip), "Feide login failed");
            counting::login_outcome(&app, "-", failure_outcome(&e));
            return Err(feide_failed(t, &e, service));
        }
    };
    let policy = app.policy();
    let subject = match subject_for(&identity, &policy) {
        Ok(s) => s,
        Err(NoService::UnknownRealm) => {
            // The realm names a school, not a person: safe to log, and what an operator
            // needs to add it to `feide_realms`.
            tracing::info!(
                realm = identity.realm(),
                "Feide login from a realm no institution has"
            );
            counting::login_outcome(&app, "-", "unknown_realm");
            return Err(Refusal::new(
                t,
                StatusCode::FORBIDDEN,
                t.denied_title,
                ft.unknown_school,
            ));
        }
        Err(NoService::NoAffiliation { institution }) => {
            tracing::info!(institution = %institution, "Feide user is neither student nor staff");
            counting::login_outcome(&app, institution.as_str(), "no_affiliation");
            return Err(Refusal::new(
                t,
                StatusCode::FORBIDDEN,
                t.denied_title,
                ft.no_role,
            ));
        }
    };
    let institution = subject
        .institutions
        .first()
        .map_or("-", |i| i.as_str())
        .to_owned();
    let Some(id) = session::begin(&app, &headers, &subject, &institution, LoginMethod::Feide).await
    else {
        return Err(Refusal::store_down(t));
    };
    counting::login_outcome(&app, &institution, "ok");
    tracing::info!(
        institution,
        affiliation = %subject.affiliation,
        client = %log_ip(ip),
        "login with Feide"
    );
    let location = match service {
        Some(s) => go_location(s, state.path.as_deref()),
        None => "/".to_owned(),
    };
    let mut resp = see_other(&location);
    session::set_cookies(&app, &mut resp, &id);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::pages::{EN, NB};

    #[test]
    fn the_login_button_keeps_service_and_path() {
        let (label, href) = login_button(&NB, Some("avis"), Some("/a b?c=1&d"));
        assert_eq!(label, "Logg inn med Feide");
        assert_eq!(
            href,
            "/auth/feide/start?service=avis&path=%2Fa+b%3Fc%3D1%26d"
        );
        let (label, href) = login_button(&EN, None, Some("/x"));
        assert_eq!(label, "Log in with Feide");
        assert_eq!(href, "/auth/feide/start?lang=en");
        assert_eq!(login_button(&NB, None, None).1, START_PATH);
    }

    #[test]
    fn login_cookies_are_bound_by_hash() {
        assert!(plausible_cookie(&random_token().unwrap()));
        assert!(!plausible_cookie("short"));
        assert!(!plausible_cookie(&"a".repeat(65)));
        assert!(!plausible_cookie("abc;def=ghi/jklmnopq"));
        let b = browser_binding("cookie-value");
        assert_ne!(b, "cookie-value");
        assert_eq!(b, browser_binding("cookie-value"));
        assert_ne!(b, browser_binding("cookie-valuf"));
    }

    #[test]
    fn the_login_state_and_the_callback_never_show_their_secrets() {
        let state = LoginState {
            nonce: "n0nce".into(),
            pkce_verifier: "verifier".into(),
            browser: "b".into(),
            service: None,
            path: None,
        };
        let dbg = format!("{state:?}");
        assert!(!dbg.contains("n0nce") && !dbg.contains("verifier"), "{dbg}");
        let q = CallbackQuery {
            code: Some("the-code".into()),
            ..Default::default()
        };
        assert!(!format!("{q:?}").contains("the-code"));
    }
}
