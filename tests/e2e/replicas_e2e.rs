//! Several replicas end to end: three real `portvakt serve` processes with one config, one
//! set of keys and one real `redis-server`, as behind a load balancer. A patron logs in on
//! the first, uses a proxied service (a recording origin) through the second, logs out on
//! the third, and the second lets go of the session within 5 s. Then Redis stops: logins
//! fail with a clear page, the running session keeps working from the second's cache,
//! `/readyz` says 503 and the error metric counts; Redis comes back and so does everything.
//! Usage counts too: logins, entry links and proxied requests on all three add up exactly
//! in the native API of any of them once their `flush_interval` has passed, and the same
//! patron on three replicas is one `unique_users`; a replica stopped (SIGTERM) while Redis
//! is away leaves its buffered counts in `data_dir` and the next start sends them, once.
//! Also: a replica started while Redis is down starts not ready, and a malformed URL stops
//! the start with one line.

#![cfg(test)]

use crate::support::http;
use crate::support::origin;
use crate::support::privacy;
use crate::support::redis as redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Reply, form, hidden, request};
use origin::Origin;
use redis_server::RedisServer;

const HOST: &str = "bib.test";
const CARD: &str = "55501234";
const PIN: &str = "2468";

struct Replica {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn get(&self, host: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.public, "GET", host, target, headers, None)
    }

    fn admin(&self, path: &str) -> Reply {
        request(self.admin, "GET", HOST, path, &[], None)
    }

    fn reload(&self) -> Reply {
        request(self.admin, "POST", HOST, "/reload", &[], None)
    }

    /// Logs in through the form; the reply of the POST.
    fn login(&self, headers: &[(&str, &str)]) -> Reply {
        let page = self.get(HOST, "/login", headers);
        assert_eq!(page.status, 200, "{}", page.body);
        let nonce = page.cookie("portvakt-login").expect("login cookie");
        let csrf = hidden(&page.body, "csrf").expect("csrf field");
        let body = form(&[
            ("library", "NO-2390700"),
            ("card", CARD),
            ("pin", PIN),
            ("csrf", &csrf),
        ]);
        let cookie = format!("portvakt-login={nonce}");
        let mut all = vec![("Cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        request(self.public, "POST", HOST, "/login", &all, Some(&body))
    }

    fn metric(&self, name: &str) -> f64 {
        let m = self.admin("/metrics").body;
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn policy(origin: &str, enabled: bool) -> String {
    format!(
        r#"
[[institution]]
id = "NO-2390700"
name = "Sandefjordbiblioteket"
kind = "public_library"
municipality = "3907"

[[service]]
id = "avis"
name = "Avis"
access = "proxy"
enabled = {enabled}
release = ["institution"]
[service.proxy]
origin = "{origin}"

[[entitlement]]
institution = "NO-2390700"
service = "avis"
from = 2020-01-01
"#
    )
}

/// A config directory: policy, keys, patrons, and `portvakt.toml` for `redis_url`.
fn setup(origin: &str, redis_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("policy")).unwrap();
    std::fs::write(p.join("policy/p.toml"), policy(origin, true)).unwrap();
    std::fs::write(p.join("pseudonym.key"), [7u8; 32]).unwrap();
    std::fs::write(p.join("session.key"), [9u8; 32]).unwrap();
    std::fs::write(
        p.join("patrons.toml"),
        format!("[[patron]]\ncard = \"{CARD}\"\npin = \"{PIN}\"\nbirth_year = 1980\nhome_library = \"NO-2390700\"\n"),
    )
    .unwrap();
    write_config(p, redis_url);
    dir
}

fn write_config(dir: &Path, redis_url: &str) {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_host = "{HOST}"

[policy]
dir = "policy"

[store]
backend = "redis"
redis_url = "{redis_url}"

[keys]
pseudonym_key_file = "pseudonym.key"
session_key_file = "session.key"

[[card_backend]]
kind = "file"
institutions = ["NO-2390700"]
path = "patrons.toml"
"#
    );
    std::fs::write(dir.join("portvakt.toml"), config).unwrap();
}

fn serve(dir: &Path) -> Replica {
    let mut child = Command::new(crate::support::PORTVAKT)
        .args(["serve", "--config"])
        .arg(dir.join("portvakt.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
        .unwrap_or_else(|_| panic!("replica did not start: {:?}", logs.lock().unwrap()));
    let field = |name: &str| -> SocketAddr {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Replica {
        public: field("public"),
        admin: field("admin"),
        child,
        logs,
    }
}

/// `http://host/path?query` → (host, target).
fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let slash = rest.find('/').unwrap_or(rest.len());
    (rest[..slash].to_owned(), rest[slash..].to_owned())
}

/// Polls `f` every 100 ms until it holds, for at most `limit`; how long it took.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_replicas_share_sessions_tickets_and_logouts_and_ride_out_a_redis_restart() {
    let rt = origin::runtime(1);
    let origin = rt.block_on(Origin::start());
    let mut redis = RedisServer::start();
    let dir = setup(&origin.url, &redis.url());
    let r: Vec<Replica> = (0..3).map(|_| serve(dir.path())).collect();
    for replica in &r {
        assert_eq!(replica.admin("/readyz").status, 200);
    }

    // Log in on the first.
    let reply = r[0].login(&[]);
    assert_eq!(reply.status, 303, "{}", reply.body);
    let session = format!("portvakt={}", reply.cookie("portvakt").unwrap());
    let go = r[0].get(HOST, "/go/avis?path=/page.html", &[("Cookie", &session)]);
    assert_eq!(go.status, 303, "{}", go.body);
    let (host, enter) = split(go.header("location").unwrap());
    assert_eq!(host, format!("avis.{HOST}"));

    // The ticket is redeemed on the second, and works once in the whole cluster.
    let entered = r[1].get(&host, &enter, &[]);
    assert_eq!(entered.status, 303, "{}", entered.body);
    let svc = format!("portvakt-svc={}", entered.cookie("portvakt-svc").unwrap());
    assert_eq!(
        r[2].get(&host, &enter, &[]).status,
        403,
        "a ticket works once"
    );
    assert_eq!(
        r[1].get(&host, &enter, &[]).status,
        403,
        "a ticket works once"
    );

    // The service through the second.
    let page = r[1].get(&host, "/page.html", &[("Cookie", &svc)]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        origin.last("/page.html").header("x-portvakt-institution"),
        Some("NO-2390700")
    );

    // The emergency brake is policy, decided on every request: the second's cached
    // session does not carry it past a reload.
    std::fs::write(dir.path().join("policy/p.toml"), policy(&origin.url, false)).unwrap();
    assert_eq!(r[1].reload().status, 200);
    let braked = r[1].get(&host, "/page.html", &[("Cookie", &svc)]);
    assert_eq!(braked.status, 403, "{}", braked.body);
    std::fs::write(dir.path().join("policy/p.toml"), policy(&origin.url, true)).unwrap();
    assert_eq!(r[1].reload().status, 200);
    assert_eq!(
        r[1].get(&host, "/page.html", &[("Cookie", &svc)]).status,
        200
    );

    // Log out on the third: its start page knows the session and its CSRF token.
    let start = r[2].get(HOST, "/", &[("Cookie", &session)]);
    let csrf = hidden(&start.body, "csrf").expect("logged in on the third replica");
    let out = request(
        r[2].public,
        "POST",
        HOST,
        "/logout",
        &[("Cookie", &session)],
        Some(&form(&[("csrf", &csrf)])),
    );
    assert_eq!(out.status, 200, "{}", out.body);
    // The second lets go within 5 s (its cache holds an entry at most that long), and
    // sends the browser back to the entry link, which asks for a login.
    let took = within(Duration::from_secs(10), "logout seen on the second", || {
        r[1].get(&host, "/page.html", &[("Cookie", &svc)]).status == 303
    });
    assert!(took <= Duration::from_secs(6), "logout took {took:?}");
    let again = r[0].get(HOST, "/go/avis", &[("Cookie", &session)]);
    assert!(again.header("location").unwrap().starts_with("/login"));

    // A new session, in use on the second.
    let reply = r[0].login(&[]);
    assert_eq!(reply.status, 303, "{}", reply.body);
    let session = format!("portvakt={}", reply.cookie("portvakt").unwrap());
    let go = r[0].get(HOST, "/go/avis", &[("Cookie", &session)]);
    let (host, enter) = split(go.header("location").unwrap());
    let entered = r[1].get(&host, &enter, &[]);
    let svc = format!("portvakt-svc={}", entered.cookie("portvakt-svc").unwrap());
    assert_eq!(
        r[1].get(&host, "/page.html", &[("Cookie", &svc)]).status,
        200
    );
    let errors_before = r[1].metric("portvakt_store_errors_total");

    // Redis goes away.
    redis.stop();
    for replica in &r {
        let ready = replica.admin("/readyz");
        assert_eq!(ready.status, 503, "{}", ready.body);
        assert!(
            ready.body.contains("store is not answering"),
            "{}",
            ready.body
        );
    }
    // Logins fail with a clear page, in bokmål first and in English on request; never a
    // silent pass.
    let refused = r[0].login(&[]);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.cookie("portvakt").is_none());
    assert!(
        refused
            .body
            .contains("Innlogging og nye tilkoblinger virker ikke"),
        "{}",
        refused.body
    );
    let refused = r[0].login(&[("Accept-Language", "en")]);
    assert_eq!(refused.status, 503);
    assert!(
        refused
            .body
            .contains("Logging in and opening services do not work right now"),
        "{}",
        refused.body
    );
    // A new entry needs a ticket in Redis: it fails plainly too.
    let go = r[0].get(HOST, "/go/avis", &[("Cookie", &session)]);
    assert_eq!(go.status, 503, "{}", go.body);
    assert!(go.body.contains("feil hos oss"), "{}", go.body);
    // The running session keeps working from the second's cache, also once its entry is
    // no longer fresh (5 s), for the stale-if-error bound (5 min).
    std::thread::sleep(Duration::from_millis(5200));
    let page = r[1].get(&host, "/page.html", &[("Cookie", &svc)]);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(r[1].metric("portvakt_store_stale_sessions_total") >= 1.0);
    assert!(r[1].metric("portvakt_store_errors_total") > errors_before);
    assert!(r[0].metric("portvakt_store_errors_total") > 0.0);
    assert_eq!(r[0].metric("portvakt_store_up"), 0.0);

    // Redis is back: the replicas reconnect by themselves.
    redis.resume();
    for replica in &r {
        within(Duration::from_secs(20), "ready again", || {
            replica.admin("/readyz").status == 200
        });
    }
    assert_eq!(r[0].metric("portvakt_store_up"), 1.0);
    let reply = r[0].login(&[]);
    assert_eq!(reply.status, 303, "{}", reply.body);
    // This test's Redis keeps nothing across a restart, so the old session is gone now
    // that Redis can say so.
    assert_eq!(
        r[1].get(&host, "/page.html", &[("Cookie", &svc)]).status,
        303
    );

    // No card number in any replica's log.
    for replica in &r {
        let logs = replica.logs.lock().unwrap().join("\n");
        assert!(!privacy::contains_token(&logs, CARD), "{logs}");
        assert!(!privacy::contains_token(&logs, PIN), "{logs}");
    }
    drop(rt);
}

const STATS_KEY: &str = "statistiker-sandefjord";

/// Today's counts in the native API of one replica: (service, metric) → value.
fn usage_counts(r: &Replica) -> std::collections::BTreeMap<(String, String), u64> {
    let day = policy::oslo_today(jiff::Timestamp::now());
    let target =
        format!("/api/v1/usage?from={day}&to={day}&metric=logins,accesses,requests,unique_users");
    let auth = format!("Bearer {STATS_KEY}");
    let reply = r.get(HOST, &target, &[("Authorization", &auth)]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                (
                    row["service"].as_str().unwrap().to_owned(),
                    row["metric"].as_str().unwrap().to_owned(),
                ),
                row["value"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A 1 s `flush_interval` and a statistician for the library.
fn with_usage(dir: &Path) {
    let sha = {
        use sha2::Digest;
        data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(STATS_KEY.as_bytes()))
    };
    let mut config = std::fs::read_to_string(dir.join("portvakt.toml")).unwrap();
    config.push_str(&format!(
        "\n[usage]\nflush_interval = \"1s\"\n\n[[statistician]]\nname = \"sandefjord\"\napi_key_sha256 = \"{sha}\"\ninstitutions = [\"NO-2390700\"]\n"
    ));
    std::fs::write(dir.join("portvakt.toml"), config).unwrap();
}

/// `usage-unsent-*.json` files in the replicas' `data_dir`.
fn leftovers(dir: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir.join("data")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("usage-unsent-"))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_replica_stopped_while_redis_is_away_leaves_its_counts_to_the_next_start() {
    let rt = origin::runtime(1);
    let origin = rt.block_on(Origin::start());
    let mut redis = RedisServer::start();
    let dir = setup(&origin.url, &redis.url());
    with_usage(dir.path());
    let mut first = serve(dir.path());

    let reply = first.login(&[]);
    assert_eq!(reply.status, 303, "{}", reply.body);
    let session = format!("portvakt={}", reply.cookie("portvakt").unwrap());
    let go = first.get(HOST, "/go/avis?path=/page.html", &[("Cookie", &session)]);
    let (host, enter) = split(go.header("location").unwrap());
    let entered = first.get(&host, &enter, &[]);
    let svc = format!("portvakt-svc={}", entered.cookie("portvakt-svc").unwrap());
    assert_eq!(
        first.get(&host, "/page.html", &[("Cookie", &svc)]).status,
        200
    );
    let requests = |r: &Replica| {
        usage_counts(r)
            .get(&("avis".to_owned(), "requests".to_owned()))
            .copied()
    };
    assert_eq!(requests(&first), Some(1));

    // Redis goes (keeping what it has); the patron inside the service goes on, from the
    // replica's session cache, and the counts wait in the replica's buffer.
    assert!(redis.command("SAVE").starts_with("+OK"));
    redis.stop();
    for _ in 0..3 {
        assert_eq!(
            first.get(&host, "/page.html", &[("Cookie", &svc)]).status,
            200
        );
    }
    within(Duration::from_secs(5), "counts buffered", || {
        first.metric("portvakt_usage_buffered_cells") > 0.0
    });
    let day = policy::oslo_today(jiff::Timestamp::now());
    let auth = format!("Bearer {STATS_KEY}");
    let down = first.get(
        HOST,
        &format!("/api/v1/usage?from={day}&to={day}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.body.contains("unavailable"), "{}", down.body);

    // SIGTERM: a clean stop, the buffer written to data_dir.
    let status = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = first.child.wait().unwrap();
    assert!(exit.success(), "a clean stop exits 0: {exit:?}");
    let files = leftovers(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");

    // The next start sends it, once.
    redis.resume();
    let next = serve(dir.path());
    within(Duration::from_secs(10), "the leftovers sent", || {
        requests(&next) == Some(4)
    });
    assert!(leftovers(dir.path()).is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(requests(&next), Some(4));
}

#[test]
fn usage_on_three_replicas_adds_up_exactly_in_the_native_api_of_any() {
    let rt = origin::runtime(1);
    let origin = rt.block_on(Origin::start());
    let redis = RedisServer::start();
    let dir = setup(&origin.url, &redis.url());
    with_usage(dir.path());
    let r: Vec<Replica> = (0..3).map(|_| serve(dir.path())).collect();

    // Replica i: i + 1 logins (the same patron), one entry link, 2(i + 1) pages.
    for (i, replica) in r.iter().enumerate() {
        let mut session = String::new();
        for _ in 0..=i {
            let reply = replica.login(&[]);
            assert_eq!(reply.status, 303, "{}", reply.body);
            session = format!("portvakt={}", reply.cookie("portvakt").unwrap());
        }
        let go = replica.get(HOST, "/go/avis?path=/page.html", &[("Cookie", &session)]);
        assert_eq!(go.status, 303, "{}", go.body);
        let (host, enter) = split(go.header("location").unwrap());
        let entered = replica.get(&host, &enter, &[]);
        assert_eq!(entered.status, 303, "{}", entered.body);
        let svc = format!("portvakt-svc={}", entered.cookie("portvakt-svc").unwrap());
        for _ in 0..2 * (i + 1) {
            let page = replica.get(&host, "/page.html", &[("Cookie", &svc)]);
            assert_eq!(page.status, 200, "{}", page.body);
        }
    }

    let want = |c: &std::collections::BTreeMap<(String, String), u64>| {
        let get = |s: &str, m: &str| c.get(&(s.to_owned(), m.to_owned())).copied();
        get("-", "logins") == Some(6)
            && get("avis", "accesses") == Some(3)
            && get("avis", "requests") == Some(12)
            && get("-", "unique_users") == Some(1)
            && get("avis", "unique_users") == Some(1)
    };
    // Each replica sends its own counts before answering; the others' arrive within
    // their flush_interval.
    for replica in &r {
        within(
            Duration::from_secs(5),
            "every replica's counts in one answer",
            || want(&usage_counts(replica)),
        );
    }
    // And they stay exact: nothing counted twice by later flushes.
    std::thread::sleep(Duration::from_millis(1500));
    for replica in &r {
        let c = usage_counts(replica);
        assert!(want(&c), "{c:?}");
    }
}

#[test]
fn a_replica_started_while_redis_is_down_is_not_ready_until_it_answers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let origin = rt.block_on(Origin::start());
    let mut redis = RedisServer::start();
    redis.stop();
    let dir = setup(&origin.url, &redis.url());
    let replica = serve(dir.path());
    assert_eq!(replica.admin("/healthz").status, 200);
    assert_eq!(replica.admin("/readyz").status, 503);
    assert!(
        replica
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("redis is not answering"))
    );
    assert_eq!(replica.login(&[]).status, 503);
    redis.resume();
    within(Duration::from_secs(20), "ready once Redis is up", || {
        replica.admin("/readyz").status == 200
    });
    assert_eq!(replica.login(&[]).status, 303);
}

#[test]
fn a_malformed_redis_url_stops_the_start_with_one_line() {
    let dir = setup("http://127.0.0.1:9", "http://not-redis:6379");
    let out = Command::new(crate::support::PORTVAKT)
        .args(["serve", "--config"])
        .arg(dir.path().join("portvakt.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("portvakt.toml:")
            && lines[0].contains("redis_url is not a usable Redis URL"),
        "{stderr}"
    );
}
