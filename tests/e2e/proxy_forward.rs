//! `proxy::forward` against a recording origin (tests/support/origin.rs): what reaches the
//! vendor and what never does, what comes back rewritten and what does not, and how slow,
//! broken and huge answers end. The last test runs the proxy behind a real server.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use crate::support::origin;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;
use origin::{BIG_CHUNK, BIG_CHUNKS, Origin};
use policy::ids::ServiceId;
use proxy::Scheme;
use proxy::{Forward, HostMap, ProxyError, Timeouts, UpstreamSettings, Upstreams, forward};
use tokio::sync::mpsc;
use url::Url;

const PUBLIC: &str = "bib.localhost:8080";
const SVC: &str = "http://avis.bib.localhost:8080";
const CDN: &str = "http://avis--1.bib.localhost:8080";

struct Setup {
    main: Origin,
    cdn: Origin,
    main_url: Url,
    hosts: Arc<HostMap>,
    up: Upstreams,
    cookies: Vec<String>,
    release: Vec<(http::HeaderName, http::HeaderValue)>,
}

async fn setup_with(scheme: Scheme) -> Setup {
    let main = Origin::start().await;
    let cdn = Origin::start().await;
    main.set_peer(&cdn.url);
    cdn.set_peer(&main.url);
    let main_url = Url::parse(&main.url).unwrap();
    let hosts = HostMap::new(
        PUBLIC,
        scheme,
        [(
            ServiceId::from("avis"),
            main_url.clone(),
            vec![Url::parse(&cdn.url).unwrap()],
        )],
    )
    .unwrap();
    Setup {
        main,
        cdn,
        main_url,
        hosts: Arc::new(hosts),
        up: Upstreams::new(&UpstreamSettings::default()).unwrap(),
        cookies: vec!["portvakt_session".into(), "__Host-portvakt".into()],
        release: proxy::release_headers([("pseudonym", "p5eudonym-real"), ("age_over_18", "true")]),
    }
}

async fn setup() -> Setup {
    setup_with(Scheme::Http).await
}

impl Setup {
    fn fwd(&self) -> Forward<'_> {
        Forward {
            origin: &self.main_url,
            hosts: &self.hosts,
            service: "avis",
            release: &self.release,
            gateway_cookies: &self.cookies,
            timeouts: Timeouts::default(),
        }
    }

    async fn send(&self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        forward(&self.up, &self.fwd(), req).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response<Body> {
        let mut b = Request::get(path).header("host", "avis.bib.localhost:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::empty()).unwrap()).await.unwrap()
    }
}

async fn text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_vendor_never_learns_the_patrons_address_cookies_or_login_host() {
    let s = setup().await;
    let resp = s
        .get(
            "/echo?q=1",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("forwarded", "for=203.0.113.7;proto=https"),
                ("x-real-ip", "203.0.113.7"),
                ("true-client-ip", "203.0.113.7"),
                ("cf-connecting-ip", "203.0.113.7"),
                ("x-client-ip", "203.0.113.7"),
                ("x-forwarded-host", "bib.localhost"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-port", "443"),
                ("via", "1.1 corp-proxy"),
                ("x-portvakt-pseudonym", "forged-pseudonym"),
                ("x-portvakt-age-over-18", "forged-age"),
                ("x-portvakt-admin", "forged-admin"),
                (
                    "cookie",
                    "portvakt_session=SESSIONSECRET; vendor_sid=abc; __Host-portvakt=HOSTSECRET",
                ),
                (
                    "referer",
                    "http://bib.localhost:8080/go/avis?t=TICKETSECRET",
                ),
                ("origin", "http://bib.localhost:8080"),
                ("connection", "x-hop-secret"),
                ("x-hop-secret", "hop"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("te", "trailers"),
                ("accept-encoding", "gzip, zstd;q=0.9, br"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, "ok");

    let raw = s.main.raw_text().to_ascii_lowercase();
    for never in [
        "x-forwarded",
        "forwarded:",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "203.0.113.7",
        "via:",
        "forged",
        "x-portvakt-admin",
        "sessionsecret",
        "hostsecret",
        "portvakt_session",
        "ticketsecret",
        "bib.localhost",
        "x-hop-secret",
        "proxy-authorization",
        "zstd",
        "\r\nte:",
    ] {
        assert!(!raw.contains(never), "{never:?} reached the origin:\n{raw}");
    }

    let r = s.main.last("/echo");
    assert_eq!(r.target, "/echo?q=1");
    assert_eq!(r.header("host"), Some(s.main.addr.to_string().as_str()));
    assert_eq!(r.header("x-portvakt-pseudonym"), Some("p5eudonym-real"));
    assert_eq!(r.header("x-portvakt-age-over-18"), Some("true"));
    assert_eq!(r.headers_named("x-portvakt-pseudonym").len(), 1);
    assert_eq!(r.header("cookie"), Some("vendor_sid=abc"));
    assert_eq!(r.header("accept-encoding"), Some("gzip, br"));
    assert_eq!(r.header("referer"), None);
    assert_eq!(r.header("origin"), None);
}

#[tokio::test]
async fn service_host_referers_go_back_to_the_origin_and_foreign_ones_stay() {
    let s = setup().await;
    s.get(
        "/one",
        &[
            ("referer", "http://avis.bib.localhost:8080/article/1?x=2"),
            ("origin", "http://avis--1.bib.localhost:8080"),
            ("cookie", "portvakt_session=only-ours"),
        ],
    )
    .await;
    let r = s.main.last("/one");
    assert_eq!(
        r.header("referer"),
        Some(format!("{}/article/1?x=2", s.main.url).as_str())
    );
    assert_eq!(r.header("origin"), Some(s.cdn.url.as_str()));
    assert_eq!(
        r.header("cookie"),
        None,
        "a Cookie header left empty is dropped"
    );

    s.get(
        "/two",
        &[("referer", "https://www.example.com/search?q=avis")],
    )
    .await;
    let r = s.main.last("/two");
    assert_eq!(
        r.header("referer"),
        Some("https://www.example.com/search?q=avis")
    );
}

/// The expected rewritten fragments of the origin's page.
fn assert_page_rewritten(body: &str, s: &Setup) {
    let own_host = s.main.addr.to_string();
    for want in [
        format!(r#"<meta http-equiv="refresh" content="30; url={SVC}/refreshed">"#),
        format!(r#"<link rel="stylesheet" href="{CDN}/style.css">"#),
        format!(r#"<a id="self" href="{SVC}/article/1?x=1&amp;y=2">"#),
        r#"<a id="proto" href="//avis.bib.localhost:8080/proto">"#.to_owned(),
        r#"<a id="rel" href="/relative">"#.to_owned(),
        format!(
            r#"<img id="cdn" src="{CDN}/img.png" srcset="{CDN}/a.png 1x, {SVC}/b.png 2x, https://foreign.example/c.png 3x">"#
        ),
        r#"<a id="foreign" href="https://foreign.example/page">"#.to_owned(),
        format!(r#"<form id="form" action="{SVC}/search"><button formaction="{SVC}/alt">"#),
        format!(r#"<video poster="{CDN}/poster.jpg" src="{CDN}/v.mp4">"#),
        format!(r#"<object data="{SVC}/obj.pdf">"#),
        format!(
            r#"<div style="background: url('{CDN}/bg.png'); border-image: url(https://foreign.example/b.png)">"#
        ),
        "Nyheter på norsk: æøå".to_owned(),
    ] {
        assert!(body.contains(&want), "missing {want}\nin:\n{body}");
    }
    // Scripts are left alone: the one origin URL that remains is the script's.
    assert_eq!(body.matches(own_host.as_str()).count(), 1, "{body}");
    assert!(body.contains(&format!(r#"var api = "{}/api";"#, s.main.url)));
    assert!(!body.contains(&s.cdn.addr.to_string()), "{body}");
}

#[tokio::test]
async fn html_links_to_the_vendors_origins_are_rewritten_in_every_encoding() {
    let s = setup().await;
    for path in [
        "/page.html",
        "/page.gz.html",
        "/page.deflate.html",
        "/page.rawdeflate.html",
        "/page.br.html",
    ] {
        let resp = s
            .get(path, &[("accept-encoding", "gzip, deflate, br")])
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&resp, "content-encoding"), None, "{path}");
        assert_eq!(header(&resp, "content-length"), None, "{path}");
        assert!(header(&resp, "etag").unwrap().starts_with("W/"), "{path}");
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/html; charset=utf-8")
        );
        let body = text(resp).await;
        assert_page_rewritten(&body, &s);
    }
}

#[tokio::test]
async fn head_of_an_encoded_page_matches_what_get_would_send() {
    let s = setup().await;
    let req = Request::head("/page.gz.html").body(Body::empty()).unwrap();
    let resp = s.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-encoding"), None);
    assert_eq!(text(resp).await, "");
}

#[tokio::test]
async fn redirects_to_the_origin_are_rewritten_and_foreign_ones_left_alone() {
    let s = setup().await;
    let resp = s.get("/redirect", &[]).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("{SVC}/landing?from=redirect").as_str())
    );
    let resp = s.get("/redirect-foreign", &[]).await;
    assert_eq!(
        header(&resp, "location"),
        Some("https://foreign.example/elsewhere")
    );
}

#[tokio::test]
async fn cookies_become_host_only_and_refresh_is_rewritten() {
    let s = setup().await;
    let resp = s.get("/cookie", &[]).await;
    let cookies: Vec<&str> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "vendor_sid=abc123; Path=/; HttpOnly",
            "prefs=dark; Path=/; Max-Age=3600"
        ],
        "Domain gone, Secure and SameSite=None gone over http, the planted gateway cookie dropped"
    );
    assert_eq!(
        header(&resp, "refresh"),
        Some(format!("5; url={SVC}/after").as_str())
    );
    assert_eq!(
        header(&resp, "content-location"),
        Some(format!("{SVC}/cookie").as_str())
    );

    // Under https, Secure (and SameSite=None with it) stays; Domain still goes.
    let s = setup_with(Scheme::Https).await;
    let resp = s.get("/cookie", &[]).await;
    let first = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert_eq!(
        first,
        "vendor_sid=abc123; Path=/; Secure; HttpOnly; SameSite=None"
    );
    assert_eq!(
        header(&resp, "refresh"),
        Some("5; url=https://avis.bib.localhost:8080/after")
    );
}

#[tokio::test]
async fn a_big_body_streams_with_backpressure() {
    let s = setup().await;
    let resp = s.get("/big", &[]).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty());
    // The origin makes a chunk only when the previous one was taken: had the proxy
    // buffered the body, all of it would have been produced by now (32 MiB).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let produced = s.main.big_chunks_sent();
    // Socket buffers on loopback hold a few MiB; the body is far bigger than that.
    assert!(
        produced < BIG_CHUNKS / 2,
        "{produced} of {BIG_CHUNKS} chunks produced after one read"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(first.len() + rest.len(), BIG_CHUNK * BIG_CHUNKS);
}

#[tokio::test]
async fn a_big_html_page_is_rewritten_while_it_streams() {
    let s = setup().await;
    let resp = s.get("/big.html", &[]).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains(&format!("href=\"{SVC}/item/0\"")), "{first}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let produced = s.main.big_chunks_sent();
    // Socket buffers on loopback hold a few MiB; the body is far bigger than that.
    assert!(
        produced < BIG_CHUNKS / 2,
        "{produced} of {BIG_CHUNKS} chunks produced after one read"
    );
    // Read on for a while (all of it would take long in a debug build), then hang up.
    let mut all = first;
    while all.len() < 4 * 1024 * 1024 {
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        all.push_str(std::str::from_utf8(&data).unwrap());
    }
    assert!(!all.contains(&s.main.url), "an origin link survived");
    let links = all.matches(&format!("<a href=\"{SVC}/item/")).count();
    assert!(links > 50_000, "{links}");
    drop(body);
}

#[tokio::test]
async fn absolute_form_and_connect_never_reach_upstream() {
    let s = setup().await;
    let absolute = Request::get(format!("http://{}/echo", s.main.addr))
        .version(Version::HTTP_11)
        .body(Body::empty())
        .unwrap();
    let err = s.send(absolute).await.unwrap_err();
    assert!(matches!(err, ProxyError::BadRequest(_)), "{err}");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);

    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri(s.main.addr.to_string())
        .body(Body::empty())
        .unwrap();
    let err = s.send(connect).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.main.request_count(), 0);

    // Over HTTP/2 the URI always has an authority (:authority); it is never where the
    // request goes: only the configured origin is contacted.
    let h2 = Request::get("https://evil.example/echo")
        .version(Version::HTTP_2)
        .body(Body::empty())
        .unwrap();
    let resp = s.send(h2).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let r = s.main.last("/echo");
    assert_eq!(r.target, "/echo");
    assert_eq!(r.header("host"), Some(s.main.addr.to_string().as_str()));
}

#[tokio::test]
async fn a_slow_origin_gives_504_and_a_stalled_body_is_cut_off() {
    let s = setup().await;
    let mut f = s.fwd();
    f.timeouts = Timeouts {
        response_header: Duration::from_millis(300),
        body_idle: Some(Duration::from_millis(300)),
    };
    let req = Request::get("/slow").body(Body::empty()).unwrap();
    let err = forward(&s.up, &f, req).await.unwrap_err();
    assert!(matches!(err, ProxyError::Timeout), "{err}");
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);

    let req = Request::get("/slow-body").body(Body::empty()).unwrap();
    let resp = forward(&s.up, &f, req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first part");
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the idle timeout should have ended the body");
    assert!(matches!(end, Some(Err(_))), "{end:?}");
}

#[tokio::test]
async fn resets_malformed_answers_and_dead_origins_give_502_or_a_cut_off_body() {
    let s = setup().await;
    // A reset mid-body: the head arrived, so the body ends in an error.
    match s
        .send(Request::get("/reset").body(Body::empty()).unwrap())
        .await
    {
        Ok(resp) => {
            let res = resp.into_body().collect().await;
            assert!(res.is_err(), "a reset body must not end cleanly");
        }
        Err(e) => assert_eq!(e.status(), StatusCode::BAD_GATEWAY, "{e}"),
    }

    let err = s
        .send(Request::get("/malformed").body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead_url = Url::parse(&format!("http://{dead}")).unwrap();
    let mut f = s.fwd();
    f.origin = &dead_url;
    let err = forward(&s.up, &f, Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Unreachable(_)), "{err}");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
}

/// A request body fed from a channel, so the test decides when each chunk exists.
struct Feed(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_chunked_request_body_streams_to_the_origin() {
    let s = Arc::new(setup().await);
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let req = Request::post("/upload").body(Body::new(Feed(rx))).unwrap();
    let s2 = Arc::clone(&s);
    let pending = tokio::spawn(async move { text(s2.send(req).await.unwrap()).await });

    tx.send(Bytes::from(vec![b'a'; 64 * 1024])).await.unwrap();
    // The first chunk reaches the origin while the second does not exist yet.
    s.main.uploaded_at_least(64 * 1024).await;
    tx.send(Bytes::from(vec![b'b'; 1000])).await.unwrap();
    drop(tx);
    assert_eq!(
        pending.await.unwrap(),
        format!("received {}", 64 * 1024 + 1000)
    );
    let r = s.main.last("/upload");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
}

/// The proxy behind a real HTTP/1.1 server, the way the gateway will run it.
async fn serve(s: Arc<Setup>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let s = Arc::clone(&s);
        async move {
            match s.send(req).await {
                Ok(resp) => resp,
                Err(e) => Response::builder()
                    .status(e.status())
                    .body(Body::from(e.to_string()))
                    .unwrap(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

use crate::support::http as client;

#[tokio::test]
async fn behind_a_server_a_reset_cuts_one_response_and_the_next_one_works() {
    let s = Arc::new(setup().await);
    let addr = serve(Arc::clone(&s)).await;
    let reply = tokio::task::spawn_blocking(move || {
        client::request(addr, "GET", "avis.bib.localhost:8080", "/reset", &[], None)
    })
    .await
    .unwrap();
    assert!(
        reply.status == 502 || (reply.status == 200 && reply.body.len() < 1_000_000),
        "{} with {} bytes",
        reply.status,
        reply.body.len()
    );
    let reply = tokio::task::spawn_blocking(move || {
        client::request(
            addr,
            "GET",
            "avis.bib.localhost:8080",
            "/page.gz.html",
            &[],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains(&format!("href=\"{SVC}/article/1")));
    let reply = tokio::task::spawn_blocking(move || {
        client::raw(
            addr,
            b"GET http://127.0.0.1:1/echo HTTP/1.1\r\nHost: avis.bib.localhost:8080\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(reply.status, 400);
}

/// An https origin with a certificate of its own: HTTP/2 by ALPN, trusted only through
/// `extra_roots`.
#[tokio::test]
async fn https_origins_speak_http2_by_alpn_and_need_a_trusted_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(gateway::tls::server_config(&c, &k).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let seen = format!(
                            "{:?} {} {}",
                            req.version(),
                            req.uri(),
                            req.headers().contains_key("x-forwarded-for")
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from(seen),
                        )))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });

    let origin = Url::parse(&format!("https://localhost:{port}")).unwrap();
    let hosts = Arc::new(
        HostMap::new(
            PUBLIC,
            Scheme::Https,
            [(ServiceId::from("tls"), origin.clone(), vec![])],
        )
        .unwrap(),
    );
    let cookies = Vec::new();
    let f = Forward {
        origin: &origin,
        hosts: &hosts,
        service: "tls",
        release: &[],
        gateway_cookies: &cookies,
        timeouts: Timeouts::default(),
    };
    let req = || {
        Request::get("/x?y=1")
            .header("x-forwarded-for", "203.0.113.7")
            .body(Body::empty())
            .unwrap()
    };

    let trusting = Upstreams::new(&UpstreamSettings {
        extra_roots: vec![cert.cert.der().clone()],
        ..UpstreamSettings::default()
    })
    .unwrap();
    let resp = forward(&trusting, &f, req()).await.unwrap();
    assert_eq!(
        text(resp).await,
        format!("HTTP/2.0 https://localhost:{port}/x?y=1 false")
    );

    let default = Upstreams::new(&UpstreamSettings::default()).unwrap();
    let err = forward(&default, &f, req()).await.unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
}
