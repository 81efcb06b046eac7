//! The SIP2 client's `tls` setting against the demo ACS served over TLS (`serve_tls`), with
//! certificates made here by rcgen: a trusted chain, an untrusted CA, a wrong name, a peer
//! that does not speak TLS; and the same through `[[card_backend]]` and `build`.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::auth::library_card::sip2::server::{DemoAcsOptions, DemoPatron, serve, serve_tls};
use gateway::auth::library_card::sip2::{
    Encoding, Sip2Client, Sip2Error, Sip2Settings, Sip2Tls, Sip2Verdict,
};
use gateway::auth::library_card::{
    CardOutcome, FileCardBackend, PatronVerifier, Sip2Verifier, build,
};
use jiff::civil::date;
use policy::ids::InstitutionId;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const CARD: &str = "1001";
const PIN: &str = "1234";

/// A CA of its own and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    acceptor: TlsAcceptor,
}

fn pki(ca_name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
    .unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

fn patrons() -> Vec<DemoPatron> {
    vec![DemoPatron {
        card: CARD.into(),
        pin: PIN.into(),
        name: "Kari Nordmann".into(),
        birth_date: Some(date(2010, 6, 1)),
        home_library: Some("NO-2390700".into()),
        blocked: false,
        lost: false,
    }]
}

fn options() -> DemoAcsOptions {
    DemoAcsOptions {
        institution_id: "demo".into(),
        login: Some(("portvakt".into(), "demo".into())),
        encoding: Encoding::Utf8,
    }
}

/// The demo ACS over TLS, behind a TCP relay that counts the connections made to it.
async fn start_tls(acceptor: TlsAcceptor) -> (String, Arc<AtomicUsize>) {
    let acs = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acs_addr = acs.local_addr().unwrap();
    tokio::spawn(serve_tls(acs, acceptor, patrons(), options()));
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = relay.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(acs_addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, count)
}

fn settings(addr: &str, tls: Option<Sip2Tls>, timeout: Duration) -> Sip2Settings {
    Sip2Settings {
        addr: addr.into(),
        login_user: Some("portvakt".into()),
        login_password: Some("demo".into()),
        institution_id: "demo".into(),
        location: None,
        checksums: true,
        encoding: Encoding::Utf8,
        timeout,
        connections: 2,
        tls,
    }
}

fn tls(name: &str, roots: &[CertificateDer<'_>]) -> Sip2Tls {
    Sip2Tls::new(ServerName::try_from(name.to_owned()).unwrap(), roots).unwrap()
}

/// An error and its sources, as the verifier logs them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s = format!("{s}: {inner}");
        source = inner.source();
    }
    s
}

#[tokio::test]
async fn good_card_over_tls_on_one_reused_connection() {
    let pki = pki("Test library system CA");
    let (addr, connections) = start_tls(pki.acceptor.clone()).await;
    for name in ["localhost", "127.0.0.1"] {
        let before = connections.load(Ordering::SeqCst);
        let tls = tls(name, std::slice::from_ref(&pki.ca_der));
        assert!(format!("{tls:?}").contains(name));
        let c = Sip2Client::new(settings(&addr, Some(tls), Duration::from_secs(10))).unwrap();
        assert_eq!(
            c.check(CARD, PIN).await.unwrap(),
            Sip2Verdict::Accepted {
                birth_date: Some(date(2010, 6, 1)),
                home_library: Some("NO-2390700".into()),
            },
            "{name}"
        );
        assert_eq!(
            c.check(CARD, "0000").await.unwrap(),
            Sip2Verdict::WrongCardOrPin
        );
        assert!(matches!(
            c.check(CARD, PIN).await.unwrap(),
            Sip2Verdict::Accepted { .. }
        ));
        // One handshake and one login for all three checks.
        assert_eq!(connections.load(Ordering::SeqCst) - before, 1, "{name}");
        assert_eq!(c.idle_connections(), 1);
    }
}

#[tokio::test]
async fn an_untrusted_ca_is_a_tls_error_and_unavailable_never_wrong_pin() {
    let pki = pki("Test library system CA");
    let (addr, _) = start_tls(pki.acceptor).await;
    let other_ca = self::pki("Another library system CA").ca_der;
    for roots in [vec![other_ca], Vec::new()] {
        let c = Sip2Client::new(settings(
            &addr,
            Some(tls("localhost", &roots)),
            Duration::from_secs(10),
        ))
        .unwrap();
        let e = c.check(CARD, PIN).await.unwrap_err();
        assert!(matches!(e, Sip2Error::Tls(_)), "{e:?}");
        let shown = chain(&e);
        assert!(shown.contains("UnknownIssuer"), "{shown}");
        assert_eq!(c.idle_connections(), 0);

        let v = Sip2Verifier::new(c);
        let e = v
            .verify(&InstitutionId::from("NO-2390700"), CARD, PIN)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "the library system is not answering");
        assert!(e.reason().contains("TLS handshake"), "{}", e.reason());
        assert!(!e.reason().contains(CARD) && !e.reason().contains(PIN));
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_tls_error() {
    let pki = pki("Test library system CA");
    let (addr, _) = start_tls(pki.acceptor).await;
    for name in ["acs.example.no", "127.0.0.2"] {
        let tls = tls(name, std::slice::from_ref(&pki.ca_der));
        let c = Sip2Client::new(settings(&addr, Some(tls), Duration::from_secs(10))).unwrap();
        let e = c.check(CARD, PIN).await.unwrap_err();
        assert!(matches!(e, Sip2Error::Tls(_)), "{name}: {e:?}");
        assert!(chain(&e).contains("not valid for name"), "{}", chain(&e));
    }
}

#[tokio::test]
async fn a_peer_that_does_not_speak_tls_fails_within_the_timeout() {
    let pki = pki("Test library system CA");
    // The plain demo ACS: it reads the ClientHello as SIP2 and hangs up, or waits for a CR.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap().to_string();
    tokio::spawn(serve(plain, patrons(), options()));
    // A peer that accepts and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let timeout = Duration::from_millis(500);
    for addr in [plain_addr, silent_addr.clone()] {
        let tls = tls("localhost", std::slice::from_ref(&pki.ca_der));
        let c = Sip2Client::new(settings(&addr, Some(tls), timeout)).unwrap();
        let started = Instant::now();
        let e = c.check(CARD, PIN).await.unwrap_err();
        assert!(matches!(e, Sip2Error::Tls(_) | Sip2Error::Timeout), "{e:?}");
        if addr == silent_addr {
            // The handshake counts inside the check's timeout.
            assert!(matches!(e, Sip2Error::Timeout), "{e:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    // And the other way round: plain SIP2 to a TLS ACS gets no verdict either.
    let (tls_addr, _) = start_tls(pki.acceptor).await;
    let c = Sip2Client::new(settings(&tls_addr, None, Duration::from_secs(10))).unwrap();
    let e = c.check(CARD, PIN).await.unwrap_err();
    assert!(
        matches!(
            e,
            Sip2Error::Closed | Sip2Error::Io(_) | Sip2Error::Malformed(_)
        ),
        "{e:?}"
    );
}

// ---- through [[card_backend]] -----------------------------------------------------------

fn backend(dir: &Path, addr: &str, extra: &str) -> Arc<dyn PatronVerifier> {
    std::fs::write(dir.join("sip2.pw"), "demo\n").unwrap();
    let text = format!(
        "kind = \"sip2\"\ninstitutions = [\"NO-2390700\"]\naddr = \"{addr}\"\n\
         login_user = \"portvakt\"\nlogin_password_file = \"sip2.pw\"\n\
         institution_id = \"demo\"\ntimeout = \"10s\"\ntls = true\n{extra}"
    );
    let cfg: FileCardBackend = toml::from_str(&text).unwrap();
    build(&cfg, dir).unwrap()
}

#[tokio::test]
async fn card_backend_tls_keys() {
    let pki = pki("Test library system CA");
    let (addr, _) = start_tls(pki.acceptor).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/acs-ca.pem"), &pki.ca_pem).unwrap();
    let lib = InstitutionId::from("NO-2390700");
    let ca = "tls_ca_file = \"certs/acs-ca.pem\"\n";

    // The server name defaults to the host of addr, here 127.0.0.1.
    let v = backend(dir.path(), &addr, ca);
    assert!(format!("{v:?}").contains("127.0.0.1"), "{v:?}");
    assert!(matches!(
        v.verify(&lib, CARD, PIN).await.unwrap(),
        CardOutcome::Accepted(_)
    ));
    assert_eq!(
        v.verify(&lib, CARD, "0000").await.unwrap(),
        CardOutcome::WrongCardOrPin
    );
    let v = backend(
        dir.path(),
        &addr,
        &format!("{ca}tls_server_name = \"localhost\"\n"),
    );
    assert!(matches!(
        v.verify(&lib, CARD, PIN).await.unwrap(),
        CardOutcome::Accepted(_)
    ));

    // Mozilla's roots alone do not know the test CA; a wrong name fails even with it.
    for extra in [
        String::new(),
        format!("{ca}tls_server_name = \"acs.example.no\"\n"),
    ] {
        let v = backend(dir.path(), &addr, &extra);
        let e = v.verify(&lib, CARD, PIN).await.unwrap_err();
        assert_eq!(e.to_string(), "the library system is not answering");
        assert!(e.reason().contains("TLS handshake"), "{}", e.reason());
    }
}
