//! The released attributes of a session for a service, as the headers the proxy adds, made
//! once rather than on every request.

use std::sync::{Arc, Mutex};

use http::HeaderValue;
use rustc_hash::FxHashMap;

/// The released attributes as headers, per session and service, so the pseudonym's HMAC
/// and the headers are made once per session rather than on every request. An entry holds
/// for the policy it was made under (a reload makes new ones), the permit's institution and
/// day (an age turns over at midnight); the subject is the session's and does not change.
/// Bounded: emptied when it passes [`ReleaseCache::MAX_SESSIONS`] sessions.
#[derive(Default)]
pub struct ReleaseCache {
    // FxHash, not SipHash: every key in here was made by the gateway (a random id or its
    // SHA-256), so a client cannot pick keys that collide; a client's key is only looked up.
    by_session: Mutex<FxHashMap<String, Vec<ReleaseEntry>>>,
}

struct ReleaseEntry {
    /// Compared by address; the `Weak` keeps the address from being reused by a new policy.
    policy: std::sync::Weak<policy::Policy>,
    service: policy::ids::ServiceId,
    institution: u32,
    day: jiff::civil::Date,
    headers: Arc<[(http::HeaderName, HeaderValue)]>,
}

impl std::fmt::Debug for ReleaseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseCache")
    }
}

impl ReleaseCache {
    pub const MAX_SESSIONS: usize = 100_000;

    pub fn get_or_insert(
        &self,
        session: &str,
        policy: &Arc<policy::Policy>,
        permit: &policy::Permit,
        make: impl FnOnce() -> Vec<(http::HeaderName, HeaderValue)>,
    ) -> Arc<[(http::HeaderName, HeaderValue)]> {
        let matches = |e: &ReleaseEntry| {
            std::ptr::eq(e.policy.as_ptr(), Arc::as_ptr(policy))
                && e.service == permit.service
                && e.institution == permit.institution_index()
                && e.day == permit.day
        };
        if let Ok(map) = self.by_session.lock()
            && let Some(e) = map
                .get(session)
                .and_then(|es| es.iter().find(|e| matches(e)))
        {
            return Arc::clone(&e.headers);
        }
        let headers: Arc<[_]> = make().into();
        if let Ok(mut map) = self.by_session.lock() {
            if map.len() >= Self::MAX_SESSIONS {
                map.clear();
            }
            let entries = map.entry(session.to_owned()).or_default();
            // Entries of an older policy, institution or day are never used again.
            entries.retain(|e| e.service != permit.service);
            entries.push(ReleaseEntry {
                policy: Arc::downgrade(policy),
                service: permit.service.clone(),
                institution: permit.institution_index(),
                day: permit.day,
                headers: Arc::clone(&headers),
            });
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use jiff::Timestamp;
    use policy::ids::{InstitutionId, SubjectKey};
    use policy::subject::{Affiliation, Age, Subject};
    use policy::{Decision, Permit, Policy};

    use super::*;

    const POLICY: &str = r#"
[[institution]]
id = "NO-2390700"
name = "Sandefjordbiblioteket"
kind = "public_library"

[[institution]]
id = "NO-2390500"
name = "Tønsberg bibliotek"
kind = "public_library"

[[service]]
id = "avis"
name = "Avis"
access = "proxy"
release = ["pseudonym", "institution"]
[service.proxy]
origin = "https://avis.example"

[[entitlement]]
institution = "NO-2390700"
service = "avis"
from = 2020-01-01

[[entitlement]]
institution = "NO-2390500"
service = "avis"
from = 2020-01-01
"#;

    fn policy() -> Arc<Policy> {
        let (p, _) = policy::load_files(vec![("p.toml".into(), POLICY.into())]).unwrap();
        Arc::new(p)
    }

    fn permit(policy: &Policy, home: &str, at: &str) -> Permit {
        let subject = Subject {
            key: SubjectKey::new("card:NO-2390700:1"),
            affiliation: Affiliation::Patron,
            institutions: vec![InstitutionId::new(home)],
            age: Age::Unknown,
        };
        let now: Timestamp = at.parse().unwrap();
        match policy::decide(policy, &subject, "avis", None, now) {
            Decision::Permit(p) => p,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    #[test]
    fn release_headers_are_made_again_for_a_new_policy_institution_day_or_session() {
        let cache = ReleaseCache::default();
        let made = Cell::new(0);
        let get = |session: &str, policy: &Arc<Policy>, permit: &Permit| {
            cache.get_or_insert(session, policy, permit, || {
                made.set(made.get() + 1);
                vec![(
                    http::HeaderName::from_static("x-portvakt-n"),
                    HeaderValue::from(made.get()),
                )]
            })
        };
        let first = policy();
        let today = permit(&first, "NO-2390700", "2026-12-02T10:00:00Z");
        let a = get("s1", &first, &today);
        let again = get("s1", &first, &today);
        assert_eq!(made.get(), 1, "the same session, policy and permit: cached");
        assert_eq!(a, again);

        get("s2", &first, &today);
        assert_eq!(made.get(), 2, "another session has its own");

        let tomorrow = permit(&first, "NO-2390700", "2026-12-03T10:00:00Z");
        get("s1", &first, &tomorrow);
        assert_eq!(made.get(), 3, "a new day (an age can turn over)");

        let elsewhere = permit(&first, "NO-2390500", "2026-12-03T10:00:00Z");
        get("s1", &first, &elsewhere);
        assert_eq!(made.get(), 4, "another institution");

        let reloaded = policy();
        let after_reload = permit(&reloaded, "NO-2390500", "2026-12-03T10:00:00Z");
        let fresh = get("s1", &reloaded, &after_reload);
        assert_eq!(
            made.get(),
            5,
            "a reloaded policy (its release list may differ)"
        );
        assert_eq!(fresh[0].1, HeaderValue::from(5));
        get("s1", &reloaded, &after_reload);
        assert_eq!(made.get(), 5);
    }
}
