//! Login with Feide, the Norwegian education sector's identity federation, as an OpenID
//! Connect relying party built on the `openidconnect` crate.
//!
//! The flow, and where each step lives:
//!
//! 1. `GET /auth/feide/start?service=&path=` (`routes::feide::start`): the provider's metadata and keys
//!    (discovery from `issuer`, cached, see below) → a fresh `state` (a `Ticket`), `nonce`
//!    and PKCE S256 verifier → kept, with the service and path to return to, in a single-use
//!    `TicketKind::FeideLogin` ticket for `routes::feide::LOGIN_TTL` → 303 to Feide.
//! 2. Feide logs the student in and sends the browser to `GET /auth/feide/callback` (`routes::feide::callback`)
//!    with `code` and `state`. The ticket is taken (so a replayed callback finds nothing),
//!    the code is exchanged with `client_secret_basic` and the PKCE verifier, and the crate
//!    checks the id_token: signature against the provider's JWKS, issuer, audience, expiry
//!    and nonce (plus `at_hash` when present). Then userinfo (its `sub` must be the
//!    id_token's), and the extended userinfo when `extended_userinfo_url` is set.
//! 3. The claims become a [`FeideIdentity`] ([`identity`]), the identity a `Subject`
//!    ([`subject_for`]) through the policy's `feide_realms`, and the subject a new session,
//!    exactly as a library-card login ends.
//!
//! Choices the standards leave open:
//!
//! - **Scopes.** Default `config::feide::DEFAULT_SCOPES`: `openid`, `userid` (the stable `sub`),
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
//!   cards) and cached for `FeideSettings::metadata_ttl` (default 1 h); when a refresh
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
//!
//! Where the code is: the settings with the config (`config::feide`), the relying party in
//! [`client`], the claims and the subject they give in [`claims`], the HTTP client that
//! refuses plain `http` in [`http`], and the two handlers with the other routes
//! (`routes::feide`).

pub mod claims;
pub mod client;
pub mod error;
pub mod http;

pub use claims::{FeideClaims, FeideIdentity, Refusal, identity, subject_for};
pub use client::{FeideClient, PendingLogin, read_client_secret};
pub use error::FeideError;

#[cfg(test)]
mod tests;
