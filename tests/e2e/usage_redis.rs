//! Usage counts shared in a real `redis-server` (`[store] backend = "redis"`): two `Usage`
//! instances stand for two replicas. Their counts add up exactly, a batch sent again (as
//! after a lost answer) counts once, and a person seen on both counts once. With Redis
//! stopped the counts wait in the bounded buffer (the native API answers 503 and SUSHI
//! exception 1000 meanwhile) and arrive exactly once when it is back; past the bound they
//! are dropped and counted; a stop while Redis is away leaves them in `data_dir` for the
//! next start, which sends them once.

#![cfg(test)]

use crate::support::redis as redis_server;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use jiff::civil::Date;
use redis_server::RedisServer;
use tower::ServiceExt;

use policy::AgeBand;
use policy::ids::SubjectKey;
use policy::subject::Affiliation;
use store::redis::RedisConn;
use store::{Clock, SystemClock};
use usage::{
    Counted, Event, FileStatistician, Metric, Period, PersonToken, Query, RequestKind,
    SharedOptions, Statisticians, Usage, UsageError,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const LIB: &str = "NO-2390700";

fn open(redis: &RedisServer, dir: Option<&Path>, opts: SharedOptions) -> Arc<Usage> {
    let conn = RedisConn::open(&redis.url()).expect("url");
    Usage::open_shared(
        dir,
        Duration::from_secs(1),
        Arc::new(SystemClock),
        KEY,
        conn,
        opts,
    )
    .expect("opens")
}

fn today() -> Date {
    policy::oslo_today(SystemClock.now())
}

fn who(svc: &str, person: Option<PersonToken>) -> Counted<'_> {
    Counted {
        institution: LIB,
        service: svc,
        affiliation: Affiliation::Patron,
        age_band: AgeBand::B20To44,
        person,
    }
}

fn requests(u: &Usage, svc: &str, n: u64, bytes: u64) {
    for _ in 0..n {
        u.record(Event::Request {
            who: who(svc, None),
            bytes,
            kind: RequestKind::Plain,
        });
    }
}

fn person(u: &Usage, n: u32) -> PersonToken {
    u.person(&SubjectKey::new(format!("card:{LIB}:{n}")))
}

fn query(from: Date, to: Date, period: Period, metrics: Option<Vec<Metric>>) -> Query {
    Query {
        from,
        to,
        period,
        by_affiliation: false,
        by_age_band: false,
        institutions: None,
        services: None,
        metrics: metrics.map(|m| m.into_iter().map(|m| (m, None)).collect()),
        k_anonymity: 1,
    }
}

/// Flushes until Redis answers again (the connection comes back by itself; the first
/// command may only start the reconnect): whether it did within 5 s.
async fn flushed_once_back(u: &Arc<Usage>) -> bool {
    for _ in 0..50 {
        if u.flush_async().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// (service, metric) → value, for today.
async fn counts(u: &Arc<Usage>) -> BTreeMap<(String, String), u64> {
    let rows = u
        .query_async(query(today(), today(), Period::Day, None))
        .await
        .expect("query");
    rows.rows
        .iter()
        .map(|r| {
            (
                (rows.service(r).to_owned(), r.metric_name()),
                r.value.expect("no suppression"),
            )
        })
        .collect()
}

fn get(c: &BTreeMap<(String, String), u64>, svc: &str, metric: &str) -> u64 {
    c.get(&(svc.to_owned(), metric.to_owned()))
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn two_replicas_add_up_exactly_and_a_resent_batch_counts_once() {
    let redis = RedisServer::start();
    let a = open(&redis, None, SharedOptions::default());
    let b = open(&redis, None, SharedOptions::default());
    assert_ne!(a.replica(), b.replica());
    requests(&a, "avis", 3, 100);
    requests(&b, "avis", 4, 50);
    a.record(Event::Login(who("avis", None)));
    a.record(Event::Login(who("avis", None)));
    b.record(Event::Denial {
        who: who("ebok", None),
        reason: policy::DenyReason::AgeBelowMin,
    });
    a.flush_async().await.expect("a flushes");
    b.flush_async().await.expect("b flushes");

    for u in [&a, &b] {
        let c = counts(u).await;
        assert_eq!(get(&c, "avis", "requests"), 7, "{c:?}");
        assert_eq!(get(&c, "avis", "bytes"), 500, "{c:?}");
        assert_eq!(get(&c, "-", "logins"), 2, "{c:?}");
        assert_eq!(get(&c, "ebok", "denials:age_below_min"), 1, "{c:?}");
    }

    // A batch Redis applied but whose answer was lost is sent again: it counts once.
    assert!(a.resend_last_batch().await.expect("resent"));
    assert!(a.resend_last_batch().await.expect("resent"));
    let c = counts(&b).await;
    assert_eq!(get(&c, "avis", "requests"), 7, "{c:?}");
    assert_eq!(get(&c, "avis", "bytes"), 500, "{c:?}");

    // And counting goes on after it.
    requests(&a, "avis", 1, 0);
    let c = counts(&a).await;
    assert_eq!(get(&c, "avis", "requests"), 8, "{c:?}");

    // No key names a person or a session.
    for k in redis.keys() {
        assert!(k.starts_with("portvakt:usage:"), "{k}");
    }
}

#[tokio::test]
async fn a_person_on_two_replicas_counts_once_per_day_and_month() {
    let redis = RedisServer::start();
    let a = open(&redis, None, SharedOptions::default());
    let b = open(&redis, None, SharedOptions::default());
    let ola = person(&a, 1);
    assert_eq!(ola, person(&b, 1), "the same key makes the same token");
    a.record(Event::Access(who("avis", Some(ola))));
    a.flush_async().await.expect("a flushes");
    b.record(Event::Access(who("avis", Some(ola))));
    b.record(Event::Access(who("avis", Some(person(&b, 2)))));
    b.record(Event::Access(Counted {
        age_band: AgeBand::B67Plus,
        ..who("avis", Some(person(&b, 3)))
    }));
    b.flush_async().await.expect("b flushes");
    a.record(Event::Access(who("avis", Some(person(&a, 2)))));

    let c = counts(&a).await;
    assert_eq!(get(&c, "avis", "unique_users"), 3, "{c:?}");
    assert_eq!(get(&c, "avis", "accesses"), 5, "{c:?}");

    let d = today();
    let month = query(
        d.first_of_month(),
        d.last_of_month(),
        Period::Month,
        Some(vec![Metric::UniqueUsers]),
    );
    let rows = b.query_async(month).await.expect("month");
    let users: Vec<u64> = rows
        .rows
        .iter()
        .filter(|r| rows.service(r) == "avis")
        .filter_map(|r| r.value)
        .collect();
    assert_eq!(users, vec![3], "{rows:?}");

    // One salt per period, shared, expiring (10 minutes after the period closes).
    let salts: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("portvakt:usage:salt:"))
        .collect();
    assert_eq!(salts.len(), 2, "{salts:?}");
    for s in salts {
        let ttl = redis.command(&format!("PTTL {s}"));
        let ms: i64 = ttl.trim().trim_start_matches(':').parse().expect("a TTL");
        assert!(ms > 0 && ms <= 32 * 24 * 3600 * 1000, "{s}: {ms}");
    }
}

fn statisticians() -> Arc<Statisticians> {
    use sha2::Digest;
    Arc::new(
        Statisticians::check(&[FileStatistician {
            name: "sandefjord".into(),
            api_key_sha256: data_encoding::HEXLOWER
                .encode(&sha2::Sha256::digest(b"sandefjord-key")),
            institutions: vec![LIB.into()],
            groups: vec![],
        }])
        .expect("valid"),
    )
}

async fn call(router: &axum::Router, uri: &str, bearer: Option<&str>) -> (u16, String) {
    let mut req = http::Request::builder().uri(uri);
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
async fn redis_away_buffers_the_counts_sends_them_exactly_once_and_exports_refuse_meanwhile() {
    let mut redis = RedisServer::start();
    let u = open(&redis, None, SharedOptions::default());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/policy");
    let policy = Arc::new(policy::load_dir(Path::new(dir)).expect("demo policy").0);
    let router = usage::router(u.clone(), move || policy.clone(), statisticians(), 5);
    let d = today();
    let api = format!("/api/v1/usage?from={d}&to={d}&metric=requests&service=avis");

    requests(&u, "avis", 5, 10);
    let (s, body) = call(&router, &api, Some("sandefjord-key")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"value\":5"), "{body}");
    // A service gone from the policy is known by its counts, from whichever replica.
    let other = open(&redis, None, SharedOptions::default());
    requests(&other, "nedlagt", 1, 0);
    other.flush_async().await.expect("flushes");
    let (s, body) = call(
        &router,
        &api.replace("avis", "nedlagt"),
        Some("sandefjord-key"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"value\":1"), "{body}");
    let (s, body) = call(
        &router,
        &api.replace("avis", "avsi"),
        Some("sandefjord-key"),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("unknown service"), "{body}");

    // Kept across the restart (the test Redis does not save by itself).
    assert!(redis.command("SAVE").starts_with("+OK"));
    redis.stop();
    requests(&u, "avis", 7, 10);
    requests(&u, "ebok", 2, 0);
    let err = u.flush_async().await.expect_err("Redis is away");
    assert!(matches!(err, UsageError::Unavailable { .. }), "{err}");
    let stats = u.shared_stats().expect("shared");
    assert_eq!(stats.buffered_cells, 3, "{stats:?}");
    assert_eq!(stats.dropped_cells, 0);

    let (s, body) = call(&router, &api, Some("sandefjord-key")).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("\"error\":\"unavailable\""), "{body}");
    assert!(body.contains("Redis"), "{body}");
    let last_month = d.first_of_month().yesterday().expect("a month before");
    let m = format!("{:04}-{:02}", last_month.year(), last_month.month());
    let sushi = format!(
        "/sushi/r51/reports/dr?customer_id={LIB}&api_key=sandefjord-key&begin_date={m}&end_date={m}"
    );
    let (s, body) = call(&router, &sushi, None).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("\"Code\":1000"), "{body}");
    assert!(body.contains("Service Not Available"), "{body}");
    let (s, body) = call(
        &router,
        &format!("/sushi/r51/reports?customer_id={LIB}&api_key=sandefjord-key"),
        None,
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("\"Code\":1000"), "{body}");
    // Still buffered, nothing lost by the failed queries.
    assert_eq!(u.shared_stats().expect("shared").buffered_cells, 3);

    redis.resume();
    assert!(
        flushed_once_back(&u).await,
        "the buffer is sent once Redis is back"
    );
    assert_eq!(u.shared_stats().expect("shared").buffered_cells, 0);
    let c = counts(&u).await;
    assert_eq!(get(&c, "avis", "requests"), 12, "{c:?}");
    assert_eq!(get(&c, "avis", "bytes"), 120, "{c:?}");
    assert_eq!(get(&c, "ebok", "requests"), 2, "{c:?}");
    let (s, body) = call(&router, &api, Some("sandefjord-key")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"value\":12"), "{body}");
}

#[tokio::test]
async fn the_buffer_is_bounded_and_what_is_dropped_is_counted() {
    let mut redis = RedisServer::start();
    let u = open(
        &redis,
        None,
        SharedOptions {
            buffer_cells: 3,
            buffer_persons: 8,
        },
    );
    // Today's salts are known before Redis goes.
    u.record(Event::Access(who("avis", Some(person(&u, 100)))));
    u.flush_async().await.expect("flushes");
    assert!(redis.command("SAVE").starts_with("+OK"));
    redis.stop();

    for svc in ["s1", "s2", "s3"] {
        requests(&u, svc, 2, 0);
    }
    assert!(u.flush_async().await.is_err());
    // The buffer is full: more of a kept cell is still added; a new cell is not.
    for svc in ["s1", "s4", "s5", "s6"] {
        requests(&u, svc, 1, 0);
    }
    assert!(u.flush_async().await.is_err());
    let stats = u.shared_stats().expect("shared");
    // s1 twice: in the batch awaiting Redis, and its increment after it.
    assert_eq!(stats.buffered_cells, 4, "{stats:?}");
    assert_eq!(stats.dropped_cells, 3, "{stats:?}");

    redis.resume();
    assert!(flushed_once_back(&u).await);
    let c = counts(&u).await;
    let kept: u64 = ["s1", "s2", "s3", "s4", "s5", "s6"]
        .iter()
        .map(|s| get(&c, s, "requests"))
        .sum();
    assert_eq!(
        kept, 7,
        "the three cells kept, and the one more of s1: {c:?}"
    );
    assert_eq!(get(&c, "s1", "requests"), 3, "{c:?}");

    // Persons: a bound of 8 entries holds two persons (a day and a month, two cells each).
    let v = open(
        &redis,
        None,
        SharedOptions {
            buffer_cells: 1000,
            buffer_persons: 8,
        },
    );
    assert!(redis.command("SAVE").starts_with("+OK"));
    redis.stop();
    for n in 1..=3 {
        v.record(Event::Login(who("-", Some(person(&v, n)))));
    }
    assert!(v.flush_async().await.is_err());
    assert_eq!(v.shared_stats().expect("shared").dropped_persons, 1);

    // The metrics as /metrics shows them.
    let m = gateway::telemetry::Metrics::default();
    let s = u.shared_stats().expect("shared");
    m.set(
        gateway::telemetry::USAGE_DROPPED,
        &[("what", "cells")],
        s.dropped_cells as f64,
    );
    assert!(
        m.render()
            .contains("portvakt_usage_dropped_total{what=\"cells\"} 3\n")
    );
}

#[tokio::test]
async fn a_stop_with_redis_away_leaves_the_counts_for_the_next_start_which_sends_them_once() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().expect("tempdir");
    let u = open(&redis, Some(data.path()), SharedOptions::default());
    u.record(Event::Access(who("avis", Some(person(&u, 1)))));
    requests(&u, "avis", 2, 0);
    u.flush_async().await.expect("flushes");
    assert!(redis.command("SAVE").starts_with("+OK"));
    redis.stop();

    requests(&u, "avis", 4, 25);
    u.record(Event::Access(who("avis", Some(person(&u, 2)))));
    u.record(Event::Access(who("avis", Some(person(&u, 1)))));
    u.close().await.expect("written to data_dir");
    let replica = u.replica().expect("shared").to_owned();
    drop(u);
    let file = data.path().join(format!("usage-unsent-{replica}.json"));
    let text = std::fs::read_to_string(&file).expect("leftovers file");
    assert!(text.contains("\"batches\""), "{text}");
    let copy = std::fs::read(&file).expect("read");

    redis.resume();
    let next = open(&redis, Some(data.path()), SharedOptions::default());
    assert!(flushed_once_back(&next).await);
    assert!(!file.exists(), "sent, so deleted");
    let c = counts(&next).await;
    assert_eq!(get(&c, "avis", "requests"), 6, "{c:?}");
    assert_eq!(get(&c, "avis", "bytes"), 100, "{c:?}");
    assert_eq!(get(&c, "avis", "accesses"), 3, "{c:?}");
    assert_eq!(get(&c, "avis", "unique_users"), 2, "{c:?}");

    // The same file again (a crash after sending, before deleting): counted once.
    std::fs::write(&file, &copy).expect("put back");
    let again = open(&redis, Some(data.path()), SharedOptions::default());
    again.flush_async().await.expect("flushes");
    assert!(!file.exists());
    let c = counts(&again).await;
    assert_eq!(get(&c, "avis", "requests"), 6, "{c:?}");
    assert_eq!(get(&c, "avis", "unique_users"), 2, "{c:?}");
}
