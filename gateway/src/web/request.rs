//! What handlers take from a request besides its headers: the peer address, and the few
//! values that travel through redirects, each checked before it is used (a service slug, a
//! local deep-link path), so nothing from a request can make an open redirect.

use std::net::SocketAddr;

/// The peer address of the connection, put in each request's extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Only a service slug may travel through the login form; anything else is dropped.
pub fn clean_service(s: Option<&str>) -> Option<String> {
    s.filter(|s| {
        !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
    .map(str::to_owned)
}

/// A deep-link path: starts with exactly one `/`, no backslash, no control characters.
pub fn clean_path(p: Option<&str>) -> Option<String> {
    p.filter(|p| {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.contains('\\')
            && !p.chars().any(char::is_control)
            && p.len() <= 2048
    })
    .map(str::to_owned)
}

/// Where a login may return to besides an entry link: a vendor's pending federated
/// request on this host, and nowhere else.
pub fn clean_next(n: Option<&str>) -> Option<String> {
    clean_path(n).filter(|n| n.starts_with("/saml/sso?") || n.starts_with("/oidc/authorize?"))
}

/// A fresh random value for a nonce cookie or a form token (192 bits, base64url); `None`
/// when the system has no randomness, in which case there can be no safe token and the
/// request must fail.
pub fn random_token() -> Option<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).ok()?;
    Some(data_encoding::BASE64URL_NOPAD.encode(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slugs_and_local_paths_travel() {
        assert_eq!(clean_service(Some("avis")), Some("avis".into()));
        assert_eq!(clean_service(Some("https://evil.example")), None);
        assert_eq!(clean_service(Some("AVIS")), None);
        assert_eq!(
            clean_path(Some("/artikkel/1?x=2")),
            Some("/artikkel/1?x=2".into())
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "x",
            "/a\r\nb",
        ] {
            assert_eq!(clean_path(Some(bad)), None, "{bad}");
        }
        assert_eq!(
            clean_next(Some("/saml/sso?SAMLRequest=x")),
            Some("/saml/sso?SAMLRequest=x".into())
        );
        assert_eq!(clean_next(Some("/go/avis")), None);
        assert_eq!(random_token().map(|t| t.len()), Some(32));
    }
}
