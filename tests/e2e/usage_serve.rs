//! What the usage counters of a real `portvakt serve` survive: a clean stop (SIGTERM)
//! loses nothing; a crash (SIGKILL) loses at most `flush_interval` (here 1 s, and the test
//! waits longer than that before killing); a stop right after the start is clean. The
//! counts are read back through the native API of the restarted gateway, and the data
//! directory is searched for anything personal.

#![cfg(test)]

use crate::support::http;
use crate::support::origin;
use crate::support::privacy;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::{Reply, form, hidden, request};
use origin::Origin;
use serde_json::Value;

const HOST: &str = "bib.test";
const LIBRARY: &str = "NO-2390700";
const CARD: &str = "55507777";
const PIN: &str = "8080";
const BIRTH: &str = "1975-12-24";
const API_KEY: &str = "statistikk-nokkel";

struct Served {
    child: Child,
    public: SocketAddr,
}

impl Served {
    fn start(dir: &Path) -> Served {
        let mut child = Command::new(crate::support::PORTVAKT)
            .args(["serve", "--config"])
            .arg(dir.join("portvakt.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let line = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("portvakt is serving") => break l,
                Ok(l) => seen.push(l),
                Err(e) => panic!("the gateway did not start ({e}): {seen:#?}"),
            }
        };
        let start = line.find("public=").unwrap() + "public=".len();
        let public = line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Served { child, public }
    }

    fn signal(mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        if signal == "-TERM" {
            assert!(exit.success(), "a clean stop exits 0: {exit:?}");
        }
    }

    fn get(&self, host: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.public, "GET", host, target, headers, None)
    }

    fn host(&self) -> String {
        HOST.to_owned()
    }

    /// Logs in, follows the entry link to `avis`: the service host and its cookie.
    fn enter(&self) -> (String, String) {
        let host = self.host();
        let page = self.get(&host, "/login", &[]);
        let nonce = page.cookie("portvakt-login").unwrap();
        let csrf = hidden(&page.body, "csrf").unwrap();
        let body = form(&[
            ("library", LIBRARY),
            ("card", CARD),
            ("pin", PIN),
            ("csrf", &csrf),
        ]);
        let r = request(
            self.public,
            "POST",
            &host,
            "/login",
            &[("Cookie", &format!("portvakt-login={nonce}"))],
            Some(&body),
        );
        assert_eq!(r.status, 303, "{}", r.body);
        let session = format!("portvakt={}", r.cookie("portvakt").unwrap());
        let go = self.get(&host, "/go/avis", &[("Cookie", &session)]);
        assert_eq!(go.status, 303, "{}", go.body);
        let location = go.header("location").unwrap();
        let rest = location.strip_prefix("http://").unwrap();
        let (svc_host, target) = rest.split_at(rest.find('/').unwrap());
        let entered = self.get(svc_host, target, &[]);
        let cookie = entered.cookie("portvakt-svc").unwrap();
        (svc_host.to_owned(), format!("portvakt-svc={cookie}"))
    }

    fn read_items(&self, from: u32, to: u32) {
        let (svc_host, cookie) = self.enter();
        for n in from..to {
            let r = self.get(&svc_host, &format!("/artikkel/{n}"), &[("Cookie", &cookie)]);
            assert_eq!(r.status, 200);
        }
    }

    /// Today's (logins, accesses, item_requests) for the library.
    fn counts(&self) -> (u64, u64, u64) {
        let today = policy::oslo_today(jiff::Timestamp::now());
        let r = request(
            self.public,
            "GET",
            &self.host(),
            &format!(
                "/api/v1/usage?from={today}&to={today}&period=day&metric=logins,accesses,item_requests"
            ),
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let get = |metric: &str| {
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["metric"] == metric && r["institution"] == LIBRARY)
                .map(|r| r["value"].as_u64().unwrap())
                .sum()
        };
        (get("logins"), get("accesses"), get("item_requests"))
    }
}

fn setup(dir: &Path, origin: &str) {
    use sha2::Digest;
    std::fs::create_dir(dir.join("policy")).unwrap();
    std::fs::write(
        dir.join("policy/p.toml"),
        format!(
            "[[institution]]\nid = \"{LIBRARY}\"\nname = \"Sandefjordbiblioteket\"\nkind = \"public_library\"\n\n\
             [[service]]\nid = \"avis\"\nname = \"Avis\"\naccess = \"proxy\"\n[service.proxy]\norigin = \"{origin}\"\nitem_paths = [\"/artikkel/*\"]\n\n\
             [[entitlement]]\ninstitution = \"{LIBRARY}\"\nservice = \"avis\"\nfrom = 2020-01-01\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pseudonym.key"), [5u8; 32]).unwrap();
    std::fs::write(
        dir.join("patrons.toml"),
        format!("[[patron]]\ncard = \"{CARD}\"\npin = \"{PIN}\"\nbirth_date = {BIRTH}\nhome_library = \"{LIBRARY}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("portvakt.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_host = "{HOST}"
[store]
data_dir = "data"
[usage]
flush_interval = "1s"
[keys]
pseudonym_key_file = "pseudonym.key"
[[card_backend]]
kind = "file"
institutions = ["{LIBRARY}"]
path = "patrons.toml"
[[statistician]]
name = "Fylket"
api_key_sha256 = "{}"
institutions = ["{LIBRARY}"]
"#,
            data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(API_KEY.as_bytes()))
        ),
    )
    .unwrap();
}

/// Every byte under `dir`, for the privacy check.
/// SIGTERM at once after the gateway says it is serving (as an orchestrator stopping a
/// replica it just started would): a clean stop every time, never the signal's default
/// action. Before the handlers were installed ahead of the listeners this was a race that
/// a loaded machine lost now and then (CI did, in the test below); `tests/stop_signal.rs`
/// checks the installation order itself, deterministically.
#[test]
fn a_stop_right_after_the_start_is_clean() {
    let rt = origin::runtime(1);
    let origin = rt.block_on(Origin::start());
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &origin.url);
    for _ in 0..5 {
        Served::start(dir.path()).signal("-TERM");
    }
}

#[test]
fn counts_survive_a_clean_stop_and_a_crash() {
    let rt = origin::runtime(1);
    let origin = rt.block_on(Origin::start());
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &origin.url);

    // A clean stop right after the traffic: nothing may be lost.
    let g = Served::start(dir.path());
    g.read_items(0, 5);
    assert_eq!(g.counts(), (1, 1, 5));
    g.signal("-TERM");

    let g = Served::start(dir.path());
    assert_eq!(g.counts(), (1, 1, 5), "after SIGTERM");
    g.read_items(5, 8);
    assert_eq!(g.counts(), (2, 2, 8));
    // A crash after more than one flush interval: everything was on disk.
    std::thread::sleep(Duration::from_millis(2500));
    g.signal("-KILL");

    let g = Served::start(dir.path());
    assert_eq!(g.counts(), (2, 2, 8), "after SIGKILL");
    g.signal("-TERM");

    // Nothing personal under data_dir.
    let stored = privacy::all_bytes(&dir.path().join("data"));
    assert!(!stored.is_empty());
    let text = String::from_utf8_lossy(&stored);
    for secret in [CARD, PIN, BIRTH, "19751224", "127.0.0.1"] {
        assert!(!text.contains(secret), "{secret} is in the usage data");
    }
}
