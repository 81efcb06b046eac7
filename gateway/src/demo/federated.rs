//! Demo federated vendors for `portvakt demo`: a SAML service provider on `ebok`'s ACS
//! address and an OIDC relying party on `fagportalen`'s address. Unlike a real vendor they
//! show the patron what arrived — every SAML attribute, every id_token claim — after
//! checking it the way a careful vendor would: the XML signature against the gateway's
//! signing certificate, audience and expiry; the id_token signature against the gateway's
//! JWKS, issuer, audience, nonce and expiry, with state and PKCE around the code flow.

use std::fmt::Write;
use std::net::SocketAddr;

use axum::Form;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use data_encoding::{BASE64, BASE64URL_NOPAD};
use federation::saml::sp::verify_saml_response;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(name: &str, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"nb\"><head><meta charset=\"utf-8\"><title>{title} – {name}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;line-height:1.5}}\
         td,th{{border:1px solid #999;padding:.2rem .4rem;text-align:left;vertical-align:top}}\
         .ok{{color:#060}}.feil{{color:#a00}}</style></head>\
         <body><header><strong>{name}</strong> (demoleverandør / demo vendor)</header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        name = escape(name),
        title = escape(title),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn table(rows: &[(String, String)]) -> String {
    let mut t = String::from("<table><tr><th>Navn</th><th>Verdi</th></tr>");
    for (k, v) in rows {
        let _ = write!(t, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v));
    }
    t.push_str("</table>");
    t
}

// ---------------------------------------------------------------------------------------
// SAML
// ---------------------------------------------------------------------------------------

/// What the SAML vendor needs: the gateway's public URL (for the entry link), the
/// certificate the gateway signs with, and the entity id the assertion must be meant for.
#[derive(Clone, Debug)]
pub struct SamlVendor {
    pub gateway_url: String,
    pub cert_pem: String,
    pub entity_id: String,
}

const SAML_NAME: &str = "E-bøker (SAML-demo)";

async fn saml_front(State(v): State<SamlVendor>) -> Response {
    page(
        SAML_NAME,
        "Velkommen",
        &format!(
            "<p>En demo av en SAML-tjenesteleverandør. Den sjekker signaturen fra Portvakt og viser \
             nøyaktig hvilke attributter som kom fram.</p>\
             <p><a href=\"{}/go/ebok\">Logg inn via biblioteket</a></p>",
            escape(&v.gateway_url)
        ),
    )
}

#[derive(serde::Deserialize)]
struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    saml_response: Option<String>,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

async fn saml_acs(State(v): State<SamlVendor>, Form(form): Form<AcsForm>) -> Response {
    let Some(b64) = form.saml_response else {
        return (StatusCode::BAD_REQUEST, "SAMLResponse mangler").into_response();
    };
    let relay = form.relay_state.map_or_else(String::new, |r| {
        format!("<p>RelayState: <code>{}</code></p>", escape(&r))
    });
    match verify_saml_response(&b64, &v.cert_pem, &v.entity_id, jiff::Timestamp::now()) {
        Ok(seen) => {
            let mut rows = vec![
                ("Issuer".to_owned(), seen.issuer.unwrap_or_default()),
                ("NameID".to_owned(), seen.name_id.unwrap_or_default()),
                (
                    "NameID Format".to_owned(),
                    seen.name_id_format.unwrap_or_default(),
                ),
            ];
            rows.extend(seen.attributes);
            page(
                SAML_NAME,
                "Innlogget",
                &format!(
                    "<p class=\"ok\">Signaturen er gyldig (sjekket mot Portvakts sertifikat), \
                     publikum er <code>{}</code> og svaret er ikke utløpt.</p>\
                     <p>Dette er alt leverandøren fikk om deg:</p>{}{relay}",
                    escape(&v.entity_id),
                    table(&rows)
                ),
            )
        }
        Err(why) => {
            let mut resp = page(
                SAML_NAME,
                "Avvist",
                &format!(
                    "<p class=\"feil\">Svaret ble avvist: {}</p>{relay}",
                    escape(&why)
                ),
            );
            *resp.status_mut() = StatusCode::FORBIDDEN;
            resp
        }
    }
}

/// The SAML vendor's routes: `GET /` and `POST /saml/acs`.
pub fn saml_router(v: SamlVendor) -> Router {
    Router::new()
        .route("/", get(saml_front))
        .route("/saml/acs", post(saml_acs))
        .with_state(v)
}

// ---------------------------------------------------------------------------------------
// OIDC
// ---------------------------------------------------------------------------------------

/// What the OIDC vendor needs: the gateway's public URL (the issuer, and where the
/// browser is sent), the address to reach it on, and the client's own settings.
#[derive(Clone, Debug)]
pub struct OidcVendor {
    pub gateway_url: String,
    /// Where to connect for the back-channel calls (plain HTTP on loopback); the
    /// `Host` header is taken from `gateway_url`.
    pub gateway_addr: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

const OIDC_NAME: &str = "Fagportalen (OIDC-demo)";
const COOKIE_STATE: &str = "fp_state";
const COOKIE_NONCE: &str = "fp_nonce";
const COOKIE_VERIFIER: &str = "fp_verifier";

fn random_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(BASE64URL_NOPAD.encode(&b))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::web::cookies::read(headers, name).map(str::to_owned)
}

fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: u32) {
    let c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn oidc_error_page(title: &str, why: &str) -> Response {
    let mut resp = page(
        OIDC_NAME,
        title,
        &format!("<p class=\"feil\">{}</p>", escape(why)),
    );
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp
}

async fn oidc_front(State(v): State<OidcVendor>) -> Response {
    let (Ok(state), Ok(nonce), Ok(verifier)) = (random_token(), random_token(), random_token())
    else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    };
    let challenge = BASE64URL_NOPAD.encode(&Sha256::digest(verifier.as_bytes()));
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", v.client_id.as_str()),
        ("redirect_uri", v.redirect_uri.as_str()),
        ("scope", "openid"),
        ("state", state.as_str()),
        ("nonce", nonce.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap_or_default();
    let mut resp =
        Redirect::to(&format!("{}/oidc/authorize?{query}", v.gateway_url)).into_response();
    set_cookie(&mut resp, COOKIE_STATE, &state, 600);
    set_cookie(&mut resp, COOKIE_NONCE, &nonce, 600);
    set_cookie(&mut resp, COOKIE_VERIFIER, &verifier, 600);
    resp
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn oidc_callback(
    State(v): State<OidcVendor>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let mut resp = callback_page(&v, &headers, q).await;
    // One login attempt per state: clear what the front page set.
    for name in [COOKIE_STATE, COOKIE_NONCE, COOKIE_VERIFIER] {
        set_cookie(&mut resp, name, "", 0);
    }
    resp
}

async fn callback_page(v: &OidcVendor, headers: &HeaderMap, q: CallbackQuery) -> Response {
    let expected_state = cookie(headers, COOKIE_STATE);
    if expected_state.is_none() || q.state != expected_state {
        return oidc_error_page(
            "Avvist",
            "state stemmer ikke med informasjonskapselen (eller den mangler): start på nytt fra forsiden.",
        );
    }
    if let Some(error) = q.error {
        let title = if error == "access_denied" {
            "Ingen tilgang"
        } else {
            "Innlogging feilet"
        };
        let why = match q.error_description {
            Some(d) => format!("{error}: {d}"),
            None => error,
        };
        return oidc_error_page(title, &why);
    }
    let Some(code) = q.code else {
        return oidc_error_page("Avvist", "svaret har verken code eller error");
    };
    let (Some(nonce), Some(verifier)) = (
        cookie(headers, COOKIE_NONCE),
        cookie(headers, COOKIE_VERIFIER),
    ) else {
        return oidc_error_page("Avvist", "nonce eller PKCE-verifier mangler");
    };
    match redeem(v, &code, &verifier, &nonce).await {
        Ok(claims) => {
            let rows: Vec<(String, String)> = claims
                .into_iter()
                .map(|(k, val)| {
                    let s = match val {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect();
            page(
                OIDC_NAME,
                "Innlogget",
                &format!(
                    "<p class=\"ok\">Signaturen på id_token er gyldig (sjekket mot Portvakts JWKS), \
                     og iss, aud, nonce og exp stemmer.</p>\
                     <p>Dette er alt leverandøren fikk om deg:</p>{}\
                     <p><a href=\"/\">Logg inn på nytt</a></p>",
                    table(&rows)
                ),
            )
        }
        Err(why) => oidc_error_page("Avvist", &why),
    }
}

/// The code for tokens, and the id_token checked: its claims.
async fn redeem(
    v: &OidcVendor,
    code: &str,
    verifier: &str,
    nonce: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", v.redirect_uri.as_str()),
        ("code_verifier", verifier),
    ])
    .map_err(|e| e.to_string())?;
    let basic = BASE64.encode(
        format!(
            "{}:{}",
            form_urlencode(&v.client_id),
            form_urlencode(&v.client_secret)
        )
        .as_bytes(),
    );
    let (status, body) = call(
        v,
        "POST",
        "/oidc/token",
        Some((format!("Basic {basic}"), form)),
    )
    .await?;
    if status != StatusCode::OK {
        return Err(format!(
            "tokenendepunktet svarte {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let token: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("tokensvaret er ikke JSON: {e}"))?;
    let id_token = token
        .get("id_token")
        .and_then(|t| t.as_str())
        .ok_or_else(|| "tokensvaret har ingen id_token".to_owned())?;

    let (status, body) = call(v, "GET", "/oidc/jwks", None).await?;
    if status != StatusCode::OK {
        return Err(format!("JWKS-endepunktet svarte {status}"));
    }
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&body).map_err(|e| format!("JWKS kan ikke leses: {e}"))?;
    let head = jsonwebtoken::decode_header(id_token)
        .map_err(|e| format!("id_token kan ikke leses: {e}"))?;
    let jwk = match &head.kid {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| "ingen nøkkel i JWKS passer id_token (kid)".to_owned())?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
        .map_err(|e| format!("nøkkelen i JWKS kan ikke brukes: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[v.client_id.as_str()]);
    validation.set_issuer(&[v.gateway_url.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        id_token,
        &key,
        &validation,
    )
    .map_err(|e| format!("id_token er ikke gyldig: {e}"))?;
    if data.claims.get("nonce").and_then(|n| n.as_str()) != Some(nonce) {
        return Err("nonce i id_token stemmer ikke".into());
    }
    Ok(data.claims)
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic.
fn form_urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One plain-HTTP/1.1 call to the gateway on loopback.
async fn call(
    v: &OidcVendor,
    method: &str,
    path: &str,
    auth_and_form: Option<(String, String)>,
) -> Result<(StatusCode, Bytes), String> {
    let host = v
        .gateway_url
        .split_once("://")
        .map_or(v.gateway_url.as_str(), |(_, h)| h)
        .trim_end_matches('/')
        .to_owned();
    let stream = TcpStream::connect(v.gateway_addr)
        .await
        .map_err(|e| format!("kan ikke nå Portvakt på {}: {e}", v.gateway_addr))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP mot Portvakt: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::ACCEPT, "application/json");
    let body = match auth_and_form {
        Some((auth, form)) => {
            req = req
                .header(header::AUTHORIZATION, auth)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Full::new(Bytes::from(form))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "Portvakt svarte ikke i tide".to_owned())?
        .map_err(|e| format!("HTTP mot Portvakt: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("HTTP mot Portvakt: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// The OIDC vendor's routes: `GET /` and `GET /callback`.
pub fn oidc_router(v: OidcVendor) -> Router {
    Router::new()
        .route("/", get(oidc_front))
        .route("/callback", get(oidc_callback))
        .with_state(v)
}

/// Serves `app` on `addr`. Returns false, with a warning logged, when the port is taken:
/// the demo goes on without this vendor.
pub async fn spawn(addr: SocketAddr, app: Router, name: &str) -> bool {
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            true
        }
        Err(e) => {
            tracing::warn!(vendor = name, %addr, error = %e, "demo vendor not started");
            false
        }
    }
}
