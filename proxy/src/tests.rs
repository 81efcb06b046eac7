//! Unit tests of the pure parts: host map, link, srcset, CSS and Refresh rewriting,
//! request scrubbing and response-head rewriting. `tests/proxy_forward.rs` has the rest.

use std::sync::Arc;

use http::header::HeaderMap;
use http::{Method, Response, StatusCode, Uri, Version};
use url::Url;

use super::headers::{Coding, HtmlPlan, rewrite_refresh, rewrite_response, scrub_request};
use super::hosts::{HostKind, HostMap, HostMapError};
use super::html::{oracle, rewrite_body, rewrite_css_urls, rewrite_srcset};
use super::{Forward, ProxyError, Timeouts, release_header_name, upstream_uri};
use crate::hosts::Scheme;
use policy::ids::ServiceId;

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

fn map(scheme: Scheme) -> HostMap {
    HostMap::new(
        "Bib.localhost:8080",
        scheme,
        [
            (
                ServiceId::from("avis"),
                url("https://www.avis.example"),
                vec![
                    url("https://cdn.avis.example"),
                    url("http://img.avis.example:8081"),
                ],
            ),
            (ServiceId::from("film"), url("https://film.example"), vec![]),
        ],
    )
    .unwrap()
}

#[test]
fn labels_are_the_service_id_then_numbered_hosts() {
    let m = map(Scheme::Http);
    let s = m.lookup("avis.bib.localhost:8080").unwrap();
    assert_eq!(s.service.as_str(), "avis");
    assert_eq!(s.origin.as_str(), "https://www.avis.example/");
    assert_eq!(
        m.lookup("AVIS--1.bib.localhost:8080")
            .unwrap()
            .origin
            .as_str(),
        "https://cdn.avis.example/"
    );
    assert_eq!(
        m.lookup("avis--2.bib.localhost:8080")
            .unwrap()
            .origin
            .as_str(),
        "http://img.avis.example:8081/"
    );
    assert!(m.lookup("avis--3.bib.localhost:8080").is_none());
    assert!(m.lookup("avis.bib.localhost:9999").is_none(), "wrong port");
    assert!(
        m.lookup("avis.bib.localhost").is_none(),
        "default port is not 8080"
    );
    assert!(m.lookup("x.avis.bib.localhost:8080").is_none());
    assert!(matches!(m.classify("bib.localhost:8080"), HostKind::Login));
    assert!(matches!(m.classify("evil.example"), HostKind::Other));
}

#[test]
fn without_a_port_the_schemes_default_port_matches() {
    let m = HostMap::new(
        "bib.example.no",
        Scheme::Https,
        [(
            ServiceId::from("avis"),
            url("https://www.avis.example"),
            vec![],
        )],
    )
    .unwrap();
    assert!(m.lookup("avis.bib.example.no").is_some());
    assert!(m.lookup("avis.bib.example.no:443").is_some());
    assert!(m.lookup("avis.bib.example.no:80").is_none());
    assert_eq!(
        m.rewrite_link("avis", "https://www.avis.example/a")
            .as_deref(),
        Some("https://avis.bib.example.no/a")
    );
}

#[test]
fn colliding_labels_and_bad_origins_are_refused() {
    let err = HostMap::new(
        "bib.localhost",
        Scheme::Http,
        [
            (
                ServiceId::from("avis"),
                url("https://a.example"),
                vec![url("https://b.example")],
            ),
            (ServiceId::from("avis--1"), url("https://c.example"), vec![]),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, HostMapError::Collision { .. }), "{err}");
    let err = HostMap::new(
        "bib.localhost",
        Scheme::Http,
        [(ServiceId::from("avis"), url("ftp://a.example"), vec![])],
    )
    .unwrap_err();
    assert!(matches!(err, HostMapError::BadOrigin { .. }), "{err}");
}

#[test]
fn only_the_services_own_origins_are_rewritten() {
    let m = map(Scheme::Http);
    let r = |s: &str| m.rewrite_link("avis", s);
    assert_eq!(
        r("https://www.avis.example/a?b=1&amp;c#d").as_deref(),
        Some("http://avis.bib.localhost:8080/a?b=1&amp;c#d")
    );
    assert_eq!(
        r("HTTPS://WWW.AVIS.EXAMPLE").as_deref(),
        Some("http://avis.bib.localhost:8080")
    );
    assert_eq!(
        r("https://www.avis.example:443/x").as_deref(),
        Some("http://avis.bib.localhost:8080/x")
    );
    assert_eq!(
        r("https://cdn.avis.example/i.png").as_deref(),
        Some("http://avis--1.bib.localhost:8080/i.png")
    );
    assert_eq!(
        r("http://img.avis.example:8081/i").as_deref(),
        Some("http://avis--2.bib.localhost:8080/i")
    );
    assert_eq!(
        r("  //cdn.avis.example/p").as_deref(),
        Some("  //avis--1.bib.localhost:8080/p")
    );
    assert_eq!(
        r("//img.avis.example:8081/p").as_deref(),
        Some("//avis--2.bib.localhost:8080/p")
    );
    for untouched in [
        "http://www.avis.example/x", // the origin is https: another origin
        "https://www.avis.example:8443/x",
        "https://film.example/x", // another service's origin
        "https://foreign.example/",
        "https://user@www.avis.example/",
        "/relative",
        "relative/path",
        "#frag",
        "javascript:alert(1)",
        "mailto:a@www.avis.example",
        "data:text/html,https://www.avis.example/",
        "//img.avis.example/p", // port 80, not 8081
    ] {
        assert_eq!(r(untouched), None, "{untouched}");
    }
    assert_eq!(m.rewrite_link("film", "https://www.avis.example/x"), None);
}

#[test]
fn service_urls_and_origin_urls_map_both_ways() {
    let m = map(Scheme::Https);
    assert_eq!(
        m.to_service_url("avis", &url("https://cdn.avis.example/a?b"))
            .as_deref(),
        Some("https://avis--1.bib.localhost:8080/a?b")
    );
    let (s, o) = m
        .to_origin_url(&url("http://avis--1.bib.localhost:8080/p?q#f"), true)
        .unwrap();
    assert_eq!(s.service.as_str(), "avis");
    assert_eq!(o, "https://cdn.avis.example/p?q");
    let (_, o) = m
        .to_origin_url(&url("http://film.bib.localhost:8080/p"), false)
        .unwrap();
    assert_eq!(o, "https://film.example/");
}

#[test]
fn srcset_candidates_are_rewritten_each() {
    let m = map(Scheme::Http);
    assert_eq!(
        rewrite_srcset(
            &m,
            "avis",
            "https://cdn.avis.example/a.png 1x,https://foreign.example/b.png 2x, //www.avis.example/c,d.png 480w"
        )
        .as_deref(),
        Some(
            "http://avis--1.bib.localhost:8080/a.png 1x,https://foreign.example/b.png 2x, //avis.bib.localhost:8080/c,d.png 480w"
        )
    );
    // Without whitespace after the comma it is one URL with a comma in it, as a browser
    // parses it: only its start is a link to the origin.
    assert_eq!(
        rewrite_srcset(
            &m,
            "avis",
            "https://cdn.avis.example/a.png,https://cdn.avis.example/b.png"
        )
        .as_deref(),
        Some("http://avis--1.bib.localhost:8080/a.png,https://cdn.avis.example/b.png")
    );
    assert_eq!(
        rewrite_srcset(
            &m,
            "avis",
            "https://cdn.avis.example/a.png,, https://cdn.avis.example/b.png"
        )
        .as_deref(),
        Some("http://avis--1.bib.localhost:8080/a.png,, http://avis--1.bib.localhost:8080/b.png")
    );
    assert_eq!(rewrite_srcset(&m, "avis", "/a.png 1x, /b.png 2x"), None);
}

#[test]
fn css_urls_are_rewritten_quoted_or_not() {
    let m = map(Scheme::Http);
    assert_eq!(
        rewrite_css_urls(
            &m,
            "avis",
            r#"background:URL( "https://cdn.avis.example/a.png" ); x: url(https://www.avis.example/b) url(/c)"#
        )
        .as_deref(),
        Some(
            r#"background:URL( "http://avis--1.bib.localhost:8080/a.png" ); x: url(http://avis.bib.localhost:8080/b) url(/c)"#
        )
    );
    assert_eq!(
        rewrite_css_urls(&m, "avis", "color: red; background: url(x.png)"),
        None
    );
}

#[test]
fn refresh_values_in_their_spellings() {
    let m = map(Scheme::Http);
    let r = |v: &str| rewrite_refresh(&m, "avis", v);
    assert_eq!(
        r("5; url=https://www.avis.example/x").as_deref(),
        Some("5; url=http://avis.bib.localhost:8080/x")
    );
    assert_eq!(
        r("0;URL='https://www.avis.example/x'").as_deref(),
        Some("0;URL='http://avis.bib.localhost:8080/x'")
    );
    assert_eq!(
        r("3, https://cdn.avis.example/").as_deref(),
        Some("3, http://avis--1.bib.localhost:8080/")
    );
    assert_eq!(r("5; url=https://foreign.example/"), None);
    assert_eq!(r("5"), None);
}

#[test]
fn release_header_names_are_title_case() {
    assert_eq!(release_header_name("pseudonym"), "X-Portvakt-Pseudonym");
    assert_eq!(release_header_name("age_over_18"), "X-Portvakt-Age-Over-18");
    assert_eq!(
        release_header_name("home_INSTITUTION"),
        "X-Portvakt-Home-Institution"
    );
}

#[test]
fn only_origin_form_targets_are_forwarded() {
    let o = url("https://www.avis.example");
    let ok = upstream_uri(
        &Method::GET,
        Version::HTTP_11,
        &Uri::from_static("/a?b=c"),
        &o,
    )
    .unwrap();
    assert_eq!(ok, "https://www.avis.example/a?b=c");
    for (m, v, t) in [
        (Method::GET, Version::HTTP_11, "http://evil.example/"),
        (Method::GET, Version::HTTP_10, "https://www.avis.example/a"),
        (Method::CONNECT, Version::HTTP_11, "evil.example:443"),
        (Method::CONNECT, Version::HTTP_2, "https://evil.example/"),
        (Method::OPTIONS, Version::HTTP_11, "*"),
    ] {
        let err = upstream_uri(&m, v, &t.parse().unwrap(), &o).unwrap_err();
        assert!(matches!(err, ProxyError::BadRequest(_)), "{m} {t}: {err}");
    }
    // HTTP/2 always carries scheme and authority; the origin replaces them.
    let h2 = upstream_uri(
        &Method::GET,
        Version::HTTP_2,
        &"https://evil.example/p".parse().unwrap(),
        &o,
    );
    assert_eq!(h2.unwrap(), "https://www.avis.example/p");
}

fn forward_for<'a>(hosts: &'a Arc<HostMap>, origin: &'a Url, cookies: &'a [String]) -> Forward<'a> {
    static RELEASE: std::sync::LazyLock<Vec<(http::HeaderName, http::HeaderValue)>> =
        std::sync::LazyLock::new(|| super::release_headers([("pseudonym", "ps")]));
    Forward {
        origin,
        hosts,
        service: "avis",
        release: &RELEASE,
        gateway_cookies: cookies,
        timeouts: Timeouts::default(),
    }
}

#[test]
fn h2_split_cookies_are_merged_without_ours() {
    let hosts = Arc::new(map(Scheme::Http));
    let origin = url("https://www.avis.example");
    let cookies = vec!["pv".to_owned()];
    let f = forward_for(&hosts, &origin, &cookies);
    let mut h = HeaderMap::new();
    h.append("cookie", "a=1".parse().unwrap());
    h.append("cookie", "pv=secret; b=2".parse().unwrap());
    h.append("cookie", "pvx=kept".parse().unwrap());
    h.insert(
        "referer",
        "http://avis--1.bib.localhost:8080/x?y".parse().unwrap(),
    );
    h.insert("origin", "null".parse().unwrap());
    h.insert("accept-encoding", "zstd".parse().unwrap());
    scrub_request(&mut h, &f);
    assert_eq!(h.get_all("cookie").iter().count(), 1);
    assert_eq!(h["cookie"], "a=1; b=2; pvx=kept");
    assert_eq!(h["referer"], "https://cdn.avis.example/x?y");
    assert_eq!(h["origin"], "null");
    assert_eq!(h["accept-encoding"], "identity");
    assert_eq!(h["x-portvakt-pseudonym"], "ps");

    // Another service's host: only its origin, as a browser would send across origins.
    let mut h = HeaderMap::new();
    h.insert(
        "referer",
        "http://film.bib.localhost:8080/secret/path"
            .parse()
            .unwrap(),
    );
    scrub_request(&mut h, &f);
    assert_eq!(h["referer"], "https://film.example/");
}

#[test]
fn request_heads_lose_hop_by_hop_address_and_forged_headers() {
    let hosts = Arc::new(map(Scheme::Http));
    let origin = url("https://www.avis.example");
    let cookies = vec!["pv".to_owned()];
    let f = forward_for(&hosts, &origin, &cookies);
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "avis.bib.localhost:8080"),
        // Listed in Connection (any case, over two headers): hop-by-hop.
        ("connection", "keep-alive, X-Patron-Card"),
        ("connection", "close,x-other"),
        ("x-patron-card", "1234"),
        ("x-other", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic eA=="),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-host", "avis.bib.localhost"),
        ("forwarded", "for=198.51.100.7"),
        ("x-real-ip", "198.51.100.7"),
        ("via", "1.1 somewhere"),
        ("x-portvakt-pseudonym", "forged"),
        ("accept", "text/html"),
        ("x-requested-with", "XMLHttpRequest"),
    ] {
        h.append(k, v.parse().unwrap());
    }
    scrub_request(&mut h, &f);
    let mut names: Vec<&str> = h.keys().map(http::HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["accept", "x-portvakt-pseudonym", "x-requested-with"]
    );
    assert_eq!(h.get_all("x-portvakt-pseudonym").iter().count(), 1);
    assert_eq!(h["x-portvakt-pseudonym"], "ps");
}

#[test]
fn every_hop_by_hop_name_is_told_apart_as_one() {
    let none = super::headers::Listed::of(&HeaderMap::new());
    for name in super::headers::HOP_BY_HOP {
        assert!(none.hop_by_hop(name), "{name}");
    }
    for name in ["proxy-authorization", "proxy-anything"] {
        assert!(none.hop_by_hop(name), "{name}");
    }
    for name in [
        "content-type",
        "cookie",
        "tel",
        "upgrade-insecure-requests",
        "keep",
    ] {
        assert!(!none.hop_by_hop(name), "{name}");
    }
}

/// The `match`es the scrubbing uses say exactly what the lists say: every listed name,
/// and no name one letter off (shorter, longer, or changed).
#[test]
fn the_name_matches_agree_with_the_lists() {
    use super::headers::{HOP_BY_HOP, is_client_address, is_hop_by_hop};
    const CLIENT_ADDRESS: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "client-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "via",
    ];
    for (list, is) in [
        (HOP_BY_HOP, is_hop_by_hop as fn(&str) -> bool),
        (CLIENT_ADDRESS, is_client_address),
    ] {
        for name in list {
            assert!(is(name), "{name}");
            let near = [
                name[1..].to_owned(),
                name[..name.len() - 1].to_owned(),
                format!("{name}s"),
                format!("x{name}"),
                name.replacen(|c: char| c.is_ascii_lowercase(), "q", 1),
                name.to_ascii_uppercase(),
            ];
            for other in near.iter().filter(|o| !list.contains(&o.as_str())) {
                assert!(!is(other), "{other}");
            }
        }
    }
    for name in ["host", "cookie", "accept", "x-forwarded-for", ""] {
        assert!(!is_hop_by_hop(name) && !is_client_address(name), "{name}");
    }
}

#[test]
fn one_cookie_header_keeps_the_vendors_cookies_and_loses_ours() {
    let hosts = Arc::new(map(Scheme::Http));
    let origin = url("https://www.avis.example");
    let cookies = vec!["pv".to_owned()];
    let f = forward_for(&hosts, &origin, &cookies);
    for (sent, arrives) in [
        ("pv=secret", None),
        (" pv=secret ;", None),
        ("pv=secret; vendor=1", Some("vendor=1")),
        ("vendor=1;pv=secret;  other=2", Some("vendor=1; other=2")),
        // Without ours the header goes on byte for byte, spacing and all.
        ("vendor=1;other=2 ", Some("vendor=1;other=2 ")),
        ("pvx=1", Some("pvx=1")),
    ] {
        let mut h = HeaderMap::new();
        h.insert("cookie", sent.parse().unwrap());
        scrub_request(&mut h, &f);
        let got: Vec<_> = h.get_all("cookie").iter().collect();
        match arrives {
            None => assert!(got.is_empty(), "{sent}: {got:?}"),
            Some(v) => assert_eq!(got, [v], "{sent}"),
        }
    }
}

#[test]
fn response_heads_are_rewritten_and_html_planned() {
    let hosts = Arc::new(map(Scheme::Http));
    let origin = url("https://www.avis.example");
    let cookies = vec!["pv".to_owned()];
    let f = forward_for(&hosts, &origin, &cookies);
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("alt-svc", "h3=\":443\"")
        .header("content-type", "Text/HTML; Charset=\"ISO-8859-1\"")
        .header("content-encoding", "br")
        .header("content-length", "10")
        .header("etag", "\"x\"")
        .header("set-cookie", "pv=planted")
        .header("location", "https://cdn.avis.example/next")
        .body(())
        .unwrap();
    let (mut parts, ()) = resp.into_parts();
    let plan = rewrite_response(&mut parts, &Method::GET, &f);
    let html = plan.html.unwrap();
    assert_eq!(html.coding, Coding::Brotli);
    assert_eq!(html.charset, Some(encoding_rs::WINDOWS_1252));
    let h = &parts.headers;
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "alt-svc",
        "content-encoding",
        "content-length",
        "set-cookie",
    ] {
        assert!(!h.contains_key(gone), "{gone}");
    }
    assert_eq!(h["etag"], "W/\"x\"");
    assert_eq!(h["location"], "http://avis--1.bib.localhost:8080/next");

    // Not ours to decode, a range, or not HTML: the body passes as it is, still encoded.
    for (ct, ce, status) in [
        ("text/html", "zstd", StatusCode::OK),
        ("text/html", "gzip", StatusCode::PARTIAL_CONTENT),
        ("application/json", "gzip", StatusCode::OK),
        ("text/html; charset=utf-16", "", StatusCode::OK),
    ] {
        let mut b = Response::builder()
            .status(status)
            .header("content-type", ct);
        if !ce.is_empty() {
            b = b.header("content-encoding", ce);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        let plan = rewrite_response(&mut parts, &Method::GET, &f);
        assert!(plan.html.is_none(), "{ct} {ce} {status}");
        if !ce.is_empty() {
            assert_eq!(parts.headers["content-encoding"], ce);
        }
    }
}

/// A page with every kind of rewritten attribute, and what the browser gets.
const PAGE: &str = concat!(
    r#"<!DOCTYPE html><html><head><meta charset="utf-8">"#,
    r#"<meta http-equiv="Refresh" content="5; url=https://www.avis.example/next">"#,
    r#"<meta name="description" content="0; url=https://www.avis.example/not-a-refresh">"#,
    r#"<link rel="stylesheet" href="https://cdn.avis.example/s.css">"#,
    r#"<link rel="preload" as="image" imagesrcset="https://cdn.avis.example/w.png 480w, /x.png 800w">"#,
    r#"</head><body>"#,
    r#"<a href="https://www.avis.example/a?x=1&amp;y=2">a</a>"#,
    r#"<a HREF="//cdn.avis.example/b" href="https://www.avis.example/second">b</a>"#,
    r#"<img src="https://cdn.avis.example/i.png" srcset="https://cdn.avis.example/i.png 1x, https://foreign.example/i2.png 2x" alt="">"#,
    r#"<form action="https://www.avis.example/sok" method="post"><button formaction="http://img.avis.example:8081/go">go</button></form>"#,
    r#"<video poster="https://cdn.avis.example/p.jpg"></video><object data="https://www.avis.example/o.pdf"></object>"#,
    r#"<div style="background:url('https://cdn.avis.example/bg.png')">x</div>"#,
    r#"<a href="https://film.example/other">another service</a><a href="/rel">relative</a>"#,
    r#"<script>var u = "https://www.avis.example/js";</script>"#,
    r#"</body></html>"#,
);

const PAGE_REWRITTEN: &str = concat!(
    r#"<!DOCTYPE html><html><head><meta charset="utf-8">"#,
    r#"<meta http-equiv="Refresh" content="5; url=http://avis.bib.localhost:8080/next">"#,
    r#"<meta name="description" content="0; url=https://www.avis.example/not-a-refresh">"#,
    r#"<link rel="stylesheet" href="http://avis--1.bib.localhost:8080/s.css">"#,
    r#"<link rel="preload" as="image" imagesrcset="http://avis--1.bib.localhost:8080/w.png 480w, /x.png 800w">"#,
    r#"</head><body>"#,
    r#"<a href="http://avis.bib.localhost:8080/a?x=1&amp;y=2">a</a>"#,
    r#"<a HREF="//avis--1.bib.localhost:8080/b" href="https://www.avis.example/second">b</a>"#,
    r#"<img src="http://avis--1.bib.localhost:8080/i.png" srcset="http://avis--1.bib.localhost:8080/i.png 1x, https://foreign.example/i2.png 2x" alt="">"#,
    r#"<form action="http://avis.bib.localhost:8080/sok" method="post"><button formaction="http://avis--2.bib.localhost:8080/go">go</button></form>"#,
    r#"<video poster="http://avis--1.bib.localhost:8080/p.jpg"></video><object data="http://avis.bib.localhost:8080/o.pdf"></object>"#,
    r#"<div style="background:url('http://avis--1.bib.localhost:8080/bg.png')">x</div>"#,
    r#"<a href="https://film.example/other">another service</a><a href="/rel">relative</a>"#,
    r#"<script>var u = "https://www.avis.example/js";</script>"#,
    r#"</body></html>"#,
);

fn encode(coding: Coding, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        Coding::Identity => body.to_vec(),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        Coding::Brotli => {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            e.write_all(body).unwrap();
            drop(e);
            out
        }
    }
}

fn plan(coding: Coding) -> HtmlPlan {
    HtmlPlan {
        coding,
        charset: None,
    }
}

#[test]
fn every_rewritten_attribute_kind_in_one_page_encoded_or_not() {
    let hosts = Arc::new(map(Scheme::Http));
    for coding in [
        Coding::Identity,
        Coding::Gzip,
        Coding::Deflate,
        Coding::Brotli,
    ] {
        let body = encode(coding, PAGE.as_bytes());
        // Whole, and in small pieces that split tags, attributes and the encoding's blocks.
        for size in [body.len(), 7] {
            let chunks: Vec<&[u8]> = body.chunks(size).collect();
            let out = rewrite_body(&plan(coding), &hosts, "avis", &chunks).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                PAGE_REWRITTEN,
                "{coding:?} in chunks of {size}"
            );
        }
    }
}

/// The scanner's output, in chunks of `size`, against lol_html's on the whole page.
fn scanner_and_lol_html(page: &[u8], size: usize) -> (String, String) {
    let hosts = Arc::new(map(Scheme::Http));
    let p = plan(Coding::Identity);
    let chunks: Vec<&[u8]> = page.chunks(size.max(1)).collect();
    let ours = rewrite_body(&p, &hosts, "avis", &chunks).unwrap();
    let theirs = oracle::rewrite_decoded(&p, &hosts, "avis", &[page]).unwrap();
    (
        String::from_utf8_lossy(&ours).into_owned(),
        String::from_utf8_lossy(&theirs).into_owned(),
    )
}

#[test]
fn the_scanner_rewrites_as_lol_html_does() {
    let pages = [
        PAGE,
        r#"<META HTTP-EQUIV=refresh CONTENT="0;URL='https://cdn.avis.example/x'"><p style="a:url(https://www.avis.example/a)" src="https://www.avis.example/s">"#,
        r#"<meta content="0; url=https://www.avis.example/first" http-equiv=" Refresh "/>"#,
        r#"<div http-equiv="refresh" content="0; url=https://www.avis.example/x"></div>"#,
        r#"<img src=https://www.avis.example/a src=https://cdn.avis.example/b srcset="//cdn.avis.example/c 2x">"#,
        r#"<img src=https://www.avis.example/a/><img src = 'https://www.avis.example/"q"' / ><a href=https://www.avis.example/a href>"#,
        r#"<svg><a href="https://www.avis.example/svg"/></svg><math><mi href="https://www.avis.example/m"/></math>"#,
        r#"<svg><style><a href="https://www.avis.example/in-svg-style"></style><![CDATA[ <a href="https://www.avis.example/cdata"> ]]><p><style><a href="https://www.avis.example/raw"></style>"#,
        r#"<svg><foreignObject><style><a href="https://www.avis.example/raw"></style></foreignObject><title><a href="https://www.avis.example/t"></title></svg>"#,
        r#"<math><annotation-xml encoding="text/html"><style><a href="https://www.avis.example/raw"></style></annotation-xml></math><a href="https://www.avis.example/after">"#,
        r#"<template><a href="https://www.avis.example/t">t</a></template>"#,
        r#"<a href="  https://www.avis.example/space  ">x</a><a href="https://www.avis.example/&quot;q">q</a>"#,
        r#"<!-- <a href="https://www.avis.example/c1"> --><!--><a href="https://www.avis.example/a1"><!---><a href="https://www.avis.example/a2"><!-- --!><a href="https://www.avis.example/a3"><!-- -- ><a href="https://www.avis.example/c2"> -->"#,
        r#"<!DOCTYPE html><?php x ?><a href="https://www.avis.example/d"></ a href="https://www.avis.example/e"></><a href="https://www.avis.example/f">"#,
        r#"<script>if (a<b) x = '<a href="https://www.avis.example/js">';</script ><a href="https://www.avis.example/after">"#,
        r#"<script><!-- document.write("<script src='https://www.avis.example/x.js'></script>") //--></script><img src="https://cdn.avis.example/i">"#,
        r#"<script><!--></script><img src="https://cdn.avis.example/i"><SCRIPT><!-- <script> </script> --> </script><img src="https://cdn.avis.example/j">"#,
        r#"<title><a href="https://www.avis.example/no"></title ><textarea><img src="https://www.avis.example/no"></textarea/><xmp><a href="https://www.avis.example/no"></xmp><iframe><a href="https://www.avis.example/no"></iframe><a href="https://www.avis.example/yes">"#,
        r#"<a title='>' href="https://www.avis.example/q" data-x="<a href='https://www.avis.example/n'>">x</a><a =href="https://www.avis.example/odd" href=https://www.avis.example/ok>"#,
        "<a\thref\n=\r\n'https://www.avis.example/ws'\x0c>x</a>",
        r#"<plaintext><a href="https://www.avis.example/no">"#,
    ];
    for page in pages {
        for size in [page.len(), 1, 2, 3, 5, 7, 64] {
            let (ours, theirs) = scanner_and_lol_html(page.as_bytes(), size);
            assert_eq!(ours, theirs, "{page} in chunks of {size}");
        }
    }
}

#[test]
fn noscript_links_are_rewritten_for_browsers_without_scripts() {
    // lol_html reads `<noscript>` as text, as a browser with scripting on does; the
    // scanner rewrites its links, which only a browser without scripting follows.
    let hosts = Arc::new(map(Scheme::Http));
    let page = br#"<noscript><img src="https://cdn.avis.example/n"></noscript>"#;
    let out = rewrite_body(&plan(Coding::Identity), &hosts, "avis", &[page]).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"<noscript><img src="http://avis--1.bib.localhost:8080/n"></noscript>"#
    );
}

#[test]
fn a_page_in_a_single_byte_encoding_keeps_its_bytes() {
    let hosts = Arc::new(map(Scheme::Http));
    // ISO-8859-1 `ø` (0xF8) in the path and the text.
    let page = b"<a href=\"https://www.avis.example/s\xf8k\">s\xf8k</a>";
    let out = rewrite_body(&plan(Coding::Identity), &hosts, "avis", &[page]).unwrap();
    assert_eq!(
        out,
        b"<a href=\"http://avis.bib.localhost:8080/s\xf8k\">s\xf8k</a>"
    );
}

#[test]
fn a_tag_longer_than_the_limit_passes_and_so_does_the_rest() {
    let hosts = Arc::new(map(Scheme::Http));
    let mut page = b"<a href=\"https://www.avis.example/a\"><img src=\"data:".to_vec();
    page.extend(std::iter::repeat_n(b'A', 5 * 1024 * 1024));
    page.extend_from_slice(b"\"><a href=\"https://www.avis.example/b\">");
    let chunks: Vec<&[u8]> = page.chunks(16 * 1024).collect();
    let out = rewrite_body(&plan(Coding::Identity), &hosts, "avis", &chunks).unwrap();
    assert!(out.starts_with(b"<a href=\"http://avis.bib.localhost:8080/a\">"));
    assert!(out.ends_with(b"<a href=\"https://www.avis.example/b\">"));
    assert_eq!(
        out.len(),
        page.len() - "https://www.avis.example".len() + "http://avis.bib.localhost:8080".len()
    );
}

#[test]
fn a_tag_with_very_many_attributes_is_read_once_and_left_as_it_is() {
    let hosts = Arc::new(map(Scheme::Http));
    // 3 MiB of attributes in one tag, in 16 kB chunks: its link is left alone (over 1024
    // attributes), the next one rewritten. The tag is read once, not again with every
    // chunk (a cost that grew with the square of its length); no timing is asserted.
    let mut page = b"<a href=\"https://www.avis.example/many\"".to_vec();
    page.extend(std::iter::repeat_n(&b" x"[..], 3 * 512 * 1024).flatten());
    page.extend_from_slice(b"><a href=\"https://www.avis.example/next\">");
    let chunks: Vec<&[u8]> = page.chunks(16 * 1024).collect();
    let out = rewrite_body(&plan(Coding::Identity), &hosts, "avis", &chunks).unwrap();
    assert!(out.starts_with(b"<a href=\"https://www.avis.example/many\" x x"));
    assert!(out.ends_with(b"><a href=\"http://avis.bib.localhost:8080/next\">"));
    assert_eq!(
        out.len(),
        page.len() - "https://www.avis.example".len() + "http://avis.bib.localhost:8080".len()
    );
}

/// Pieces of HTML to build pages from: markup the scanner must read as a browser does,
/// links to rewrite in places that count and places that do not.
fn html_piece() -> impl proptest::strategy::Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "x",
        " ",
        "\n",
        "&amp;",
        "<",
        ">",
        "a < b",
        "-",
        "--",
        "!",
        "/",
        "'",
        "\"",
        "=",
        r#"<a href="https://www.avis.example/p">"#,
        r#"<A HREF='//cdn.avis.example/q' href="https://www.avis.example/second">"#,
        "<img src=https://cdn.avis.example/i.png/>",
        r#"<img srcset="https://cdn.avis.example/1 1x, /2 2x" src = "https://film.example/x" />"#,
        r#"<div style="background:url(https://www.avis.example/bg)">"#,
        r#"<meta http-equiv=refresh content="0;url=https://www.avis.example/r">"#,
        r#"<form action="http://img.avis.example:8081/f"><button formaction=https://www.avis.example/b>"#,
        "<a title='x\"y' href='https://www.avis.example/\"'>",
        "<a href",
        "<a href=",
        "=\"https://www.avis.example/x\"",
        "<p",
        "<b ",
        "</a>",
        "</p>",
        "</ a>",
        "</>",
        "<!--",
        "-->",
        "--!>",
        "<!-->",
        "<!DOCTYPE html>",
        "<?x?>",
        "<!x>",
        "<script>",
        "</script>",
        "</script ",
        "<script><!--",
        "<!--<script>",
        "<style>",
        "</style>",
        "<title>",
        "</title>",
        "<textarea>",
        "</textarea>",
        "<xmp>",
        "</xmp>",
        "<iframe>",
        "</iframe>",
        "<svg>",
        "</svg>",
        "<math>",
        "</math>",
        "<mi>",
        "</mi>",
        "<desc>",
        "</desc>",
        "<foreignObject>",
        "</foreignObject>",
        "<font color=red>",
        "<font>",
        "<![CDATA[",
        "]]>",
        r#"<annotation-xml encoding="text/html">"#,
        "</annotation-xml>",
        "<br>",
        "</br>",
        "<p>",
    ])
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    #[test]
    fn the_scanner_agrees_with_lol_html_on_any_page_in_any_chunks(
        pieces in proptest::collection::vec(html_piece(), 0..40),
        size in 1usize..40,
    ) {
        let page = pieces.concat();
        let (ours, theirs) = scanner_and_lol_html(page.as_bytes(), size);
        proptest::prop_assert_eq!(ours, theirs, "{}", page);
    }
}

/// Authorities near the origins' (case, ports, IPv4 spellings, escapes, IDN, dots) and
/// far from them.
fn authority() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let host = prop_oneof![
        Just("www.avis.example".to_owned()),
        Just("WWW.Avis.Example".to_owned()),
        Just("cdn.avis.example".to_owned()),
        Just("img.avis.example".to_owned()),
        Just("www.avis.example.".to_owned()),
        Just("ww%77.avis.example".to_owned()),
        Just("xn--www-avis.example".to_owned()),
        Just("www.avis.example\u{ff0e}".to_owned()),
        Just("ＷＷＷ.avis.example".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("127.1".to_owned()),
        Just("0x7f.0.0.1".to_owned()),
        Just("127.000.0.1".to_owned()),
        Just("256.0.0.1".to_owned()),
        Just("[::1]".to_owned()),
        Just("film.example".to_owned()),
        "[a-zA-Z0-9.%-]{1,12}",
        "[0-9.x]{1,12}",
    ];
    let port = prop_oneof![
        Just(String::new()),
        Just(":".to_owned()),
        Just(":443".to_owned()),
        Just(":0443".to_owned()),
        Just(":80".to_owned()),
        Just(":8081".to_owned()),
        Just(":08081".to_owned()),
        Just(":65536".to_owned()),
        Just(":99999999999".to_owned()),
        Just(":8a".to_owned()),
        ":[0-9]{1,6}",
    ];
    (host, port).prop_map(|(h, p)| format!("{h}{p}"))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

    #[test]
    fn the_fast_link_matcher_agrees_with_url_parse(
        scheme in proptest::prelude::prop_oneof![
            proptest::prelude::Just("https://"),
            proptest::prelude::Just("HTTP://"),
            proptest::prelude::Just("http://"),
            proptest::prelude::Just("//"),
            proptest::prelude::Just(" //"),
        ],
        authority in authority(),
        tail in "(/[a-z]{0,3})?(\\?q)?(#f)?",
        service in proptest::prelude::prop_oneof![
            proptest::prelude::Just("avis"),
            proptest::prelude::Just("film"),
            proptest::prelude::Just("ip"),
        ],
    ) {
        let m = HostMap::new(
            "bib.localhost:8080",
            Scheme::Https,
            [
                (
                    ServiceId::from("avis"),
                    url("https://www.avis.example"),
                    vec![url("https://cdn.avis.example"), url("http://img.avis.example:8081")],
                ),
                (ServiceId::from("film"), url("https://film.example:443"), vec![]),
                (ServiceId::from("ip"), url("http://127.0.0.1:8081"), vec![url("https://[::1]")]),
            ],
        )
        .unwrap();
        let link = format!("{scheme}{authority}{tail}");
        proptest::prop_assert_eq!(
            m.rewrite_link(service, &link),
            m.rewrite_link_by_url(service, &link),
            "{}", link
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(800))]

    #[test]
    fn any_bytes_without_a_link_pass_unchanged_in_any_chunks(
        bytes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::sample::select(b"<>/!-='\" \tabcsrhtpmx[]?".to_vec()),
            ],
            0..1500,
        ),
        size in 1usize..64,
    ) {
        // Nothing here names an origin, so nothing may change, however broken the markup.
        let hosts = Arc::new(map(Scheme::Http));
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        let out = rewrite_body(&plan(Coding::Identity), &hosts, "avis", &chunks).unwrap();
        proptest::prop_assert_eq!(out, bytes);
    }
}
