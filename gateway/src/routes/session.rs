//! The patron's session on the public host: found from the session cookie, and begun at a
//! login (card or Feide) with a new id.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use axum::response::Response;
use policy::subject::Subject;
use store::session::{LoginMethod, SessionData, SessionId};

use crate::app::{App, SESSION_IDLE};
use crate::counting;
use crate::web::Cookie;

/// The session of this request, if its cookie names a live one. A malformed id is
/// refused before any store lookup; a store that does not answer means no session.
pub async fn current(app: &App, headers: &HeaderMap) -> Option<(SessionId, Arc<SessionData>)> {
    let id = SessionId::parse(app.cookies.get(Cookie::Session, headers)?).ok()?;
    match app.store.get_session(&id, app.clock.now()).await {
        Ok(Some(data)) => Some((id, data)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the session store is not answering");
            None
        }
    }
}

/// Starts the session of a successful login (card or Feide): a new id, idle and absolute
/// expiry, and the session the browser came with deleted, so an id planted before the
/// login is worth nothing. `None` when the store cannot keep it (already logged).
/// The login is counted for usage under `institution`, where the patron logged in.
pub async fn begin(
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
            app.session_ttl.min(SESSION_IDLE),
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
    if let Some((old, _)) = current(app, headers).await {
        let _ = app.store.delete_session(&old).await;
    }
    counting::login(app, institution, subject);
    Some(id)
}

/// The cookies of a new login: the session, and the login form's nonce spent.
pub fn set_cookies(app: &App, resp: &mut Response, id: &SessionId) {
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        app.cookies.set(Cookie::Session, &id.expose(), None),
    );
    h.append(header::SET_COOKIE, app.cookies.clear(Cookie::Login));
}
