//! The proxy's per-request work apart from the network: the streaming HTML rewriter on a
//! realistic article page (28 kB, a few hundred elements, links to the vendor's own
//! origins, a CDN, foreign sites and relative ones), plain and gzip-encoded, in 16 kB
//! chunks as they come off the wire; the link matcher alone; and the request and response
//! header work. Figures go in `docs/performance.md`.

// A benchmark that cannot set itself up should stop loudly, like a test.
#![expect(clippy::expect_used, reason = "benchmark setup, like a test")]

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Response};
use policy::ids::ServiceId;
use proxy::Scheme;
use proxy::{Forward, HostMap, Timeouts, bench, release_headers};
use url::Url;

fn hosts() -> Arc<HostMap> {
    let url = |s: &str| Url::parse(s).expect("a URL");
    Arc::new(
        HostMap::new(
            "bib.example.no",
            Scheme::Https,
            [
                (
                    ServiceId::from("avis"),
                    url("https://www.avis.example"),
                    vec![
                        url("https://cdn.avis.example"),
                        url("https://img.avis.example"),
                    ],
                ),
                (ServiceId::from("film"), url("https://film.example"), vec![]),
            ],
        )
        .expect("the host map"),
    )
}

/// A news article as a vendor serves it.
fn page() -> String {
    let mut p = String::from(concat!(
        "<!DOCTYPE html>\n<html lang=\"nb\"><head><meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>Lokalhistorie fra Vestfold</title>\n",
        "<link rel=\"stylesheet\" href=\"https://cdn.avis.example/css/site.4f2a.css\">\n",
        "<link rel=\"preload\" as=\"image\" imagesrcset=\"https://img.avis.example/hero-800.jpg 800w, https://img.avis.example/hero-1600.jpg 1600w\">\n",
        "<script src=\"https://cdn.avis.example/js/app.9c1e.js\" defer></script>\n",
        "<script>window.dataLayer = [{\"page\": \"https://www.avis.example/artikkel/1\"}];</script>\n",
        "<style>body { font-family: serif; } .hero { background: url(https://img.avis.example/bg.png); }</style>\n",
        "</head>\n<body class=\"article\">\n<header class=\"site\"><nav><ul>\n",
    ));
    for i in 0..30 {
        let _ = writeln!(
            p,
            "<li class=\"nav-item\"><a class=\"nav-link\" href=\"https://www.avis.example/seksjon/{i}\" data-track=\"nav-{i}\">Seksjon {i}</a></li>"
        );
    }
    p.push_str("</ul></nav><form action=\"https://www.avis.example/sok\" method=\"get\"><input type=\"search\" name=\"q\" placeholder=\"Søk\"><button type=\"submit\">Søk</button></form></header>\n<main><article>\n");
    for i in 0..60 {
        let _ = writeln!(
            p,
            "<p class=\"body-text\">Avsnitt {i}: Lorem ipsum dolor sit amet, <em>consectetur</em> adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Se <a href=\"/artikkel/{i}\">relatert sak</a> og <a href=\"https://foreign.example/kilde/{i}\" rel=\"noopener\">kilden</a>.</p>"
        );
        if i % 6 == 0 {
            let _ = writeln!(
                p,
                "<figure><img src=\"https://img.avis.example/bilde-{i}-400.jpg\" srcset=\"https://img.avis.example/bilde-{i}-400.jpg 400w, https://img.avis.example/bilde-{i}-800.jpg 800w\" sizes=\"(max-width: 600px) 400px, 800px\" alt=\"Bilde {i}\" loading=\"lazy\" width=\"800\" height=\"450\"><figcaption style=\"color: #555\">Foto: Arkiv</figcaption></figure>"
            );
        }
    }
    p.push_str("</article>\n<aside><div class=\"teaser\" style=\"background-image: url('https://img.avis.example/teaser.jpg')\">\n");
    for i in 0..20 {
        let _ = writeln!(
            p,
            "<div class=\"card\"><a href=\"//www.avis.example/artikkel/{}\"><img src=\"https://img.avis.example/t{i}.jpg\" alt=\"\"><span>Mer å lese {i}</span></a></div>",
            i + 100
        );
    }
    p.push_str("</div></aside></main>\n<footer><a href=\"https://film.example/\">Filmarkivet</a> <a href=\"mailto:red@avis.example\">Kontakt</a></footer>\n</body></html>\n");
    p
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).expect("gzip");
    e.finish().expect("gzip")
}

fn bench(c: &mut Criterion) {
    let hosts = hosts();
    let page = page();
    let gz = gzip(page.as_bytes());
    eprintln!("page: {} bytes, {} gzipped", page.len(), gz.len());
    let plain_chunks: Vec<&[u8]> = page.as_bytes().chunks(16 * 1024).collect();
    let gz_chunks: Vec<&[u8]> = gz.chunks(16 * 1024).collect();

    let mut g = c.benchmark_group("rewrite_html");
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.bench_function("plain", |b| {
        b.iter(|| bench::rewrite_html(&hosts, "avis", false, black_box(&plain_chunks)))
    });
    g.bench_function("gzip", |b| {
        b.iter(|| bench::rewrite_html(&hosts, "avis", true, black_box(&gz_chunks)))
    });
    g.finish();

    let links = [
        "https://www.avis.example/artikkel/1?x=y",
        "https://img.avis.example/bilde-1-400.jpg",
        "//www.avis.example/artikkel/100",
        "https://foreign.example/kilde/1",
        "https://film.example/",
    ];
    c.bench_function("rewrite_link/5", |b| {
        b.iter(|| {
            for l in &links {
                black_box(hosts.rewrite_link("avis", black_box(l)));
            }
        })
    });
    c.bench_function("rewrite_link_by_url/5", |b| {
        b.iter(|| {
            for l in &links {
                black_box(hosts.rewrite_link_by_url("avis", black_box(l)));
            }
        })
    });

    let origin = Url::parse("https://www.avis.example").expect("a URL");
    let cookies = vec!["__Host-portvakt-svc".to_owned(), "portvakt".to_owned()];
    let release = release_headers([("pseudonym", "3k5x0q2n7v"), ("institution", "NO-2399900")]);
    let f = Forward {
        origin: &origin,
        hosts: &hosts,
        service: "avis",
        release: &release,
        gateway_cookies: &cookies,
        timeouts: Timeouts::default(),
    };
    // What a browser sends on a service host.
    let mut request = HeaderMap::new();
    for (k, v) in [
        ("host", "avis.bib.example.no"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "nb-NO,nb;q=0.9,no;q=0.8,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        (
            "cookie",
            "__Host-portvakt-svc=abc.def; vendor_session=xyz; consent=1",
        ),
        ("referer", "https://avis.bib.example.no/seksjon/3"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("priority", "u=0, i"),
    ] {
        request.append(k, HeaderValue::from_static(v));
    }
    c.bench_function("scrub_request", |b| {
        b.iter_batched(
            || request.clone(),
            |mut h| {
                bench::scrub_request(&mut h, &f);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let response = Response::builder()
        .header("date", "Wed, 02 Dec 2026 10:00:00 GMT")
        .header("content-type", "text/html; charset=utf-8")
        .header("content-encoding", "gzip")
        .header("content-length", "9120")
        .header("cache-control", "private, max-age=60")
        .header("etag", "\"5f2a-1\"")
        .header("vary", "Accept-Encoding")
        .header(
            "set-cookie",
            "vendor_session=xyz; Domain=avis.example; Path=/; Secure; HttpOnly",
        )
        .header("strict-transport-security", "max-age=31536000")
        .header("x-frame-options", "SAMEORIGIN")
        .body(())
        .expect("a response");
    let (parts, ()) = response.into_parts();
    c.bench_function("rewrite_response", |b| {
        b.iter_batched(
            || parts.clone(),
            |mut p| {
                black_box(bench::rewrite_response(&mut p, &f));
                p
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
