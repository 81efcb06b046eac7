//! The OpenID provider against an independent relying party: the `openidconnect` crate's
//! client does discovery, the code flow with PKCE, and verifies the id_token (signature,
//! iss, aud, nonce, expiry) against handlers mounted on a test server at 127.0.0.1:0.
//! Refusals are driven with raw HTTP so their exact OAuth 2 errors can be checked.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use crate::support::federation as federation_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use federation::oidc::{
    AuthorizeError, AuthorizeParams, OidcEndpoints, Provider, TokenResponse, routes,
};
use federation::{SigningKey, previous_jwk};
use federation_support::{CARD, Fixture, INSTITUTION, fixture, patron};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, TokenResponse as _,
};
use policy::subject::{Affiliation, Subject};
use policy::{Decision, decide, release};
use serde_json::Value;
use store::memory::MemoryStore;
use store::{ManualClock, Store};

const SECRET: &str = "fag-secret";

struct TestState {
    endpoints: OidcEndpoints,
    policy: Arc<policy::Policy>,
    fixture: Fixture,
    subject: Subject,
}

/// The gateway's part (`routes::idp`), reduced to what the provider needs: a logged-in patron, the
/// decision, the release, the code.
async fn authorize(State(ts): State<Arc<TestState>>, RawQuery(q): RawQuery) -> Response {
    let params: AuthorizeParams =
        serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or_default();
    let p = &ts.endpoints.provider;
    match p.authorize(&ts.policy, &params) {
        Ok(req) => {
            let now = ts.endpoints.clock.now();
            let permit = match decide(&ts.policy, &ts.subject, req.service.as_str(), None, now) {
                Decision::Permit(p) => p,
                Decision::Deny(_) => panic!("deny"),
            };
            let rel = release(
                &ts.policy,
                &permit,
                &ts.subject,
                Some(&ts.fixture.pseudonym_key),
            );
            let loc = p
                .issue_code(ts.endpoints.store.as_ref(), &req, &rel, now, now)
                .await
                .unwrap();
            redirect(&loc)
        }
        Err(AuthorizeError::Redirect { location, .. }) => redirect(&location),
        Err(AuthorizeError::Page(e)) => (e.status(), e.to_string()).into_response(),
    }
}

fn redirect(location: &str) -> Response {
    (
        http::StatusCode::SEE_OTHER,
        [(http::header::LOCATION, location.to_owned())],
    )
        .into_response()
}

struct Server {
    issuer: String,
    clock: Arc<ManualClock>,
    state: Arc<TestState>,
}

async fn start_with(provider: Provider, f: Fixture) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let mut provider = provider;
    provider.issuer = issuer.clone();
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let policy = f.policy.clone();
    let p2 = policy.clone();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let endpoints = OidcEndpoints {
        provider: Arc::new(provider),
        store,
        clock: clock.clone(),
        policy: Arc::new(move || p2.clone()),
    };
    let state = Arc::new(TestState {
        endpoints: endpoints.clone(),
        policy,
        fixture: f,
        subject: patron(Affiliation::Student),
    });
    let app = routes(endpoints).merge(
        Router::new()
            .route("/oidc/authorize", get(authorize))
            .with_state(state.clone()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        issuer,
        clock,
        state,
    }
}

async fn start() -> Server {
    let f = fixture();
    let provider = Provider::new("http://placeholder", f.idp_key.clone());
    start_with(provider, f).await
}

/// The relying party's HTTP client: plain hyper, no redirects followed.
async fn http(
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, std::io::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (parts, body) = req.into_parts();
    let resp = client
        .request(http::Request::from_parts(
            parts,
            Full::new(Bytes::from(body)),
        ))
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

async fn get_raw(url: &str) -> http::Response<Vec<u8>> {
    http(http::Request::get(url).body(Vec::new()).unwrap())
        .await
        .unwrap()
}

async fn post_form(url: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
    let mut req =
        http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        let cred = data_encoding::BASE64.encode(format!("{id}:{secret}").as_bytes());
        req = req.header("authorization", format!("Basic {cred}"));
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    let resp = http(req.body(body.into_bytes()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    )
}

/// Follows the authorization request to the redirect and returns its query pairs.
async fn authorize_redirect(url: &str) -> Vec<(String, String)> {
    let resp = get_raw(url).await;
    assert_eq!(
        resp.status(),
        303,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    let loc = resp.headers()["location"].to_str().unwrap();
    url::Url::parse(loc)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every token the tests receive goes through here: its claims must be the registered
/// ones plus exactly the service's release, and nothing about the person beyond it.
fn check_release_only(service: &str, id_token: &str) -> Value {
    let payload = id_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &data_encoding::BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .unwrap(),
    )
    .unwrap();
    let registered = ["iss", "sub", "aud", "iat", "exp", "auth_time", "nonce"];
    let allowed: BTreeSet<&str> = Fixture::allowed(service).iter().copied().collect();
    for k in claims.as_object().unwrap().keys() {
        assert!(
            registered.contains(&k.as_str()) || allowed.contains(k.as_str()),
            "{service}: claim {k} is outside release"
        );
    }
    for a in &allowed {
        assert!(
            claims.get(*a).is_some(),
            "{service}: released {a} is missing"
        );
    }
    assert!(!id_token.contains(CARD));
    let text = claims.to_string();
    assert!(!text.contains(CARD) && !text.contains("card:") && !text.contains("1990"));
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(
        lifetime > 0 && lifetime <= 300,
        "id_token lifetime {lifetime}"
    );
    claims
}

#[tokio::test]
async fn code_flow_with_pkce_through_the_openidconnect_client() {
    let s = start().await;
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(s.issuer.clone()).unwrap(), &http)
            .await
            .unwrap();
    for auth_type in [AuthType::BasicAuth, AuthType::RequestBody] {
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new("fag-client".into()),
            Some(ClientSecret::new(SECRET.into())),
        )
        .set_redirect_uri(RedirectUrl::new("http://127.0.0.1:9/cb".into()).unwrap())
        .set_auth_type(auth_type);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .url();
        let pairs = authorize_redirect(url.as_str()).await;
        assert_eq!(param(&pairs, "state"), Some(csrf.secret().as_str()));
        assert_eq!(param(&pairs, "iss"), Some(s.issuer.as_str()));
        let code = param(&pairs, "code").unwrap().to_owned();

        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .unwrap()
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
            .unwrap_or_else(|e| panic!("token request failed: {e:?}"));
        let id_token = token.id_token().unwrap();
        // Signature (by kid from the JWKS), iss, aud, nonce and expiry, by the RP.
        let claims = id_token
            .claims(&client.id_token_verifier(), &nonce)
            .unwrap();
        let pseudonym = s
            .state
            .fixture
            .pseudonym("fag", &patron(Affiliation::Student));
        assert_eq!(claims.subject().as_str(), pseudonym);
        assert_eq!(claims.issuer().as_str(), s.issuer);
        let header_kid = {
            let h = id_token.to_string();
            let h = h.split('.').next().unwrap().to_owned();
            let h: Value = serde_json::from_slice(
                &data_encoding::BASE64URL_NOPAD.decode(h.as_bytes()).unwrap(),
            )
            .unwrap();
            h["kid"].as_str().unwrap().to_owned()
        };
        assert_eq!(header_kid, s.state.fixture.idp_key.kid());

        let raw = check_release_only("fag", &id_token.to_string());
        assert_eq!(raw["pseudonym"], pseudonym.as_str());
        assert_eq!(raw["institution"], INSTITUTION);
        assert_eq!(raw["affiliation"], "student");
        assert_eq!(raw["age_over_18"], true);

        // userinfo: sub and the released claims, once.
        let ui = client
            .user_info(token.access_token().clone(), None)
            .unwrap()
            .request_async::<openidconnect::EmptyAdditionalClaims, _, openidconnect::core::CoreGenderClaim>(&http)
            .await
            .unwrap();
        assert_eq!(ui.subject().as_str(), pseudonym);
        let again = http(
            http::Request::get(format!("{}/oidc/userinfo", s.issuer))
                .header(
                    "authorization",
                    format!("Bearer {}", token.access_token().secret()),
                )
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(again.status(), 401);
        assert!(
            again.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
}

#[tokio::test]
async fn public_client_needs_pkce_and_no_secret() {
    let s = start().await;
    let base = format!(
        "{}/oidc/authorize?response_type=code&scope=openid&client_id=fag-public&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fapp&state=st",
        s.issuer
    );
    let pairs = authorize_redirect(&base).await;
    assert_eq!(param(&pairs, "error"), Some("invalid_request"));
    assert_eq!(param(&pairs, "state"), Some("st"));

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let plain = format!(
        "{base}&code_challenge={}&code_challenge_method=plain",
        challenge.as_str()
    );
    assert_eq!(
        param(&authorize_redirect(&plain).await, "error"),
        Some("invalid_request")
    );

    let url = format!(
        "{base}&code_challenge={}&code_challenge_method=S256",
        challenge.as_str()
    );
    let pairs = authorize_redirect(&url).await;
    let code = param(&pairs, "code").unwrap();
    let token_url = format!("{}/oidc/token", s.issuer);
    let (status, body) = post_form(
        &token_url,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "http://127.0.0.1:9/app"),
            ("client_id", "fag-public"),
            ("code_verifier", verifier.secret()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let t: TokenResponse = serde_json::from_value(body).unwrap();
    let claims = check_release_only("fagpub", &t.id_token);
    // Without `pseudonym` in release, `sub` is a fresh value, not the pseudonym.
    let pseudonym = s
        .state
        .fixture
        .pseudonym("fagpub", &patron(Affiliation::Student));
    assert_ne!(claims["sub"], pseudonym.as_str());
    assert!(claims.get("nonce").is_none());
}

#[tokio::test]
async fn refusals() {
    let s = start().await;
    let authz = |extra: &str| {
        format!(
            "{}/oidc/authorize?response_type=code&scope=openid&client_id=fag-client&state=st&nonce=n{extra}",
            s.issuer
        )
    };
    let token_url = format!("{}/oidc/token", s.issuer);

    // Wrong redirect_uri: an error page, never a redirect.
    let resp = get_raw(&authz("&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb%2F")).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("location").is_none());
    // Unknown client: the same.
    let resp = get_raw(&format!("{}/oidc/authorize?response_type=code&scope=openid&client_id=nobody&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb", s.issuer)).await;
    assert!(resp.headers().get("location").is_none());
    // A known client with another response_type or no openid scope: told by redirect.
    let pairs = authorize_redirect(
        &authz("&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb")
            .replace("response_type=code", "response_type=token"),
    )
    .await;
    assert_eq!(param(&pairs, "error"), Some("unsupported_response_type"));
    let pairs = authorize_redirect(
        &authz("&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb")
            .replace("scope=openid", "scope=profile"),
    )
    .await;
    assert_eq!(param(&pairs, "error"), Some("invalid_scope"));

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let with_pkce = format!(
        "&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&code_challenge={}&code_challenge_method=S256",
        challenge.as_str()
    );
    let new_code = || async {
        param(&authorize_redirect(&authz(&with_pkce)).await, "code")
            .unwrap()
            .to_owned()
    };
    let redeem = |code: String, secret: &'static str, redirect: &'static str, verifier: String| {
        let token_url = token_url.clone();
        async move {
            post_form(
                &token_url,
                Some(("fag-client", secret)),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    let good = verifier.secret().clone();
    let cb = "http://127.0.0.1:9/cb";

    // Wrong secret.
    let (st, body) = redeem(new_code().await, "wrong", cb, good.clone()).await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));

    // Wrong redirect_uri at the token endpoint (another registered one).
    let (st, body) = redeem(
        new_code().await,
        SECRET,
        "http://127.0.0.1:9/cb2",
        good.clone(),
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));

    // PKCE mismatch.
    let other = PkceCodeChallenge::new_random_sha256().1.secret().clone();
    let (st, body) = redeem(new_code().await, SECRET, cb, other).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));

    // Reused code: the first use succeeds, the second is refused.
    let code = new_code().await;
    let (st, body) = redeem(code.clone(), SECRET, cb, good.clone()).await;
    assert_eq!(st, 200, "{body}");
    check_release_only("fag", body["id_token"].as_str().unwrap());
    let (st, body) = redeem(code, SECRET, cb, good.clone()).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));

    // Expired code: 61 s on the injected clock, no sleeping.
    let code = new_code().await;
    s.clock.advance(Duration::from_secs(61));
    let (st, body) = redeem(code, SECRET, cb, good.clone()).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));
    // Just inside the 60 s it still works.
    let code = new_code().await;
    s.clock.advance(Duration::from_secs(59));
    let (st, body) = redeem(code, SECRET, cb, good.clone()).await;
    assert_eq!(st, 200, "{body}");

    // Other grant types and garbage.
    let (st, body) = post_form(
        &token_url,
        Some(("fag-client", SECRET)),
        &[("grant_type", "password")],
    )
    .await;
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (st, body) = post_form(
        &token_url,
        None,
        &[("grant_type", "authorization_code"), ("code", "x")],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
    let (st, body) = post_form(
        &token_url,
        Some(("fag-client", SECRET)),
        &[
            ("grant_type", "authorization_code"),
            ("code", "not-a-code"),
            ("redirect_uri", cb),
        ],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn a_rotated_key_still_verifies() {
    // Tokens from the old key, then the new key is current and the old one is "previous".
    let f = fixture();
    let old_dir = f.dir.path().join("old");
    let old_key: SigningKey = federation_support::signing_key(&old_dir);
    let old_server = start_with(Provider::new("http://x", old_key.clone()), f).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let url = format!(
        "{}/oidc/authorize?response_type=code&scope=openid&client_id=fag-client&nonce=n1&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&code_challenge={}&code_challenge_method=S256",
        old_server.issuer,
        challenge.as_str()
    );
    let code = param(&authorize_redirect(&url).await, "code")
        .unwrap()
        .to_owned();
    let (st, body) = post_form(
        &format!("{}/oidc/token", old_server.issuer),
        Some(("fag-client", SECRET)),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("code_verifier", verifier.secret()),
        ],
    )
    .await;
    assert_eq!(st, 200);
    let old_token = body["id_token"].as_str().unwrap().to_owned();

    // The rotated provider: a new current key, the old one kept by its certificate.
    let new_key = federation_support::signing_key(&old_server.state.fixture.dir.path().join("new"));
    let mut rotated = Provider::new(old_server.issuer.clone(), new_key.clone());
    rotated.previous = vec![previous_jwk(old_key.cert_pem()).unwrap()];
    let jwks = rotated.jwks();
    assert_eq!(jwks.keys.len(), 2);
    assert_eq!(jwks.keys[0].kid, new_key.kid());
    assert_eq!(jwks.keys[1].kid, old_key.kid());
    assert_ne!(new_key.kid(), old_key.kid());

    // The relying party verifies the old token with the rotated JWKS.
    let jwks: CoreJsonWebKeySet =
        serde_json::from_value(serde_json::to_value(&jwks).unwrap()).unwrap();
    let verifier = CoreIdTokenVerifier::new_confidential_client(
        ClientId::new("fag-client".into()),
        ClientSecret::new(SECRET.into()),
        IssuerUrl::new(old_server.issuer.clone()).unwrap(),
        jwks,
    );
    let token: CoreIdToken = old_token.parse().unwrap();
    token
        .claims(&verifier, &Nonce::new("n1".into()))
        .unwrap_or_else(|e| panic!("old token must still verify: {e:?}"));

    // Without the previous key, it would not.
    let only_new: CoreJsonWebKeySet = serde_json::from_value(
        serde_json::to_value(Provider::new("http://x", new_key).jwks()).unwrap(),
    )
    .unwrap();
    let strict = CoreIdTokenVerifier::new_confidential_client(
        ClientId::new("fag-client".into()),
        ClientSecret::new(SECRET.into()),
        IssuerUrl::new(old_server.issuer.clone()).unwrap(),
        only_new,
    );
    assert!(token.claims(&strict, &Nonce::new("n1".into())).is_err());
}

#[tokio::test]
async fn discovery_document() {
    let s = start().await;
    let resp = get_raw(&format!("{}/.well-known/openid-configuration", s.issuer)).await;
    let d: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(d["issuer"], s.issuer.as_str());
    assert_eq!(
        d["authorization_endpoint"],
        format!("{}/oidc/authorize", s.issuer)
    );
    assert_eq!(d["token_endpoint"], format!("{}/oidc/token", s.issuer));
    assert_eq!(d["jwks_uri"], format!("{}/oidc/jwks", s.issuer));
    assert_eq!(
        d["userinfo_endpoint"],
        format!("{}/oidc/userinfo", s.issuer)
    );
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    let jwks: Value =
        serde_json::from_slice(get_raw(&format!("{}/oidc/jwks", s.issuer)).await.body()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], s.state.fixture.idp_key.kid());
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private parts");
}
