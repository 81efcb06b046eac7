//! The gateway's own cookies: one definition of each name, one `Set-Cookie` builder, and
//! reading a cookie from a request's `Cookie` headers by bytes.
//!
//! Every cookie is `HttpOnly; SameSite=Lax; Path=/` with no `Domain`, so each host keeps
//! its own. Under https each name gets the `__Host-` prefix and `Secure`, which browsers
//! accept only on exactly those terms: a cookie set on a service host can then never be
//! set for another host, or read by one.

use http::{HeaderMap, HeaderValue, header};

/// The cookies the gateway sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cookie {
    /// The login session, on the public host.
    Session,
    /// The login form's CSRF nonce, and the browser binding of a Feide login.
    Login,
    /// A service host's own cookie: the session, bound by a MAC to that host.
    Service,
}

impl Cookie {
    pub const ALL: [Cookie; 3] = [Cookie::Session, Cookie::Login, Cookie::Service];

    /// The name over http, and with the `__Host-` prefix over https.
    pub fn name(self, secure: bool) -> &'static str {
        match (self, secure) {
            (Self::Session, false) => "portvakt",
            (Self::Session, true) => "__Host-portvakt",
            (Self::Login, false) => "portvakt-login",
            (Self::Login, true) => "__Host-portvakt-login",
            (Self::Service, false) => "portvakt-svc",
            (Self::Service, true) => "__Host-portvakt-svc",
        }
    }
}

/// Every name the gateway's cookies can have, with and without the prefix: the proxy
/// never sends any of them to a vendor.
pub fn all_names() -> Vec<String> {
    Cookie::ALL
        .iter()
        .flat_map(|c| [c.name(false), c.name(true)])
        .map(str::to_owned)
        .collect()
}

/// The gateway's cookies as one installation names them (https or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookies {
    secure: bool,
}

impl Cookies {
    /// `secure` when pages are served over https: `__Host-` names and `Secure`.
    pub fn new(secure: bool) -> Self {
        Self { secure }
    }

    pub fn name(self, cookie: Cookie) -> &'static str {
        cookie.name(self.secure)
    }

    /// The cookie's value in the request, if it has one.
    pub fn get(self, cookie: Cookie, headers: &HeaderMap) -> Option<&str> {
        read(headers, self.name(cookie))
    }

    /// `Set-Cookie` for `cookie`; `max_age` in seconds (none: until the browser closes).
    pub fn set(self, cookie: Cookie, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax",
            self.name(cookie)
        );
        if self.secure {
            c.push_str("; Secure");
        }
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
    }

    /// `Set-Cookie` that deletes `cookie`.
    pub fn clear(self, cookie: Cookie) -> HeaderValue {
        self.set(cookie, "", Some(0))
    }
}

/// The value of the first cookie called `name` in the request's `Cookie` headers (a
/// header that is not visible ASCII is passed over). Every proxied request looks up the
/// service host's cookie, so this goes by bytes: `;` by [`proxy::text::split_once_ascii`],
/// no character searcher.
pub fn read<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_in(v, name))
}

/// `name`'s value in one `Cookie` header's `a=1; b=2`.
fn cookie_in<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = header;
    loop {
        let (pair, next) = match proxy::text::split_once_ascii(rest, b';') {
            Some((pair, next)) => (pair, Some(next)),
            None => (rest, None),
        };
        // A visible-ASCII header has no other whitespace than spaces and tabs.
        if let Some(value) = pair
            .trim_ascii()
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
        {
            return Some(value);
        }
        rest = next?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "portvakt-login=a; portvakt=b".parse().unwrap(),
        );
        assert_eq!(read(&h, "portvakt"), Some("b"));
        assert_eq!(read(&h, "portvakt-login"), Some("a"));
        assert_eq!(read(&h, "other"), None);
        let jar = Cookies::new(false);
        assert_eq!(jar.get(Cookie::Session, &h), Some("b"));
        assert_eq!(jar.get(Cookie::Login, &h), Some("a"));
        assert_eq!(Cookies::new(true).get(Cookie::Session, &h), None);
    }

    #[test]
    fn cookies_are_found_in_any_header_with_any_spacing() {
        let mut h = HeaderMap::new();
        // Not visible ASCII: the whole header is passed over.
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"portvakt=\xff").unwrap(),
        );
        h.append(
            header::COOKIE,
            ";; xportvakt=c;portvakt-x=d".parse().unwrap(),
        );
        h.append(
            header::COOKIE,
            "a=1;\t portvakt=v=w \t; portvakt=second".parse().unwrap(),
        );
        h.append(header::COOKIE, "empty=; last=z".parse().unwrap());
        assert_eq!(read(&h, "portvakt"), Some("v=w"));
        assert_eq!(read(&h, "a"), Some("1"));
        assert_eq!(read(&h, "empty"), Some(""));
        assert_eq!(read(&h, "last"), Some("z"));
        assert_eq!(read(&h, "portvakt-x"), Some("d"));
        assert_eq!(read(&h, "x"), None);
        assert_eq!(read(&h, ""), None);
    }

    #[test]
    fn set_cookie_is_host_only_and_secure_under_https() {
        let plain = Cookies::new(false).set(Cookie::Session, "v", None);
        assert_eq!(plain, "portvakt=v; Path=/; HttpOnly; SameSite=Lax");
        let secure = Cookies::new(true).set(Cookie::Service, "v", Some(60));
        assert_eq!(
            secure,
            "__Host-portvakt-svc=v; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
        );
        assert_eq!(
            Cookies::new(false).clear(Cookie::Login),
            "portvakt-login=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        );
        let names = all_names();
        assert_eq!(names.len(), 6);
        for c in Cookie::ALL {
            assert!(names.iter().any(|n| n == c.name(false)));
            assert!(names.iter().any(|n| n == c.name(true)));
        }
    }
}
