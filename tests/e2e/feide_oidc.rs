//! Feide login end to end against a real OpenID provider: the npm package `oidc-provider`
//! (9.x), configured like Feide by `tests/peers/feide_op.mjs` and started by these tests
//! on a loopback port. The gateway runs in-process; a small HTTP client plays the browser,
//! following redirects and carrying cookies per host, from the login page's Feide button
//! through the provider's login form back to `/auth/feide/callback`.
//!
//! The peer needs `npm ci --prefix tests/peers` (scripts/setup does it); without its
//! `node_modules` these tests fail, saying so, rather than skip.
//!
//! The negative id_token cases are honest: the provider's own token endpoint answers, and
//! a test-only middleware in the peer changes one thing in the id_token (issuer, audience,
//! expiry, nonce, key, algorithm), re-signing it with the provider's real key where the
//! point is a wrong claim and not a wrong signature.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use crate::support::http;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gateway::app::{App, AppParts};
use gateway::auth::feide::FeideClient;
use gateway::config::feide::FeideSettings;
use http::Reply;
use jiff::civil::date;
use policy::ids::InstitutionId;
use policy::pseudonym::PseudonymKey;
use policy::subject::{Affiliation, Age};
use proxy::Scheme;
use store::session::{LoginMethod, SessionData, SessionId};
use store::{Clock, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

const HOST: &str = "bib.test";
const CLIENT_ID: &str = "portvakt-test";
const SECRET: &str = "feide-test-secret-0123456789";
const NOTTERO: &str = "NO-3391101";
const SANDEFJORD: &str = "NO-3390701";
const THOR: &str = "NO-3390901";

fn student(userid: &str) -> serde_json::Value {
    serde_json::json!({
        "userid_sec": [format!("feide:{userid}")],
        "eduPersonAffiliation": ["student", "member"],
        "norEduPersonBirthDate": "20080315",
        "feideYearOfBirth": 2008,
    })
}

fn accounts() -> serde_json::Value {
    let mut a = serde_json::json!({
        "kari": student("Kari@Nottero-VGS.example.no"),
        "ola": {
            "userid_sec": ["feide:ola@sandefjord-vgs.example.no"],
            "eduPersonAffiliation": ["employee", "member"],
            "feideYearOfBirth": 1980,
        },
        "liv": {
            "eppn": "liv@thor-heyerdahl-vgs.example.no",
            "eduPersonAffiliation": ["faculty"],
        },
        "ukjent": student("per@ukjent-skole.example.no"),
        "gjest": {
            "userid_sec": ["feide:gjest@nottero-vgs.example.no"],
            "eduPersonAffiliation": ["affiliate"],
        },
    });
    for mode in [
        "iss", "aud", "exp", "nonce", "sig", "kid", "hs256", "rotate", "slow",
    ] {
        let mut s = student(&format!("t-{mode}@nottero-vgs.example.no"));
        s["tamper"] = mode.into();
        a[format!("t-{mode}")] = s;
    }
    a
}

/// The node provider; it exits when its stdin closes, so it ends with the test binary.
struct Peer {
    _child: Child,
    issuer: String,
    _dir: tempfile::TempDir,
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn start_peer() -> Peer {
    let peers = peers_dir();
    assert!(
        peers
            .join("node_modules/oidc-provider/package.json")
            .exists(),
        "the Feide test peer is not installed: run `npm ci --prefix tests/peers` \
         (or scripts/setup) first"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "redirect_uris": [format!("http://{HOST}/auth/feide/callback")],
        }],
        "accounts": accounts(),
    });
    let config_path = dir.path().join("op.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let stderr = std::fs::File::create(dir.path().join("op.log")).unwrap();
    let mut child = Command::new("node")
        .arg(peers.join("feide_op.mjs"))
        .arg(&config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node for the Feide test peer: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let issuer = line.trim().to_owned();
    if !issuer.starts_with("http://127.0.0.1:") {
        let _ = child.kill();
        let mut log = String::new();
        let _ =
            std::fs::File::open(dir.path().join("op.log")).map(|mut f| f.read_to_string(&mut log));
        panic!("the Feide test peer did not start (first line {line:?}):\n{log}");
    }
    Peer {
        _child: child,
        issuer,
        _dir: dir,
    }
}

fn peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(start_peer)
}

/// Every log line of every gateway in this test binary.
static LOGS: Mutex<String> = Mutex::new(String::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        print!("{text}");
        LOGS.lock().unwrap().push_str(&text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Gateway {
    app: Arc<App>,
    addr: SocketAddr,
    _running: gateway::server::Running,
    _dir: tempfile::TempDir,
}

async fn gateway_with(feide: Option<FeideSettings>) -> Gateway {
    // The gateway's log lines show with a failing test's output, and are kept for
    // `no_log_line_names_the_person`.
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("debug")
        .with_writer(|| LogWriter)
        .try_init();
    let policy_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy");
    let (policy, _) = policy::load_dir(&policy_dir).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dir = tempfile::tempdir().unwrap();
    let feide = feide.map(|mut s| {
        let secret = dir.path().join("feide.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        s.client_secret_file = secret;
        Arc::new(FeideClient::new(&s).unwrap())
    });
    let app = App::new(AppParts {
        usage: usage::Usage::open(
            None,
            std::time::Duration::from_secs(1),
            clock.clone(),
            &[3u8; 32],
        )
        .unwrap(),
        statisticians: Default::default(),
        k_anonymity: 5,
        signing: None,
        policy,
        policy_dir,
        store: gateway::app::memory_store(&clock),
        clock,
        verifiers: HashMap::new(),
        pseudonym_key: PseudonymKey::new(&[1u8; 32]).unwrap(),
        session_key: [2u8; 32],
        public_host: HOST.into(),
        public_scheme: Scheme::Http,
        session_ttl: Duration::from_secs(3600),
        trusted_proxies: Vec::new(),
        upstream_settings: Default::default(),
        feide,
    })
    .unwrap();
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = gateway::server::start(app.clone(), public, admin, None).unwrap();
    Gateway {
        app,
        addr: running.public_addr,
        _running: running,
        _dir: dir,
    }
}

fn settings(issuer: &str) -> FeideSettings {
    let mut s = FeideSettings::new(issuer, CLIENT_ID, "set-by-gateway_with");
    s.timeout = Duration::from_secs(3);
    s
}

async fn gateway() -> Gateway {
    gateway_with(Some(settings(&peer().issuer))).await
}

/// A browser: cookies per host and port, the gateway's host name resolved to its address.
struct Browser {
    gateway: SocketAddr,
    jar: HashMap<String, Vec<(String, String)>>,
}

impl Browser {
    fn new(gw: &Gateway) -> Self {
        Self {
            gateway: gw.addr,
            jar: HashMap::new(),
        }
    }

    async fn request(&mut self, method: &str, url: &str, body: Option<&str>) -> Reply {
        let u = Url::parse(url).unwrap();
        let host = u.host_str().unwrap().to_owned();
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let addr: SocketAddr = if host == HOST {
            self.gateway
        } else {
            authority.parse().unwrap()
        };
        let target = &u[url::Position::BeforePath..url::Position::AfterQuery];
        let cookie = self
            .jar
            .get(&authority)
            .filter(|c| !c.is_empty())
            .map(|cookies| {
                let line: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line.join("; ")
            });
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
        let req = http::request_text(method, &authority, target, &headers, body);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "no answer from {url} within 30 s");
        let reply = http::parse(&buf);
        let jar = self.jar.entry(authority).or_default();
        for c in reply.headers_named("set-cookie") {
            let first = c.split(';').next().unwrap_or("");
            let Some((k, v)) = first.split_once('=') else {
                continue;
            };
            let lower = c.to_ascii_lowercase();
            jar.retain(|(name, _)| name != k);
            if !v.is_empty() && !lower.contains("max-age=0") && !lower.contains("1970") {
                jar.push((k.to_owned(), v.to_owned()));
            }
        }
        reply
    }

    async fn get(&mut self, url: &str) -> Reply {
        self.request("GET", url, None).await
    }

    /// Follows redirects from `url` until an answer that is not one, or until the next
    /// hop is the gateway's Feide callback (returned, not visited).
    async fn chase(&mut self, mut url: Url, mut reply: Reply) -> (Url, Reply) {
        for _ in 0..12 {
            if !matches!(reply.status, 301 | 302 | 303 | 307) {
                return (url, reply);
            }
            let next = url.join(reply.header("location").unwrap()).unwrap();
            if next.host_str() == Some(HOST) && next.path() == "/auth/feide/callback" {
                return (next, reply);
            }
            url = next;
            reply = self.get(url.as_str()).await;
        }
        panic!("too many redirects, last {url}");
    }

    /// From the login page's Feide button to the provider's login form; its URL.
    async fn open_feide(&mut self, service: &str) -> Url {
        let page = self
            .get(&format!("http://{HOST}/login?service={service}"))
            .await;
        assert_eq!(page.status, 200);
        let href = button_href(&page.body).expect("a Feide button on the login page");
        let url = Url::parse(&format!("http://{HOST}"))
            .unwrap()
            .join(&href)
            .unwrap();
        let first = self.get(url.as_str()).await;
        assert_eq!(first.status, 303, "{}", first.body);
        let (form, reply) = self.chase(url, first).await;
        assert_eq!(reply.status, 200, "at {form}: {}", reply.body);
        assert!(reply.body.contains("Logg inn med Feide"), "{}", reply.body);
        form
    }

    /// Logs in as `account` at the provider's form; the callback URL it sends back.
    async fn at_feide(&mut self, form: &Url, action: &str, account: &str) -> Url {
        let post = Url::parse(&format!("{form}/{action}")).unwrap();
        let reply = self
            .request("POST", post.as_str(), Some(&format!("account={account}")))
            .await;
        let (callback, reply) = self.chase(post, reply).await;
        assert!(
            callback.path() == "/auth/feide/callback",
            "the provider did not send the browser back: {} {}",
            reply.status,
            reply.body
        );
        callback
    }

    /// The whole login; the gateway's answer to the callback.
    async fn login(&mut self, account: &str) -> Reply {
        let form = self.open_feide("avis").await;
        let callback = self.at_feide(&form, "login", account).await;
        self.get(callback.as_str()).await
    }
}

fn button_href(html: &str) -> Option<String> {
    let at = html.find("id=\"feide-login\" href=\"")?;
    let rest = &html[at + "id=\"feide-login\" href=\"".len()..];
    Some(
        rest[..rest.find('"')?]
            .replace("&amp;", "&")
            .replace("&#38;", "&"),
    )
}

async fn session(gw: &Gateway, reply: &Reply) -> Arc<SessionData> {
    let id = reply.cookie("portvakt").expect("a session cookie");
    gw.app
        .store
        .get_session(&SessionId::parse(&id).unwrap(), gw.app.clock.now())
        .await
        .unwrap()
        .expect("a live session")
}

fn no_session(reply: &Reply) {
    assert!(
        reply.cookie("portvakt").is_none_or(|v| v.is_empty()),
        "a session was made: {:?}",
        reply.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_logs_in_with_feide_and_goes_on_to_the_service() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let reply = b.login("kari").await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/go/avis"));
    let data = session(&gw, &reply).await;
    assert_eq!(data.login_method, LoginMethod::Feide);
    let subject = data.subject();
    assert_eq!(subject.key.expose(), "feide:kari@nottero-vgs.example.no");
    assert_eq!(subject.affiliation, Affiliation::Student);
    assert_eq!(subject.institutions, vec![InstitutionId::from(NOTTERO)]);
    assert_eq!(subject.age, Age::BirthDate(date(2008, 3, 15)));
    // The login cookie that bound the state to this browser is cleared.
    assert!(
        reply
            .headers_named("set-cookie")
            .iter()
            .any(|c| c.starts_with("portvakt-login=;"))
    );
    // The start page greets a Feide user as one.
    let start = b.get(&format!("http://{HOST}/")).await;
    assert!(
        start.body.contains("logget inn med Feide"),
        "{}",
        start.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deep_link_survives_the_round_trip() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let page = b
        .get(&format!(
            "http://{HOST}/login?service=avis&path=/artikkel/1%3Fa%3Db"
        ))
        .await;
    let href = button_href(&page.body).unwrap();
    assert_eq!(
        href,
        "/auth/feide/start?service=avis&path=%2Fartikkel%2F1%3Fa%3Db"
    );
    let start = Url::parse(&format!("http://{HOST}{href}")).unwrap();
    let first = b.get(start.as_str()).await;
    let (form, _) = b.chase(start, first).await;
    let callback = b.at_feide(&form, "login", "kari").await;
    let reply = b.get(callback.as_str()).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(
        reply.header("location"),
        Some("/go/avis?path=%2Fartikkel%2F1%3Fa%3Db")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_get_staff_and_a_birth_year() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let reply = b.login("ola").await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let subject = session(&gw, &reply).await.subject();
    assert_eq!(subject.key.expose(), "feide:ola@sandefjord-vgs.example.no");
    assert_eq!(subject.affiliation, Affiliation::Staff);
    assert_eq!(subject.institutions, vec![InstitutionId::from(SANDEFJORD)]);
    assert_eq!(subject.age, Age::BirthYear(1980));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_userinfo_supplies_what_userinfo_lacks() {
    // Only the id scopes: affiliation and birth date come from the extended userinfo.
    let mut s = settings(&peer().issuer);
    s.scopes = vec!["openid".into(), "userid".into(), "userid-feide".into()];
    s.extended_userinfo_url = Some(format!("{}/userinfo/v1/userinfo", peer().issuer));
    let gw = gateway_with(Some(s)).await;
    let mut b = Browser::new(&gw);
    let reply = b.login("kari").await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let subject = session(&gw, &reply).await.subject();
    assert_eq!(subject.affiliation, Affiliation::Student);
    assert_eq!(subject.age, Age::BirthDate(date(2008, 3, 15)));
    // A user with a principal name only.
    let mut b = Browser::new(&gw);
    let reply = b.login("liv").await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let subject = session(&gw, &reply).await.subject();
    assert_eq!(
        subject.key.expose(),
        "feide:liv@thor-heyerdahl-vgs.example.no"
    );
    assert_eq!(subject.affiliation, Affiliation::Staff);
    assert_eq!(subject.institutions, vec![InstitutionId::from(THOR)]);
    assert_eq!(subject.age, Age::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_extended_userinfo_those_scopes_give_no_service() {
    let mut s = settings(&peer().issuer);
    s.scopes = vec!["openid".into(), "userid".into(), "userid-feide".into()];
    let gw = gateway_with(Some(s)).await;
    let mut b = Browser::new(&gw);
    let reply = b.login("kari").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("gir ikke tilgang"), "{}", reply.body);
    no_session(&reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_school_gets_a_clear_page() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let reply = b.login("ukjent").await;
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .body
            .contains("Skolen din er ikke med i denne tjenesten"),
        "{}",
        reply.body
    );
    no_session(&reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_affiliation_without_service_gets_a_clear_page() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let reply = b.login("gjest").await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.body.contains("Feide-brukeren din gir ikke tilgang"),
        "{}",
        reply.body
    );
    no_session(&reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_callback_finds_nothing() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let form = b.open_feide("avis").await;
    let callback = b.at_feide(&form, "login", "kari").await;
    // Keep the login cookie: the replay comes from the same browser.
    let jar = b.jar.clone();
    let first = b.get(callback.as_str()).await;
    assert_eq!(first.status, 303);
    b.jar = jar;
    let again = b.get(callback.as_str()).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(
        again.body.contains("utløpt eller allerede brukt"),
        "{}",
        again.body
    );
    no_session(&again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_state_is_refused() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    // Start a real login so the browser has a login cookie and the store a ticket.
    let form = b.open_feide("avis").await;
    let callback = b.at_feide(&form, "login", "kari").await;
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let forged = store::session::Ticket::generate().unwrap().expose();
    for query in [
        format!("code={code}&state={forged}"),
        format!("code={code}&state=not-a-ticket"),
        format!("code={code}"),
        "state=&code=".to_owned(),
        "%zz".to_owned(),
    ] {
        let r = b
            .get(&format!("http://{HOST}/auth/feide/callback?{query}"))
            .await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        no_session(&r);
    }
    // The real state still works once.
    let r = b.get(callback.as_str()).await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_in_another_browser_is_refused() {
    let gw = gateway().await;
    let mut victim = Browser::new(&gw);
    let mut attacker = Browser::new(&gw);
    let form = attacker.open_feide("avis").await;
    let callback = attacker.at_feide(&form, "login", "kari").await;
    let r = victim.get(callback.as_str()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    no_session(&r);
    // And the state is spent: the planter cannot use it afterwards either.
    let r = attacker.get(callback.as_str()).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_login_says_so() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let form = b.open_feide("avis").await;
    let callback = b.at_feide(&form, "abort", "").await;
    assert!(callback.query().unwrap().contains("error=access_denied"));
    let r = b.get(callback.as_str()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("avbrøt innloggingen"), "{}", r.body);
    assert!(r.body.contains("/login?service=avis"), "{}", r.body);
    no_session(&r);
}

/// A login whose id_token the peer spoiled must fail with a clear page and no session.
async fn refused(account: &str) {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    let reply = b.login(account).await;
    assert_eq!(reply.status, 502, "{account}: {}", reply.body);
    assert!(
        reply
            .body
            .contains("Innloggingen med Feide kunne ikke fullføres"),
        "{account}: {}",
        reply.body
    );
    no_session(&reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_from_another_issuer_is_refused() {
    refused("t-iss").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_another_client_is_refused() {
    refused("t-aud").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_token_is_refused() {
    refused("t-exp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_with_another_nonce_is_refused() {
    refused("t-nonce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badly_signed_id_token_is_refused() {
    refused("t-sig").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_signed_by_an_unpublished_key_is_refused() {
    refused("t-kid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_signed_with_the_client_secret_is_refused() {
    refused("t-hs256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_fetched_and_accepted() {
    let gw = gateway().await;
    let mut b = Browser::new(&gw);
    // A first login caches the key set as it is now.
    assert_eq!(b.login("kari").await.status, 303);
    let mut b = Browser::new(&gw);
    let reply = b.login("t-rotate").await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let subject = session(&gw, &reply).await.subject();
    assert_eq!(
        subject.key.expose(),
        "feide:t-rotate@nottero-vgs.example.no"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_gets_a_clear_page_in_time() {
    let mut s = settings(&peer().issuer);
    s.timeout = Duration::from_secs(1);
    let gw = gateway_with(Some(s)).await;
    let mut b = Browser::new(&gw);
    let form = b.open_feide("avis").await;
    let callback = b.at_feide(&form, "login", "t-slow").await;
    let started = Instant::now();
    let reply = b.get(callback.as_str()).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("Feide svarer ikke"), "{}", reply.body);
    no_session(&reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_gets_a_clear_page() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway_with(Some(settings(&format!("http://127.0.0.1:{port}")))).await;
    let mut b = Browser::new(&gw);
    let r = b
        .get(&format!("http://{HOST}/auth/feide/start?service=avis"))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("Feide svarer ikke"), "{}", r.body);
    assert!(r.body.contains("/login?service=avis"), "{}", r.body);
    // The card login page still works.
    assert_eq!(b.get(&format!("http://{HOST}/login")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_feide_there_is_no_button_and_no_endpoint() {
    let gw = gateway_with(None).await;
    let mut b = Browser::new(&gw);
    let page = b.get(&format!("http://{HOST}/login")).await;
    assert_eq!(page.status, 200);
    assert!(button_href(&page.body).is_none());
    assert!(!page.body.contains("Feide"));
    for path in ["/auth/feide/start", "/auth/feide/callback?state=x&code=y"] {
        assert_eq!(b.get(&format!("http://{HOST}{path}")).await.status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_names_the_person() {
    let gw = gateway().await;
    let mut secrets: Vec<String> = Vec::new();
    for account in ["kari", "ukjent", "gjest", "t-aud", "t-sig"] {
        let mut b = Browser::new(&gw);
        let form = b.open_feide("avis").await;
        let callback = b.at_feide(&form, "login", account).await;
        for (_, v) in callback.query_pairs() {
            secrets.push(v.into_owned());
        }
        let reply = b.get(callback.as_str()).await;
        if let Some(c) = reply.cookie("portvakt").filter(|c| !c.is_empty()) {
            secrets.push(c);
        }
    }
    let logs = LOGS.lock().unwrap().clone();
    assert!(logs.contains("login with Feide"), "{logs}");
    for needle in [
        "kari@",
        "per@",
        "gjest@",
        "t-aud@",
        "t-sig@",
        "Kari",
        "20080315",
        "2008-03-15",
        SECRET,
    ] {
        assert!(!logs.contains(needle), "{needle:?} in the logs:\n{logs}");
    }
    for s in secrets
        .iter()
        .filter(|s| s.len() > 8 && !s.starts_with("http"))
    {
        assert!(
            !logs.contains(s.as_str()),
            "a code, state or session id in the logs:\n{logs}"
        );
    }
}
