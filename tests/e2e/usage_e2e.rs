//! Usage counting end to end, in-process, with a clock the test moves: patrons log in
//! (and fail to), follow entry links that are permitted and denied, and browse a proxied
//! vendor (a recording origin) with double clicks, repeated searches and a redirect; then a
//! statistician reads the exact counts from the native API (JSON and CSV) and, once the
//! month has closed, from SUSHI (DR, PR, DR_D1, DR_D2), and another statistician is kept to
//! its own library.

#![cfg(test)]

use crate::support::http;
use crate::support::origin;
use crate::support::privacy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Reply, form, hidden, request};
use origin::Origin;
use serde_json::Value;
use store::ManualClock;

const A: &str = "NO-2390700";
const B: &str = "NO-2380100";
const PROXY_IP: &str = "127.0.0.2";
/// Where the patrons are, as the trusted proxy says in `X-Forwarded-For`.
const PATRON_IP: &str = "203.0.113.5";
/// (card, PIN, birth date): a 46-year-old, a 36-year-old and a 10-year-old of library A.
const P1: (&str, &str, &str) = ("55501001", "1111", "1980-03-04");
const P2: (&str, &str, &str) = ("55501002", "2222", "1990-05-06");
const P3: (&str, &str, &str) = ("55501003", "3333", "2016-06-01");
const KEY_ALL: &str = "statistiker-alle";
const KEY_B: &str = "statistiker-b";

struct World {
    gateway: SocketAddr,
    host: String,
    clock: Arc<ManualClock>,
    origin: Origin,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(s.as_bytes()))
}

fn policy(origin: &str) -> String {
    let proxy = |id: &str, name: &str, extra: &str| {
        format!(
            "[[service]]\nid = \"{id}\"\nname = \"{name}\"\naccess = \"proxy\"\n{extra}\n[service.proxy]\norigin = \"{origin}\"\nitem_paths = [\"/artikkel/*\", \"/redirect\"]\nsearch_paths = [\"/sok\"]\n\n"
        )
    };
    let mut p = format!(
        "[[institution]]\nid = \"{A}\"\nname = \"Sandefjordbiblioteket\"\nkind = \"public_library\"\n\n\
         [[institution]]\nid = \"{B}\"\nname = \"Tønsberg bibliotek\"\nkind = \"public_library\"\n\n"
    );
    p.push_str(&proxy("avis", "Avis", ""));
    p.push_str(&proxy("film", "Film 18", "min_age = 18"));
    p.push_str(&proxy("jus", "Jus", ""));
    p.push_str(&proxy("kvote", "Kvote", "rate_per_user = \"2/min\""));
    for (inst, svc) in [
        (A, "avis"),
        (B, "avis"),
        (A, "film"),
        (B, "jus"),
        (A, "kvote"),
    ] {
        p.push_str(&format!(
            "[[entitlement]]\ninstitution = \"{inst}\"\nservice = \"{svc}\"\nfrom = 2020-01-01\n\n"
        ));
    }
    p
}

fn world() -> &'static World {
    static W: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    W.get_or_init(build)
}

fn build() -> World {
    let rt = origin::runtime(2);
    let dir = tempfile::tempdir().unwrap();
    let (origin, public, admin) = rt.block_on(async {
        let origin = Origin::start().await;
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (origin, public, admin)
    });
    let port = public.local_addr().unwrap().port();
    let host = format!("bib.test:{port}");
    std::fs::create_dir(dir.path().join("policy")).unwrap();
    std::fs::write(dir.path().join("policy/p.toml"), policy(&origin.url)).unwrap();
    std::fs::write(dir.path().join("pseudonym.key"), [9u8; 32]).unwrap();
    let mut patrons = String::new();
    for (card, pin, birth) in [P1, P2, P3] {
        patrons.push_str(&format!(
            "[[patron]]\ncard = \"{card}\"\npin = \"{pin}\"\nbirth_date = {birth}\nhome_library = \"{A}\"\n"
        ));
    }
    std::fs::write(dir.path().join("patrons.toml"), patrons).unwrap();
    let config = format!(
        r#"
[server]
public_host = "{host}"
trusted_proxies = ["{PROXY_IP}/32"]
[store]
data_dir = "data"
[keys]
pseudonym_key_file = "pseudonym.key"
[[card_backend]]
kind = "file"
institutions = ["{A}", "{B}"]
path = "patrons.toml"
[[statistician]]
name = "Fylkesbiblioteket"
api_key_sha256 = "{}"
institutions = ["{A}", "{B}"]
[[statistician]]
name = "Tønsberg"
api_key_sha256 = "{}"
institutions = ["{B}"]
"#,
        sha256_hex(KEY_ALL),
        sha256_hex(KEY_B)
    );
    let config = gateway::config::Config::parse("portvakt.toml", &config, dir.path()).unwrap();
    // 15 October 2026, 10:00 in Oslo.
    let clock = Arc::new(ManualClock::new("2026-10-15T08:00:00Z".parse().unwrap()));
    let running = rt.block_on(async {
        let app = gateway::start::build_app_with_clock(&config, clock.clone()).unwrap();
        gateway::server::start(app, public, admin, None).unwrap()
    });
    let gateway = running.public_addr;
    std::mem::forget(running);
    World {
        gateway,
        host,
        clock,
        origin,
        dir,
        _rt: rt,
    }
}

/// A browser request through the trusted load balancer, from a patron at `PATRON_IP`.
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

/// Logs in at library A; the session cookie, or the refusal's status.
fn login(card: &str, pin: &str) -> Result<String, u16> {
    let w = world();
    let page = browse(&w.host, "/login", &[], None);
    let nonce = page.cookie("portvakt-login").unwrap();
    let csrf = hidden(&page.body, "csrf").unwrap();
    let body = form(&[
        ("library", A),
        ("card", card),
        ("pin", pin),
        ("csrf", &csrf),
    ]);
    let r = browse(
        &w.host,
        "/login",
        &[("Cookie", &format!("portvakt-login={nonce}"))],
        Some(&body),
    );
    match r.cookie("portvakt") {
        Some(id) if r.status == 303 => Ok(format!("portvakt={id}")),
        _ => Err(r.status),
    }
}

/// Follows an entry link: `Ok((service host, its cookie))` or the deny status.
fn go(session: &str, service: &str) -> Result<(String, String), u16> {
    let w = world();
    let r = browse(
        &w.host,
        &format!("/go/{service}"),
        &[("Cookie", session)],
        None,
    );
    if r.status != 303 {
        return Err(r.status);
    }
    let location = r.header("location").unwrap();
    let rest = location.strip_prefix("http://").unwrap();
    let (host, target) = rest.split_at(rest.find('/').unwrap());
    let entered = browse(host, target, &[], None);
    assert_eq!(entered.status, 303, "{}", entered.body);
    let cookie = entered.cookie("portvakt-svc").unwrap();
    Ok((host.to_owned(), format!("portvakt-svc={cookie}")))
}

/// A proxied request; returns (status, body bytes received).
fn fetch(svc: &(String, String), target: &str) -> (u16, u64) {
    let r = browse(&svc.0, target, &[("Cookie", &svc.1)], None);
    (r.status, r.body.len() as u64)
}

fn api(key: &str, query: &str) -> Reply {
    request(
        world().gateway,
        "GET",
        &world().host,
        &format!("/api/v1/usage?{query}"),
        &[("Authorization", &format!("Bearer {key}"))],
        None,
    )
}

fn sushi(path: &str, query: &str) -> Value {
    let r = request(
        world().gateway,
        "GET",
        &world().host,
        &format!("/sushi/r51/{path}?{query}"),
        &[],
        None,
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// The value of (institution, service, metric) in a native JSON answer.
fn value(rows: &Value, inst: &str, svc: &str, metric: &str) -> Option<u64> {
    rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["institution"] == inst && r["service"] == svc && r["metric"] == metric)
        .map(|r| r["value"].as_u64().unwrap())
}

/// A metric's count for October 2026 in a SUSHI report item, wherever the report puts it.
fn performance(item: &Value, metric: &str) -> u64 {
    item["Attribute_Performance"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ap| ap["Performance"].get(metric))
        .map(|m| m["2026-10"].as_u64().unwrap())
        .sum()
}

fn database<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["Report_Items"]
        .as_array()
        .unwrap_or_else(|| panic!("no Report_Items: {report}"))
        .iter()
        .find(|i| i["Database"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[test]
fn real_traffic_gives_exact_counts_in_both_apis() {
    let w = world();
    // Logins: one wrong PIN, then three patrons.
    assert_eq!(login(P1.0, "9999"), Err(401));
    let s1 = login(P1.0, P1.1).unwrap();
    let s2 = login(P2.0, P2.1).unwrap();
    let s3 = login(P3.0, P3.1).unwrap();

    // Decisions: two permitted entries to avis, one to kvote; a child denied the film; a
    // patron of A denied B's legal database.
    let avis1 = go(&s1, "avis").unwrap();
    let avis2 = go(&s2, "avis").unwrap();
    assert_eq!(go(&s3, "film"), Err(403));
    assert_eq!(go(&s1, "jus"), Err(403));
    let kvote = go(&s1, "kvote").unwrap();

    // Proxied traffic. P1: a double click on one article, the same article again after
    // 31 s, another article, a search twice, a redirect on an item path, the front page.
    let mut bytes = 0;
    let mut get = |svc: &(String, String), target: &str, status: u16| {
        let (s, n) = fetch(svc, target);
        assert_eq!(s, status, "{target}");
        bytes += n;
    };
    get(&avis1, "/artikkel/1", 200);
    get(&avis1, "/artikkel/1", 200);
    w.clock.advance(Duration::from_secs(31));
    get(&avis1, "/artikkel/1", 200);
    get(&avis1, "/artikkel/2", 200);
    get(&avis1, "/sok?q=ibsen", 200);
    get(&avis1, "/sok?q=ibsen", 200);
    get(&avis1, "/redirect", 302);
    get(&avis1, "/", 200);
    // P2 reads the same article: unique for their session.
    get(&avis2, "/artikkel/1", 200);
    let avis_bytes = bytes;
    assert!(avis_bytes > 0);
    // kvote allows 2 a minute: the third is refused before it reaches the vendor.
    let before = w.origin.request_count();
    let (a, b) = (fetch(&kvote, "/a"), fetch(&kvote, "/b"));
    assert_eq!((a.0, b.0), (200, 200));
    let kvote_bytes = a.1 + b.1;
    assert_eq!(fetch(&kvote, "/c").0, 429);
    assert_eq!(w.origin.request_count(), before + 2);

    // The native API, JSON, one day, by institution and service.
    let r = api(
        KEY_ALL,
        "from=2026-10-15&to=2026-10-15&period=day&by=institution,service",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rows: Value = serde_json::from_str(&r.body).unwrap();
    let expect = [
        (A, "-", "logins", 3),
        (A, "-", "login_failures", 1),
        (A, "-", "unique_users", 3),
        (A, "avis", "accesses", 2),
        (A, "avis", "unique_users", 2),
        (A, "avis", "requests", 9),
        (A, "avis", "bytes", avis_bytes),
        (A, "avis", "searches", 1),
        (A, "avis", "item_requests", 4),
        (A, "avis", "unique_item_requests", 3),
        (A, "kvote", "accesses", 1),
        (A, "kvote", "unique_users", 1),
        (A, "kvote", "requests", 2),
        (A, "kvote", "bytes", kvote_bytes),
        (A, "kvote", "denials:rate_limited", 1),
        (A, "film", "denials:age_below_min", 1),
        (A, "jus", "denials:not_subscribed", 1),
    ];
    for (inst, svc, metric, n) in expect {
        assert_eq!(
            value(&rows, inst, svc, metric),
            Some(n),
            "{inst} {svc} {metric} in {}",
            r.body
        );
    }
    assert_eq!(
        rows["rows"].as_array().unwrap().len(),
        expect.len(),
        "nothing else was counted: {}",
        r.body
    );
    let period = &rows["rows"][0]["period"];
    assert_eq!(period, "2026-10-15");

    // CSV: the documented columns, one row per count.
    let csv = api(
        KEY_ALL,
        "from=2026-10-15&to=2026-10-15&period=total&by=institution,service&service=avis&metric=item_requests&format=csv",
    );
    assert_eq!(csv.status, 200, "{}", csv.body);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(
        lines[0],
        "period,institution,institution_name,service,service_name,metric,affiliation,age_band,value"
    );
    assert_eq!(lines.len(), 2, "{}", csv.body);
    assert!(
        lines[1].ends_with(",NO-2390700,Sandefjordbiblioteket,avis,Avis,item_requests,,,4"),
        "{}",
        csv.body
    );

    // By age band every count here is under k = 5, so every cell is hidden.
    let banded = api(
        KEY_ALL,
        "from=2026-10-15&to=2026-10-15&period=total&by=institution,service,age_band&service=avis&metric=accesses",
    );
    let banded: Value = serde_json::from_str(&banded.body).unwrap();
    let cells = banded["rows"].as_array().unwrap();
    assert!(!cells.is_empty(), "{banded}");
    assert!(cells.iter().all(|c| c["value"].is_null()), "{banded}");

    // Another library's statistician sees none of A; bad input is refused whole.
    assert_eq!(
        api(
            KEY_B,
            &format!("from=2026-10-15&to=2026-10-15&institution={A}")
        )
        .status,
        403
    );
    assert_eq!(api(KEY_ALL, "from=2026-10-16&to=2026-10-15").status, 400);
    assert_eq!(
        api("wrong-key", "from=2026-10-15&to=2026-10-15").status,
        401
    );

    // SUSHI: October is complete once November has begun.
    w.clock.set("2026-11-02T08:00:00Z".parse().unwrap());
    let q = format!("customer_id={A}&api_key={KEY_ALL}&begin_date=2026-10&end_date=2026-10");
    let dr = sushi("reports/dr", &q);
    let avis = database(&dr, "Avis");
    assert_eq!(performance(avis, "Total_Item_Requests"), 4, "{dr}");
    assert_eq!(performance(avis, "Unique_Item_Requests"), 3, "{dr}");
    assert_eq!(performance(avis, "Searches_Regular"), 1, "{dr}");
    assert_eq!(performance(database(&dr, "Jus"), "No_License"), 1, "{dr}");
    assert_eq!(
        performance(database(&dr, "Kvote"), "Limit_Exceeded"),
        1,
        "{dr}"
    );
    let d1 = sushi("reports/dr_d1", &q);
    assert_eq!(
        performance(database(&d1, "Avis"), "Total_Item_Requests"),
        4,
        "{d1}"
    );
    let d2 = sushi("reports/dr_d2", &q);
    assert_eq!(performance(database(&d2, "Jus"), "No_License"), 1, "{d2}");
    let pr = sushi("reports/pr", &q);
    let platform = &pr["Report_Items"][0];
    assert_eq!(performance(platform, "Total_Item_Requests"), 4, "{pr}");
    assert_eq!(performance(platform, "Searches_Platform"), 1, "{pr}");
    // Tønsberg's key may not ask for Sandefjord.
    let refused = sushi(
        "reports/dr",
        &format!("customer_id={A}&api_key={KEY_B}&begin_date=2026-10&end_date=2026-10"),
    );
    assert_eq!(refused["Code"], 2010, "{refused}");

    // Nothing personal in the usage store once it is flushed (every second): no card,
    // PIN or birth date, and not the patrons' address, which the gateway took from the
    // trusted proxy's X-Forwarded-For.
    std::thread::sleep(Duration::from_millis(1500));
    let stored = privacy::all_bytes(&w.dir.path().join("data"));
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains(A), "the counts were stored at all");
    let secrets: Vec<String> = [P1, P2, P3]
        .iter()
        .flat_map(|(card, pin, birth)| [*card, *pin, *birth].map(str::to_owned))
        .chain([P1.2, P2.2, P3.2].map(|b| b.replace('-', "")))
        .chain([PATRON_IP.to_owned()])
        .collect();
    for secret in &secrets {
        assert!(
            !privacy::contains_token(&text, secret),
            "{secret} is in the usage data"
        );
    }
}
