//! The OpenID provider for vendors (`access = "oidc"`): authorization-code flow only.
//!
//! The flow, and where each step lives:
//!
//! 1. `GET /oidc/authorize`: [`Provider::authorize`] checks the request against the
//!    policy's `[service.oidc]` and answers "ok, now decide" ([`AuthorizeRequest`]) or an
//!    [`AuthorizeError`]. The gateway (`routes::idp` in the `gateway` crate) makes sure
//!    the patron is logged in, decides for [`AuthorizeRequest::service`], and on a permit
//!    calls [`Provider::issue_code`] with the release; on a deny it sends
//!    [`AuthorizeRequest::error_redirect`] with `access_denied`.
//! 2. `POST /oidc/token`: [`Provider::token`] authenticates the client, redeems the code
//!    (single-use, 60 s), checks `redirect_uri` and PKCE, and returns an id_token (RS256,
//!    `kid`) and an opaque access token.
//! 3. `GET|POST /oidc/userinfo`: [`Provider::userinfo`] answers `sub` and the released
//!    claims for that access token.
//!
//! Discovery ([`Provider::discovery`]) and the JWKS ([`Provider::jwks`]) are static. The
//! thin axum handlers in [`routes`] serve discovery, JWKS, token and userinfo.
//!
//! JWTs are signed with `jsonwebtoken` (its pure-Rust `rust_crypto` backend, RS256).
//!
//! # Choices the standards leave open
//!
//! - Only the code travels through the browser; the claims stay in the store (a
//!   [`TicketKind::OidcCode`] ticket) until the token endpoint hands them to the client.
//! - `scope` must contain `openid`; other scopes are accepted and ignored: what a vendor
//!   learns is the service's `release`, never what it asks for.
//! - `redirect_uri` is required and compared byte for byte with `redirect_uris`.
//! - Public clients must use PKCE S256 and authenticate with nothing (`none`); confidential
//!   clients may add PKCE, and then it is checked too. `plain` is refused. A verifier sent
//!   for a code issued without a challenge is refused (no downgrade to guessing).
//! - Client authentication by `client_secret_basic` or `client_secret_post`, not both at
//!   once. The secret is hashed with SHA-256 and compared in constant time with
//!   `client_secret_sha256`. A public client presenting a secret is refused.
//! - `sub` is the pseudonym when `pseudonym` is released; otherwise a fresh random value
//!   per code, so a vendor without the pseudonym learns nothing stable. `pseudonym` is also
//!   a claim of its own name when released, like every released attribute; `age_over_N`
//!   claims are JSON booleans, everything else strings.
//! - The id_token lives 5 minutes ([`ID_TOKEN_LIFETIME`]); it carries `auth_time` (the
//!   login) and `nonce` when the client sent one. The access token is opaque, good for one
//!   userinfo call within 5 minutes ([`ACCESS_TOKEN_TTL`]): vendors take the claims at login
//!   and have no business coming back. There are no refresh tokens.
//! - The token endpoint re-reads the policy: a client removed, or a service switched off
//!   (`enabled = false`), between authorize and token gets no tokens.
//! - A reused code is refused (`invalid_grant`); tokens issued from its first use are not
//!   revoked (they live 5 minutes).
//! - The authorization response carries `iss` (RFC 9207) besides `code` and `state`.
//! - Key rotation: the JWKS lists the current key and every key in
//!   [`Provider::previous`], so tokens signed before a rotation still verify until they
//!   expire; only the current key signs.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use data_encoding::{BASE64, BASE64URL_NOPAD, HEXLOWER};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use super::{Jwk, SigningKey, random_id};
use policy::ids::ServiceId;
use policy::release::Value as Released;
use policy::{Access, Attribute, OidcSettings, Policy, Release};
use store::session::{Ticket, TicketKind};
use store::{Clock, Store, StoreError};

/// How long a code may wait for the token endpoint.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// `exp - iat` of an id_token.
pub const ID_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// How long an access token is good for its one userinfo call.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    #[error("invalid_client: {0}")]
    InvalidClient(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(&'static str),
    #[error("unsupported_grant_type: only authorization_code")]
    UnsupportedGrantType,
    #[error("unsupported_response_type: only code")]
    UnsupportedResponseType,
    #[error("invalid_scope: the scope must contain openid")]
    InvalidScope,
    #[error("access_denied: {0}")]
    AccessDenied(String),
    #[error("invalid_token: the access token is unknown, used or expired")]
    InvalidToken,
    #[error("server_error: the store: {0}")]
    Store(#[from] StoreError),
    #[error("server_error: cannot sign the id_token: {0}")]
    Sign(String),
    #[error("server_error: the operating system's random number generator failed: {0}")]
    Random(String),
}

impl OidcError {
    /// The OAuth 2 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::InvalidScope => "invalid_scope",
            Self::AccessDenied(_) => "access_denied",
            Self::InvalidToken => "invalid_token",
            Self::Store(_) | Self::Sign(_) | Self::Random(_) => "server_error",
        }
    }

    /// `true` when the client (the vendor) caused it, `false` when we did.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Store(_) | Self::Sign(_) | Self::Random(_))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidClient(_) | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::AccessDenied(_) => StatusCode::FORBIDDEN,
            Self::Store(_) | Self::Sign(_) | Self::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// `error_description`: says what is wrong without echoing secrets or claims. Server
    /// errors say no more than that; the detail goes to our log.
    pub fn description(&self) -> String {
        if self.is_client_error() {
            let text = self.to_string();
            text.split_once(": ")
                .map_or(text.clone(), |(_, d)| d.to_owned())
        } else {
            "the server could not complete the request".to_owned()
        }
    }

    /// The JSON body of RFC 6749 §5.2.
    pub fn body(&self) -> Value {
        serde_json::json!({"error": self.code(), "error_description": self.description()})
    }
}

impl IntoResponse for OidcError {
    fn into_response(self) -> Response {
        if !self.is_client_error() {
            tracing::error!(error = %self, "OpenID provider failed");
        }
        let mut resp = json_response(self.status(), &self.body());
        let challenge = match &self {
            Self::InvalidClient(_) => Some("Basic realm=\"portvakt\""),
            Self::InvalidToken => Some("Bearer error=\"invalid_token\""),
            _ => None,
        };
        if let Some(c) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

/// The OpenID provider: the issuer URL and the signing keys.
#[derive(Clone, Debug)]
pub struct Provider {
    /// `<scheme>://<public_host>`, no trailing slash.
    pub issuer: String,
    /// Signs every new id_token.
    pub key: SigningKey,
    /// Keys rotated out: still in the JWKS, never used to sign.
    pub previous: Vec<Jwk>,
}

/// The discovery document (`/.well-known/openid-configuration`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub userinfo_endpoint: String,
    pub response_types_supported: Vec<String>,
    pub response_modes_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub claims_supported: Vec<String>,
    pub authorization_response_iss_parameter_supported: bool,
}

/// The JWKS document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// The query of `/oidc/authorize`. Unknown parameters are ignored (OIDC Core §3.1.2.1).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

/// A checked authorization request: the gateway now decides for `service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub service: ServiceId,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
}

/// Why an authorization request is refused, and how to tell.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or its redirect_uri is not known: never redirect (that would be an open
    /// redirect); show the patron an error page with this status.
    Page(OidcError),
    /// The client is known: 303 to `location`, which carries the error and the `state`.
    Redirect { location: String, error: OidcError },
}

impl AuthorizeRequest {
    /// The redirect that tells the client it gets no code: `access_denied` after a deny,
    /// with the deny reason (a policy reason code, nothing about the person) as description.
    pub fn error_redirect(&self, issuer: &str, error: &OidcError) -> String {
        redirect_with(
            &self.redirect_uri,
            &[
                ("error", Some(error.code())),
                ("error_description", Some(&error.description())),
                ("state", self.state.as_deref()),
                ("iss", Some(issuer)),
            ],
        )
    }
}

/// The token endpoint's form (RFC 6749 §4.1.3), all optional so a missing one is an OAuth
/// error, not a rejection of the body.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub id_token: String,
    pub scope: String,
}

/// What a code stands for, in the store until redeemed.
#[derive(Debug, Serialize, Deserialize)]
struct CodeGrant {
    service: String,
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    nonce: Option<String>,
    sub: String,
    auth_time: i64,
    claims: Map<String, Value>,
}

/// What an access token stands for.
#[derive(Debug, Serialize, Deserialize)]
struct AccessGrant {
    client_id: String,
    sub: String,
    claims: Map<String, Value>,
}

impl Provider {
    pub fn new(issuer: impl Into<String>, key: SigningKey) -> Self {
        let issuer: String = issuer.into();
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            key,
            previous: Vec::new(),
        }
    }

    pub fn discovery(&self) -> Discovery {
        let at = |path: &str| format!("{}{path}", self.issuer);
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Discovery {
            issuer: self.issuer.clone(),
            authorization_endpoint: at("/oidc/authorize"),
            token_endpoint: at("/oidc/token"),
            jwks_uri: at("/oidc/jwks"),
            userinfo_endpoint: at("/oidc/userinfo"),
            response_types_supported: strings(&["code"]),
            response_modes_supported: strings(&["query"]),
            grant_types_supported: strings(&["authorization_code"]),
            subject_types_supported: strings(&["pairwise"]),
            id_token_signing_alg_values_supported: strings(&["RS256"]),
            code_challenge_methods_supported: strings(&["S256"]),
            token_endpoint_auth_methods_supported: strings(&[
                "client_secret_basic",
                "client_secret_post",
                "none",
            ]),
            scopes_supported: strings(&["openid"]),
            claims_supported: strings(&[
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "pseudonym",
                "institution",
                "institution_name",
                "municipality",
                "affiliation",
                "age_band",
            ]),
            authorization_response_iss_parameter_supported: true,
        }
    }

    /// The current key first, then the rotated-out ones.
    pub fn jwks(&self) -> Jwks {
        let mut keys = vec![self.key.jwk().clone()];
        for k in &self.previous {
            if !keys.iter().any(|have| have.kid == k.kid) {
                keys.push(k.clone());
            }
        }
        Jwks { keys }
    }

    /// Checks an authorization request (RFC 6749 §4.1.1, OIDC Core §3.1.2).
    pub fn authorize(
        &self,
        policy: &Policy,
        params: &AuthorizeParams,
    ) -> Result<AuthorizeRequest, AuthorizeError> {
        let page = |e| Err(AuthorizeError::Page(e));
        let Some(client_id) = params.client_id.as_deref() else {
            return page(OidcError::InvalidRequest("client_id is missing".into()));
        };
        let Some((service, client)) = find_client(policy, client_id) else {
            return page(OidcError::InvalidClient("unknown client_id"));
        };
        let Some(redirect_uri) = params.redirect_uri.as_deref() else {
            return page(OidcError::InvalidRequest("redirect_uri is missing".into()));
        };
        if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
            return page(OidcError::InvalidRequest(
                "redirect_uri is not registered for this client".into(),
            ));
        }
        // From here on the client is known, so errors go back to it.
        let back = |error: OidcError| {
            let location = redirect_with(
                redirect_uri,
                &[
                    ("error", Some(error.code())),
                    ("error_description", Some(&error.description())),
                    ("state", params.state.as_deref()),
                    ("iss", Some(&self.issuer)),
                ],
            );
            Err(AuthorizeError::Redirect { location, error })
        };
        if params.response_type.as_deref() != Some("code") {
            return back(OidcError::UnsupportedResponseType);
        }
        let scope = params.scope.as_deref().unwrap_or("");
        if !scope.split(' ').any(|s| s == "openid") {
            return back(OidcError::InvalidScope);
        }
        let code_challenge = match (
            &params.code_challenge,
            params.code_challenge_method.as_deref(),
        ) {
            (None, None) => None,
            (Some(c), Some("S256")) => {
                if !is_pkce_value(c) {
                    return back(OidcError::InvalidRequest(
                        "code_challenge must be 43 base64url characters".into(),
                    ));
                }
                Some(c.clone())
            }
            (Some(_), None | Some("plain")) => {
                return back(OidcError::InvalidRequest(
                    "code_challenge_method must be S256".into(),
                ));
            }
            _ => {
                return back(OidcError::InvalidRequest(
                    "code_challenge_method must be S256".into(),
                ));
            }
        };
        if client.client_secret_sha256.is_none() && code_challenge.is_none() {
            return back(OidcError::InvalidRequest(
                "a public client must use PKCE (code_challenge_method=S256)".into(),
            ));
        }
        Ok(AuthorizeRequest {
            service,
            client_id: client.client_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            state: params.state.clone(),
            nonce: params.nonce.clone(),
            code_challenge,
        })
    }

    /// After a permit: keeps the released claims under a new single-use code (60 s) and
    /// returns the redirect to the client (`code`, `state`, `iss`).
    pub async fn issue_code(
        &self,
        store: &(dyn Store + 'static),
        request: &AuthorizeRequest,
        release: &Release,
        auth_time: Timestamp,
        now: Timestamp,
    ) -> Result<String, OidcError> {
        let sub = match release.get(Attribute::Pseudonym) {
            Some(p) => p.as_text(),
            None => random_id("t").map_err(|e| OidcError::Random(e.to_string()))?,
        };
        let grant = CodeGrant {
            service: request.service.to_string(),
            client_id: request.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            nonce: request.nonce.clone(),
            sub,
            auth_time: auth_time.as_second(),
            claims: claims_of(release),
        };
        let code = Ticket::generate().map_err(|e| OidcError::Random(e.to_string()))?;
        store
            .put_ticket_json(TicketKind::OidcCode, &code, &grant, CODE_TTL, now)
            .await?;
        Ok(redirect_with(
            &request.redirect_uri,
            &[
                ("code", Some(&code.expose())),
                ("state", request.state.as_deref()),
                ("iss", Some(&self.issuer)),
            ],
        ))
    }

    /// The token endpoint. `authorization` is the request's `Authorization` header.
    pub async fn token(
        &self,
        store: &(dyn Store + 'static),
        policy: &Policy,
        authorization: Option<&str>,
        form: &TokenForm,
        now: Timestamp,
    ) -> Result<TokenResponse, OidcError> {
        let (service, client) = authenticate_client(policy, authorization, form)?;
        match form.grant_type.as_deref() {
            Some("authorization_code") => {}
            Some(_) => return Err(OidcError::UnsupportedGrantType),
            None => return Err(OidcError::InvalidRequest("grant_type is missing".into())),
        }
        let code = form
            .code
            .as_deref()
            .ok_or_else(|| OidcError::InvalidRequest("code is missing".into()))?;
        // A malformed code is as unknown as a used one.
        let code = Ticket::parse(code).map_err(|_| OidcError::InvalidGrant("unknown code"))?;
        let grant: CodeGrant = store
            .take_ticket_json(TicketKind::OidcCode, &code, now)
            .await?
            .ok_or(OidcError::InvalidGrant(
                "the code is unknown, used or expired",
            ))?;
        if grant.client_id != client.client_id || grant.service != service.as_str() {
            return Err(OidcError::InvalidGrant(
                "the code was issued to another client",
            ));
        }
        if form.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(OidcError::InvalidGrant(
                "redirect_uri differs from the authorization request",
            ));
        }
        match (&grant.code_challenge, form.code_verifier.as_deref()) {
            (None, None) => {}
            (Some(challenge), Some(verifier)) => {
                if !is_pkce_verifier(verifier) {
                    return Err(OidcError::InvalidGrant("code_verifier is malformed"));
                }
                let computed = BASE64URL_NOPAD.encode(&Sha256::digest(verifier.as_bytes()));
                if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                    return Err(OidcError::InvalidGrant("code_verifier does not match"));
                }
            }
            (Some(_), None) => {
                return Err(OidcError::InvalidGrant("code_verifier is missing"));
            }
            (None, Some(_)) => {
                return Err(OidcError::InvalidGrant(
                    "code_verifier sent for a code issued without code_challenge",
                ));
            }
        }
        // The emergency brake holds between authorize and token too.
        if !policy.service(service.as_str()).is_some_and(|s| s.enabled) {
            return Err(OidcError::InvalidGrant("the service is suspended"));
        }
        let id_token = self.id_token(&grant, now)?;
        let access = Ticket::generate().map_err(|e| OidcError::Random(e.to_string()))?;
        let access_grant = AccessGrant {
            client_id: grant.client_id.clone(),
            sub: grant.sub.clone(),
            claims: grant.claims.clone(),
        };
        store
            .put_ticket_json(
                TicketKind::OidcAccess,
                &access,
                &access_grant,
                ACCESS_TOKEN_TTL,
                now,
            )
            .await?;
        Ok(TokenResponse {
            access_token: access.expose(),
            token_type: "Bearer".into(),
            expires_in: ACCESS_TOKEN_TTL.as_secs(),
            id_token,
            scope: "openid".into(),
        })
    }

    /// The userinfo endpoint: `sub` and the released claims, once per access token.
    pub async fn userinfo(
        &self,
        store: &(dyn Store + 'static),
        authorization: Option<&str>,
        now: Timestamp,
    ) -> Result<Map<String, Value>, OidcError> {
        let token = authorization
            .and_then(|h| strip_scheme(h, "Bearer"))
            .ok_or(OidcError::InvalidToken)?;
        let token = Ticket::parse(token.trim()).map_err(|_| OidcError::InvalidToken)?;
        let grant: AccessGrant = store
            .take_ticket_json(TicketKind::OidcAccess, &token, now)
            .await?
            .ok_or(OidcError::InvalidToken)?;
        let mut out = Map::new();
        out.insert("sub".into(), Value::String(grant.sub));
        for (k, v) in grant.claims {
            out.insert(k, v);
        }
        Ok(out)
    }

    fn id_token(&self, grant: &CodeGrant, now: Timestamp) -> Result<String, OidcError> {
        let iat = now.as_second();
        let lifetime = i64::try_from(ID_TOKEN_LIFETIME.as_secs()).unwrap_or(300);
        let mut claims = Map::new();
        // Released claims first, so no release can shadow a registered claim.
        for (k, v) in &grant.claims {
            claims.insert(k.clone(), v.clone());
        }
        claims.insert("iss".into(), Value::String(self.issuer.clone()));
        claims.insert("sub".into(), Value::String(grant.sub.clone()));
        claims.insert("aud".into(), Value::String(grant.client_id.clone()));
        claims.insert("iat".into(), Value::from(iat));
        claims.insert("exp".into(), Value::from(iat + lifetime));
        claims.insert("auth_time".into(), Value::from(grant.auth_time));
        if let Some(nonce) = &grant.nonce {
            claims.insert("nonce".into(), Value::String(nonce.clone()));
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.key.kid().to_owned());
        let key = jsonwebtoken::EncodingKey::from_rsa_der(self.key.pkcs1_der());
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| OidcError::Sign(e.to_string()))
    }
}

/// The released attributes as claims of the same names: booleans stay booleans.
pub fn claims_of(release: &Release) -> Map<String, Value> {
    release
        .attributes
        .iter()
        .map(|(attr, value)| {
            let v = match value {
                Released::Bool(b) => Value::Bool(*b),
                Released::Text(t) => Value::String(t.clone()),
            };
            (attr.name(), v)
        })
        .collect()
}

fn find_client<'p>(policy: &'p Policy, client_id: &str) -> Option<(ServiceId, &'p OidcSettings)> {
    policy.services().iter().find_map(|s| match &s.access {
        Access::Oidc(o) if o.client_id == client_id => Some((s.id.clone(), o)),
        _ => None,
    })
}

fn authenticate_client<'p>(
    policy: &'p Policy,
    authorization: Option<&str>,
    form: &TokenForm,
) -> Result<(ServiceId, &'p OidcSettings), OidcError> {
    let basic = match authorization.and_then(|h| strip_scheme(h, "Basic")) {
        Some(b) => Some(parse_basic(b)?),
        None => None,
    };
    let (client_id, secret) = match (basic, &form.client_secret) {
        (Some(_), Some(_)) => {
            return Err(OidcError::InvalidRequest(
                "use one client authentication method, not two".into(),
            ));
        }
        (Some((id, secret)), None) => {
            if form.client_id.as_deref().is_some_and(|f| f != id) {
                return Err(OidcError::InvalidRequest(
                    "client_id differs from the Authorization header".into(),
                ));
            }
            (id, Some(secret))
        }
        (None, secret) => {
            let id = form
                .client_id
                .clone()
                .ok_or(OidcError::InvalidClient("no client authentication"))?;
            (id, secret.clone())
        }
    };
    let (service, client) =
        find_client(policy, &client_id).ok_or(OidcError::InvalidClient("unknown client"))?;
    match (&client.client_secret_sha256, secret) {
        (Some(expected), Some(secret)) => {
            let got = HEXLOWER.encode(&Sha256::digest(secret.as_bytes()));
            let expected = expected.to_ascii_lowercase();
            if !bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(OidcError::InvalidClient("client authentication failed"));
            }
        }
        (Some(_), None) => return Err(OidcError::InvalidClient("client authentication failed")),
        (None, Some(_)) => {
            return Err(OidcError::InvalidClient("a public client has no secret"));
        }
        (None, None) => {}
    }
    Ok((service, client))
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(b64: &str) -> Result<(String, String), OidcError> {
    let bad = || OidcError::InvalidClient("malformed Basic credentials");
    let raw = BASE64.decode(b64.trim().as_bytes()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = raw.split_once(':').ok_or_else(bad)?;
    Ok((form_decode(id), form_decode(secret)))
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The credentials after `scheme ` (the scheme is case-insensitive, RFC 9110 §11.1).
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// An S256 challenge: base64url of 32 bytes, 43 characters.
fn is_pkce_value(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn is_pkce_verifier(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `base` with the given parameters added to its query (an existing query is kept).
fn redirect_with(base: &str, params: &[(&str, Option<&str>)]) -> String {
    match Url::parse(base) {
        Ok(mut url) => {
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in params {
                    if let Some(v) = v {
                        q.append_pair(k, v);
                    }
                }
            }
            url.to_string()
        }
        // Registered redirect URIs are absolute; this is only reached for a bad config.
        Err(_) => base.to_owned(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            // Tokens and errors about them must not sit in any cache (RFC 6749 §5.1).
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

/// What the handlers need: the provider, the shared store, the clock and the current
/// policy (a function, so a reload is seen by the next request).
#[derive(Clone)]
pub struct OidcEndpoints {
    pub provider: Arc<Provider>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub policy: Arc<dyn Fn() -> Arc<Policy> + Send + Sync>,
}

impl std::fmt::Debug for OidcEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcEndpoints")
            .field("issuer", &self.provider.issuer)
            .finish_non_exhaustive()
    }
}

/// Discovery, JWKS, token and userinfo, to be merged into the public host's router.
/// `/oidc/authorize` is not here: it needs the session and the decision (the gateway's).
pub fn routes(endpoints: OidcEndpoints) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery_handler))
        .route("/oidc/jwks", get(jwks_handler))
        .route("/oidc/token", axum::routing::post(token_handler))
        .route(
            "/oidc/userinfo",
            get(userinfo_handler).post(userinfo_handler),
        )
        .with_state(endpoints)
}

pub async fn discovery_handler(State(e): State<OidcEndpoints>) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::to_value(e.provider.discovery()).unwrap_or_default(),
    )
}

pub async fn jwks_handler(State(e): State<OidcEndpoints>) -> Response {
    let mut resp = json_response(
        StatusCode::OK,
        &serde_json::to_value(e.provider.jwks()).unwrap_or_default(),
    );
    // Relying parties cache keys; a short max-age lets a rotation reach them quickly.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

pub async fn token_handler(
    State(e): State<OidcEndpoints>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: TokenForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => {
            return OidcError::InvalidRequest("the body is not a valid form".into())
                .into_response();
        }
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let policy = (e.policy)();
    match e
        .provider
        .token(
            e.store.as_ref(),
            &policy,
            authorization,
            &form,
            e.clock.now(),
        )
        .await
    {
        Ok(t) => json_response(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default()),
        Err(err) => err.into_response(),
    }
}

pub async fn userinfo_handler(State(e): State<OidcEndpoints>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match e
        .provider
        .userinfo(e.store.as_ref(), authorization, e.clock.now())
        .await
    {
        Ok(claims) => json_response(StatusCode::OK, &Value::Object(claims)),
        Err(err) => err.into_response(),
    }
}
