//! Service-host cookies whose MAC has been checked, so the HMAC is not computed again for
//! every request of the same browser.

use std::sync::Mutex;

use rustc_hash::FxHashMap;
use store::session::SessionId;

/// Service-host cookies whose mac has been checked, each with the host label it binds to:
/// a browser sends the same cookie with every request, and checking its HMAC-SHA-256 each
/// time was a tenth of a proxied request's instructions. Only a cookie that passed the
/// check is kept, and only for its label, so the answer is the check's. Bounded: emptied
/// when it passes [`VerifiedCookies::MAX`] cookies. The cookie names a session, which the
/// store is still asked for on every request (an ended session ends access at once).
#[derive(Default)]
pub struct VerifiedCookies {
    // FxHash, not SipHash: every key in here was made by the gateway (a random id or its
    // SHA-256), so a client cannot pick keys that collide; a client's key is only looked up.
    labels: Mutex<FxHashMap<Box<str>, Verified>>,
}

/// A checked cookie's host label and the session it names.
type Verified = (Box<str>, SessionId);

impl std::fmt::Debug for VerifiedCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifiedCookies")
    }
}

impl VerifiedCookies {
    pub const MAX: usize = 100_000;

    /// The session of a cookie checked before for `label`.
    pub fn get(&self, cookie: &str, label: &str) -> Option<SessionId> {
        let m = self.labels.lock().ok()?;
        let (l, session) = m.get(cookie)?;
        (**l == *label).then(|| session.clone())
    }

    pub fn insert(&self, cookie: &str, label: &str, session: &SessionId) {
        // Worked out now, so that every copy handed out carries it.
        let _ = session.lookup_key();
        if let Ok(mut m) = self.labels.lock() {
            if m.len() >= Self::MAX {
                m.clear();
            }
            m.insert(cookie.into(), (label.into(), session.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_cookie_holds_only_for_its_label_and_the_cache_is_bounded() {
        let c = VerifiedCookies::default();
        let s = SessionId::generate().unwrap();
        assert!(c.get("abc.mac", "avis").is_none());
        c.insert("abc.mac", "avis", &s);
        assert!(c.get("abc.mac", "avis") == Some(s.clone()));
        assert!(c.get("abc.mac", "film").is_none(), "another host's label");
        assert!(c.get("abc.maC", "avis").is_none(), "another mac");
        for i in 0..VerifiedCookies::MAX {
            c.insert(&format!("s{i}.m"), "avis", &s);
        }
        // Emptied on passing the bound, then filled again.
        assert!(c.get("abc.mac", "avis").is_none());
        assert!(
            c.get(&format!("s{}.m", VerifiedCookies::MAX - 1), "avis")
                .is_some()
        );
        assert!(c.labels.lock().unwrap().len() <= VerifiedCookies::MAX);
    }
}
