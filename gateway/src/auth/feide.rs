//! Login with Feide, the Norwegian education sector's identity federation, as an OpenID
//! Connect relying party built on the `openidconnect` crate.
//!
//! The flow, and where each step lives:
//!
//! 1. `GET /auth/feide/start?service=&path=` ([`start`]): the provider's metadata and keys
//!    (discovery from `issuer`, cached, see below) → a fresh `state` (a [`Ticket`]), `nonce`
//!    and PKCE S256 verifier → kept, with the service and path to return to, in a single-use
//!    [`TicketKind::FeideLogin`] ticket for [`LOGIN_TTL`] → 303 to Feide.
//! 2. Feide logs the student in and sends the browser to `GET /auth/feide/callback` ([`callback`])
//!    with `code` and `state`. The ticket is taken (so a replayed callback finds nothing),
//!    the code is exchanged with `client_secret_basic` and the PKCE verifier, and the crate
//!    checks the id_token: signature against the provider's JWKS, issuer, audience, expiry
//!    and nonce (plus `at_hash` when present). Then userinfo (its `sub` must be the
//!    id_token's), and the extended userinfo when `extended_userinfo_url` is set.
//! 3. The claims become a [`FeideIdentity`] ([`identity`]), the identity a [`Subject`]
//!    ([`subject_for`]) through the policy's `feide_realms`, and the subject a new session,
//!    exactly as a library-card login ends.
//!
//! Choices where the spec is silent:
//!
//! - **Scopes.** Default [`DEFAULT_SCOPES`]: `openid`, `userid` (the stable `sub`),
//!   `userid-feide` (the Feide name `user@realm` in `https://n.feide.no/claims/userid_sec`),
//!   `profile`, and `groups-org`, which is the Feide attribute group that releases
//!   `eduPersonAffiliation`; without it every user would get no service. Birth dates come
//!   from whichever attribute group the service has in Feide's customer portal; add its
//!   scope to `scopes` if needed. `openid` is always sent, listed or not.
//! - **The Feide user id** is the first `feide:` entry of `userid_sec`, else
//!   `https://n.feide.no/claims/eduPersonPrincipalName`, else `eduPersonPrincipalName`
//!   (userinfo first, then extended userinfo). It must be `user@realm` with one `@`; it is
//!   lower-cased whole, and the realm (after `@`) picks the institution. The subject key is
//!   `feide:<user id>`.
//! - **Affiliation** is read from both userinfo and extended userinfo (the union), each
//!   value trimmed and lower-cased; a scoped value (`student@realm`) counts by its part
//!   before `@`. `student` wins over `employee`, `faculty` and `staff`; anything else
//!   (`member`, `affiliate`, nothing) gives no service, with a page saying so.
//! - **Age**: `norEduPersonBirthDate` only in the `YYYYMMDD` form Feide documents (an old
//!   `DDMMYY` value is ignored rather than guessed at), else `feideYearOfBirth` (four
//!   digits, number or string), else unknown. Extended userinfo wins over userinfo.
//! - **Discovery** is lazy (a gateway whose Feide is down still starts and serves library
//!   cards) and cached for [`FeideSettings::metadata_ttl`] (default 1 h); when a refresh
//!   fails the old metadata is used and retried a minute later. An id_token signed with a
//!   key id the cache does not know makes one JWKS refetch (at most one per 10 s, so a
//!   flood of bad tokens cannot hammer Feide), then one more verification.
//! - **Algorithms**: only asymmetric signatures are accepted (RS*, PS*, ES256/384, EdDSA);
//!   the crate would otherwise accept HS256 keyed with the client secret.
//! - **URLs**: `issuer` and `extended_userinfo_url` must be `https`, or `http` on a loopback
//!   address (test providers); the HTTP client refuses plain `http` elsewhere too, so an
//!   endpoint from discovery cannot make a token travel in clear text.
//! - **Browser binding**: the ticket holds the SHA-256 of the browser's login cookie (the
//!   login form's CSRF nonce, set by the start step when missing), and the callback must
//!   come with the same cookie, so a callback link planted by someone else cannot log a
//!   browser into the planter's account (login CSRF).
//! - **`iss` in the callback** (RFC 9207): when present it must be the issuer.
//! - **Errors**: Feide unreachable or slow (10 s per request) → 503 "Feide svarer ikke";
//!   any other failure in the exchange or the checks → 502; a stale, replayed or foreign
//!   `state` → 400; a cancelled login → 400 with "try again"; unknown realm or no usable
//!   affiliation → 403. None of them reaches a panic, and no log line holds a Feide user
//!   id, a name, a birth date, a code or a token.

pub mod http;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreIdToken, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AuthType, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, DiscoveryError, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IssuerUrl, JsonWebKeySet, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, SignatureVerificationError, SubjectIdentifier,
    TokenResponse, UserInfoClaims, UserInfoError,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use toml::Spanned;

use self::http::{FeideHttp, HttpError};
use crate::app::App;
use crate::pages::{self, Texts};
use crate::pipeline::{self, Peer};
use crate::telemetry::{self, log_ip};
use policy::Policy;
use policy::ids::{InstitutionId, SubjectKey};
use policy::subject::{Affiliation, Age, Subject};
use store::session::{LoginMethod, Ticket, TicketKind};

/// Where the login starts (the button on the login page links here).
pub const START_PATH: &str = "/auth/feide/start";
/// The redirect URI registered with Feide: `<scheme>://<public_host>/auth/feide/callback`.
pub const CALLBACK_PATH: &str = "/auth/feide/callback";
/// Feide's issuer.
pub const FEIDE_ISSUER: &str = "https://auth.dataporten.no";
/// Scopes asked for when `scopes` is not set (see the module docs).
pub const DEFAULT_SCOPES: [&str; 5] = ["openid", "userid", "userid-feide", "profile", "groups-org"];
/// How long a login may take at Feide (password, MFA) before its state expires.
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// Fewest seconds between two JWKS refetches caused by unknown key ids.
const JWKS_REFRESH_GAP: Duration = Duration::from_secs(10);
/// How soon a failed metadata refresh is tried again while the old metadata is used.
const METADATA_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FeideError {
    #[error("[feide] client_secret_file {}: {message}", path.display())]
    Secret { path: PathBuf, message: String },
    #[error("[feide] {0}")]
    Config(String),
    #[error("cannot make the HTTP client for Feide: {0}")]
    Http(#[source] HttpError),
    #[error("Feide is not answering: {0}")]
    Unreachable(#[source] HttpError),
    #[error("Feide's answer cannot be used: {0}")]
    Provider(String),
    #[error("Feide refused the code exchange: {0}")]
    Refused(String),
    #[error("the id_token was refused: {0}")]
    IdToken(String),
    #[error("Feide gave no usable Feide user id (user@realm)")]
    NoUserId,
    #[error("no randomness for the login state: {0}")]
    Random(#[from] store::session::SessionError),
}

impl FeideError {
    /// Feide could not be reached or did not answer in time (the page says "try later"),
    /// as opposed to answering with something wrong.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }

    fn from_http(e: HttpError) -> Self {
        if e.is_unreachable() {
            Self::Unreachable(e)
        } else {
            Self::Provider(e.to_string())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[feide]` as written in `portvakt.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFeide {
    pub issuer: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    pub extended_userinfo_url: Option<Spanned<String>>,
}

/// The checked `[feide]` section.
#[derive(Clone, Debug)]
pub struct FeideSettings {
    /// Discovery base. Default [`FEIDE_ISSUER`].
    pub issuer: String,
    /// Required.
    pub client_id: String,
    /// Required. Its whole content is the secret, less one trailing newline.
    pub client_secret_file: PathBuf,
    /// Default [`DEFAULT_SCOPES`].
    pub scopes: Vec<String>,
    /// Feide's is `https://api.dataporten.no/userinfo/v1/userinfo`. Default none.
    pub extended_userinfo_url: Option<String>,
    /// Per request to Feide, connect to last byte. Default 10 s; not in the file.
    pub timeout: Duration,
    /// How long discovered metadata and keys are used before discovery runs again.
    /// Default 1 h; not in the file.
    pub metadata_ttl: Duration,
    /// CAs trusted beside the Mozilla roots (tests). Default none; not in the file.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl FeideSettings {
    /// Settings with every default but the client.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file: client_secret_file.into(),
            scopes: DEFAULT_SCOPES.map(str::to_owned).to_vec(),
            extended_userinfo_url: None,
            timeout: Duration::from_secs(10),
            metadata_ttl: Duration::from_secs(3600),
            extra_roots: Vec::new(),
        }
    }
}

impl FileFeide {
    /// Checks the section. Errors come as (byte offset in the file, message), every one
    /// found; `table_at` is where the section starts (for missing keys), `base` resolves a
    /// relative `client_secret_file`.
    pub fn check(
        &self,
        table_at: usize,
        base: &Path,
    ) -> Result<FeideSettings, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        let issuer = match &self.issuer {
            None => FEIDE_ISSUER.to_owned(),
            Some(v) => match check_url(v.get_ref(), false) {
                Ok(u) => u,
                Err(e) => {
                    errors.push((v.span().start, format!("[feide] issuer: {e}")));
                    String::new()
                }
            },
        };
        let client_id = match &self.client_id {
            Some(v) if !v.get_ref().trim().is_empty() => v.get_ref().clone(),
            Some(v) => {
                errors.push((v.span().start, "[feide] client_id is empty".to_owned()));
                String::new()
            }
            None => {
                errors.push((
                    table_at,
                    "[feide] client_id is not set: the client id Feide's customer portal gave this service".to_owned(),
                ));
                String::new()
            }
        };
        let client_secret_file = match &self.client_secret_file {
            Some(v) => {
                let p = Path::new(v.get_ref());
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                }
            }
            None => {
                errors.push((
                    table_at,
                    "[feide] client_secret_file is not set: a file holding the client secret from Feide's customer portal".to_owned(),
                ));
                PathBuf::new()
            }
        };
        let scopes = match &self.scopes {
            None => DEFAULT_SCOPES.map(str::to_owned).to_vec(),
            Some(v) => {
                let bad: Vec<&String> = v
                    .get_ref()
                    .iter()
                    .filter(|s| {
                        s.is_empty()
                            || !s
                                .bytes()
                                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                    })
                    .collect();
                if !bad.is_empty() {
                    errors.push((
                        v.span().start,
                        format!(
                            "[feide] scopes: {bad:?} are not scope names (no spaces or quotes)"
                        ),
                    ));
                }
                v.get_ref().clone()
            }
        };
        let extended_userinfo_url = match &self.extended_userinfo_url {
            None => None,
            Some(v) => match check_url(v.get_ref(), true) {
                Ok(u) => Some(u),
                Err(e) => {
                    errors.push((
                        v.span().start,
                        format!("[feide] extended_userinfo_url: {e}"),
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut settings = FeideSettings::new(issuer, client_id, client_secret_file);
        settings.scopes = scopes;
        settings.extended_userinfo_url = extended_userinfo_url;
        Ok(settings)
    }
}

/// An absolute `https` URL, or `http` to a loopback host; no fragment, and a query only
/// where `query_ok`.
pub fn check_url(s: &str, query_ok: bool) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("\"{s}\" is not a URL: {e}"))?;
    let host = u.host_str().unwrap_or("");
    match u.scheme() {
        "https" => {}
        "http" if http::is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "\"{s}\" must be https (plain http only to a loopback address, for tests)"
            ));
        }
        other => return Err(format!("\"{s}\": scheme {other} is not https")),
    }
    if host.is_empty() || !u.username().is_empty() || u.password().is_some() {
        return Err(format!("\"{s}\" needs a host and no user name"));
    }
    if u.fragment().is_some() || (!query_ok && u.query().is_some()) {
        return Err(format!("\"{s}\" must not have a query or fragment"));
    }
    // Kept as written: the issuer must match the discovery document's exactly.
    Ok(s.to_owned())
}

/// The secret from its file: the whole content less one trailing newline (`\n` or `\r\n`).
pub fn read_client_secret(path: &Path) -> Result<String, FeideError> {
    let err = |message: String| FeideError::Secret {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::from_utf8(bytes).map_err(|_| err("is not UTF-8 text".to_owned()))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    if text.is_empty() {
        return Err(err("is empty".to_owned()));
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// The OpenID Connect client
// ---------------------------------------------------------------------------------------

/// A client built from discovered metadata: authorization URL set, token and userinfo
/// endpoints as the provider announced them.
type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Discovered metadata (with its JWKS) and when to look again.
struct Cached {
    metadata: Arc<CoreProviderMetadata>,
    next_refresh: Instant,
    /// The last refetch of the key set for an unknown key id (discovery does not count:
    /// a key rotated just after it must still be found).
    kid_refresh: Option<Instant>,
}

/// The Feide relying party. One per gateway, shared by every request.
pub struct FeideClient {
    issuer: IssuerUrl,
    client_id: ClientId,
    secret: ClientSecret,
    scopes: Vec<String>,
    extended_userinfo_url: Option<String>,
    metadata_ttl: Duration,
    http: FeideHttp,
    /// A tokio mutex: held across discovery, so concurrent logins wait for one fetch
    /// instead of each starting their own.
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl fmt::Debug for FeideClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeideClient")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .finish_non_exhaustive()
    }
}

/// What the start step must keep for the callback.
pub struct PendingLogin {
    /// The `state`, also the key of the ticket.
    pub state: Ticket,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingLogin(<redacted>)")
    }
}

impl FeideClient {
    /// Reads the client secret and makes the HTTP client; contacts nobody.
    pub fn new(settings: &FeideSettings) -> Result<Self, FeideError> {
        let secret = read_client_secret(&settings.client_secret_file)?;
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| FeideError::Config(format!("issuer \"{}\": {e}", settings.issuer)))?;
        let http =
            FeideHttp::new(settings.timeout, &settings.extra_roots).map_err(FeideError::Http)?;
        Ok(Self {
            issuer,
            client_id: ClientId::new(settings.client_id.clone()),
            secret: ClientSecret::new(secret),
            scopes: settings.scopes.clone(),
            extended_userinfo_url: settings.extended_userinfo_url.clone(),
            metadata_ttl: settings.metadata_ttl,
            http,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// The provider's metadata and keys: cached, discovered when missing or stale.
    async fn metadata(&self) -> Result<Arc<CoreProviderMetadata>, FeideError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(c) = cache.as_ref()
            && now < c.next_refresh
        {
            return Ok(c.metadata.clone());
        }
        match CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http).await {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                *cache = Some(Cached {
                    metadata: metadata.clone(),
                    next_refresh: now + self.metadata_ttl,
                    kid_refresh: None,
                });
                Ok(metadata)
            }
            Err(e) => {
                let e = discovery_error(e, "discovery");
                match cache.as_mut() {
                    Some(c) => {
                        tracing::warn!(error = %e, "Feide discovery failed; using the metadata from before");
                        c.next_refresh = now + METADATA_RETRY;
                        Ok(c.metadata.clone())
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Fetches the JWKS again after an id_token named a key we do not have; at most once
    /// per [`JWKS_REFRESH_GAP`]. Returns the metadata to verify with.
    async fn refresh_jwks(
        &self,
        seen: &Arc<CoreProviderMetadata>,
    ) -> Result<Arc<CoreProviderMetadata>, FeideError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let Some(c) = cache.as_mut() else {
            return Ok(seen.clone());
        };
        // Another login refreshed meanwhile, or one did just now: use what is there.
        let too_soon = c
            .kid_refresh
            .is_some_and(|at| now.duration_since(at) < JWKS_REFRESH_GAP);
        if !Arc::ptr_eq(&c.metadata, seen) || too_soon {
            return Ok(c.metadata.clone());
        }
        c.kid_refresh = Some(now);
        let jwks = JsonWebKeySet::fetch_async(c.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| discovery_error(e, "the key set"))?;
        tracing::info!("Feide's signing keys fetched again for an unknown key id");
        let metadata = Arc::new((*c.metadata).clone().set_jwks(jwks));
        c.metadata = metadata.clone();
        Ok(metadata)
    }

    fn oidc_client(
        &self,
        metadata: &CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<OidcClient, FeideError> {
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| FeideError::Config(format!("redirect URI {redirect_uri}: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata.clone(),
            self.client_id.clone(),
            Some(self.secret.clone()),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(AuthType::BasicAuth))
    }

    /// Step 1: where to send the browser, and what to keep until it comes back.
    pub async fn begin(&self, redirect_uri: &str) -> Result<(String, PendingLogin), FeideError> {
        let metadata = self.metadata().await?;
        let client = self.oidc_client(&metadata, redirect_uri)?;
        let state = Ticket::generate()?;
        let state_value = state.expose();
        let nonce = Nonce::new_random();
        let nonce_value = nonce.secret().clone();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_value),
                move || nonce,
            )
            .set_pkce_challenge(challenge);
        // The crate always sends `openid` itself.
        for scope in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.url();
        Ok((
            url.to_string(),
            PendingLogin {
                state,
                nonce: nonce_value,
                pkce_verifier: verifier.secret().clone(),
            },
        ))
    }

    /// Step 2: the code for tokens, the id_token checked, the user's claims read.
    pub async fn complete(
        &self,
        redirect_uri: &str,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<FeideIdentity, FeideError> {
        let metadata = self.metadata().await?;
        let client = self.oidc_client(&metadata, redirect_uri)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| FeideError::Provider("the metadata names no token endpoint".into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = token
            .id_token()
            .ok_or_else(|| FeideError::IdToken("the token answer has no id_token".into()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let (client, subject) = match verify(&client, id_token, &nonce, token.access_token()) {
            Ok(subject) => (client, subject),
            Err(e) if is_unknown_key(&e) => {
                let metadata = self.refresh_jwks(&metadata).await?;
                let client = self.oidc_client(&metadata, redirect_uri)?;
                let subject = verify(&client, id_token, &nonce, token.access_token())
                    .map_err(|e| FeideError::IdToken(describe_claims_error(&e)))?;
                (client, subject)
            }
            Err(e) => return Err(FeideError::IdToken(describe_claims_error(&e))),
        };
        let userinfo: UserInfoClaims<FeideClaims, CoreGenderClaim> = client
            .user_info(token.access_token().clone(), Some(subject.clone()))
            .map_err(|_| FeideError::Provider("the metadata names no userinfo endpoint".into()))?
            .request_async(&self.http)
            .await
            .map_err(userinfo_error)?;
        let extended = match &self.extended_userinfo_url {
            Some(url) => Some(
                self.extended_userinfo(url, token.access_token(), &subject)
                    .await?,
            ),
            None => None,
        };
        identity(userinfo.additional_claims(), extended.as_ref())
    }

    /// Feide's "extended userinfo": directory attributes for the access token's user.
    async fn extended_userinfo(
        &self,
        url: &str,
        token: &AccessToken,
        subject: &SubjectIdentifier,
    ) -> Result<FeideClaims, FeideError> {
        let request = ::http::Request::get(url)
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", token.secret()))
            .body(Vec::new())
            .map_err(|e| FeideError::Config(format!("extended_userinfo_url: {e}")))?;
        let response = self
            .http
            .send(request)
            .await
            .map_err(FeideError::from_http)?;
        if !response.status().is_success() {
            return Err(FeideError::Provider(format!(
                "the extended userinfo answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let claims: FeideClaims = serde_json::from_slice(response.body()).map_err(|_| {
            FeideError::Provider("the extended userinfo is not a JSON object".into())
        })?;
        // Newer versions of the API carry `sub`; when they do it must be this user's.
        if let Some(sub) = &claims.sub
            && sub.as_str() != Some(subject.as_str())
        {
            return Err(FeideError::Provider(
                "the extended userinfo is about another user".into(),
            ));
        }
        Ok(claims)
    }
}

/// Checks an id_token and returns its subject. `at_hash`, when present, must match the
/// access token (OIDC Core 3.1.3.6).
fn verify(
    client: &OidcClient,
    id_token: &CoreIdToken,
    nonce: &Nonce,
    access_token: &AccessToken,
) -> Result<SubjectIdentifier, ClaimsVerificationError> {
    use CoreJwsSigningAlgorithm as A;
    let verifier = client.id_token_verifier().set_allowed_algs([
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EdDsa,
    ]);
    let claims = id_token.claims(&verifier, nonce)?;
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(ClaimsVerificationError::SignatureVerification)?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(ClaimsVerificationError::SignatureVerification)?;
        let actual = AccessTokenHash::from_token(access_token, alg, key)
            .map_err(|e| ClaimsVerificationError::Unsupported(e.to_string()))?;
        if actual != *expected {
            return Err(ClaimsVerificationError::Other(
                "at_hash does not match the access token".into(),
            ));
        }
    }
    Ok(claims.subject().clone())
}

fn is_unknown_key(e: &ClaimsVerificationError) -> bool {
    matches!(
        e,
        ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)
    )
}

/// What went wrong with an id_token, without the subject (the crate puts `sub` values in
/// some messages).
fn describe_claims_error(e: &ClaimsVerificationError) -> String {
    use ClaimsVerificationError as E;
    match e {
        E::Expired(_) => "it has expired".into(),
        E::InvalidAudience(m) => format!("wrong audience: {m}"),
        E::InvalidIssuer(m) => format!("wrong issuer: {m}"),
        E::InvalidNonce(_) => "wrong nonce".into(),
        E::InvalidSubject(_) => "wrong subject".into(),
        E::SignatureVerification(s) => format!("signature: {s}"),
        E::InvalidAuthContext(_) | E::InvalidAuthTime(_) => "authentication context".into(),
        E::Unsupported(m) | E::Other(m) => m.clone(),
        _ => "not accepted".into(),
    }
}

fn discovery_error(e: DiscoveryError<HttpError>, what: &str) -> FeideError {
    match e {
        DiscoveryError::Request(e) => FeideError::from_http(e),
        DiscoveryError::Response(status, _, _) => {
            FeideError::Provider(format!("{what} answered HTTP {}", status.as_u16()))
        }
        DiscoveryError::Validation(m) => FeideError::Provider(format!("{what}: {m}")),
        DiscoveryError::Parse(_) => FeideError::Provider(format!("{what} cannot be read")),
        other => FeideError::Provider(format!("{what}: {other}")),
    }
}

fn token_error<T: openidconnect::ErrorResponse + 'static>(
    e: RequestTokenError<HttpError, T>,
) -> FeideError {
    match e {
        RequestTokenError::Request(e) => FeideError::from_http(e),
        // The error code only (invalid_grant, invalid_client): its description is free
        // text from the provider.
        RequestTokenError::ServerResponse(r) => {
            let code = serde_json::to_value(&r)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| "error".to_owned());
            FeideError::Refused(code)
        }
        RequestTokenError::Parse(_, _) => {
            FeideError::Provider("the token answer cannot be read".into())
        }
        RequestTokenError::Other(m) => FeideError::Provider(format!("token endpoint: {m}")),
    }
}

fn userinfo_error(e: UserInfoError<HttpError>) -> FeideError {
    match e {
        UserInfoError::Request(e) => FeideError::from_http(e),
        UserInfoError::Response(status, _, _) => {
            FeideError::Provider(format!("userinfo answered HTTP {}", status.as_u16()))
        }
        UserInfoError::ClaimsVerification(e) => {
            FeideError::Provider(format!("userinfo: {}", describe_claims_error(&e)))
        }
        // Parse errors may quote a claim's value: say only that it failed.
        UserInfoError::Parse(_) => FeideError::Provider("userinfo cannot be read".into()),
        _ => FeideError::Provider("userinfo failed".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Claims → identity → subject
// ---------------------------------------------------------------------------------------

/// The Feide claims Portvakt reads, from userinfo and extended userinfo alike. Each is kept
/// as raw JSON and read leniently (a string or an array of strings), since Feide's two
/// APIs differ in which attributes are arrays, and one odd claim must not fail a login.
#[derive(Clone, Default, Deserialize, Serialize)]
pub struct FeideClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<Value>,
    #[serde(
        rename = "https://n.feide.no/claims/userid_sec",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    userid_sec: Option<Value>,
    #[serde(
        rename = "https://n.feide.no/claims/eduPersonPrincipalName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    feide_eppn: Option<Value>,
    #[serde(
        rename = "eduPersonPrincipalName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    eppn: Option<Value>,
    #[serde(
        rename = "eduPersonAffiliation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    affiliation: Option<Value>,
    #[serde(
        rename = "norEduPersonBirthDate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    birth_date: Option<Value>,
    #[serde(
        rename = "feideYearOfBirth",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    year_of_birth: Option<Value>,
}

impl openidconnect::AdditionalClaims for FeideClaims {}

impl fmt::Debug for FeideClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FeideClaims(<redacted>)")
    }
}

/// Strings from a claim that may be a string, a number or an array of them.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(Value::Array(a)) => a.iter().flat_map(|x| strings(Some(x))).collect(),
        _ => Vec::new(),
    }
}

/// Who logged in, as Feide says. `Debug` hides the user id and the age.
#[derive(Clone, PartialEq, Eq)]
pub struct FeideIdentity {
    /// `kari@skole.no`, lower case.
    pub user_id: String,
    pub affiliation: Option<Affiliation>,
    pub age: Age,
}

impl fmt::Debug for FeideIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeideIdentity")
            .field("user_id", &"<redacted>")
            .field("realm", &self.realm())
            .field("affiliation", &self.affiliation)
            .field("age", &self.age)
            .finish()
    }
}

impl FeideIdentity {
    /// The part after `@`: the institution's Feide realm.
    pub fn realm(&self) -> &str {
        self.user_id.rsplit_once('@').map_or("", |(_, r)| r)
    }

    /// `feide:<user id>`.
    pub fn subject_key(&self) -> SubjectKey {
        SubjectKey::new(format!("feide:{}", self.user_id))
    }
}

/// A Feide user id: `user@realm`, one `@`, both parts non-empty, no spaces or controls.
fn clean_user_id(s: &str) -> Option<String> {
    let s = s.trim();
    let (user, realm) = s.split_once('@')?;
    let ok = !user.is_empty()
        && !realm.is_empty()
        && !realm.contains('@')
        && s.len() <= 256
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| s.to_lowercase())
}

/// The identity in userinfo (and extended userinfo, when asked for). See the module docs
/// for the order in which claims are tried.
pub fn identity(
    userinfo: &FeideClaims,
    extended: Option<&FeideClaims>,
) -> Result<FeideIdentity, FeideError> {
    let sources: Vec<&FeideClaims> = std::iter::once(userinfo).chain(extended).collect();
    let user_id = sources
        .iter()
        .flat_map(|c| {
            let sec = strings(c.userid_sec.as_ref()).into_iter().filter_map(|u| {
                let lower = u.get(..6)?.to_ascii_lowercase();
                (lower == "feide:").then(|| u[6..].to_owned())
            });
            sec.chain(strings(c.feide_eppn.as_ref()))
                .chain(strings(c.eppn.as_ref()))
                .collect::<Vec<_>>()
        })
        .find_map(|u| clean_user_id(&u))
        .ok_or(FeideError::NoUserId)?;

    let roles: Vec<String> = sources
        .iter()
        .flat_map(|c| strings(c.affiliation.as_ref()))
        .map(|a| {
            let a = a.trim().to_ascii_lowercase();
            a.split_once('@').map_or(a.clone(), |(r, _)| r.to_owned())
        })
        .collect();
    let affiliation = if roles.iter().any(|r| r == "student") {
        Some(Affiliation::Student)
    } else if roles
        .iter()
        .any(|r| matches!(r.as_str(), "employee" | "faculty" | "staff"))
    {
        Some(Affiliation::Staff)
    } else {
        None
    };

    // Extended userinfo (the directory) first, then userinfo.
    let by_preference: Vec<&FeideClaims> = sources.iter().rev().copied().collect();
    let birth_date = by_preference
        .iter()
        .flat_map(|c| strings(c.birth_date.as_ref()))
        .find_map(|d| parse_birth_date(&d));
    let birth_year = by_preference
        .iter()
        .flat_map(|c| strings(c.year_of_birth.as_ref()))
        .find_map(|y| parse_birth_year(&y));
    let age = match (birth_date, birth_year) {
        (Some(d), _) => Age::BirthDate(d),
        (None, Some(y)) => Age::BirthYear(y),
        (None, None) => Age::Unknown,
    };
    Ok(FeideIdentity {
        user_id,
        affiliation,
        age,
    })
}

/// `YYYYMMDD`, a real calendar date.
pub fn parse_birth_date(s: &str) -> Option<jiff::civil::Date> {
    let s = s.trim();
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i16 = s[..4].parse().ok()?;
    let m: i8 = s[4..6].parse().ok()?;
    let d: i8 = s[6..].parse().ok()?;
    jiff::civil::Date::new(y, m, d).ok()
}

/// Four digits, from 1900.
pub fn parse_birth_year(s: &str) -> Option<i16> {
    let s = s.trim();
    if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i16>().ok().filter(|y| *y >= 1900)
}

/// Why a Feide user gets no session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No institution in the policy has this realm in `feide_realms`.
    UnknownRealm,
    /// The institution is known, but the user is neither student nor staff.
    NoAffiliation { institution: InstitutionId },
}

/// The subject for a Feide identity under a policy.
pub fn subject_for(identity: &FeideIdentity, policy: &Policy) -> Result<Subject, Refusal> {
    let institution = policy
        .institution_for_realm(identity.realm())
        .ok_or(Refusal::UnknownRealm)?;
    let affiliation = identity.affiliation.ok_or_else(|| Refusal::NoAffiliation {
        institution: institution.id.clone(),
    })?;
    Ok(Subject {
        key: identity.subject_key(),
        affiliation,
        institutions: vec![institution.id.clone()],
        age: identity.age,
    })
}

// ---------------------------------------------------------------------------------------
// The handlers
// ---------------------------------------------------------------------------------------

/// The page texts of a Feide login, in one language.
#[derive(Debug)]
pub struct FeideTexts {
    pub button: &'static str,
    pub title: &'static str,
    pub down: &'static str,
    pub failed: &'static str,
    pub expired: &'static str,
    pub cancelled: &'static str,
    pub unknown_school: &'static str,
    pub no_role: &'static str,
    /// On the start page, before the institution's name.
    pub logged_in: &'static str,
}

pub static NB: FeideTexts = FeideTexts {
    button: "Logg inn med Feide",
    title: "Innlogging med Feide",
    down: "Feide svarer ikke akkurat nå. Prøv igjen om litt.",
    failed: "Innloggingen med Feide kunne ikke fullføres. Prøv igjen om litt.",
    expired: "Innloggingen var utløpt eller allerede brukt. Prøv å logge inn på nytt.",
    cancelled: "Du avbrøt innloggingen med Feide.",
    unknown_school: "Skolen din er ikke med i denne tjenesten.",
    no_role: "Feide-brukeren din gir ikke tilgang her. Tjenestene er for elever og ansatte ved skolene som er med.",
    logged_in: "Du er logget inn med Feide fra",
};

pub static EN: FeideTexts = FeideTexts {
    button: "Log in with Feide",
    title: "Logging in with Feide",
    down: "Feide is not answering right now. Please try again in a little while.",
    failed: "The login with Feide could not be completed. Please try again in a little while.",
    expired: "This login has expired or has already been used. Please log in again.",
    cancelled: "You cancelled the login with Feide.",
    unknown_school: "Your school is not part of this service.",
    no_role: "Your Feide user does not give access here. The services are for students and staff of the schools taking part.",
    logged_in: "You are logged in with Feide from",
};

/// The Feide texts in the page's language.
pub fn texts(t: &Texts) -> &'static FeideTexts {
    if t.lang == "en" { &EN } else { &NB }
}

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
    (texts(t).button, href)
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

fn count(app: &App, institution: &str, outcome: &str) {
    app.metrics.inc(
        telemetry::LOGINS,
        &[("institution", institution), ("outcome", outcome)],
    );
}

fn login_again(service: Option<&str>) -> String {
    match service {
        Some(s) => format!("/login?service={s}"),
        None => "/login".to_owned(),
    }
}

/// The page for a failure talking to Feide.
fn feide_failed(t: &'static Texts, e: &FeideError, service: Option<&str>) -> Response {
    let ft = texts(t);
    let (status, text) = if e.is_unreachable() {
        (StatusCode::SERVICE_UNAVAILABLE, ft.down)
    } else {
        (StatusCode::BAD_GATEWAY, ft.failed)
    };
    let again = login_again(service);
    pipeline::message(t, status, ft.title, text, Some((&again, t.try_again)))
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
) -> Response {
    let t = pages::language(&headers, q.lang.as_deref());
    let Some(feide) = app.feide.clone() else {
        return pipeline::not_found_page(t);
    };
    let service = pipeline::clean_service(q.service.as_deref());
    // A deep link only makes sense inside a service.
    let path = service
        .as_ref()
        .and_then(|_| pipeline::clean_path(q.path.as_deref()));
    let unavailable = || {
        pipeline::message(
            t,
            StatusCode::SERVICE_UNAVAILABLE,
            t.error_title,
            t.store_down,
            None,
        )
    };
    let login_cookie = pipeline::login_cookie(&app);
    let (browser, fresh) =
        match pipeline::cookie(&headers, login_cookie).filter(|v| plausible_cookie(v)) {
            Some(v) => (v.to_owned(), false),
            None => {
                let v = pipeline::random_token();
                if v.is_empty() {
                    return unavailable();
                }
                (v, true)
            }
        };
    let redirect_uri = app.public_url(CALLBACK_PATH);
    let (url, pending) = match feide.begin(&redirect_uri).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a Feide login");
            count(
                &app,
                "-",
                if e.is_unreachable() {
                    "idp_unreachable"
                } else {
                    "idp_error"
                },
            );
            return feide_failed(t, &e, service.as_deref());
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
        return unavailable();
    }
    let mut resp = pipeline::see_other(&url);
    if fresh {
        resp.headers_mut().append(
            header::SET_COOKIE,
            pipeline::set_cookie(&app, login_cookie, &browser, Some(3600)),
        );
    }
    resp
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
) -> Response {
    let t = pages::language(&headers, None);
    let ft = texts(t);
    let ip = app.client_ip(peer.0.ip(), &headers);
    let Some(feide) = app.feide.clone() else {
        return pipeline::not_found_page(t);
    };
    let expired = |service: Option<&str>| {
        let again = login_again(service);
        pipeline::message(
            t,
            StatusCode::BAD_REQUEST,
            ft.title,
            ft.expired,
            Some((&again, t.try_again)),
        )
    };
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let Some(ticket) = q.state.as_deref().and_then(|s| Ticket::parse(s).ok()) else {
        count(&app, "-", "expired");
        return expired(None);
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
            count(&app, "-", "expired");
            return expired(None);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read a Feide login state");
            return pipeline::message(
                t,
                StatusCode::SERVICE_UNAVAILABLE,
                t.error_title,
                t.store_down,
                None,
            );
        }
    };
    let service = state.service.as_deref();
    let same_browser = pipeline::cookie(&headers, pipeline::login_cookie(&app)).is_some_and(|c| {
        subtle::ConstantTimeEq::ct_eq(browser_binding(c).as_bytes(), state.browser.as_bytes())
            .into()
    });
    if !same_browser {
        tracing::info!(client = %log_ip(ip), "Feide callback from another browser than the one that started it");
        count(&app, "-", "expired");
        return expired(service);
    }
    if let Some(error) = q.error.as_deref() {
        let again = login_again(service);
        if error == "access_denied" {
            count(&app, "-", "cancelled");
            return pipeline::message(
                t,
                StatusCode::BAD_REQUEST,
                ft.title,
                ft.cancelled,
                Some((&again, t.try_again)),
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
        count(&app, "-", "idp_error");
        return pipeline::message(
            t,
            StatusCode::BAD_GATEWAY,
            ft.title,
            ft.failed,
            Some((&again, t.try_again)),
        );
    }
    if let Some(iss) = q.iss.as_deref()
        && iss != feide.issuer()
    {
        tracing::warn!("Feide callback names another issuer (mix-up?)");
        count(&app, "-", "idp_error");
        return feide_failed(t, &FeideError::Provider("wrong iss".into()), service);
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        count(&app, "-", "expired");
        return expired(service);
    };
    let redirect_uri = app.public_url(CALLBACK_PATH);
    let identity = match feide
        .complete(&redirect_uri, code, &state.nonce, &state.pkce_verifier)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, client = %log_ip(ip), "Feide login failed");
            count(
                &app,
                "-",
                if e.is_unreachable() {
                    "idp_unreachable"
                } else {
                    "idp_error"
                },
            );
            return feide_failed(t, &e, service);
        }
    };
    let policy = app.policy();
    let subject = match subject_for(&identity, &policy) {
        Ok(s) => s,
        Err(Refusal::UnknownRealm) => {
            // The realm names a school, not a person: safe to log, and what an operator
            // needs to add it to `feide_realms`.
            tracing::info!(
                realm = identity.realm(),
                "Feide login from a realm no institution has"
            );
            count(&app, "-", "unknown_realm");
            return pipeline::message(
                t,
                StatusCode::FORBIDDEN,
                t.denied_title,
                ft.unknown_school,
                None,
            );
        }
        Err(Refusal::NoAffiliation { institution }) => {
            tracing::info!(institution = %institution, "Feide user is neither student nor staff");
            count(&app, institution.as_str(), "no_affiliation");
            return pipeline::message(t, StatusCode::FORBIDDEN, t.denied_title, ft.no_role, None);
        }
    };
    let institution = subject
        .institutions
        .first()
        .map_or("-", |i| i.as_str())
        .to_owned();
    let unavailable = || {
        pipeline::message(
            t,
            StatusCode::SERVICE_UNAVAILABLE,
            t.error_title,
            t.store_down,
            None,
        )
    };
    let Some(id) =
        pipeline::begin_session(&app, &headers, &subject, &institution, LoginMethod::Feide).await
    else {
        return unavailable();
    };
    count(&app, &institution, "ok");
    tracing::info!(
        institution,
        affiliation = %subject.affiliation,
        client = %log_ip(ip),
        "login with Feide"
    );
    let location = match service {
        Some(s) => pipeline::go_location(s, state.path.as_deref()),
        None => "/".to_owned(),
    };
    let mut resp = pipeline::see_other(&location);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        pipeline::set_cookie(&app, pipeline::session_cookie(&app), &id.expose(), None),
    );
    h.append(
        header::SET_COOKIE,
        pipeline::set_cookie(&app, pipeline::login_cookie(&app), "", Some(0)),
    );
    resp
}

#[cfg(test)]
mod tests;
