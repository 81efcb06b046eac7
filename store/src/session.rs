//! Sessions: opaque ids, what a login leaves behind, and single-use tickets.
//!
//! A login ends in a [`SessionData`], which the [`crate::store::Store`] keeps under a fresh
//! random [`SessionId`]; the browser holds only the id, in a cookie. Every later request
//! parses the cookie with [`SessionId::parse`] (a forged or mangled value is refused there,
//! before any store lookup) and asks the store for the data, which also pushes the idle
//! expiry forward. Tickets ([`Ticket`]) have the same shape and are single-use: the store
//! hands a ticket's value out once, then forgets it.
//!
//! **A new id at every login is the caller's job.** The login handler must always
//! `create_session` (which makes a new id) and then `delete_session` the id the browser
//! came with, if any, never reuse or upgrade it: an id planted in the browser before login
//! (session fixation) must not become a logged-in session.
//!
//! Everything here about a person has a redacting `Debug`, and ids and tickets print as
//! `<redacted>` too: an id in a log line is a stolen session.

use std::fmt;

use data_encoding::BASE64URL_NOPAD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use policy::ids::{InstitutionId, SubjectKey};
use policy::subject::{Affiliation, Age, Subject};

/// Random bytes in an id, a ticket or a CSRF token.
pub const TOKEN_BYTES: usize = 32;
/// Their length as base64url without padding: `ceil(32 * 4 / 3)`.
pub const TOKEN_CHARS: usize = 43;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("not a session id or ticket: it must be {TOKEN_CHARS} base64url characters")]
    Malformed,
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// 32 random bytes; the base of [`SessionId`] and [`Ticket`]. The store key (the
/// bytes' SHA-256) is worked out once per value, on first use: a session id kept by the
/// service hosts' cookie cache costs no hashing on later requests.
#[derive(Clone)]
struct Token([u8; TOKEN_BYTES], std::sync::OnceLock<[u8; 32]>);

impl Token {
    fn generate() -> Result<Self, SessionError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(SessionError::Random)?;
        Ok(Self(bytes, Default::default()))
    }

    /// Exactly 43 base64url characters that decode to 32 bytes. data-encoding's predefined
    /// encodings also refuse non-zero trailing bits, so each token has exactly one spelling
    /// and `parse(s).expose() == s`.
    fn parse(s: &str) -> Result<Self, SessionError> {
        if s.len() != TOKEN_CHARS {
            return Err(SessionError::Malformed);
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        match BASE64URL_NOPAD.decode_mut(s.as_bytes(), &mut bytes) {
            Ok(TOKEN_BYTES) => Ok(Self(bytes, Default::default())),
            _ => Err(SessionError::Malformed),
        }
    }

    fn expose(&self) -> String {
        BASE64URL_NOPAD.encode(&self.0)
    }

    /// The key a store files the token under: its SHA-256, so a dump of the store (a Redis
    /// snapshot, a persisted file) holds no id that could be replayed as a cookie.
    fn lookup_key(&self) -> [u8; 32] {
        *self.1.get_or_init(|| Sha256::digest(self.0).into())
    }
}

/// Constant-time, so a comparison never tells an attacker how many leading bytes matched.
impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Token {}

macro_rules! token_type {
    ($(#[$doc:meta])* $t:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $t(Token);

        impl $t {
            /// A fresh random value from the operating system.
            pub fn generate() -> Result<Self, SessionError> {
                Token::generate().map(Self)
            }
            /// Accepts exactly the shape `generate` makes, nothing else.
            pub fn parse(s: &str) -> Result<Self, SessionError> {
                Token::parse(s).map(Self)
            }
            /// The value for the cookie or URL, on purpose; never for a log.
            pub fn expose(&self) -> String {
                self.0.expose()
            }
            /// SHA-256 of the value: what a store keys its entry by.
            pub fn lookup_key(&self) -> [u8; 32] {
                self.0.lookup_key()
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }

        impl std::str::FromStr for $t {
            type Err = SessionError;
            fn from_str(s: &str) -> Result<Self, SessionError> {
                Self::parse(s)
            }
        }
    };
}

token_type!(
    /// A session's id: 32 random bytes, base64url without padding (43 characters), opaque.
    /// It carries nothing; everything is in the store.
    SessionId
);
token_type!(
    /// A single-use ticket (proxy entry, OIDC code, Feide login state): same shape as a
    /// [`SessionId`], redeemed once through `Store::take_ticket`.
    Ticket
);

/// What a ticket is for. Tickets of one kind are kept apart from every other kind, so an
/// OIDC code can never be redeemed as a proxy entry ticket, or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    /// `/__portvakt/enter?t=…` on a service host: bound to a session and a service, 60 s.
    ProxyEntry,
    /// An OpenID Connect authorization code for a vendor: 60 s.
    OidcCode,
    /// An OpenID Connect access token for a vendor's one userinfo call: 5 minutes.
    OidcAccess,
    /// The `state` of a Feide login in flight, with its PKCE verifier and nonce.
    FeideLogin,
    /// A POST-binding AuthnRequest parked while the patron logs in: 15 minutes.
    SamlRequest,
}

impl TicketKind {
    /// A stable name, for store keys (`ticket:proxy_entry:…`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProxyEntry => "proxy_entry",
            Self::OidcCode => "oidc_code",
            Self::OidcAccess => "oidc_access",
            Self::FeideLogin => "feide_login",
            Self::SamlRequest => "saml_request",
        }
    }
}

/// How the person logged in. A walk-in has no session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMethod {
    Card,
    Feide,
}

impl LoginMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Feide => "feide",
        }
    }
}

/// What a login yields, kept in the store for the session's life. Serializable (JSON) so a
/// shared store can hold it for every replica. `Debug` hides everything about the person.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionData {
    /// [`SubjectKey`]'s value: `card:NO-2390700:12345`, `feide:ola@vgs.example.no`.
    pub subject_key: String,
    #[serde(with = "affiliation_serde")]
    pub affiliation: Affiliation,
    /// Institution ids, home first, as the login resolved them.
    pub institutions: Vec<String>,
    /// As the login gave it: `{"kind":"date","value":"2008-11-23"}`, `{"kind":"year",
    /// "value":2008}` or `{"kind":"unknown"}`.
    #[serde(with = "age_serde")]
    pub age: Age,
    pub login_method: LoginMethod,
    pub created_at: Timestamp,
    /// The per-session CSRF token every form post of this session must carry (see
    /// [`SessionData::csrf_matches`]); 43 base64url characters.
    pub csrf: String,
    /// [`SessionData::subject_ref`], worked out at its first use. Never stored (the store
    /// holds the fields above) and never shown.
    #[serde(skip)]
    subject: SubjectCache,
}

/// A subject worked out once per session data: the session is shared (`Arc`) between the
/// requests that use it, and every proxied page view decides for its subject. It is only a
/// function of the other fields, so it does not take part in equality, and a clone starts
/// without it.
#[derive(Default)]
struct SubjectCache(std::sync::OnceLock<Subject>);

impl Clone for SubjectCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for SubjectCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SubjectCache {}

impl SessionData {
    /// The session of a fresh login, with a new random CSRF token.
    pub fn new(
        subject: &Subject,
        login_method: LoginMethod,
        created_at: Timestamp,
    ) -> Result<Self, SessionError> {
        Ok(Self {
            subject_key: subject.key.expose().to_owned(),
            affiliation: subject.affiliation,
            institutions: subject
                .institutions
                .iter()
                .map(|i| i.as_str().to_owned())
                .collect(),
            age: subject.age,
            login_method,
            created_at,
            csrf: Token::generate()?.expose(),
            subject: SubjectCache::default(),
        })
    }

    /// The subject for `policy::decide`, worked out once for this session data (the copy
    /// every request of a session shares) rather than once a request.
    pub fn subject_ref(&self) -> &Subject {
        self.subject.0.get_or_init(|| self.subject())
    }

    /// The subject for `policy::decide`, made afresh.
    pub fn subject(&self) -> Subject {
        Subject {
            key: SubjectKey::new(self.subject_key.clone()),
            affiliation: self.affiliation,
            institutions: self
                .institutions
                .iter()
                .map(|i| InstitutionId::from(i.as_str()))
                .collect(),
            age: self.age,
        }
    }

    /// Whether a form's CSRF token is this session's, compared in constant time. An empty
    /// token never matches, even against a (corrupt) empty stored one.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl fmt::Debug for SessionData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Affiliation, institutions and login method are bounded, public categories (they
        // are metric labels too); the rest identifies the person or the session.
        f.debug_struct("SessionData")
            .field("subject_key", &"<redacted>")
            .field("affiliation", &self.affiliation)
            .field("institutions", &self.institutions)
            .field("age", &self.age)
            .field("login_method", &self.login_method)
            .field("created_at", &self.created_at)
            .field("csrf", &"<redacted>")
            .finish()
    }
}

/// `Affiliation` as its policy name (`patron`, `walk_in`), the same spelling as everywhere
/// else, kept here so `subject.rs` stays free of serde.
mod affiliation_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use policy::subject::Affiliation;

    pub fn serialize<S: Serializer>(a: &Affiliation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Affiliation, D::Error> {
        let s = String::deserialize(d)?;
        Affiliation::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown affiliation {s:?}")))
    }
}

/// `Age` as `{"kind": "date" | "year" | "unknown", "value": …}`.
mod age_serde {
    use jiff::civil::Date;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use policy::subject::Age;

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", content = "value", rename_all = "snake_case")]
    enum Repr {
        Date(Date),
        Year(i16),
        Unknown,
    }

    pub fn serialize<S: Serializer>(age: &Age, s: S) -> Result<S::Ok, S::Error> {
        match *age {
            Age::BirthDate(d) => Repr::Date(d),
            Age::BirthYear(y) => Repr::Year(y),
            Age::Unknown => Repr::Unknown,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Age, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Date(d) => Age::BirthDate(d),
            Repr::Year(y) => Age::BirthYear(y),
            Repr::Unknown => Age::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn subject() -> Subject {
        Subject {
            key: SubjectKey::new("card:NO-2390700:12345"),
            affiliation: Affiliation::Patron,
            institutions: vec![InstitutionId::from("NO-2390700")],
            age: Age::BirthDate(date(2008, 11, 23)),
        }
    }

    #[test]
    fn generated_ids_round_trip_through_parse() {
        let id = SessionId::generate().unwrap();
        let s = id.expose();
        assert_eq!(s.len(), TOKEN_CHARS);
        assert_eq!(SessionId::parse(&s).unwrap(), id);
        assert_eq!(s.parse::<SessionId>().unwrap().expose(), s);
        assert_ne!(SessionId::generate().unwrap(), id);
    }

    #[test]
    fn parse_refuses_anything_but_the_exact_shape() {
        let good = SessionId::generate().unwrap().expose();
        let mut bad: Vec<String> = vec![
            String::new(),
            good[..42].to_owned(),
            format!("{good}A"),
            format!("{good}="),
            format!(" {}", &good[1..]),
            good.replace(|_: char| true, "+"),
            good.replace(|_: char| true, "/"),
            "é".repeat(21) + "A",
        ];
        // 43 characters carry 258 bits, 2 more than 32 bytes; they must be zero, so each
        // id has one spelling only. 'B' is 000001: its last two bits are not zero.
        bad.push(format!("{}B", "A".repeat(42)));
        for s in bad {
            assert!(SessionId::parse(&s).is_err(), "{s:?} was accepted");
            assert!(Ticket::parse(&s).is_err(), "{s:?} was accepted");
        }
    }

    #[test]
    fn ids_and_tickets_debug_print_redacted() {
        let id = SessionId::generate().unwrap();
        assert_eq!(format!("{id:?}"), "SessionId(<redacted>)");
        let t = Ticket::generate().unwrap();
        assert!(!format!("{t:?}").contains(&t.expose()));
    }

    #[test]
    fn lookup_key_is_not_the_id() {
        let id = SessionId::generate().unwrap();
        assert_ne!(
            id.lookup_key(),
            *BASE64URL_NOPAD.decode(id.expose().as_bytes()).unwrap()
        );
    }

    #[test]
    fn session_data_debug_hides_the_person() {
        let data = SessionData::new(&subject(), LoginMethod::Card, Timestamp::UNIX_EPOCH).unwrap();
        let dbg = format!("{data:?}");
        assert!(!dbg.contains("12345"), "{dbg}");
        assert!(!dbg.contains("2008"), "{dbg}");
        assert!(!dbg.contains(&data.csrf), "{dbg}");
    }

    #[test]
    fn the_shared_subject_is_worked_out_once_and_never_stored() {
        let data = SessionData::new(&subject(), LoginMethod::Card, Timestamp::UNIX_EPOCH).unwrap();
        let before = serde_json::to_value(&data).unwrap();
        let first = data.subject_ref();
        assert_eq!(*first, subject());
        assert!(std::ptr::eq(first, data.subject_ref()), "worked out once");
        // Not stored, not compared, not shown.
        assert_eq!(serde_json::to_value(&data).unwrap(), before);
        assert!(before.get("subject").is_none());
        let fresh: SessionData = serde_json::from_value(before).unwrap();
        assert_eq!(fresh, data);
        assert!(!format!("{data:?}").contains("12345"));
        // A copy works its own out, the same.
        assert_eq!(*data.clone().subject_ref(), subject());
    }

    #[test]
    fn session_data_serializes_to_the_documented_shape_and_back() {
        let data = SessionData::new(&subject(), LoginMethod::Card, Timestamp::UNIX_EPOCH).unwrap();
        let json: serde_json::Value = serde_json::to_value(&data).unwrap();
        assert_eq!(json["affiliation"], "patron");
        assert_eq!(json["login_method"], "card");
        assert_eq!(
            json["age"],
            serde_json::json!({"kind": "date", "value": "2008-11-23"})
        );
        assert_eq!(json["institutions"], serde_json::json!(["NO-2390700"]));
        let back: SessionData = serde_json::from_value(json).unwrap();
        assert_eq!(back, data);
        assert_eq!(back.subject(), subject());

        for (age, want) in [
            (
                Age::BirthYear(2008),
                serde_json::json!({"kind": "year", "value": 2008}),
            ),
            (Age::Unknown, serde_json::json!({"kind": "unknown"})),
        ] {
            let mut d = data.clone();
            d.age = age;
            d.affiliation = Affiliation::WalkIn;
            let json = serde_json::to_value(&d).unwrap();
            assert_eq!(json["age"], want);
            assert_eq!(json["affiliation"], "walk_in");
            assert_eq!(serde_json::from_value::<SessionData>(json).unwrap(), d);
        }
    }

    #[test]
    fn csrf_tokens_are_per_session_and_compared_exactly() {
        let a = SessionData::new(&subject(), LoginMethod::Feide, Timestamp::UNIX_EPOCH).unwrap();
        let b = SessionData::new(&subject(), LoginMethod::Feide, Timestamp::UNIX_EPOCH).unwrap();
        assert_ne!(a.csrf, b.csrf);
        assert_eq!(a.csrf.len(), TOKEN_CHARS);
        assert!(a.csrf_matches(&a.csrf.clone()));
        assert!(!a.csrf_matches(&b.csrf));
        assert!(!a.csrf_matches(""));
        assert!(!a.csrf_matches(&a.csrf[..42]));
    }
}
