//! Usage counting on the hot path and exports at national size. Targets: `record` adds
//! under 200 ns to a proxied request; a national year (800 institutions × 150 services ×
//! 365 days) exports in under 2 s. Figures go in `docs/performance.md`.

// A benchmark that cannot set itself up should stop loudly, like a test.
#![expect(clippy::expect_used, reason = "benchmark setup, like a test")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::civil::date;
use policy::ids::SubjectKey;
use policy::subject::Affiliation;
use policy::{self, AgeBand, synthetic};
use store::{ManualClock, SystemClock};
use usage::{self, Counted, Event, Period, Query, RequestKind, Usage};

const KEY: &[u8] = b"benchmark-usage-key-0123456789abcdef";

fn who<'a>(inst: &'a str, svc: &'a str) -> Counted<'a> {
    Counted {
        institution: inst,
        service: svc,
        affiliation: Affiliation::Patron,
        age_band: AgeBand::B20To44,
        person: None,
    }
}

fn hot_path(c: &mut Criterion) {
    let usage =
        Usage::open(None, Duration::from_secs(1), Arc::new(SystemClock), KEY).expect("usage opens");
    let insts: Vec<String> = (0..800).map(synthetic::institution_id).collect();
    let svcs: Vec<String> = (0..150).map(synthetic::service_id).collect();
    let sessions: Vec<String> = (0..1000).map(|i| format!("session-{i:08}")).collect();
    let mut g = c.benchmark_group("record");
    g.bench_function("proxied request", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(7919);
            usage.record(Event::Request {
                who: who(&insts[n % 800], &svcs[n % 150]),
                bytes: 4096,
                kind: RequestKind::Plain,
            })
        })
    });
    g.bench_function("item request (double-click, unique)", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(7919);
            usage.record(Event::Request {
                who: who(&insts[n % 800], &svcs[n % 150]),
                bytes: 4096,
                kind: RequestKind::Item {
                    session: &sessions[n % 1000],
                    item: "/article/12345/fulltext",
                },
            })
        })
    });
    let persons: Vec<_> = (0..1000)
        .map(|i| usage.person(&SubjectKey::new(format!("card:NO-2390700:{i}"))))
        .collect();
    g.bench_function("access (distinct person)", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(7919);
            usage.record(Event::Access(Counted {
                person: Some(persons[n % 1000]),
                ..who(&insts[n % 800], &svcs[n % 150])
            }))
        })
    });
    g.finish();
    // Keep the flushed state from growing without bound between benchmarks.
    usage.flush().expect("flush");
}

fn national_year(c: &mut Criterion) {
    let files = synthetic::national(42, synthetic::Size::NATIONAL);
    let (policy, _) = policy::load_files(files).expect("the generated policy loads");
    let first = date(2025, 1, 1);
    let clock = Arc::new(ManualClock::new(
        policy::oslo()
            .to_timestamp(first.at(12, 0, 0, 0))
            .expect("noon"),
    ));
    let usage = Usage::open(None, Duration::from_secs(1), clock.clone(), KEY).expect("usage opens");
    let insts: Vec<String> = (0..800).map(synthetic::institution_id).collect();
    let svcs: Vec<String> = (0..150).map(synthetic::service_id).collect();
    let started = Instant::now();
    let mut day = first;
    for _ in 0..365 {
        clock.set(
            policy::oslo()
                .to_timestamp(day.at(12, 0, 0, 0))
                .expect("noon"),
        );
        for i in &insts {
            for s in &svcs {
                usage.record(Event::Request {
                    who: who(i, s),
                    bytes: 0,
                    kind: RequestKind::Plain,
                });
            }
        }
        usage.flush().expect("flush");
        day = day.tomorrow().expect("next day");
    }
    eprintln!(
        "national year: 43.8 M cells counted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let query = |period| Query {
        from: first,
        to: date(2025, 12, 31),
        period,
        by_affiliation: false,
        by_age_band: false,
        institutions: Some(insts.clone()),
        services: None,
        metrics: None,
        k_anonymity: 5,
    };
    let mut g = c.benchmark_group("export national year");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for (name, period) in [
        ("by month, CSV", Period::Month),
        ("total, CSV", Period::Total),
    ] {
        let q = query(period);
        g.bench_function(name, |b| {
            b.iter(|| {
                let rows = usage.query(&q).expect("query");
                black_box(usage::render_csv(&rows, &policy).len())
            })
        });
    }
    let q = query(Period::Month);
    g.bench_function("by month, JSON", |b| {
        b.iter(|| {
            let rows = usage.query(&q).expect("query");
            black_box(usage::render_json(&rows, &policy, &q).len())
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path, national_year);
criterion_main!(benches);
