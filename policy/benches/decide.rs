//! `decide` and policy loading on a generated national-size policy (about 800
//! institutions, 150 services, 50 000 entitlements). Targets: at least 1 000 000 decisions
//! a second on one core, and loading in under a second. Figures go in `docs/performance.md`.

// A benchmark that cannot set itself up should stop loudly, like a test.
#![expect(clippy::expect_used, reason = "benchmark setup, like a test")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::civil::date;
use policy::ids::{InstitutionId, SubjectKey};
use policy::pseudonym::PseudonymKey;
use policy::subject::{Affiliation, Age, Subject};
use policy::{self, synthetic};

fn bench(c: &mut Criterion) {
    let files = synthetic::national(42, synthetic::Size::NATIONAL);
    let (policy, _) = policy::load_files(files.clone()).expect("the generated policy loads");
    let s = policy.summary();
    eprintln!("generated policy: {s}");

    let now = policy::oslo()
        .to_timestamp(date(2026, 11, 23).at(12, 0, 0, 0))
        .expect("noon exists");
    let patron = |i: usize| Subject {
        key: SubjectKey::new(format!("card:{}:1234", synthetic::institution_id(i))),
        affiliation: Affiliation::Patron,
        institutions: vec![InstitutionId::new(synthetic::institution_id(i))],
        age: Age::BirthDate(date(1990, 5, 17)),
    };
    let remote = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let onsite = |i: usize| {
        let [a, b, c, _] = synthetic::institution_ipv4(i);
        IpAddr::V4(Ipv4Addr::new(a, b, c, 77))
    };
    let subjects: Vec<Subject> = (0..800).map(patron).collect();
    let services: Vec<String> = (0..150).map(synthetic::service_id).collect();

    let mut g = c.benchmark_group("decide");
    g.bench_function("remote patron, mixed services", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(7919);
            let subj = &subjects[n % 800];
            let svc = &services[n % 150];
            black_box(policy::decide(&policy, subj, svc, Some(remote), now))
        })
    });
    g.bench_function("on-site patron, mixed services", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(7919);
            let subj = &subjects[n % 800];
            let svc = &services[n % 150];
            black_box(policy::decide(
                &policy,
                subj,
                svc,
                Some(onsite((n / 3) % 800)),
                now,
            ))
        })
    });
    g.bench_function("unknown service", |b| {
        b.iter(|| black_box(policy::decide(&policy, &subjects[1], "nope", None, now)))
    });
    g.finish();

    let key = PseudonymKey::new(&[9u8; 32]).expect("32 bytes");
    c.bench_function("pseudonym", |b| {
        let k = SubjectKey::new("card:NO-2390700:12345678");
        b.iter(|| black_box(key.pairwise(black_box("ebok"), &k)))
    });

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("national policy from TOML", |b| {
        b.iter(|| black_box(policy::load_files(files.clone()).map(|p| p.0.summary())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
