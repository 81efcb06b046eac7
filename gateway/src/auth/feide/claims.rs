//! Claims → identity → subject: what Feide's userinfo says about a user, read leniently,
//! and the subject it gives under a policy (see `auth::feide` for the rules).

use std::fmt;

use policy::Policy;
use policy::ids::{InstitutionId, SubjectKey};
use policy::subject::{Affiliation, Age, Subject};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::FeideError;

/// The Feide claims Portvakt reads, from userinfo and extended userinfo alike. Each is kept
/// as raw JSON and read leniently (a string or an array of strings), since Feide's two
/// APIs differ in which attributes are arrays, and one odd claim must not fail a login.
#[derive(Clone, Default, Deserialize, Serialize)]
pub struct FeideClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) sub: Option<Value>,
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
