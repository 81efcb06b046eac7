//! Header work on both sides of the proxy: what leaves for the vendor is scrubbed
//! ([`scrub_request`]), what comes back is moved onto the service host
//! ([`rewrite_response`]), which also decides whether the body needs rewriting ([`Plan`]).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use url::Url;

use super::Forward;
use super::hosts::{HostKind, HostMap, Links};
use crate::hosts::Scheme;
use crate::text::{split_ascii, split_once_ascii};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// `Proxy-*` family, which is between a client and its own forward proxy.
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Whether a lowercase name is one of [`HOP_BY_HOP`]. A `match` on every header of every
/// message: it goes by length first, where the list was seven comparisons.
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
    )
}

/// Whether a lowercase name is a header that carries the patron's address or our chain of
/// proxies. The vendor must not learn the patron's IP, whoever set them (a browser
/// extension, a proxy in front). A `match`, as [`is_hop_by_hop`].
pub(super) fn is_client_address(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "x-client-ip"
            | "client-ip"
            | "x-cluster-client-ip"
            | "fastly-client-ip"
            | "x-original-forwarded-for"
            | "via"
    )
}

const REFRESH: HeaderName = HeaderName::from_static("refresh");

/// The content codings we can decode, so an HTML body can always be rewritten.
const DECODABLE: &[&str] = &["gzip", "x-gzip", "deflate", "br", "identity"];

/// The header names a message's `Connection` header lists (lowercase), read once per
/// message: such headers are hop-by-hop by the sender's say-so. Most messages list none
/// or only `keep-alive`/`close`, so this allocates only for other names.
pub(super) struct Listed(Vec<String>);

/// Which of the headers the scrubbing and rewriting look at a message has: one pass over
/// its names, so that absent ones cost no lookup (most messages have few of them).
#[derive(Default)]
struct Present {
    connection: bool,
    cookie: bool,
    referer: bool,
    origin: bool,
    accept_encoding: bool,
    location: bool,
    content_location: bool,
    refresh: bool,
    set_cookie: bool,
}

impl Present {
    fn of(h: &HeaderMap) -> Self {
        let mut p = Self::default();
        for k in h.keys() {
            // Comparisons of standard names are of their tags, not their bytes.
            if *k == header::CONNECTION {
                p.connection = true;
            } else if *k == header::COOKIE {
                p.cookie = true;
            } else if *k == header::REFERER {
                p.referer = true;
            } else if *k == header::ORIGIN {
                p.origin = true;
            } else if *k == header::ACCEPT_ENCODING {
                p.accept_encoding = true;
            } else if *k == header::LOCATION {
                p.location = true;
            } else if *k == header::CONTENT_LOCATION {
                p.content_location = true;
            } else if *k == REFRESH {
                p.refresh = true;
            } else if *k == header::SET_COOKIE {
                p.set_cookie = true;
            }
        }
        p
    }
}

impl Listed {
    /// [`Listed::of`] when the message has a `Connection` header, else nothing.
    fn when(connection: bool, h: &HeaderMap) -> Self {
        if connection {
            Self::of(h)
        } else {
            Self(Vec::new())
        }
    }

    pub(super) fn of(h: &HeaderMap) -> Self {
        let mut names = Vec::new();
        for t in list_items(h, &header::CONNECTION, b',') {
            // Always removed anyway, or not a header name (`close`).
            if HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(t))
                || t.eq_ignore_ascii_case("close")
            {
                continue;
            }
            names.push(t.to_ascii_lowercase());
        }
        Self(names)
    }

    /// [`HOP_BY_HOP`], the `proxy-` family, or listed.
    pub(super) fn hop_by_hop(&self, name: &str) -> bool {
        is_hop_by_hop(name) || name.starts_with("proxy-") || self.0.iter().any(|n| n == name)
    }
}

/// Removes every header `pred` picks (by its lowercase name). `HeaderMap` has no `retain`;
/// the names are gathered first, into a `Vec` that allocates only when more than one
/// goes.
fn remove_where(h: &mut HeaderMap, pred: impl Fn(&str) -> bool) {
    let mut doomed = h.keys().filter(|k| pred(k.as_str())).cloned();
    let Some(first) = doomed.next() else {
        return;
    };
    // Most messages lose one header here (a request its `Host`): no `Vec` for that.
    let rest: Vec<HeaderName> = doomed.collect();
    h.remove(first);
    for k in rest {
        h.remove(k);
    }
}

/// Makes the patron's request fit to leave for the vendor (see the module docs of
/// `proxy.rs` for the list and the reasons).
pub(super) fn scrub_request(h: &mut HeaderMap, f: &Forward<'_>) {
    let has = Present::of(h);
    // The client sets Host (HTTP/1) or :authority (HTTP/2) from the origin URI.
    let listed = Listed::when(has.connection, h);
    remove_where(h, |k| {
        k == "host"
            || listed.hop_by_hop(k)
            || k.starts_with("x-forwarded-")
            || is_client_address(k)
            // Only the gateway says what is released; a patron could forge these.
            || k.starts_with("x-portvakt-")
    });

    if has.cookie {
        scrub_cookies(h, f.gateway_cookies);
    }
    if has.referer {
        scrub_referer(h, header::REFERER, f.hosts, f.service);
    }
    if has.origin {
        scrub_referer(h, header::ORIGIN, f.hosts, f.service);
    }
    if has.accept_encoding {
        scrub_accept_encoding(h);
    }

    for (name, value) in f.release {
        h.append(name.clone(), value.clone());
    }
}

/// `Accept-Encoding` cut down to the codings we can decode (else `identity`), so an HTML
/// body can always be rewritten. Left as it is when it already asks for nothing else.
fn scrub_accept_encoding(h: &mut HeaderMap) {
    let decodable = |t: &str| {
        let c = split_ascii(t, b';').next().unwrap_or("").trim_ascii();
        DECODABLE.iter().any(|d| d.eq_ignore_ascii_case(c))
    };
    if !h.contains_key(header::ACCEPT_ENCODING) {
        return;
    }
    let tokens = || list_items(h, &header::ACCEPT_ENCODING, b',');
    if one_text_value(h, &header::ACCEPT_ENCODING) && tokens().all(decodable) {
        return;
    }
    let accept: Vec<&str> = tokens().filter(|t| decodable(t)).collect();
    let value = if accept.is_empty() {
        HeaderValue::from_static("identity")
    } else {
        match HeaderValue::from_str(&accept.join(", ")) {
            Ok(v) => v,
            Err(_) => HeaderValue::from_static("identity"),
        }
    };
    h.insert(header::ACCEPT_ENCODING, value);
}

/// The non-empty, trimmed items of a list header (`sep`-separated) over all its values
/// that are text.
fn list_items<'a>(
    h: &'a HeaderMap,
    name: &HeaderName,
    sep: u8,
) -> impl Iterator<Item = &'a str> + 'a {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(move |v| split_ascii(v, sep))
        // Text values are visible ASCII and tabs: `trim_ascii` is `trim` for them.
        .map(str::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether the header comes once and is text: then it can be left as it is.
fn one_text_value(h: &HeaderMap, name: &HeaderName) -> bool {
    let mut values = h.get_all(name).iter();
    values.next().is_some_and(|v| v.to_str().is_ok()) && values.next().is_none()
}

/// Removes the gateway's cookies from `Cookie`, keeping the vendor's own; merges
/// several `Cookie` headers (HTTP/2 splits them) into one, as HTTP/1 requires.
fn scrub_cookies(h: &mut HeaderMap, gateway: &[String]) {
    let ours = |pair: &str| {
        let name = split_ascii(pair, b'=').next().unwrap_or("").trim_ascii();
        gateway.iter().any(|g| g == name)
    };
    // One header of text (HTTP/1's only form): as it is without ours, gone when it holds
    // nothing but ours (the common case on a service host), read once either way.
    let mut values = h.get_all(header::COOKIE).iter();
    match (values.next().map(|v| v.to_str()), values.next()) {
        (None, _) => return,
        (Some(Ok(text)), None) => {
            let (mut mine, mut theirs) = (false, false);
            for pair in split_ascii(text, b';')
                .map(str::trim_ascii)
                .filter(|p| !p.is_empty())
            {
                if ours(pair) {
                    mine = true;
                } else {
                    theirs = true;
                }
            }
            if !mine {
                return;
            }
            if !theirs {
                h.remove(header::COOKIE);
                return;
            }
        }
        _ => {}
    }
    let pairs = || list_items(h, &header::COOKIE, b';');
    let mut kept = String::new();
    for pair in pairs().filter(|c| !ours(c)) {
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    let value = HeaderValue::from_str(&kept)
        .ok()
        .filter(|_| !kept.is_empty());
    h.remove(header::COOKIE);
    if let Some(v) = value {
        h.insert(header::COOKIE, v);
    }
}

/// `Referer` and `Origin`: the login host's is dropped (a vendor must not learn where the
/// patron logged in, nor the entry-ticket URL); a service host's is mapped back to the
/// vendor's origin, in full for this service's own hosts and as a bare origin for another
/// service's (what a browser's default referrer policy sends across origins); anything else
/// that does not parse is dropped.
fn scrub_referer(h: &mut HeaderMap, name: HeaderName, hosts: &HostMap, service: &str) {
    let Some(value) = h.get(&name) else {
        return;
    };
    if value.as_bytes() == b"null" {
        return;
    }
    let Some(url) = value.to_str().ok().and_then(|v| Url::parse(v).ok()) else {
        h.remove(&name);
        return;
    };
    let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let replacement = match hosts.classify(authority) {
        HostKind::Login => None,
        HostKind::Service(s) => {
            let whole = name == header::REFERER && s.service.as_str() == service;
            hosts.to_origin_url(&url, whole).map(|(_, u)| {
                if name == header::ORIGIN {
                    u.trim_end_matches('/').to_owned()
                } else {
                    u
                }
            })
        }
        HostKind::Other => return,
    };
    match replacement.and_then(|u| HeaderValue::from_str(&u).ok()) {
        Some(v) => {
            h.insert(name, v);
        }
        None => {
            h.remove(&name);
        }
    }
}

/// The content coding of a body we can decode; anything else is passed on untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

/// What the body needs, decided from the response head.
#[derive(Debug)]
pub(super) struct Plan {
    /// `Some`: an HTML body to decode and rewrite.
    pub html: Option<HtmlPlan>,
}

#[derive(Debug)]
pub(super) struct HtmlPlan {
    pub coding: Coding,
    /// From `Content-Type`'s `charset`; `None` lets a `<meta charset>` decide (else UTF-8).
    pub charset: Option<&'static encoding_rs::Encoding>,
}

/// Moves the response head onto the service host and plans the body.
pub(super) fn rewrite_response(
    parts: &mut http::response::Parts,
    method: &Method,
    f: &Forward<'_>,
) -> Plan {
    let h = &mut parts.headers;
    let has = Present::of(h);
    // Alt-Svc would point the browser at the vendor's other endpoints for our host.
    let listed = Listed::when(has.connection, h);
    remove_where(h, |k| listed.hop_by_hop(k) || k == "alt-svc");

    for (name, present) in [
        (header::LOCATION, has.location),
        (header::CONTENT_LOCATION, has.content_location),
    ] {
        if present {
            rewrite_each(h, name, |v| f.hosts.rewrite_link(f.service, v));
        }
    }
    if has.refresh {
        rewrite_each(h, REFRESH, |v| rewrite_refresh(f.hosts, f.service, v));
    }
    if has.set_cookie {
        rewrite_set_cookies(h, f.hosts.scheme(), f.gateway_cookies);
    }

    let plan = plan_body(h, parts.status);
    let bodiless = method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if plan.is_some() {
        // The body that goes out is decoded and changed: its length, coding and digests
        // are unknown or wrong, and byte ranges of the original no longer line up.
        remove_where(h, |k| {
            matches!(
                k,
                "content-length"
                    | "content-encoding"
                    | "accept-ranges"
                    | "content-md5"
                    | "digest"
                    | "content-digest"
                    | "repr-digest"
            )
        });
        weaken_etag(h);
    }
    Plan {
        // A HEAD, 204 or 304 answer has no body to decode, only the head to match a GET's.
        html: if bodiless { None } else { plan },
    }
}

fn plan_body(h: &HeaderMap, status: StatusCode) -> Option<HtmlPlan> {
    if status == StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let ct = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut params = split_ascii(ct, b';');
    let essence = params.next()?.trim_ascii();
    if !essence.eq_ignore_ascii_case("text/html")
        && !essence.eq_ignore_ascii_case("application/xhtml+xml")
    {
        return None;
    }
    let charset = params
        .filter_map(|p| split_once_ascii(p, b'='))
        .find(|(k, _)| k.trim_ascii().eq_ignore_ascii_case("charset"))
        .and_then(|(_, v)| {
            let label = v.trim_ascii().trim_matches('"');
            // The usual answer without the label table.
            if label.eq_ignore_ascii_case("utf-8") {
                Some(encoding_rs::UTF_8)
            } else {
                encoding_rs::Encoding::for_label(label.as_bytes())
            }
        })
        // The scanner reads markup as ASCII bytes; UTF-16 pages go through as they are.
        .map(|e| e.is_ascii_compatible().then_some(e));
    let charset = match charset {
        Some(None) => return None,
        Some(Some(e)) => Some(e),
        None => None,
    };
    let mut codings = list_items(h, &header::CONTENT_ENCODING, b',')
        .filter(|c| !c.eq_ignore_ascii_case("identity"));
    let coding = match (codings.next(), codings.next()) {
        (None, _) => Coding::Identity,
        (Some(one), None) => {
            if one.eq_ignore_ascii_case("gzip") || one.eq_ignore_ascii_case("x-gzip") {
                Coding::Gzip
            } else if one.eq_ignore_ascii_case("deflate") {
                Coding::Deflate
            } else if one.eq_ignore_ascii_case("br") {
                Coding::Brotli
            } else {
                // Not ours to decode (zstd despite our Accept-Encoding): passed on untouched.
                return None;
            }
        }
        // Stacked codings are legal but unseen in practice; not worth a decoder chain.
        _ => return None,
    };
    Some(HtmlPlan { coding, charset })
}

fn weaken_etag(h: &mut HeaderMap) {
    let Some(tag) = h.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if tag.starts_with("W/") {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("W/{tag}")) {
        h.insert(header::ETAG, v);
    }
}

/// Applies `f` to each value of `name`, replacing the ones it rewrites.
fn rewrite_each(h: &mut HeaderMap, name: HeaderName, f: impl Fn(&str) -> Option<String>) {
    if !h.contains_key(&name) {
        return;
    }
    let values: Vec<HeaderValue> = h
        .get_all(&name)
        .iter()
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(&f)
                .and_then(|s| HeaderValue::from_str(&s).ok())
                .unwrap_or_else(|| v.clone())
        })
        .collect();
    h.remove(&name);
    for v in values {
        h.append(name.clone(), v);
    }
}

/// `5; url=https://origin/x` (also `5;URL='…'`, `0, …`): the URL part rewritten.
/// Shared with `<meta http-equiv=refresh content=…>`.
pub(super) fn rewrite_refresh(hosts: &HostMap, service: &str, value: &str) -> Option<String> {
    refresh_links(hosts.links(service)?, value)
}

/// [`rewrite_refresh`] with the service's origins at hand.
pub(super) fn refresh_links(links: Links<'_>, value: &str) -> Option<String> {
    let sep = value.find([';', ','])?;
    let (head, rest) = value.split_at(sep + 1);
    let trimmed = rest.trim_start();
    let mut url_start = head.len() + (rest.len() - trimmed.len());
    if trimmed.len() >= 3 && trimmed[..3].eq_ignore_ascii_case("url") {
        let after = trimmed[3..].trim_start();
        if let Some(after_eq) = after.strip_prefix('=') {
            url_start = value.len() - after_eq.trim_start().len();
        }
    }
    let mut url = &value[url_start..];
    let mut close = "";
    if let Some(q) = url.chars().next().filter(|c| *c == '\'' || *c == '"') {
        url = &url[1..];
        url_start += 1;
        if let Some(end) = url.find(q) {
            url = &url[..end];
            close = &value[url_start + end..];
        }
    }
    let new = links.rewrite(url)?;
    Some(format!("{}{new}{close}", &value[..url_start]))
}

/// `Set-Cookie` onto the service host: `Domain` dropped (host-only, so it never reaches
/// another service host or the login host); over plain http `Secure` dropped (the browser
/// would discard the cookie) along with `SameSite=None` (invalid without `Secure`); a
/// cookie named like one of the gateway's is dropped whole, so a vendor cannot overwrite
/// the session cookie on its service host.
fn rewrite_set_cookies(h: &mut HeaderMap, scheme: Scheme, gateway: &[String]) {
    if !h.contains_key(header::SET_COOKIE) {
        return;
    }
    let values: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| {
            // Cookie values are bytes; one that is not text is passed on as it came.
            let Ok(s) = v.to_str() else {
                return Some(v.clone());
            };
            let mut parts = s.split(';');
            let pair = parts.next().unwrap_or("").trim();
            let name = pair.split('=').next().unwrap_or("").trim();
            if gateway.iter().any(|g| g == name) {
                return None;
            }
            let mut out = vec![pair.to_owned()];
            for attr in parts.map(str::trim).filter(|a| !a.is_empty()) {
                let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
                let key = key.trim().to_ascii_lowercase();
                let drop = key == "domain"
                    || (scheme == Scheme::Http
                        && (key == "secure"
                            || (key == "samesite" && val.trim().eq_ignore_ascii_case("none"))));
                if !drop {
                    out.push(attr.to_owned());
                }
            }
            HeaderValue::from_str(&out.join("; ")).ok()
        })
        .collect();
    h.remove(header::SET_COOKIE);
    for v in values {
        h.append(header::SET_COOKIE, v);
    }
}
