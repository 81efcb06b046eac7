//! The installation's host map: each proxied service's origins ⇄ the gateway's service hosts.
//!
//! Built once per policy load from every proxy service's `origin` and `hosts`. A request's
//! `Host` comes in through [`HostMap::lookup`] (which service, which origin to send to); URLs
//! from a vendor go out through [`HostMap::rewrite_link`] and [`HostMap::to_service_url`],
//! which only ever map that service's own origins, leaving every other URL as it was.

use std::collections::HashMap;
use std::sync::Arc;

use url::{Origin, Position, Url};

use policy::ids::ServiceId;

/// The scheme of every absolute URL the gateway builds (service hosts, redirects): `https`
/// when the public listener has TLS or a load balancer in front ends it, else `http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostMapError {
    #[error("service \"{service}\": origin \"{origin}\" is not an http or https URL with a host")]
    BadOrigin { service: String, origin: String },
    #[error("services \"{first}\" and \"{second}\" would both answer at host label \"{label}\"")]
    Collision {
        label: String,
        first: String,
        second: String,
    },
    #[error("public host \"{0}\" is not a host name with an optional port")]
    BadPublicHost(String),
}

/// One service host: what answers at `<label>.<public_host>`.
#[derive(Clone, Debug)]
pub struct ServiceHost {
    pub service: ServiceId,
    /// `scheme://host[:port]` of the vendor's origin behind this host.
    pub origin: Url,
    /// `avis` for the main origin, `avis--1` for its `hosts[0]`, and so on.
    pub label: String,
}

/// What a host names, from the gateway's point of view.
#[derive(Debug)]
pub enum HostKind<'a> {
    /// `public_host`: the login pages.
    Login,
    Service(&'a ServiceHost),
    /// Anything else, the gateway's business or not.
    Other,
}

#[derive(Debug)]
pub struct HostMap {
    /// Lowercase, as configured (`bib.localhost:8080`): what links are built with.
    public_host: String,
    /// Its name without the port, and the port (the scheme's default when none is given).
    public_name: String,
    public_port: u16,
    scheme: Scheme,
    by_label: HashMap<String, ServiceHost>,
    /// Per service: each origin and the service host (`label.public_host`) it maps to.
    /// An `Arc` so that a body's rewriter holds its service's list without a lookup per
    /// chunk ([`HostMap::links_of`]).
    by_service: HashMap<String, Arc<Vec<LinkTarget>>>,
}

impl HostMap {
    /// `services`: per proxied service, its id, main origin and `hosts` list, in order
    /// (the order gives the `--1`, `--2` labels, so it must follow the policy file).
    pub fn new(
        public_host: &str,
        scheme: Scheme,
        services: impl IntoIterator<Item = (ServiceId, Url, Vec<Url>)>,
    ) -> Result<Self, HostMapError> {
        let public_host = public_host.to_ascii_lowercase();
        let (public_name, port) = split_port(&public_host)
            .ok_or_else(|| HostMapError::BadPublicHost(public_host.clone()))?;
        if public_name.is_empty() {
            return Err(HostMapError::BadPublicHost(public_host));
        }
        let public_port = port.unwrap_or(default_port(scheme));
        let mut map = Self {
            public_name: public_name.to_owned(),
            public_host,
            public_port,
            scheme,
            by_label: HashMap::new(),
            by_service: HashMap::new(),
        };
        for (service, origin, hosts) in services {
            let labelled = std::iter::once((service.to_string(), origin)).chain(
                hosts
                    .into_iter()
                    .enumerate()
                    .map(|(i, u)| (format!("{service}--{}", i + 1), u)),
            );
            for (label, url) in labelled {
                map.insert(&service, label, url)?;
            }
        }
        Ok(map)
    }

    fn insert(&mut self, service: &ServiceId, label: String, url: Url) -> Result<(), HostMapError> {
        let origin = url.origin();
        if !matches!(url.scheme(), "http" | "https") || !origin.is_tuple() {
            return Err(HostMapError::BadOrigin {
                service: service.to_string(),
                origin: url.to_string(),
            });
        }
        if let Some(taken) = self.by_label.get(&label) {
            return Err(HostMapError::Collision {
                label,
                first: taken.service.to_string(),
                second: service.to_string(),
            });
        }
        let service_host = format!("{label}.{}", self.public_host);
        let (scheme, default_port) = if url.scheme() == "https" {
            ("https", 443)
        } else {
            ("http", 80)
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(default_port);
        let canonical = if port == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
        let target = LinkTarget {
            scheme,
            host,
            port,
            default_port,
            canonical,
            absolute: format!("{}://{service_host}", self.scheme.as_str()),
            relative: format!("//{service_host}"),
            service_host,
            origin,
        };
        // Only ever shared once the map is built: no copy is made here.
        Arc::make_mut(self.by_service.entry(service.to_string()).or_default()).push(target);
        // Only the origin is kept: a stray path in the config must not prefix requests.
        let origin_url = Url::parse(&url.origin().ascii_serialization()).unwrap_or(url);
        self.by_label.insert(
            label.clone(),
            ServiceHost {
                service: service.clone(),
                origin: origin_url,
                label,
            },
        );
        Ok(())
    }

    pub fn public_host(&self) -> &str {
        &self.public_host
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The service host a `Host` header (or HTTP/2 `:authority`) names, if any.
    pub fn lookup(&self, host: &str) -> Option<&ServiceHost> {
        match self.classify(host) {
            HostKind::Service(s) => Some(s),
            HostKind::Login | HostKind::Other => None,
        }
    }

    /// Login host, a service host or neither. `authority` is `host[:port]`, any case.
    pub fn classify(&self, authority: &str) -> HostKind<'_> {
        let authority = authority.trim_end_matches('.').to_ascii_lowercase();
        let Some((name, port)) = split_port(&authority) else {
            return HostKind::Other;
        };
        let name = name.trim_end_matches('.');
        if port.unwrap_or(default_port(self.scheme)) != self.public_port {
            return HostKind::Other;
        }
        if name == self.public_name {
            return HostKind::Login;
        }
        let label = name
            .strip_suffix(self.public_name.as_str())
            .and_then(|l| l.strip_suffix('.'));
        match label.and_then(|l| self.by_label.get(l)) {
            Some(s) => HostKind::Service(s),
            None => HostKind::Other,
        }
    }

    /// `label.public_host` for one of `service`'s own origins.
    pub fn service_host(&self, service: &str, origin: &Origin) -> Option<&str> {
        self.by_service
            .get(service)?
            .iter()
            .find(|t| t.origin == *origin)
            .map(|t| t.service_host.as_str())
    }

    /// `url` moved onto its service host, when its origin is one of `service`'s.
    pub fn to_service_url(&self, service: &str, url: &Url) -> Option<String> {
        let host = self.service_host(service, &url.origin())?;
        Some(format!(
            "{}://{host}{}",
            self.scheme.as_str(),
            &url[Position::BeforePath..]
        ))
    }

    /// A URL as the browser sent it (`Referer`) moved back onto the vendor's origin, when
    /// it names a service host. `whole`: keep path and query; else the origin alone.
    pub fn to_origin_url(&self, url: &Url, whole: bool) -> Option<(&ServiceHost, String)> {
        let authority = &url[Position::BeforeHost..Position::AfterPort];
        let HostKind::Service(s) = self.classify(authority) else {
            return None;
        };
        let base = s.origin.origin().ascii_serialization();
        let rest = if whole {
            &url[Position::BeforePath..Position::AfterQuery]
        } else {
            "/"
        };
        Some((s, format!("{base}{rest}")))
    }

    /// Rewrites an absolute (`http://`, `https://`) or protocol-relative (`//host/…`) link
    /// to one of `service`'s origins onto its service host, touching only the part up to
    /// the authority so that the rest (entities, odd escapes) stays byte for byte. `None`:
    /// relative, foreign, or not a URL we understand; leave it alone.
    pub fn rewrite_link(&self, service: &str, raw: &str) -> Option<String> {
        self.links(service)?.rewrite(raw)
    }

    /// `service`'s origins, looked up once for many links (a page's).
    pub(crate) fn links(&self, service: &str) -> Option<Links<'_>> {
        self.by_service.get(service).map(|t| Links(t))
    }

    /// `service`'s origins to keep, for a rewriter that outlives this borrow.
    pub(crate) fn links_of(&self, service: &str) -> Option<ServiceLinks> {
        self.by_service
            .get(service)
            .map(|t| ServiceLinks(Arc::clone(t)))
    }

    fn rewrite_link_with(&self, service: &str, raw: &str, fast: bool) -> Option<String> {
        self.links(service)?.rewrite_with(raw, fast)
    }

    /// [`Self::rewrite_link`] through `Url::parse` alone: the reference the fast matcher is
    /// tested against, and the benchmark's "before".
    #[doc(hidden)]
    pub fn rewrite_link_by_url(&self, service: &str, raw: &str) -> Option<String> {
        self.rewrite_link_with(service, raw, false)
    }
}

/// A service's origins, owned: [`HostMap::links_of`].
#[derive(Clone, Debug)]
pub(crate) struct ServiceLinks(Arc<Vec<LinkTarget>>);

impl ServiceLinks {
    pub(crate) fn links(&self) -> Links<'_> {
        Links(&self.0)
    }
}

/// A service's origins, to rewrite links to them: [`HostMap::links`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Links<'a>(&'a [LinkTarget]);

impl Links<'_> {
    /// Rewrites an absolute (`http://`, `https://`) or protocol-relative (`//host/…`) link
    /// to one of `service`'s origins onto its service host, touching only the part up to
    /// the authority so that the rest (entities, odd escapes) stays byte for byte. `None`:
    /// relative, foreign, or not a URL we understand; leave it alone.
    pub fn rewrite(&self, raw: &str) -> Option<String> {
        self.rewrite_with(raw, true)
    }

    /// `fast`: compare the authority's bytes with the origins' where that decides (see
    /// [`SimpleAuthority`]); else, and always when `fast` is off, through `Url::parse`.
    /// The usual case of [`Self::rewrite`], by bytes: a link that begins with one of the
    /// origins spelt as `Url` writes it (any case) and ending where an authority ends
    /// gives the same answer as a full parse, without taking the link apart. `Some((n,
    /// new))`: the first `n` bytes become `new`, the rest stays as it is.
    pub fn rewrite_prefix(&self, b: &[u8]) -> Option<(usize, &str)> {
        self.0.iter().find_map(|t| {
            let c = t.canonical.as_bytes();
            // Exact bytes first (one `memcmp`): pages mostly spell an origin as `Url` does.
            (b.len() >= c.len()
                && (b[..c.len()] == *c || b[..c.len()].eq_ignore_ascii_case(c))
                && b.get(c.len())
                    .is_none_or(|x| matches!(x, b'/' | b'?' | b'#' | b'\\')))
            .then_some((c.len(), t.absolute.as_str()))
        })
    }

    fn rewrite_with(&self, raw: &str, fast: bool) -> Option<String> {
        if fast && let Some((n, new)) = self.rewrite_prefix(raw.as_bytes()) {
            // `n` is the length of an ASCII prefix: a character boundary.
            let tail = &raw[n..];
            let mut out = String::with_capacity(new.len() + tail.len());
            out.push_str(new);
            out.push_str(tail);
            return Some(out);
        }
        // Browsers strip leading and trailing ASCII whitespace from URL attributes.
        let lead = raw.len() - raw.trim_start().len();
        let s = &raw[lead..];
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("//") {
            (None, rest)
        } else if let Some(rest) = strip_prefix_ci(s, "https://") {
            (Some("https"), rest)
        } else if let Some(rest) = strip_prefix_ci(s, "http://") {
            (Some("http"), rest)
        } else {
            return None;
        };
        let end = rest
            .bytes()
            .position(|b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
            .unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        // `@` and whitespace by bytes (`char::is_whitespace` also counts vertical tab);
        // Unicode whitespace only where there are non-ASCII characters.
        let bad = authority
            .bytes()
            .any(|b| b == b'@' || b == 0x0B || b.is_ascii_whitespace())
            || (!authority.is_ascii() && authority.contains(char::is_whitespace));
        if authority.is_empty() || bad {
            return None;
        }
        let candidates = self.0;
        let simple = if fast {
            SimpleAuthority::parse(authority)
        } else {
            None
        };
        let target = match simple {
            Some(a) => candidates.iter().find(|t| {
                scheme.is_none_or(|s| s == t.scheme)
                    && a.port.unwrap_or(t.default_port) == t.port
                    && a.host.eq_ignore_ascii_case(&t.host)
            })?,
            None => match scheme {
                Some(scheme) => {
                    let origin = Url::parse(&format!("{scheme}://{authority}/"))
                        .ok()?
                        .origin();
                    candidates.iter().find(|t| t.origin == origin)?
                }
                // Protocol-relative: resolved against the page, which came from one of the
                // vendor's origins, so each origin is tried with its own scheme.
                None => candidates.iter().find(|t| {
                    Url::parse(&format!("{}://{authority}/", t.scheme))
                        .is_ok_and(|u| u.origin() == t.origin)
                })?,
            },
        };
        let prefix = match scheme {
            Some(_) => &target.absolute,
            None => &target.relative,
        };
        let mut out = String::with_capacity(lead + prefix.len() + tail.len());
        out.push_str(&raw[..lead]);
        out.push_str(prefix);
        out.push_str(tail);
        Some(out)
    }
}

/// One of a service's origins, as links are matched against it and rewritten to it.
#[derive(Clone, Debug)]
struct LinkTarget {
    origin: Origin,
    /// `http` or `https`, the origin's.
    scheme: &'static str,
    /// The origin's host as `Url` serializes it: lowercase, punycode, `[…]` for IPv6.
    host: String,
    /// The origin's port, its scheme's default when it has none.
    port: u16,
    default_port: u16,
    /// `scheme://host[:port]` as `Url` writes the origin (no default port): how most
    /// links to it are spelt, matched first and by bytes alone.
    canonical: String,
    /// `label.public_host`.
    service_host: String,
    /// `<gateway scheme>://label.public_host` and `//label.public_host`.
    absolute: String,
    relative: String,
}

/// An authority (`host[:port]`) spelt so that comparing its bytes, case aside, with an
/// origin's serialized host decides the same as `Url::parse` would: letters, digits, `.`
/// and `-` only, and if it might be read as an IPv4 address (the last label begins with a
/// digit), exactly the dotted quad `Url` would write. Anything else (percent escapes,
/// non-ASCII, IPv6, `127.1`, `0x7f.0.0.1`, odd ports) goes through `Url::parse`.
#[derive(Clone, Copy, Debug)]
struct SimpleAuthority<'a> {
    host: &'a str,
    /// `None`: no port, or an empty one (`host:`), which means the default.
    port: Option<u16>,
}

impl<'a> SimpleAuthority<'a> {
    fn parse(authority: &'a str) -> Option<Self> {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return None;
        }
        let last = host
            .strip_suffix('.')
            .unwrap_or(host)
            .rsplit('.')
            .next()
            .unwrap_or("");
        if (last.is_empty() || last.as_bytes()[0].is_ascii_digit()) && !is_dotted_quad(host) {
            return None;
        }
        let port = match port {
            None | Some("") => None,
            Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok()?)
            }
            Some(_) => return None,
        };
        Some(Self { host, port })
    }
}

/// `a.b.c.d`, each 0–255 in decimal without leading zeros: an IPv4 address as `Url`
/// serializes it.
fn is_dotted_quad(host: &str) -> bool {
    let mut n = 0;
    for part in host.split('.') {
        n += 1;
        let ok = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part.len() == 1 || !part.starts_with('0'))
            && part.parse::<u16>().is_ok_and(|v| v <= 255);
        if !ok {
            return false;
        }
    }
    n == 4
}

fn default_port(s: Scheme) -> u16 {
    match s {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

/// `name[:port]` → (name, port). `None` for a port that is not a number.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    match authority.rsplit_once(':') {
        // An IPv6 literal without a port has colons too, but no `]` after the last one.
        Some((name, port)) if !port.contains(']') => Some((name, Some(port.parse().ok()?))),
        _ => Some((authority, None)),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}
