//! Every route of the gateway, assembled in one place: the public host's pages and APIs
//! ([`public`]), and the admin listener's ([`admin()`]). Service hosts are not routed here:
//! the server's host dispatch hands them straight to [`service_host::handle`], the hot
//! path of every proxied request.
//!
//! Handlers are grouped by family, each family a module, and they only look down: to the
//! shared state (`app`), the page kit (`web`), counting and the login methods (`auth`).

pub mod admin;
pub mod entry;
pub mod feide;
pub mod idp;
pub mod patron;
pub mod service_host;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::app::App;

/// Largest form accepted on the public host (a login: a library id, a card number, a PIN,
/// a token; a vendor's POST-binding SAML request).
pub const FORM_LIMIT: usize = 16 * 1024;

/// The public host: the patron's pages, the entry links, the Feide login, the identity
/// provider for vendors, and the statistics APIs.
pub fn public(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/", get(patron::start))
        .route("/login", get(patron::login_form).post(patron::login_submit))
        .route("/logout", post(patron::logout))
        .route("/go/{service}", get(entry::go))
        .route(feide::START_PATH, get(feide::start))
        .route(feide::CALLBACK_PATH, get(feide::callback))
        .route("/saml/metadata", get(idp::saml_metadata))
        .route("/saml/sso", get(idp::saml_sso_get).post(idp::saml_sso_post))
        .route("/oidc/authorize", get(idp::oidc_authorize))
        .fallback(patron::not_found)
        .with_state(app.clone());
    // Discovery, JWKS, token and userinfo: the OpenID provider's own endpoints.
    if let Some(provider) = app.oidc.clone() {
        let policy_app = app.clone();
        router = router.merge(::federation::oidc::routes(
            ::federation::oidc::OidcEndpoints {
                provider,
                store: app.store.clone(),
                clock: app.clock.clone(),
                policy: Arc::new(move || policy_app.policy()),
            },
        ));
    }
    let policy_app = app.clone();
    router
        .merge(usage::router(
            app.usage.clone(),
            move || policy_app.policy(),
            app.statisticians.clone(),
            app.k_anonymity,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
}

/// The admin listener: health, readiness, metrics and policy reload. Never on the public
/// listener.
pub fn admin(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/reload", post(admin::reload))
        .with_state(app)
}
