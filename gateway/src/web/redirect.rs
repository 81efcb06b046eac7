//! The relative URLs the gateway sends a browser to, built from checked parts (a service
//! slug, a path that starts with a single `/`), never from raw request input.

/// `/go/{service}`, with the deep-link path when there is one.
pub fn go_location(service: &str, path: Option<&str>) -> String {
    match path {
        Some(p) => format!(
            "/go/{service}?{}",
            serde_urlencoded::to_string([("path", p)]).unwrap_or_default()
        ),
        None => format!("/go/{service}"),
    }
}

/// The entry link back from a service host that has no valid cookie: the same path, and
/// the host label so the ticket is made for that host.
pub fn go_location_for_host(service: &str, path: Option<&str>, label: &str) -> String {
    let mut pairs = Vec::new();
    if let Some(p) = path {
        pairs.push(("path", p));
    }
    if label != service {
        pairs.push(("host", label));
    }
    if pairs.is_empty() {
        return format!("/go/{service}");
    }
    format!(
        "/go/{service}?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

/// The login page for a service (and deep-link path).
pub fn login_location(service: &str, path: Option<&str>) -> String {
    let mut pairs = vec![("service", service)];
    if let Some(p) = path {
        pairs.push(("path", p));
    }
    format!(
        "/login?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

/// The login page that returns to a vendor's pending federated request (`next`).
pub fn login_then(service: &str, next: &str) -> String {
    format!(
        "/login?{}",
        serde_urlencoded::to_string([("service", service), ("next", next)]).unwrap_or_default()
    )
}

/// The login page again after a failed Feide login, for the service it was for.
pub fn login_again(service: Option<&str>) -> String {
    match service {
        Some(s) => format!("/login?service={s}"),
        None => "/login".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_relative_and_encoded() {
        assert_eq!(go_location("avis", Some("/a b")), "/go/avis?path=%2Fa+b");
        assert_eq!(go_location("avis", None), "/go/avis");
        assert_eq!(login_location("avis", None), "/login?service=avis");
        assert_eq!(
            go_location_for_host("avis", Some("/x?y=1"), "avis--1"),
            "/go/avis?path=%2Fx%3Fy%3D1&host=avis--1"
        );
        assert_eq!(go_location_for_host("avis", None, "avis"), "/go/avis");
        assert_eq!(
            login_then("ebok", "/saml/sso?resume=t"),
            "/login?service=ebok&next=%2Fsaml%2Fsso%3Fresume%3Dt"
        );
        assert_eq!(login_again(None), "/login");
    }
}
