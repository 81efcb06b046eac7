//! Unit tests of usage counting, distinct counts, persistence, k-anonymity, the native API
//! and SUSHI (every SUSHI answer validated against the official COUNTER schema).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use jiff::Timestamp;
use jiff::civil::{Date, date};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::counters::ALL;
use super::distinct::Sketch;
use super::query::{Period, Query, Row, suppress};
use super::*;
use policy::subject::Affiliation;
use policy::{AgeBand, DenyReason, Policy};
use store::ManualClock;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn at(d: Date, h: i8, m: i8, s: i8) -> Timestamp {
    policy::oslo()
        .to_timestamp(d.at(h, m, s, 0))
        .expect("a valid Oslo time")
}

fn setup(dir: Option<&Path>, now: Timestamp) -> (Arc<Usage>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(now));
    let u = Usage::open(dir, Duration::from_secs(1), clock.clone(), KEY).expect("opens");
    (u, clock)
}

fn who<'a>(inst: &'a str, svc: &'a str) -> Counted<'a> {
    Counted {
        institution: inst,
        service: svc,
        affiliation: Affiliation::Patron,
        age_band: AgeBand::B20To44,
        person: None,
    }
}

fn all_query(from: Date, to: Date, period: Period) -> Query {
    Query {
        from,
        to,
        period,
        by_affiliation: false,
        by_age_band: false,
        institutions: None,
        services: None,
        metrics: None,
        k_anonymity: 5,
    }
}

/// (period, institution, service, metric name, value) of every row.
fn flat(u: &Usage, q: &Query) -> Vec<(String, String, String, String, Option<u64>)> {
    let rows = u.query(q).expect("query runs");
    rows.rows
        .iter()
        .map(|r| {
            (
                rows.period(r).to_owned(),
                rows.institution(r).to_owned(),
                rows.service(r).to_owned(),
                r.metric_name(),
                r.value,
            )
        })
        .collect()
}

fn value(u: &Usage, q: &Query, inst: &str, svc: &str, metric: &str) -> Option<u64> {
    flat(u, q)
        .into_iter()
        .find(|r| r.1 == inst && r.2 == svc && r.3 == metric)
        .and_then(|r| r.4)
}

#[test]
fn every_event_counts_its_metrics_on_the_oslo_day() {
    let d = date(2026, 5, 4);
    let (u, clock) = setup(None, at(d, 10, 0, 0));
    let p = u.person(&policy::ids::SubjectKey::new("card:NO-2390700:1"));
    u.record(Event::Login(Counted {
        person: Some(p),
        ..who("NO-2390700", "ebok")
    }));
    u.record(Event::LoginFailure(who("NO-2390700", "-")));
    u.record(Event::Access(Counted {
        person: Some(p),
        ..who("NO-2390700", "ebok")
    }));
    u.record(Event::Denial {
        who: who("NO-2390700", "filmbib"),
        reason: DenyReason::AgeBelowMin,
    });
    u.record(Event::Denial {
        who: who("NO-2390700", "filmbib"),
        reason: DenyReason::RateLimited,
    });
    u.record(Event::Request {
        who: who("NO-2390700", "ebok"),
        bytes: 1000,
        kind: RequestKind::Plain,
    });
    u.record(Event::Request {
        who: who("NO-2390700", "ebok"),
        bytes: 500,
        kind: RequestKind::Search {
            session: "s1",
            key: "/search?q=ibsen",
        },
    });
    // 23:30 UTC on the 4th is 01:30 on the 5th in Oslo (summer time).
    clock.set("2026-05-04T23:30:00Z".parse().expect("instant"));
    u.record(Event::Request {
        who: who("NO-2390700", "ebok"),
        bytes: 1,
        kind: RequestKind::Plain,
    });

    let q = all_query(d, d, Period::Day);
    let v = |s: &str, m: &str| value(&u, &q, "NO-2390700", s, m);
    assert_eq!(v("-", "logins"), Some(1));
    assert_eq!(v("-", "login_failures"), Some(1));
    assert_eq!(v("-", "unique_users"), Some(1));
    assert_eq!(v("ebok", "accesses"), Some(1));
    assert_eq!(v("ebok", "unique_users"), Some(1));
    assert_eq!(v("filmbib", "denials:age_below_min"), Some(1));
    assert_eq!(v("filmbib", "denials:rate_limited"), Some(1));
    assert_eq!(v("ebok", "requests"), Some(2));
    assert_eq!(v("ebok", "bytes"), Some(1500));
    assert_eq!(v("ebok", "searches"), Some(1));
    let next = all_query(date(2026, 5, 5), date(2026, 5, 5), Period::Day);
    assert_eq!(value(&u, &next, "NO-2390700", "ebok", "requests"), Some(1));
}

#[test]
fn double_clicks_within_30_seconds_count_once_and_unique_items_once_a_session() {
    let d = date(2026, 5, 4);
    let t0 = at(d, 12, 0, 0);
    let (u, clock) = setup(None, t0);
    let item = |u: &Usage, session: &str, path: &str| {
        u.record(Event::Request {
            who: who("NO-2390700", "avis"),
            bytes: 0,
            kind: RequestKind::Item {
                session,
                item: path,
            },
        })
    };
    item(&u, "s1", "/a/1");
    clock.set(t0 + Duration::from_secs(10));
    item(&u, "s1", "/a/1"); // double click
    clock.set(t0 + Duration::from_secs(39));
    item(&u, "s1", "/a/1"); // 29 s after the last click: still one
    clock.set(t0 + Duration::from_secs(80));
    item(&u, "s1", "/a/1"); // 41 s later: counts, but not unique again
    item(&u, "s2", "/a/1"); // another session: counts and unique
    item(&u, "s1", "/a/2"); // another item
    let q = all_query(d, d, Period::Day);
    assert_eq!(
        value(&u, &q, "NO-2390700", "avis", "item_requests"),
        Some(4)
    );
    assert_eq!(
        value(&u, &q, "NO-2390700", "avis", "unique_item_requests"),
        Some(3)
    );
    assert_eq!(value(&u, &q, "NO-2390700", "avis", "requests"), Some(6));
    // The sweep forgets the 30-second state but not today's uniqueness.
    u.flush().expect("flush");
    clock.set(t0 + Duration::from_secs(200));
    u.flush().expect("flush");
    item(&u, "s1", "/a/1");
    assert_eq!(
        value(&u, &q, "NO-2390700", "avis", "item_requests"),
        Some(5)
    );
    assert_eq!(
        value(&u, &q, "NO-2390700", "avis", "unique_item_requests"),
        Some(3)
    );
}

#[test]
fn distinct_persons_per_day_and_month_and_the_day_sketch_closes() {
    let d1 = date(2026, 5, 4);
    let (u, clock) = setup(None, at(d1, 9, 0, 0));
    let person = |n: u32| {
        u.person(&policy::ids::SubjectKey::new(format!(
            "card:NO-2390700:{n}"
        )))
    };
    for n in [1, 2, 3, 1, 2] {
        u.record(Event::Access(Counted {
            person: Some(person(n)),
            ..who("NO-2390700", "ebok")
        }));
    }
    clock.set(at(date(2026, 5, 5), 9, 0, 0));
    for n in [1, 4] {
        u.record(Event::Access(Counted {
            person: Some(person(n)),
            ..who("NO-2390700", "ebok")
        }));
    }
    u.flush().expect("flush");
    let day = |d: Date| {
        let mut q = all_query(d, d, Period::Day);
        q.metrics = Some(vec![(Metric::UniqueUsers, None)]);
        value(&u, &q, "NO-2390700", "ebok", "unique_users")
    };
    assert_eq!(day(d1), Some(3));
    assert_eq!(day(date(2026, 5, 5)), Some(2));
    let mut month = all_query(date(2026, 5, 1), date(2026, 5, 31), Period::Month);
    month.metrics = Some(vec![(Metric::UniqueUsers, None)]);
    assert_eq!(
        value(&u, &month, "NO-2390700", "ebok", "unique_users"),
        Some(4)
    );
    // The 4th has closed: its salt and sketches are gone, the count stays.
    let open: Vec<_> = super::lock(&u.distinct).periods.keys().copied().collect();
    assert!(!open.contains(&super::distinct::PeriodKey::Day(d1)));
    // Summing distinct counts over days is refused when asked for explicitly.
    let mut bad = all_query(d1, date(2026, 5, 5), Period::Total);
    bad.metrics = Some(vec![(Metric::UniqueUsers, None)]);
    assert!(matches!(
        u.query(&bad),
        Err(UsageError::Request { status: 400, .. })
    ));
}

#[test]
fn sketches_are_exact_when_small_and_close_when_large() {
    let mut s = Sketch::default();
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        h
    };
    for n in 1..=1000u64 {
        s.insert(next());
        assert_eq!(s.estimate(), n);
    }
    for _ in 1000..100_000 {
        s.insert(next());
    }
    let e = s.estimate() as f64;
    assert!((e - 100_000.0).abs() / 100_000.0 < 0.05, "estimate {e}");
}

#[test]
fn counts_and_sketches_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = date(2026, 5, 4);
    let t = at(d, 12, 0, 0);
    let p = {
        let (u, _) = setup(Some(dir.path()), t);
        let p = u.person(&policy::ids::SubjectKey::new("feide:ola@example.no"));
        u.record(Event::Access(Counted {
            person: Some(p),
            ..who("NO-2390700", "ebok")
        }));
        u.record(Event::Request {
            who: who("NO-2390700", "ebok"),
            bytes: 7,
            kind: RequestKind::Plain,
        });
        u.flush().expect("flush");
        p
    };
    let (u, _) = setup(Some(dir.path()), t);
    // The same person again after the restart is still one person.
    u.record(Event::Access(Counted {
        person: Some(p),
        ..who("NO-2390700", "ebok")
    }));
    let q = all_query(d, d, Period::Day);
    assert_eq!(value(&u, &q, "NO-2390700", "ebok", "bytes"), Some(7));
    assert_eq!(value(&u, &q, "NO-2390700", "ebok", "accesses"), Some(2));
    assert_eq!(value(&u, &q, "NO-2390700", "ebok", "unique_users"), Some(1));
    u.flush().expect("flush");
    let files: Vec<String> = std::fs::read_dir(dir.path().join("usage"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| !f.starts_with(".tmp-")), "{files:?}");
    // Nothing in the files is the subject key or the token.
    for f in &files {
        let b = std::fs::read(dir.path().join("usage").join(f)).expect("read");
        assert!(!b.windows(p.bytes().len()).any(|w| w == p.bytes()));
        assert!(!String::from_utf8_lossy(&b).contains("ola@example.no"));
    }
}

#[test]
fn counts_a_query_moved_are_still_written_by_the_next_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = date(2026, 5, 4);
    let t = at(d, 12, 0, 0);
    let q = all_query(d, d, Period::Day);
    {
        let (u, _) = setup(Some(dir.path()), t);
        u.record(Event::Request {
            who: who("NO-2390700", "ebok"),
            bytes: 7,
            kind: RequestKind::Plain,
        });
        // The query drains the live counts into the archive before the flush runs.
        assert_eq!(value(&u, &q, "NO-2390700", "ebok", "requests"), Some(1));
        u.flush().expect("flush");
    }
    let (u, _) = setup(Some(dir.path()), t);
    assert_eq!(value(&u, &q, "NO-2390700", "ebok", "requests"), Some(1));
}

#[test]
fn a_damaged_file_is_an_error_not_a_silent_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("usage")).expect("mkdir");
    std::fs::write(dir.path().join("usage/day-2026-05-04.bin"), b"PVU1garbage").expect("write");
    let clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
    let e = Usage::open(Some(dir.path()), Duration::from_secs(1), clock, KEY).expect_err("damaged");
    assert!(matches!(e, UsageError::Corrupt { .. }), "{e}");
}

fn row(aff: u8, value: u64) -> Row {
    Row {
        period: 0,
        inst: 0,
        svc: 0,
        metric: Metric::Accesses,
        reason: None,
        aff,
        band: ALL,
        value: Some(value),
    }
}

#[test]
fn k_anonymity_hides_small_cells_and_a_second_one_when_one_alone_is_hidden() {
    let mut rows = vec![row(0, 1), row(1, 7), row(2, 9)];
    suppress(&mut rows, 5);
    let v: Vec<_> = rows.iter().map(|r| r.value).collect();
    assert_eq!(v, vec![None, None, Some(9)]);
    let mut rows = vec![row(0, 2), row(1, 3), row(2, 10)];
    suppress(&mut rows, 5);
    let v: Vec<_> = rows.iter().map(|r| r.value).collect();
    assert_eq!(v, vec![None, None, Some(10)]);
    let mut rows = vec![row(0, 5), row(1, 6)];
    suppress(&mut rows, 5);
    assert!(rows.iter().all(|r| r.value.is_some()));
}

#[test]
fn statistician_config_is_checked_whole() {
    let good = FileStatistician {
        name: "ssb".into(),
        api_key_sha256: "a".repeat(64),
        institutions: vec!["NO-2390700".into()],
        groups: vec![],
    };
    assert!(Statisticians::check(std::slice::from_ref(&good)).is_ok());
    let bad = vec![
        good.clone(),
        FileStatistician {
            api_key_sha256: "xyz".into(),
            ..good.clone()
        },
        FileStatistician {
            name: "other".into(),
            institutions: vec![],
            ..good.clone()
        },
    ];
    let problems = Statisticians::check(&bad).expect_err("bad");
    let text: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.index, p.message))
        .collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("1: name \"ssb\" is used twice")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("1: api_key_sha256 must be 64 hex")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("2: api_key_sha256 is the same")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("2: needs institutions or groups")),
        "{text:?}"
    );
    let table: toml::Table =
        toml::from_str("name = \"x\"\napi_key_sha256 = \"00\"\nbogus = 1").expect("toml");
    let p = Statisticians::from_tables(&[table]).expect_err("unknown key");
    assert!(p[0].message.contains("bogus"), "{p:?}");
}

// ---- HTTP: the native API and SUSHI ----

fn demo_policy() -> Arc<Policy> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/policy");
    Arc::new(
        policy::load_dir(Path::new(dir))
            .expect("demo policy loads")
            .0,
    )
}

fn sha(key: &str) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(key.as_bytes()))
}

fn statisticians() -> Arc<Statisticians> {
    Arc::new(
        Statisticians::check(&[
            FileStatistician {
                name: "vestfold".into(),
                api_key_sha256: sha("vestfold-key"),
                institutions: vec![],
                groups: vec!["vestfold-bibliotek".into()],
            },
            FileStatistician {
                name: "sandefjord".into(),
                api_key_sha256: sha("sandefjord-key"),
                institutions: vec!["NO-2390700".into()],
                groups: vec![],
            },
        ])
        .expect("valid"),
    )
}

/// Usage with a month of traffic in April 2026, "now" in May.
fn with_traffic() -> (Arc<Usage>, axum::Router) {
    let (u, clock) = setup(None, at(date(2026, 4, 10), 12, 0, 0));
    for (i, aff) in [Affiliation::Patron, Affiliation::Student]
        .into_iter()
        .enumerate()
    {
        let base = Counted {
            affiliation: aff,
            ..who("NO-2390700", "avis")
        };
        for n in 0..(3 + 4 * i) {
            let p = u.person(&policy::ids::SubjectKey::new(format!("p{i}-{n}")));
            u.record(Event::Access(Counted {
                person: Some(p),
                ..base
            }));
            let s = format!("session{i}-{n}");
            u.record(Event::Request {
                who: base,
                bytes: 100,
                kind: RequestKind::Search {
                    session: &s,
                    key: "/sok?q=x",
                },
            });
            u.record(Event::Request {
                who: base,
                bytes: 100,
                kind: RequestKind::Item {
                    session: &s,
                    item: "/artikkel/1",
                },
            });
        }
    }
    u.record(Event::Denial {
        who: who("NO-2390100", "filmbib"),
        reason: DenyReason::NotSubscribed,
    });
    u.record(Event::Denial {
        who: who("NO-2390700", "filmbib"),
        reason: DenyReason::RateLimited,
    });
    u.record(Event::Request {
        who: who("NO-3391101", "fagportalen"),
        bytes: 1,
        kind: RequestKind::Plain,
    });
    clock.set(at(date(2026, 5, 20), 12, 0, 0));
    u.flush().expect("flush");
    let policy = demo_policy();
    let router = router(u.clone(), move || policy.clone(), statisticians(), 5);
    (u, router)
}

async fn get(router: &axum::Router, uri: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn native_api_refuses_clearly() {
    let (_, r) = with_traffic();
    let base = "/api/v1/usage?from=2026-04-01&to=2026-04-30";
    let cases = [
        (base.to_owned(), None, 401, "Bearer"),
        (base.to_owned(), Some("wrong"), 401, "unknown API key"),
        (
            "/api/v1/usage?from=2026-04-31&to=2026-05-01".into(),
            Some("vestfold-key"),
            400,
            "not a date",
        ),
        (
            "/api/v1/usage?from=2026-05-01&to=2026-04-01".into(),
            Some("vestfold-key"),
            400,
            "reversed",
        ),
        (
            format!("{base}&metric=clicks"),
            Some("vestfold-key"),
            400,
            "unknown metric",
        ),
        (
            format!("{base}&institution=NO-9999999"),
            Some("vestfold-key"),
            400,
            "unknown institution",
        ),
        (
            format!("{base}&institution=NO-3391101"),
            Some("vestfold-key"),
            403,
            "may not see",
        ),
        (
            format!("{base}&institution=vestfold-bibliotek"),
            Some("sandefjord-key"),
            403,
            "may not see group",
        ),
        (
            format!("{base}&service=nope"),
            Some("vestfold-key"),
            400,
            "unknown service",
        ),
        (
            format!("{base}&by=service"),
            Some("vestfold-key"),
            400,
            "by must include",
        ),
        (
            format!("{base}&period=week"),
            Some("vestfold-key"),
            400,
            "period must be",
        ),
        (
            format!("{base}&format=xml"),
            Some("vestfold-key"),
            400,
            "format must be",
        ),
        (
            format!("{base}&from=2026-04-02"),
            Some("vestfold-key"),
            400,
            "given twice",
        ),
    ];
    for (uri, key, status, text) in cases {
        let (s, body) = get(&r, &uri, key).await;
        assert_eq!(s, status, "{uri}: {body}");
        if status != 401 || key.is_some() {
            let v: Value = serde_json::from_str(&body).expect("json error");
            assert!(
                v["message"].as_str().is_some_and(|m| m.contains(text)),
                "{uri}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn native_api_scopes_breaks_down_and_suppresses() {
    let (_, r) = with_traffic();
    let (s, body) = get(&r, "/api/v1/usage?from=2026-04-01&to=2026-04-30&period=month&metric=accesses,searches,denials&format=csv", Some("vestfold-key")).await;
    assert_eq!(s, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[0],
        "period,institution,institution_name,service,service_name,metric,affiliation,age_band,value"
    );
    assert!(lines.contains(&"2026-04,NO-2390700,Sandefjordbiblioteket,avis,Avisarkivet – norske aviser og e-aviser,accesses,,,10"), "{body}");
    assert!(
        lines.contains(
            &"2026-04,NO-2390100,Horten bibliotek,filmbib,Filmbib,denials:not_subscribed,,,1"
        ),
        "{body}"
    );
    // The school is outside this key's scope.
    assert!(!body.contains("NO-3391101"), "{body}");

    // By affiliation: patrons 3 (hidden), students 7, and the 7 hidden too so that the
    // total (10) does not give the 3 away.
    let (s, body) = get(&r, "/api/v1/usage?from=2026-04-01&to=2026-04-30&period=total&by=institution,service,affiliation&metric=accesses&institution=NO-2390700", Some("sandefjord-key")).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{body}");
    assert!(rows.iter().all(|r| r["value"].is_null()), "{body}");
    assert_eq!(rows[0]["affiliation"], "patron");
    let (_, csv) = get(&r, "/api/v1/usage?from=2026-04-01&to=2026-04-30&period=total&by=institution,service,affiliation&metric=accesses&institution=NO-2390700&format=csv", Some("sandefjord-key")).await;
    assert!(
        csv.lines().any(|l| l.ends_with(",accesses,patron,,")),
        "{csv}"
    );

    // Distinct persons per whole month.
    let (_, body) = get(
        &r,
        "/api/v1/usage?from=2026-04-01&to=2026-04-30&period=month&metric=unique_users&service=avis",
        Some("sandefjord-key"),
    )
    .await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["rows"][0]["value"], 10, "{body}");
}

fn schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/counter/COUNTER_SUSHI_API-5.1.json"
        ))
        .expect("the COUNTER schema in usage/counter/");
        // The official ISIL pattern has `{1,3,4}`, which Rust's regex rejects and
        // ECMA-262 (Annex B) reads as literal characters; we take the ECMA reading. Our
        // reports use Proprietary ids, so ISIL values never reach it.
        let text = text.replace("[a-zA-Z0-9]{1,3,4}", "[a-zA-Z0-9]\\\\{1,3,4\\\\}");
        serde_json::from_str(&text).expect("schema is JSON")
    })
}

/// Validates against a `$ref` into the official OpenAPI document.
fn assert_valid(pointer: &str, instance: &Value) {
    let mut root = schema().clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(pointer);
    let validator = jsonschema::validator_for(&root).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{pointer}: {errors:#?}\n{instance:#}");
}

const RESP: &str = "#/components/responses/";
fn resp(name: &str) -> String {
    format!("{RESP}{name}/content/application~1json/schema")
}

async fn sushi(r: &axum::Router, path: &str) -> (u16, Value) {
    let (s, body) = get(r, path, None).await;
    (
        s,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

#[tokio::test]
async fn sushi_reports_validate_against_the_counter_schema() {
    let (_, r) = with_traffic();
    let (s, v) = sushi(&r, "/sushi/r51/status").await;
    assert_eq!(s, 200);
    assert_valid(&resp("200_Status"), &v);
    let auth = "customer_id=vestfold-bibliotek&api_key=vestfold-key";
    let (s, v) = sushi(&r, &format!("/sushi/r51/members?{auth}")).await;
    assert_eq!(s, 200);
    assert_valid(&resp("200_Members"), &v);
    assert_eq!(v.as_array().map(Vec::len), Some(7));
    let (s, v) = sushi(&r, &format!("/sushi/r51/reports?{auth}")).await;
    assert_eq!(s, 200);
    assert_valid(&resp("200_Reports"), &v);
    assert_eq!(v[0]["Last_Month_Available"], "2026-04");

    let range = "begin_date=2026-04&end_date=2026-04";
    for (report, schema) in [
        ("pr", "PR"),
        ("dr", "DR"),
        ("dr_d1", "DR_D1"),
        ("dr_d2", "DR_D2"),
    ] {
        let (s, v) = sushi(&r, &format!("/sushi/r51/reports/{report}?{auth}&{range}")).await;
        assert_eq!(s, 200, "{v}");
        assert_valid(&format!("#/components/schemas/{schema}"), &v);
        assert!(
            !v["Report_Items"].as_array().expect("items").is_empty(),
            "{report}: {v}"
        );
    }
    let (_, pr) = sushi(&r, &format!("/sushi/r51/reports/pr?{auth}&{range}")).await;
    let perf = &pr["Report_Items"][0]["Attribute_Performance"];
    assert_eq!(
        perf[0]["Performance"]["Searches_Platform"]["2026-04"], 10,
        "{pr}"
    );
    assert_eq!(
        perf[1]["Performance"]["Total_Item_Requests"]["2026-04"], 10,
        "{pr}"
    );
    let (_, d2) = sushi(&r, &format!("/sushi/r51/reports/dr_d2?{auth}&{range}")).await;
    let perf = &d2["Report_Items"][0]["Attribute_Performance"][0]["Performance"];
    assert_eq!(perf["No_License"]["2026-04"], 1, "{d2}");
    assert_eq!(perf["Limit_Exceeded"]["2026-04"], 1, "{d2}");

    // Filters, attributes, totals, a clamped end and unsupported parameters.
    let variants = [
        (
            "dr",
            "DR",
            "&metric_type=Searches_Regular|No_License|Bogus&attributes_to_show=Customer_ID|Institution_Name|Access_Method|Country_Code&granularity=Totals&end_date=2026-06&foo=1",
        ),
        (
            "pr",
            "PR",
            "&metric_type=Total_Item_Requests&data_type=Database_Full_Item&access_method=Regular&granularity=Month&platform=Portvakt",
        ),
        ("dr", "DR", "&database=avis&attributed=Yes"),
        ("pr", "PR", "&access_method=TDM"),
        ("dr_d1", "DR_D1", "&metric_type=Searches_Regular"),
    ];
    for (report, schema, extra) in variants {
        let path = format!(
            "/sushi/r51/reports/{report}?{auth}&begin_date=2026-04&end_date=2026-04{extra}"
        );
        let (s, v) = sushi(&r, &path).await;
        assert_eq!(s, 200, "{path}: {v}");
        assert_valid(&format!("#/components/schemas/{schema}"), &v);
    }
    // No usage: an empty report with 3030.
    let (s, v) = sushi(
        &r,
        &format!("/sushi/r51/reports/pr?{auth}&begin_date=2025-01&end_date=2025-02"),
    )
    .await;
    assert_eq!(s, 200);
    assert_valid("#/components/schemas/PR", &v);
    assert_eq!(v["Report_Header"]["Exceptions"][0]["Code"], 3030, "{v}");
}

#[tokio::test]
async fn sushi_errors_are_counter_exceptions() {
    let (_, r) = with_traffic();
    let cases = [
        (
            "/sushi/r51/reports/pr?api_key=vestfold-key&begin_date=2026-04&end_date=2026-04",
            400,
            1030,
            "400_Exception",
        ),
        (
            "/sushi/r51/reports/pr?customer_id=vestfold-bibliotek&api_key=vestfold-key",
            400,
            1030,
            "400_Exception",
        ),
        (
            "/sushi/r51/reports/pr?customer_id=vestfold-bibliotek&api_key=vestfold-key&begin_date=2026-13&end_date=2026-04",
            400,
            3020,
            "400_Exception",
        ),
        (
            "/sushi/r51/reports/dr?customer_id=vestfold-bibliotek&api_key=vestfold-key&begin_date=2026-04&end_date=2026-03",
            400,
            3020,
            "400_Exception",
        ),
        (
            "/sushi/r51/reports/dr?customer_id=vestfold-bibliotek&api_key=vestfold-key&begin_date=2026-05&end_date=2026-05",
            400,
            3020,
            "400_Exception",
        ),
        (
            "/sushi/r51/reports/dr?customer_id=vestfold-bibliotek&begin_date=2026-04&end_date=2026-04",
            401,
            2020,
            "401_Exception",
        ),
        (
            "/sushi/r51/reports/dr?customer_id=vestfold-bibliotek&api_key=nope&begin_date=2026-04&end_date=2026-04",
            401,
            2020,
            "401_Exception",
        ),
        (
            "/sushi/r51/reports/dr_d2?customer_id=vestfold-vgs&api_key=vestfold-key&begin_date=2026-04&end_date=2026-04",
            403,
            2010,
            "403_Exception",
        ),
        (
            "/sushi/r51/reports/dr_d1?customer_id=NO-2390100&api_key=sandefjord-key&begin_date=2026-04&end_date=2026-04",
            403,
            2010,
            "403_Exception",
        ),
        (
            "/sushi/r51/members?api_key=vestfold-key",
            400,
            1030,
            "400_Exception_1030",
        ),
        (
            "/sushi/r51/reports?customer_id=unknown&api_key=vestfold-key",
            403,
            2010,
            "403_Exception",
        ),
    ];
    for (path, status, code, schema) in cases {
        let (s, v) = sushi(&r, path).await;
        assert_eq!((s, v["Code"].as_u64()), (status, Some(code)), "{path}: {v}");
        assert_valid(&resp(schema), &v);
    }
}
