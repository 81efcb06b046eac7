//! The public listener speaks HTTP/2 and HTTP/1.1, over TLS (chosen by ALPN) and over
//! plain TCP (HTTP/2 with prior knowledge), with a gateway started in-process on port 0
//! and a certificate made for the test.

#![cfg(test)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use gateway::app::{App, AppParts};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use policy::pseudonym::PseudonymKey;
use proxy::Scheme;
use rustls_pki_types::ServerName;
use store::{Clock, SystemClock};
use tokio::net::{TcpListener, TcpStream};

struct Started {
    running: gateway::server::Running,
    ca: rustls_pki_types::CertificateDer<'static>,
}

async fn start(tls: bool) -> Started {
    let (policy, _) =
        policy::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy")).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
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
        policy_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy"),
        store: gateway::app::memory_store(&clock),
        clock,
        verifiers: HashMap::new(),
        pseudonym_key: PseudonymKey::new(&[1u8; 32]).unwrap(),
        session_key: [2u8; 32],
        public_host: "bib.localhost".into(),
        public_scheme: if tls { Scheme::Https } else { Scheme::Http },
        session_ttl: std::time::Duration::from_secs(3600),
        trusted_proxies: Vec::new(),
        upstream_settings: Default::default(),
        feide: None,
    })
    .unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![
        "bib.localhost".to_owned(),
        "*.bib.localhost".to_owned(),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    let tls_config = tls.then(|| gateway::tls::server_config(&c, &k).unwrap());
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = gateway::server::start(app, public, admin, tls_config).unwrap();
    Started {
        running,
        ca: cert.cert.der().clone(),
    }
}

async fn tls_stream(s: &Started, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(s.running.public_addr).await.unwrap();
    connector
        .connect(ServerName::try_from("bib.localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri).body(Empty::new()).unwrap()
}

#[tokio::test]
async fn http2_over_tls_by_alpn() {
    let s = start(true).await;
    let stream = tls_stream(&s, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(get("https://bib.localhost/login"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    // Served over https, the login cookie is Secure with the __Host- prefix.
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("__Host-portvakt-login=") && cookie.contains("Secure"),
        "{cookie}"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Logg inn"));

    // A host the gateway does not own gets 404, over HTTP/2 too.
    let resp = send
        .send_request(get("https://evil.example/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    s.running.shutdown().await;
}

#[tokio::test]
async fn http1_over_tls() {
    let s = start(true).await;
    let stream = tls_stream(&s, &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = get("/");
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("bib.localhost"));
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    s.running.shutdown().await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_on_plain_tcp() {
    let s = start(false).await;
    let tcp = TcpStream::connect(s.running.public_addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(get("http://bib.localhost/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    s.running.shutdown().await;
}
