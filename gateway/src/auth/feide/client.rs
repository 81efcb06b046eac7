//! The OpenID Connect relying party that talks to Feide: discovery (cached), the
//! authorization URL with state, nonce and PKCE, the code exchange, the id_token checks,
//! userinfo and extended userinfo. See `auth::feide` for the flow and the choices made.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
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
use serde_json::Value;
use store::session::Ticket;

use super::claims::{FeideClaims, FeideIdentity, identity};
use super::error::FeideError;
use super::http::{FeideHttp, HttpError};
use crate::config::feide::FeideSettings;

/// Fewest seconds between two JWKS refetches caused by unknown key ids.
const JWKS_REFRESH_GAP: Duration = Duration::from_secs(10);
/// How soon a failed metadata refresh is tried again while the old metadata is used.
const METADATA_RETRY: Duration = Duration::from_secs(60);

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
        let request = http::Request::get(url)
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
