//! What the proxy path adds to counting besides `usage::record`: telling an item or a
//! search from a plain request by the service's `item_paths` and `search_paths`. Figures go
//! in `docs/performance.md`.

// A benchmark that cannot set itself up should stop loudly, like a test.
#![expect(clippy::expect_used, reason = "benchmark setup, like a test")]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let proxy = policy::ProxySettings {
        origin: url::Url::parse("https://vendor.example").expect("url"),
        hosts: Vec::new(),
        item_paths: vec!["/artikkel/*".into(), "/bok/*/les/**".into()],
        search_paths: vec!["/sok".into(), "/api/search/**".into()],
    };
    let targets = [
        "/artikkel/12345?utm=x",
        "/bok/978-82/les/kapittel/3",
        "/sok?q=ibsen",
        "/static/css/site.4f3a.css",
    ];
    g.bench_function("classify request path (4 patterns)", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(gateway::counting::kind_of(
                &proxy,
                black_box(targets[n % targets.len()]),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
