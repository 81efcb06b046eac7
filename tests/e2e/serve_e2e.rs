//! `portvakt serve` end to end, as a patron and an operator meet it: the real binary, a
//! config file, the demo policy, and a real library system (pysip2) on loopback. Its
//! stderr is captured, and the last test asserts that no card number, PIN, name or birth
//! date ever reached a log line.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use crate::support::http;
use crate::support::privacy;
use crate::support::reaper;
use crate::support::sip2_peer;

use privacy::contains_token;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Reply, form, hidden, request};
use jiff::ToSpan;

const HOST: &str = "bib.test";
const ADULT: (&str, &str) = ("10017001", "4321");
const CHILD: (&str, &str) = ("10017002", "8765");
const NAMES: [&str; 3] = ["Kari Testesen", "Ola Barnesen", "Per Sperresen"];

struct Gateway {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    _peer: sip2_peer::Sip2Peer,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn birth(years: i64) -> String {
    let today = policy::oslo_today(jiff::Timestamp::now());
    let d = today
        .checked_sub(years.years())
        .unwrap()
        .checked_sub(40.days())
        .unwrap();
    d.strftime("%Y%m%d").to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "toml") {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// One gateway shared by the tests of this file (they only read or log in).
fn gateway() -> &'static Gateway {
    static G: OnceLock<Gateway> = OnceLock::new();
    G.get_or_init(start_gateway)
}

fn start_gateway() -> Gateway {
    let patrons = format!(
        r#"[
      {{"card": "{}", "pin": "{}", "name": "{}", "birth_date": "{}", "home_library": "NO-2390700"}},
      {{"card": "{}", "pin": "{}", "name": "{}", "birth_date": "{}", "home_library": "2390500"}},
      {{"card": "10017003", "pin": "1111", "name": "{}", "birth_date": "19800101", "blocked": true}},
      {{"card": "10017004", "pin": "1111", "name": "Liv Mistet", "lost": true}},
      {{"card": "20017001", "pin": "1111", "name": "Slow", "mode": "slow"}},
      {{"card": "20017002", "pin": "1111", "name": "Close", "mode": "close"}},
      {{"card": "20017003", "pin": "1111", "name": "Sum", "mode": "bad-checksum"}},
      {{"card": "20017004", "pin": "1111", "name": "Noise", "mode": "garbage"}}
    ]"#,
        ADULT.0,
        ADULT.1,
        NAMES[0],
        birth(40),
        CHILD.0,
        CHILD.1,
        NAMES[1],
        birth(14),
        NAMES[2]
    );
    let peer = sip2_peer::start_sip2_peer(&patrons, &[]);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy"),
        &dir.path().join("policy"),
    );
    std::fs::write(dir.path().join("pseudonym.key"), [7u8; 32]).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_host = "{HOST}"
trusted_proxies = ["127.0.0.2/32"]

[policy]
dir = "policy"

[keys]
pseudonym_key_file = "pseudonym.key"

[[card_backend]]
kind = "sip2"
institutions = ["NO-2390700", "NO-2390500"]
addr = "{}"
institution_id = "hylte"
timeout = "1s"
"#,
        peer.addr
    );
    std::fs::write(dir.path().join("portvakt.toml"), config).unwrap();
    let mut child = Command::new(crate::support::PORTVAKT)
        .args(["serve", "--config"])
        .arg(dir.path().join("portvakt.toml"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kept in a `static`, so never dropped: see `support/reaper.rs`.
    reaper::reap_when_done(child.id());
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("portvakt is serving") {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("gateway did not start: {:?}", logs.lock().unwrap()));
    let field = |name: &str| -> SocketAddr {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Gateway {
        child,
        public: field("public"),
        admin: field("admin"),
        logs,
        dir,
        _peer: peer,
    }
}

fn get(path: &str, headers: &[(&str, &str)]) -> Reply {
    request(gateway().public, "GET", HOST, path, headers, None)
}

/// Logs in through the form and returns the session cookie header value, or the reply.
fn login(
    library: &str,
    card: &str,
    pin: &str,
    service: Option<&str>,
) -> Result<(String, Reply), Reply> {
    let page = get("/login", &[]);
    assert_eq!(page.status, 200);
    let nonce = page.cookie("portvakt-login").expect("login cookie");
    let csrf = hidden(&page.body, "csrf").expect("csrf field");
    let mut fields = vec![
        ("library", library),
        ("card", card),
        ("pin", pin),
        ("csrf", csrf.as_str()),
    ];
    if let Some(s) = service {
        fields.push(("service", s));
    }
    let cookie = format!("portvakt-login={nonce}");
    let reply = request(
        gateway().public,
        "POST",
        HOST,
        "/login",
        &[("Cookie", &cookie)],
        Some(&form(&fields)),
    );
    match reply.cookie("portvakt") {
        Some(id) if reply.status == 303 => Ok((format!("portvakt={id}"), reply)),
        _ => Err(reply),
    }
}

#[test]
fn a_patron_logs_in_and_follows_an_entry_link() {
    // Not logged in: the entry link sends to the login page, relative, keeping the service.
    let r = get("/go/lokalhistorie", &[]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login?service=lokalhistorie"));

    let (cookie, reply) = login("NO-2390700", ADULT.0, ADULT.1, Some("lokalhistorie")).unwrap();
    assert_eq!(reply.header("location"), Some("/go/lokalhistorie"));
    assert!(
        reply
            .headers_named("set-cookie")
            .iter()
            .any(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax"))
    );

    // The link service: a redirect to the vendor after the decision.
    let r = get("/go/lokalhistorie", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("location").unwrap().starts_with("https://"));

    // The start page lists what this patron may use, with entry links.
    let r = get("/", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("href=\"/go/lokalhistorie\""), "{}", r.body);
    assert!(r.body.contains("Sandefjordbiblioteket"));
    assert!(r.body.contains("lang=\"nb\""));

    // A proxied service: a single-use ticket for its own host.
    let r = get("/go/avis?path=/artikkel/1", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with("http://avis.bib.test/__portvakt/enter?t="),
        "{location}"
    );
    assert!(location.ends_with("&path=%2Fartikkel%2F1"), "{location}");
}

#[test]
fn a_child_is_denied_an_adult_film_in_plain_words() {
    let (cookie, _) = login("NO-2390500", CHILD.0, CHILD.1, None).unwrap();
    let r = get("/go/filmbib-18", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Du er for ung"), "{}", r.body);
    let r = get(
        "/go/filmbib-18",
        &[("Cookie", &cookie), ("Accept-Language", "en-GB,en;q=0.9")],
    );
    assert!(r.body.contains("You are too young"), "{}", r.body);
    let r = get(
        "/go/filmbib-18",
        &[("Cookie", &cookie), ("Accept", "application/json")],
    );
    assert_eq!(r.status, 403);
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["reason"], "age_below_min");
    assert!(json["message"].as_str().unwrap().contains("for ung"));

    let r = get(
        "/go/no-such-service",
        &[("Cookie", &cookie), ("Accept", "application/json")],
    );
    assert_eq!(r.status, 404);
    assert!(r.body.contains("unknown_service"));
}

#[test]
fn wrong_pin_blocked_and_lost_cards_are_told_apart() {
    let r = login("NO-2390700", ADULT.0, "0000", None).unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("PIN-koden er feil"), "{}", r.body);
    assert!(r.body.contains("role=\"alert\""));
    assert!(
        !r.body.contains(ADULT.0),
        "the page does not echo the card number"
    );

    let r = login("NO-2390700", "10017003", "1111", None).unwrap_err();
    assert_eq!(r.status, 403);
    assert!(r.body.contains("sperret"), "{}", r.body);
    let r = login("NO-2390700", "10017004", "1111", None).unwrap_err();
    assert_eq!(r.status, 403);
    assert!(r.body.contains("meldt tapt"), "{}", r.body);
}

#[test]
fn a_failing_library_system_is_never_a_wrong_pin() {
    for card in ["20017001", "20017002", "20017003", "20017004"] {
        let r = login("NO-2390700", card, "1111", None).unwrap_err();
        assert_eq!(r.status, 503, "{card}: {}", r.body);
        assert!(r.body.contains("svarer ikke"), "{card}");
        assert!(
            !r.body.contains("feil"),
            "{card}: not reported as a wrong PIN"
        );
    }
    // And the gateway keeps serving.
    assert!(login("NO-2390700", ADULT.0, ADULT.1, None).is_ok());
}

#[test]
fn forms_without_a_valid_csrf_token_are_refused() {
    let body = form(&[
        ("library", "NO-2390700"),
        ("card", ADULT.0),
        ("pin", ADULT.1),
    ]);
    let r = request(gateway().public, "POST", HOST, "/login", &[], Some(&body));
    assert_eq!(r.status, 403);
    assert!(r.cookie("portvakt").is_none());
    let body = form(&[
        ("library", "NO-2390700"),
        ("card", ADULT.0),
        ("pin", ADULT.1),
        ("csrf", "forged"),
    ]);
    let r = request(
        gateway().public,
        "POST",
        HOST,
        "/login",
        &[("Cookie", "portvakt-login=abc")],
        Some(&body),
    );
    assert_eq!(r.status, 403);
    assert!(r.cookie("portvakt").is_none());
}

#[test]
fn forged_session_ids_are_just_not_logged_in() {
    for forged in [
        "portvakt=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "portvakt=../../etc/passwd",
        "portvakt=",
    ] {
        let r = get("/go/lokalhistorie", &[("Cookie", forged)]);
        assert_eq!(r.status, 303);
        assert_eq!(r.header("location"), Some("/login?service=lokalhistorie"));
    }
}

#[test]
fn no_open_redirects() {
    let r = get(
        "/login?service=https://evil.example/&path=//evil.example/x",
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("evil.example"));
    let r = get("/go/lokalhistorie?path=//evil.example/", &[]);
    assert_eq!(r.header("location"), Some("/login?service=lokalhistorie"));
    let (_, reply) = login("NO-2390700", ADULT.0, ADULT.1, Some("https://evil.example")).unwrap();
    assert_eq!(reply.header("location"), Some("/"));
}

#[test]
fn logout_ends_the_session() {
    let (cookie, _) = login("NO-2390700", ADULT.0, ADULT.1, None).unwrap();
    let start = get("/", &[("Cookie", &cookie)]);
    let csrf = hidden(&start.body, "csrf").unwrap();
    let r = request(
        gateway().public,
        "POST",
        HOST,
        "/logout",
        &[("Cookie", &cookie)],
        Some(&form(&[("csrf", "wrong")])),
    );
    assert_eq!(r.status, 403);
    let r = request(
        gateway().public,
        "POST",
        HOST,
        "/logout",
        &[("Cookie", &cookie)],
        Some(&form(&[("csrf", &csrf)])),
    );
    assert_eq!(r.status, 200);
    let r = get("/go/lokalhistorie", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().starts_with("/login"));
}

#[test]
fn hostile_requests_get_clear_refusals() {
    let g = gateway();
    let big = "x".repeat(64 * 1024);
    let r = request(g.public, "GET", HOST, "/", &[("X-Big", &big)], None);
    assert_eq!(r.status, 431, "oversized headers");
    let body = "a".repeat(64 * 1024);
    let r = request(g.public, "POST", HOST, "/login", &[], Some(&body));
    assert_eq!(r.status, 413, "oversized body");
    let r = request(g.public, "GET", "evil.example", "/", &[], None);
    assert_eq!(r.status, 404, "unknown host");
    let r = http::raw(
        g.public,
        b"GET http://evil.example/ HTTP/1.1\r\nHost: bib.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404, "absolute-form target for another host");
    let r = http::raw(
        g.public,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    );
    assert!(r.status == 400 || r.status == 404, "CONNECT: {}", r.status);
    let r = request(g.admin, "GET", HOST, "/metrics", &[], None);
    assert_eq!(r.status, 200);
    let r = request(g.public, "GET", HOST, "/metrics", &[], None);
    assert_eq!(r.status, 404, "admin endpoints are not public");
}

#[test]
fn walk_in_through_a_trusted_proxy_only() {
    // Sandefjord (192.0.2.64/28) lets walk-ins use lokalhistorie without logging in.
    let g = gateway();
    let req = |xff: &str| {
        format!(
            "GET /go/lokalhistorie HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        )
    };
    // 127.0.0.2 is a trusted proxy: the right-most untrusted hop is the client.
    let proxy: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let r = http::raw_from(proxy, g.public, req("203.0.113.250, 192.0.2.70").as_bytes());
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.header("location").unwrap().starts_with("https://"),
        "permitted: {:?}",
        r.header("location")
    );
    // A spoofed left-most entry does not help a remote client behind the proxy.
    let r = http::raw_from(proxy, g.public, req("192.0.2.70, 203.0.113.250").as_bytes());
    assert!(r.header("location").unwrap().starts_with("/login"));
    // From 127.0.0.1, not a trusted proxy, the header is ignored.
    let r = http::raw(g.public, req("192.0.2.70").as_bytes());
    assert!(r.header("location").unwrap().starts_with("/login"));
}

#[test]
fn admin_health_metrics_and_reload() {
    let g = gateway();
    assert_eq!(
        request(g.admin, "GET", HOST, "/healthz", &[], None).status,
        200
    );
    assert_eq!(
        request(g.admin, "GET", HOST, "/readyz", &[], None).status,
        200
    );
    let _ = login("NO-2390700", ADULT.0, "0000", None);
    let m = request(g.admin, "GET", HOST, "/metrics", &[], None);
    assert!(
        m.body.contains(
            "portvakt_logins_total{institution=\"NO-2390700\",outcome=\"wrong_card_or_pin\"}"
        ),
        "{}",
        m.body
    );

    // A broken policy on reload: 422 with every error, and the old policy keeps working.
    let extra = g.dir.path().join("policy/zz-broken.toml");
    std::fs::write(&extra, "[[service]]\nid = \"Bad Id\"\n").unwrap();
    let r = request(g.admin, "POST", HOST, "/reload", &[], None);
    std::fs::remove_file(&extra).unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("zz-broken.toml:2:6: error:"), "{}", r.body);
    assert!(r.body.contains("previous policy stays in force"));
    let r = request(g.admin, "POST", HOST, "/reload", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("ok: "));
    assert_eq!(get("/go/lokalhistorie", &[]).status, 303);

    // SIGHUP reloads too: a new service appears within a few seconds.
    let added = g.dir.path().join("policy/zz-sighup.toml");
    std::fs::write(
        &added,
        "[[service]]\nid = \"sighup-test\"\nname = \"Ny tjeneste\"\naccess = \"link\"\n\
         [service.link]\nurl = \"https://ny.example/\"\n\n\
         [[entitlement]]\ninstitution = \"NO-2390700\"\nservice = \"sighup-test\"\nfrom = 2024-01-01\n",
    )
    .unwrap();
    assert_eq!(get("/go/sighup-test", &[]).status, 404);
    let hup = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    hup(g.child.id());
    let appeared = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        get("/go/sighup-test", &[]).status == 303
    });
    std::fs::remove_file(&added).unwrap();
    hup(g.child.id());
    assert!(appeared, "SIGHUP did not reload the policy");
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        get("/go/sighup-test", &[]).status == 404
    });
    assert!(gone);
}

#[test]
fn repeated_wrong_pins_are_slowed_down() {
    let card = "10017099";
    // The first few mistakes are free; then the gateway asks the patron to wait.
    let mut wrong = 0;
    let r = loop {
        let r = login("NO-2390700", card, "0000", None).unwrap_err();
        if r.status != 401 {
            break r;
        }
        wrong += 1;
        assert!(wrong <= 4, "no slow-down after {wrong} wrong PINs");
    };
    assert!(wrong >= 3, "slowed down after only {wrong} wrong PINs");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(r.body.contains("For mange forsøk"));
}

#[test]
fn a_new_session_id_at_every_login() {
    let (first, _) = login("NO-2390700", ADULT.0, ADULT.1, None).unwrap();
    // Log in again from the same browser: a new id, and the old one is worthless.
    let page = get("/login", &[("Cookie", &first)]);
    let nonce = page.cookie("portvakt-login").unwrap();
    let csrf = hidden(&page.body, "csrf").unwrap();
    let cookies = format!("{first}; portvakt-login={nonce}");
    let body = form(&[
        ("library", "NO-2390700"),
        ("card", ADULT.0),
        ("pin", ADULT.1),
        ("csrf", &csrf),
    ]);
    let r = request(
        gateway().public,
        "POST",
        HOST,
        "/login",
        &[("Cookie", &cookies)],
        Some(&body),
    );
    assert_eq!(r.status, 303);
    let second = format!("portvakt={}", r.cookie("portvakt").unwrap());
    assert_ne!(first, second);
    assert_eq!(
        get("/go/lokalhistorie", &[("Cookie", &first)]).header("location"),
        Some("/login?service=lokalhistorie")
    );
    assert_eq!(get("/go/lokalhistorie", &[("Cookie", &second)]).status, 303);
    assert!(
        get("/go/lokalhistorie", &[("Cookie", &second)])
            .header("location")
            .unwrap()
            .starts_with("https://")
    );
}

#[test]
fn zz_no_personal_data_in_the_logs() {
    // Runs after the others in this file (alphabetical order with one test thread, and
    // by then at least the login tests have run with two).
    let _ = login("NO-2390700", ADULT.0, ADULT.1, None);
    let _ = login("NO-2390700", ADULT.0, "0000", None);
    let _ = login("NO-2390500", CHILD.0, CHILD.1, None);
    let _ = login("NO-2390700", "20017002", "1111", None);
    std::thread::sleep(Duration::from_millis(200));
    let logs = gateway().logs.lock().unwrap().join("\n");
    assert!(
        logs.contains("login"),
        "the logins were logged at all: {logs}"
    );
    let mut secrets: Vec<String> = vec![
        ADULT.0.into(),
        ADULT.1.into(),
        CHILD.0.into(),
        CHILD.1.into(),
        "10017003".into(),
        "20017002".into(),
        birth(40),
        birth(14),
    ];
    secrets.extend(NAMES.iter().map(|s| s.to_string()));
    for s in secrets {
        assert!(
            !contains_token(&logs, &s),
            "{s} appears in the logs:\n{logs}"
        );
    }
    assert!(
        !logs.contains("127.0.0.1 "),
        "client addresses are cut to /24"
    );
}
