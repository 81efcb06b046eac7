//! The proxy mode end to end, in-process: a patron logs in, follows an entry link to a
//! service host, and browses a vendor through the gateway. The vendor is a recording
//! origin that keeps every byte it receives; the tests assert what never arrives (card
//! number, PIN, birth date, the patron's address, session ids, the gateway's cookies) and
//! that hostile requests never reach it.

#![cfg(test)]

use crate::support::http;
use crate::support::origin;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use http::{Reply, form, hidden, request};
use origin::Origin;
use policy::ids::SubjectKey;
use policy::pseudonym::PseudonymKey;

const CARD: &str = "55501234";
const PIN: &str = "2468";
const BIRTH: &str = "1980-02-03";
const PATRON_IP: &str = "203.0.113.77";
const PROXY_IP: &str = "127.0.0.2";
/// The library's own network (on-site), and an address in it.
const ONSITE_NET: &str = "198.51.100.0/24";
const ONSITE_IP: &str = "198.51.100.9";

struct World {
    gateway: SocketAddr,
    admin: SocketAddr,
    host: String,
    main: Origin,
    cdn: Origin,
    policy_dir: PathBuf,
    key: Vec<u8>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(build)
}

fn policy_text(main: &str, cdn: &str, brake: bool) -> String {
    format!(
        r#"
[[institution]]
id = "NO-2390700"
name = "Sandefjordbiblioteket"
kind = "public_library"
municipality = "3907"
networks = ["{ONSITE_NET}"]

[[service]]
id = "avis"
name = "Avis"
access = "proxy"
release = ["pseudonym", "institution", "age_over_18"]
[service.proxy]
origin = "{main}"
hosts = ["{cdn}"]
item_paths = ["/page.html"]

[[service]]
id = "brake"
name = "Bremset"
access = "proxy"
enabled = {enabled}
[service.proxy]
origin = "{main}"

[[service]]
id = "burst"
name = "Begrenset"
access = "proxy"
rate_per_user = "3/min"
[service.proxy]
origin = "{main}"

[[service]]
id = "lov"
name = "Lovdatabase (bare i biblioteket)"
access = "proxy"
location = "onsite"
[service.proxy]
origin = "{main}"

[[service]]
id = "down"
name = "Nede"
access = "proxy"
[service.proxy]
origin = "http://127.0.0.1:9"

[[entitlement]]
institution = "NO-2390700"
service = "avis"
from = 2020-01-01

[[entitlement]]
institution = "NO-2390700"
service = "brake"
from = 2020-01-01

[[entitlement]]
institution = "NO-2390700"
service = "burst"
from = 2020-01-01

[[entitlement]]
institution = "NO-2390700"
service = "lov"
from = 2020-01-01

[[entitlement]]
institution = "NO-2390700"
service = "down"
from = 2020-01-01
"#,
        enabled = !brake
    )
}

fn build() -> World {
    let rt = origin::runtime(2);
    let dir = tempfile::tempdir().unwrap();
    let (main, cdn, public, admin) = rt.block_on(async {
        let main = Origin::start().await;
        let cdn = Origin::start().await;
        main.set_peer(&cdn.url);
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (main, cdn, public, admin)
    });
    let port = public.local_addr().unwrap().port();
    let host = format!("bib.test:{port}");
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("p.toml"),
        policy_text(&main.url, &cdn.url, false),
    )
    .unwrap();
    let key: Vec<u8> = (100u8..132).collect();
    std::fs::write(dir.path().join("pseudonym.key"), &key).unwrap();
    std::fs::write(
        dir.path().join("patrons.toml"),
        format!("[[patron]]\ncard = \"{CARD}\"\npin = \"{PIN}\"\nbirth_date = {BIRTH}\nhome_library = \"NO-2390700\"\n"),
    )
    .unwrap();
    let config = format!(
        r#"
[server]
public_host = "{host}"
trusted_proxies = ["{PROXY_IP}/32"]
[keys]
pseudonym_key_file = "pseudonym.key"
[[card_backend]]
kind = "file"
institutions = ["NO-2390700"]
path = "patrons.toml"
"#
    );
    let config = gateway::config::Config::parse("portvakt.toml", &config, dir.path()).unwrap();
    let running = rt.block_on(async {
        let app = gateway::start::build_app(&config).unwrap();
        gateway::server::start(app, public, admin, None).unwrap()
    });
    let (gateway, admin) = (running.public_addr, running.admin_addr);
    // The gateway runs for the whole test binary.
    std::mem::forget(running);
    World {
        gateway,
        admin,
        host,
        main,
        cdn,
        policy_dir,
        key,
        _dir: dir,
        _rt: rt,
    }
}

/// A request as the patron's browser sends it through the load balancer (127.0.0.2,
/// trusted), so the gateway sees the patron's address `PATRON_IP`.
fn browse(host: &str, target: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    http::via_proxy(
        PROXY_IP.parse().unwrap(),
        world().gateway,
        PATRON_IP,
        (host, target),
        headers,
        body,
    )
}

fn login() -> String {
    let w = world();
    let page = browse(&w.host, "/login", &[], None);
    let nonce = page.cookie("portvakt-login").unwrap();
    let csrf = hidden(&page.body, "csrf").unwrap();
    let body = form(&[
        ("library", "NO-2390700"),
        ("card", CARD),
        ("pin", PIN),
        ("csrf", &csrf),
    ]);
    let r = browse(
        &w.host,
        "/login",
        &[("Cookie", &format!("portvakt-login={nonce}"))],
        Some(&body),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    format!("portvakt={}", r.cookie("portvakt").unwrap())
}

/// Splits `http://host/path?query` into (host, target).
fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let slash = rest.find('/').unwrap_or(rest.len());
    (rest[..slash].to_owned(), rest[slash..].to_owned())
}

/// Entry link → ticket → service host cookie. Returns (service host, cookie header).
fn enter(session: &str, service: &str, path: &str) -> (String, String, String) {
    let w = world();
    let go = browse(
        &w.host,
        &format!("/go/{service}?path={path}"),
        &[("Cookie", session)],
        None,
    );
    assert_eq!(go.status, 303, "{}", go.body);
    let location = go.header("location").unwrap().to_owned();
    let (host, target) = split(&location);
    assert!(target.starts_with("/__portvakt/enter?t="), "{location}");
    let entered = browse(&host, &target, &[], None);
    assert_eq!(entered.status, 303, "{}", entered.body);
    let cookie = entered.cookie("portvakt-svc").expect("service cookie");
    let set = entered.headers_named("set-cookie").join("\n");
    assert!(
        set.contains("HttpOnly") && !set.contains("Domain"),
        "host-only: {set}"
    );
    (host, format!("portvakt-svc={cookie}"), target)
}

#[test]
fn a_patron_browses_a_vendor_that_learns_only_what_is_released() {
    let w = world();
    let session = login();
    let (host, cookie, _) = enter(&session, "avis", "/page.html");
    assert_eq!(host, format!("avis.{}", w.host));

    let page = browse(
        &host,
        "/page.html",
        &[("Cookie", &format!("{cookie}; vendor_pref=1"))],
        None,
    );
    assert_eq!(page.status, 200, "{}", page.body);
    // Links to the vendor's origins now point at the service hosts.
    assert!(
        page.body.contains(&format!("http://avis.{}/", w.host)),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("http://avis--1.{}/", w.host)),
        "{}",
        page.body
    );
    // Only URLs inside script text stay as they are (documented in proxy.rs).
    let left: Vec<&str> = page
        .body
        .lines()
        .filter(|l| l.contains(&w.main.url))
        .collect();
    assert!(left.iter().all(|l| l.contains("<script>")), "{left:?}");

    let seen = w.main.last("/page.html");
    let expected = PseudonymKey::new(&w.key)
        .unwrap()
        .pairwise("avis", &SubjectKey::new(format!("card:NO-2390700:{CARD}")));
    assert_eq!(seen.header("x-portvakt-pseudonym"), Some(expected.expose()));
    assert_eq!(seen.header("x-portvakt-institution"), Some("NO-2390700"));
    assert_eq!(seen.header("x-portvakt-age-over-18"), Some("true"));
    assert_eq!(
        seen.header("cookie"),
        Some("vendor_pref=1"),
        "only the vendor's own cookie"
    );

    // Everything the vendor ever received, byte for byte.
    let raw = w.main.raw_text() + &w.cdn.raw_text();
    let session_id = session.trim_start_matches("portvakt=");
    for secret in [
        CARD,
        PIN,
        BIRTH,
        "19800203",
        PATRON_IP,
        PROXY_IP,
        session_id,
        "portvakt-svc",
        "portvakt-login",
        "portvakt=",
        "Sandefjordbiblioteket",
    ] {
        assert!(!raw.contains(secret), "{secret} reached the vendor");
    }
    assert!(!raw.to_ascii_lowercase().contains("x-forwarded-for"));
    assert!(
        !raw.contains(&w.host.to_string().replace(":", "")),
        "no login-host Referer"
    );
}

#[test]
fn forged_and_replayed_tickets_get_a_plain_page() {
    let w = world();
    let session = login();
    let (host, _, target) = enter(&session, "avis", "/");
    let again = browse(&host, &target, &[], None);
    assert_eq!(again.status, 403, "a ticket works once");
    assert!(again.body.contains("utløpt"));
    let forged = browse(
        &host,
        "/__portvakt/enter?t=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &[],
        None,
    );
    assert_eq!(forged.status, 403);
    let garbage = browse(&host, "/__portvakt/enter?t=%0d%0aSet-Cookie:x", &[], None);
    assert_eq!(garbage.status, 403);
    assert!(garbage.cookie("x").is_none());
    // A ticket for avis does not open the CDN host.
    let go = browse(&w.host, "/go/avis", &[("Cookie", &session)], None);
    let (_, target) = split(go.header("location").unwrap());
    let r = browse(&format!("avis--1.{}", w.host), &target, &[], None);
    assert_eq!(r.status, 403);
}

#[test]
fn a_cookie_of_one_service_host_is_worthless_on_another() {
    let w = world();
    let session = login();
    let (_, cookie, _) = enter(&session, "avis", "/");
    let before = w.cdn.request_count();
    let r = browse(
        &format!("avis--1.{}", w.host),
        "/logo.png",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap();
    assert_eq!(
        location,
        format!("http://{}/go/avis?path=%2Flogo.png&host=avis--1", w.host)
    );
    let r = browse(
        &format!("burst.{}", w.host),
        "/",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        w.cdn.request_count(),
        before,
        "nothing reached the CDN origin"
    );

    // Through the entry link, the CDN host gets a cookie of its own.
    let go = browse(
        &w.host,
        location.trim_start_matches(&format!("http://{}", w.host)),
        &[("Cookie", &session)],
        None,
    );
    let (host, target) = split(go.header("location").unwrap());
    assert_eq!(host, format!("avis--1.{}", w.host));
    let entered = browse(&host, &target, &[], None);
    assert_eq!(entered.header("location"), Some("/logo.png"));
}

/// Host names are case-insensitive: a `Host` in capitals reaches the same service host
/// and the same login host, and the cookie bound to the label still holds.
#[test]
fn hosts_are_told_apart_whatever_their_case() {
    let w = world();
    let session = login();
    let (host, cookie, _) = enter(&session, "avis", "/page.html");
    let loud = host.to_ascii_uppercase();
    assert_ne!(loud, host);
    let page = browse(&loud, "/case-check", &[("Cookie", &cookie)], None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(w.main.requests().iter().any(|q| q.target == "/case-check"));
    let login = browse(&w.host.to_ascii_uppercase(), "/login", &[], None);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("name=\"csrf\""), "{}", login.body);
    // Not a prefix or a look-alike of ours.
    let other = browse(
        &format!("X{loud}"),
        "/case-check",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(other.status, 404);
}

/// A service for on-site use only is decided on service-host requests by the patron's
/// address as `docs/operating.md` defines it: the connection's peer, or `X-Forwarded-For` only from a
/// trusted proxy. In the library it is served; the same session from home is refused, and
/// so is a forged `X-Forwarded-For` from a peer that is not a trusted proxy. Neither
/// refused request reaches the vendor.
#[test]
fn an_on_site_service_goes_by_the_patrons_address_on_every_request() {
    let w = world();
    let session = login();
    let inside = |host: &str, target: &str, headers: &[(&str, &str)]| {
        let proxy = PROXY_IP.parse().unwrap();
        http::via_proxy(proxy, w.gateway, ONSITE_IP, (host, target), headers, None)
    };
    let go = inside(&w.host, "/go/lov?path=/", &[("Cookie", &session)]);
    assert_eq!(go.status, 303, "{}", go.body);
    let (host, target) = split(go.header("location").unwrap());
    let entered = inside(&host, &target, &[]);
    assert_eq!(entered.status, 303, "{}", entered.body);
    let cookie = format!("portvakt-svc={}", entered.cookie("portvakt-svc").unwrap());

    let r = inside(&host, "/onsite-in-the-library", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = browse(&host, "/onsite-from-home", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http::via_proxy(
        "127.0.0.3".parse().unwrap(),
        w.gateway,
        ONSITE_IP,
        (&host, "/onsite-forged-forwarding"),
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);

    let targets: Vec<String> = w.main.requests().iter().map(|q| q.target.clone()).collect();
    assert!(targets.iter().any(|t| t == "/onsite-in-the-library"));
    assert!(
        !targets
            .iter()
            .any(|t| t == "/onsite-from-home" || t == "/onsite-forged-forwarding"),
        "{targets:?}"
    );
    // The library's address, like the patron's at home, never reaches the vendor.
    assert!(!w.main.raw_text().contains(ONSITE_IP));
}

#[test]
fn without_a_cookie_the_patron_goes_back_through_the_entry_link() {
    let w = world();
    let r = browse(&format!("avis.{}", w.host), "/artikkel/9?x=1", &[], None);
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}/go/avis?path=%2Fartikkel%2F9%3Fx%3D1", w.host).as_str())
    );
    let r = browse(
        &format!("avis.{}", w.host),
        "/forged-cookie",
        &[("Cookie", "portvakt-svc=forged.value")],
        None,
    );
    assert_eq!(r.status, 303);
    let reached = w
        .main
        .requests()
        .iter()
        .any(|q| q.target.starts_with("/artikkel/9") || q.target == "/forged-cookie");
    assert!(
        !reached,
        "no request without a valid cookie reaches the vendor"
    );
}

#[test]
fn hostile_requests_never_reach_a_vendor() {
    let w = world();
    let session = login();
    let (host, cookie, _) = enter(&session, "avis", "/");
    let send = |raw: String| http::raw_from(PROXY_IP.parse().unwrap(), w.gateway, raw.as_bytes());
    // Absolute-form target and CONNECT.
    let r = send(format!(
        "GET http://127.0.0.1:1/hostile-1 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ));
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
    let r = send(format!(
        "GET {}/hostile-2 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        w.main.url
    ));
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
    let r = send(format!(
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 400);
    // Request smuggling: Content-Length and Transfer-Encoding together.
    let r = send(format!(
        "POST /hostile-3 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    // hyper reads such a request as chunked (RFC 9112 §6.3) and the gateway sends the
    // vendor a request of its own framing; the smuggled request never gets through.
    assert!(r.status == 200 || r.status == 400, "{}", r.status);
    // An unknown service label and a foreign host.
    let r = send(format!(
        "GET /hostile-4 HTTP/1.1\r\nHost: nope.{}\r\nConnection: close\r\n\r\n",
        w.host
    ));
    assert_eq!(r.status, 404);
    let r =
        send("GET /hostile-5 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_owned());
    assert_eq!(r.status, 404);
    let reached: Vec<String> = w
        .main
        .requests()
        .iter()
        .map(|q| q.target.clone())
        .filter(|t| t.contains("hostile") || t.contains("smuggled"))
        .collect();
    // At most the one properly framed POST, never the others or the smuggled request.
    assert!(reached.iter().all(|t| t == "/hostile-3"), "{reached:?}");
    assert!(!w.main.raw_text().contains("/smuggled"));

    // A forged attribute header is dropped, the real one arrives.
    let r = send(format!(
        "GET /forge HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nX-Portvakt-Institution: NO-9999999\r\nX-Portvakt-Admin: yes\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    let seen = w.main.last("/forge");
    assert_eq!(
        seen.headers_named("x-portvakt-institution"),
        vec!["NO-2390700"]
    );
    assert!(seen.header("x-portvakt-admin").is_none());
}

#[test]
fn the_emergency_brake_stops_running_sessions() {
    let w = world();
    let session = login();
    let (host, cookie, _) = enter(&session, "brake", "/");
    assert_eq!(browse(&host, "/", &[("Cookie", &cookie)], None).status, 200);
    std::fs::write(
        w.policy_dir.join("p.toml"),
        policy_text(&w.main.url, &w.cdn.url, true),
    )
    .unwrap();
    let reload = request(w.admin, "POST", "admin", "/reload", &[], None);
    std::fs::write(
        w.policy_dir.join("p.toml"),
        policy_text(&w.main.url, &w.cdn.url, false),
    )
    .unwrap();
    assert_eq!(reload.status, 200, "{}", reload.body);
    let r = browse(
        &host,
        "/",
        &[("Cookie", &cookie), ("Accept", "application/json")],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("service_suspended"));
    let reload = request(w.admin, "POST", "admin", "/reload", &[], None);
    assert_eq!(reload.status, 200);
    assert_eq!(browse(&host, "/", &[("Cookie", &cookie)], None).status, 200);
}

#[test]
fn logout_ends_access_on_every_service_host() {
    let w = world();
    let session = login();
    let (host, cookie, _) = enter(&session, "avis", "/");
    assert_eq!(browse(&host, "/", &[("Cookie", &cookie)], None).status, 200);
    let start = browse(&w.host, "/", &[("Cookie", &session)], None);
    let csrf = hidden(&start.body, "csrf").unwrap();
    let r = browse(
        &w.host,
        "/logout",
        &[("Cookie", &session)],
        Some(&form(&[("csrf", &csrf)])),
    );
    assert_eq!(r.status, 200);
    assert_eq!(browse(&host, "/", &[("Cookie", &cookie)], None).status, 303);
}

#[test]
fn a_person_over_the_rate_gets_429() {
    let session = login();
    let (host, cookie, _) = enter(&session, "burst", "/");
    let statuses: Vec<u16> = (0..5)
        .map(|_| browse(&host, "/", &[("Cookie", &cookie)], None).status)
        .collect();
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
}

#[test]
fn a_dead_origin_gives_a_clear_page_and_others_keep_working() {
    let session = login();
    let (host, cookie, _) = enter(&session, "down", "/");
    let r = browse(&host, "/", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("svarer ikke"));
    let (host, cookie, _) = enter(&session, "avis", "/");
    assert_eq!(browse(&host, "/", &[("Cookie", &cookie)], None).status, 200);
}

#[test]
fn deep_links_survive_the_login() {
    let w = world();
    let r = browse(&w.host, "/go/avis?path=/artikkel/3", &[], None);
    assert_eq!(
        r.header("location"),
        Some("/login?service=avis&path=%2Fartikkel%2F3")
    );
}
