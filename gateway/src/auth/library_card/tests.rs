//! Each backend's mapping to a [`CardOutcome`] or [`VerifyError`], against real servers on
//! `127.0.0.1:0` (the demo ACS, a small hyper server); `[[card_backend]]` checking; and
//! that no card number, PIN or birth date shows in a `Debug` or an error.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::civil::date;
use tokio::net::TcpListener;

use super::sip2::server::{DemoAcsOptions, DemoPatron, serve};
use super::*;

const CARD: &str = "N123456789";
const PIN: &str = "4711";

fn library() -> InstitutionId {
    InstitutionId::from("NO-2390700")
}

fn accepted(age: Age, home: Option<&str>) -> CardOutcome {
    CardOutcome::Accepted(PatronInfo {
        age,
        home_library: home.map(str::to_owned),
    })
}

fn from_toml(text: &str) -> FileCardBackend {
    toml::from_str(text).unwrap()
}

fn build_err(text: &str, base_dir: &Path) -> Vec<String> {
    build(&from_toml(text), base_dir).unwrap_err()
}

// ---- sip2 -------------------------------------------------------------------------------

async fn demo_acs() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let patron = DemoPatron {
        card: CARD.into(),
        pin: PIN.into(),
        name: "Kari Nordmann".into(),
        birth_date: Some(date(2010, 6, 1)),
        home_library: Some("2390700".into()),
        blocked: false,
        lost: false,
    };
    let patrons = vec![
        patron.clone(),
        DemoPatron {
            card: "1002".into(),
            birth_date: None,
            home_library: None,
            blocked: true,
            ..patron.clone()
        },
        DemoPatron {
            card: "1003".into(),
            lost: true,
            ..patron
        },
    ];
    let options = DemoAcsOptions {
        institution_id: "demo".into(),
        login: Some(("portvakt".into(), "hemmelig".into())),
        encoding: sip2::Encoding::Utf8,
    };
    tokio::spawn(async move { serve(listener, patrons, options).await });
    addr
}

#[tokio::test]
async fn sip2_backend_maps_the_acs_verdicts() {
    let addr = demo_acs().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sip2.pw"), "hemmelig\n").unwrap();
    let cfg = from_toml(&format!(
        r#"
        kind = "sip2"
        institutions = ["NO-2390700"]
        addr = "{addr}"
        login_user = "portvakt"
        login_password_file = "sip2.pw"
        institution_id = "demo"
        timeout = "10s"
        "#
    ));
    let v = build(&cfg, dir.path()).unwrap();
    let lib = library();
    assert_eq!(
        v.verify(&lib, CARD, PIN).await.unwrap(),
        accepted(Age::BirthDate(date(2010, 6, 1)), Some("2390700"))
    );
    assert_eq!(
        v.verify(&lib, CARD, "0000").await.unwrap(),
        CardOutcome::WrongCardOrPin
    );
    assert_eq!(
        v.verify(&lib, "1002", PIN).await.unwrap(),
        CardOutcome::Blocked { lost: false }
    );
    assert_eq!(
        v.verify(&lib, "1003", PIN).await.unwrap(),
        CardOutcome::Blocked { lost: true }
    );
}

#[tokio::test]
async fn sip2_backend_turns_every_failure_into_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // A "library system" that answers garbage.
    let garbage = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = garbage.accept().await {
            let mut buf = [0; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    for addr in [closed, garbage_addr] {
        let cfg = from_toml(&format!(
            "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"{addr}\"\ntimeout = \"10s\""
        ));
        let v = build(&cfg, Path::new(".")).unwrap();
        let e = v.verify(&library(), CARD, PIN).await.unwrap_err();
        assert_eq!(e.to_string(), "the library system is not answering");
        assert!(!e.reason().is_empty());
        assert!(!format!("{e:?}").contains(CARD));
    }
}

// ---- http -------------------------------------------------------------------------------

/// What the test API saw last: the body and the `Authorization` header.
type Seen = Arc<Mutex<Option<(serde_json::Value, Option<String>)>>>;

/// The test patron API. The path picks the answer; `/slow` never answers.
async fn patron_api() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, seen)
}

async fn answer(req: Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let valid_card = json["card"] == CARD && json["pin"] == PIN;
    *seen.lock().unwrap() = Some((json, auth));
    let (status, body) = match path.as_str() {
        "/api" if valid_card => (
            200,
            r#"{"valid":true,"patron_id":"p-17","birth_date":"2010-06-01","home_library":"NO-2390700","name":"Kari"}"#,
        ),
        "/api" => (200, r#"{"valid":false}"#),
        "/nulls" => (
            200,
            r#"{"valid":true,"patron_id":null,"birth_date":null,"home_library":null}"#,
        ),
        "/blocked" => (
            200,
            r#"{"valid":true,"blocked":true,"birth_date":"2010-06-01"}"#,
        ),
        "/blocked-wrong-pin" => (200, r#"{"valid":false,"blocked":true}"#),
        "/bad-date" => (200, r#"{"valid":true,"birth_date":"01.06.2010"}"#),
        "/no-valid" => (200, r#"{"patron_id":"p-17"}"#),
        "/valid-string" => (200, r#"{"valid":"yes"}"#),
        "/garbage" => (200, "<html>oops</html>"),
        "/500" => (500, r#"{"valid":true}"#),
        "/redirect" => (302, ""),
        "/slow" => std::future::pending().await,
        _ => (404, ""),
    };
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn http_backend(
    base: &str,
    path: &str,
    token: Option<&str>,
    timeout: &str,
) -> Arc<dyn PatronVerifier> {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "kind = \"http\"\ninstitutions = [\"NO-2390700\"]\nurl = \"{base}{path}\"\n\
         timeout = \"{timeout}\"\n"
    );
    if let Some(token) = token {
        std::fs::write(dir.path().join("api.token"), format!("{token}\n")).unwrap();
        text.push_str("token_file = \"api.token\"\n");
    }
    build(&from_toml(&text), dir.path()).unwrap()
}

#[tokio::test]
async fn http_backend_posts_library_card_and_pin_with_the_token() {
    let (base, seen) = patron_api().await;
    let v = http_backend(&base, "/api", Some("s3cret-token"), "10s");
    let lib = library();
    assert_eq!(
        v.verify(&lib, &format!(" {CARD} "), PIN).await.unwrap(),
        accepted(Age::BirthDate(date(2010, 6, 1)), Some("NO-2390700"))
    );
    let (json, auth) = seen.lock().unwrap().take().unwrap();
    assert_eq!(
        json,
        serde_json::json!({"library": "NO-2390700", "card": CARD, "pin": PIN})
    );
    assert_eq!(auth.as_deref(), Some("Bearer s3cret-token"));
    assert_eq!(
        v.verify(&lib, CARD, "0000").await.unwrap(),
        CardOutcome::WrongCardOrPin
    );
    // The token never shows in Debug.
    assert!(!format!("{v:?}").contains("s3cret"));

    let no_token = http_backend(&base, "/api", None, "10s");
    no_token.verify(&lib, CARD, PIN).await.unwrap();
    assert_eq!(seen.lock().unwrap().take().unwrap().1, None);
}

#[tokio::test]
async fn http_backend_maps_answers() {
    let (base, _) = patron_api().await;
    let lib = library();
    let cases = [
        ("/nulls", Ok(accepted(Age::Unknown, None))),
        ("/blocked", Ok(CardOutcome::Blocked { lost: false })),
        ("/blocked-wrong-pin", Ok(CardOutcome::WrongCardOrPin)),
        ("/bad-date", Err("birth_date")),
        ("/no-valid", Err("JSON")),
        ("/valid-string", Err("JSON")),
        ("/garbage", Err("JSON")),
        ("/500", Err("status 500")),
        ("/redirect", Err("status 302")),
        ("/missing", Err("status 404")),
        ("/slow", Err("timeout")),
    ];
    for (path, expected) in cases {
        // A short timeout only where it is the point: a loaded machine is slow.
        let timeout = if path == "/slow" { "300ms" } else { "10s" };
        let v = http_backend(&base, path, None, timeout);
        let got = v.verify(&lib, CARD, PIN).await;
        match (expected, got) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{path}"),
            (Err(reason), Err(e)) => {
                assert!(e.reason().contains(reason), "{path}: {}", e.reason());
                assert_eq!(e.to_string(), "the library system is not answering");
                assert!(!e.reason().contains("2010"), "{path}: {}", e.reason());
            }
            (want, got) => panic!("{path}: expected {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn http_backend_without_a_server_is_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let v = http_backend(&format!("http://{closed}"), "/api", None, "10s");
    let e = v.verify(&library(), CARD, PIN).await.unwrap_err();
    assert!(e.reason().starts_with("request failed"), "{}", e.reason());
    assert!(!e.reason().contains(PIN));
}

#[test]
fn http_urls_must_be_http_or_https() {
    for url in ["ftp://x/", "/relative", "https://", "not a url"] {
        let errors = build_err(
            &format!("kind = \"http\"\ninstitutions = [\"x\"]\nurl = \"{url}\""),
            Path::new("."),
        );
        assert_eq!(
            errors,
            ["\"url\" must be an http:// or https:// URL with a host"],
            "{url}"
        );
    }
    // An https URL builds (Mozilla roots compiled in, nothing fetched).
    http::HttpVerifier::new(
        "https://patron.example.no/check",
        Some("t"),
        DEFAULT_TIMEOUT,
    )
    .unwrap();
}

// ---- file -------------------------------------------------------------------------------

const PATRONS: &str = r#"
[[patron]]
card = "n123456789"
pin = "4711"
birth_date = 2010-06-01
home_library = "2390700"

[[patron]]
card = "1002"
pin = "1234"
birth_year = 1990

[[patron]]
card = "1003"
pin = "1234"
birth_date = "1980-01-31"
blocked = true

[[patron]]
card = "1004"
pin = "1234"
lost = true
blocked = true
"#;

#[tokio::test]
async fn file_backend_checks_normalized_cards_and_pins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("patrons.toml"), PATRONS).unwrap();
    let v = build(
        &from_toml("kind = \"file\"\ninstitutions = [\"x\"]\npath = \"patrons.toml\""),
        dir.path(),
    )
    .unwrap();
    let lib = library();
    assert_eq!(
        v.verify(&lib, " N123456789 ", PIN).await.unwrap(),
        accepted(Age::BirthDate(date(2010, 6, 1)), Some("2390700"))
    );
    assert_eq!(
        v.verify(&lib, "1002", "1234").await.unwrap(),
        accepted(Age::BirthYear(1990), None)
    );
    for (card, pin) in [
        (CARD, "4712"),
        (CARD, "47110"),
        (CARD, ""),
        ("9999", "1234"),
    ] {
        assert_eq!(
            v.verify(&lib, card, pin).await.unwrap(),
            CardOutcome::WrongCardOrPin,
            "{card}"
        );
    }
    assert_eq!(
        v.verify(&lib, "1003", "1234").await.unwrap(),
        CardOutcome::Blocked { lost: false }
    );
    assert_eq!(
        v.verify(&lib, "1004", "1234").await.unwrap(),
        CardOutcome::Blocked { lost: true }
    );
    // A blocked card's status is not told without its PIN.
    assert_eq!(
        v.verify(&lib, "1004", "0000").await.unwrap(),
        CardOutcome::WrongCardOrPin
    );
    let shown = format!("{v:?}");
    assert!(
        !shown.contains("1234") && !shown.contains("123456789"),
        "{shown}"
    );
}

#[test]
fn file_backend_errors_name_positions_and_keys_never_values() {
    let text = r#"
[[patron]]
card = "5550001"
pin = 8642

[[patron]]
card = "5550002"
pin = "9753"
birth_date = "2010-13-45"
birth_year = 2010
shoe_size = 44

[[patron]]
card = "5550001"
pin = "9753"
birth_year = 1850

[[patron]]
card = "5550003"
"#;
    let errors: Vec<String> = file::FileVerifier::parse(text, Path::new("p.toml"))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "\"path\": p.toml: patron[0]: \"pin\" must be a non-empty string",
            "\"path\": p.toml: patron[1]: unknown key \"shoe_size\" (expected one of card, pin, \
             birth_date, birth_year, home_library, blocked, lost)",
            "\"path\": p.toml: patron[1]: give \"birth_date\" or \"birth_year\", not both",
            "\"path\": p.toml: patron[2]: \"birth_year\" must be a year such as 2008",
            "\"path\": p.toml: patron[3]: needs \"pin\"",
        ]
    );
    for e in &errors {
        for secret in ["555000", "8642", "9753"] {
            assert!(!e.contains(secret), "{e}");
        }
    }
    let dup = "[[patron]]\ncard = \"a1\"\npin = \"1\"\n[[patron]]\ncard = \" A1 \"\npin = \"2\"\n";
    let errors = file::FileVerifier::parse(dup, Path::new("p.toml")).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "\"path\": p.toml: patron[1]: the same card number as an earlier patron"
    );

    let syntax = "[[patron]]\ncard = \"5550001\"\npin = \"8642\n";
    let errors = file::FileVerifier::parse(syntax, Path::new("p.toml")).unwrap_err();
    let shown = errors[0].to_string();
    assert_eq!(
        shown,
        "\"path\": p.toml:3:12: invalid basic string, expected `\"`"
    );
}

// ---- config -----------------------------------------------------------------------------

#[test]
fn unknown_keys_are_refused_by_serde() {
    let e = toml::from_str::<FileCardBackend>("kind = \"file\"\ninstitutions = []\nport = 1")
        .unwrap_err();
    assert!(e.message().contains("unknown field `port`"), "{e}");
}

#[test]
fn config_errors_name_the_key() {
    let here = Path::new(".");
    assert_eq!(
        build_err("kind = \"ldap\"\ninstitutions = [\"x\"]", here),
        ["unknown kind \"ldap\" (expected \"sip2\", \"http\" or \"file\")"]
    );
    assert_eq!(
        build_err("kind = \"sip2\"\ninstitutions = [\"x\"]", here),
        ["kind \"sip2\" needs \"addr\" (host:port of the ACS)"]
    );
    assert_eq!(
        build_err("kind = \"http\"\ninstitutions = [\"x\"]", here),
        ["kind \"http\" needs \"url\" (the patron API's http:// or https:// URL)"]
    );
    assert_eq!(
        build_err("kind = \"file\"\ninstitutions = [\"x\"]", here),
        ["kind \"file\" needs \"path\" (the TOML patron list)"]
    );
    assert_eq!(
        build_err(
            "kind = \"file\"\ninstitutions = []\npath = \"p.toml\"\naddr = \"h:1\"\n\
             timeout = \"5s\"\ntoken_file = \"t\"",
            here
        )[..3],
        [
            "kind \"file\" needs \"institutions\" (at least one)",
            "\"addr\" is a setting of kind \"sip2\", not \"file\"",
            "\"timeout\" is a setting of kind \"sip2\" and \"http\", not \"file\"",
        ]
    );
    assert_eq!(
        build_err(
            "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"h:1\"\ntimeout = \"5 parsecs\"\n\
             encoding = \"ebcdic\"\nlogin_user = \"u\"\nconnections = 0\n\
             tls_server_name = \"h\"\nurl = \"http://x/\"",
            here
        ),
        [
            "\"url\" is a setting of kind \"http\", not \"sip2\"",
            "\"timeout\" must be a duration above zero such as \"5s\" or \"1500ms\", not \
             \"5 parsecs\"",
            "\"tls_server_name\" needs \"tls\" = true",
            "\"encoding\" must be \"utf-8\" or \"latin1\", not \"ebcdic\"",
            "\"login_user\" needs \"login_password_file\"",
            "\"connections\" must be at least 1",
        ]
    );
    let missing = build_err(
        "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"h:1\"\nlogin_user = \"u\"\n\
         login_password_file = \"no/such/file\"",
        here,
    );
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].starts_with("\"login_password_file\": cannot read ./no/such/file"),
        "{}",
        missing[0]
    );
}

#[test]
fn tls_keys_are_checked_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "no certificate here\n").unwrap();
    std::fs::write(
        dir.path().join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let base = dir.path().display().to_string();
    let sip2 = |extra: &str| {
        build_err(
            &format!(
                "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"acs.example.no:6001\"\n{extra}"
            ),
            dir.path(),
        )
    };
    assert_eq!(
        sip2("tls = false\ntls_ca_file = \"ca.pem\"\ntls_server_name = \"acs\""),
        [
            "\"tls_ca_file\" needs \"tls\" = true",
            "\"tls_server_name\" needs \"tls\" = true",
        ]
    );
    assert_eq!(
        sip2("tls = true\ntls_server_name = \"not a name\""),
        ["\"tls_server_name\" must be a host name or an IP address, not \"not a name\""]
    );
    let missing = sip2("tls = true\ntls_ca_file = \"no/such.pem\"");
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].starts_with(&format!(
            "\"tls_ca_file\": cannot read {base}/no/such.pem: "
        )),
        "{}",
        missing[0]
    );
    assert_eq!(
        sip2("tls = true\ntls_ca_file = \"empty.pem\""),
        [format!(
            "\"tls_ca_file\": {base}/empty.pem holds no certificate (expected PEM `BEGIN CERTIFICATE`)"
        )]
    );
    for file in ["broken.pem", "junk.pem"] {
        let e = sip2(&format!("tls = true\ntls_ca_file = \"{file}\""));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!("\"tls_ca_file\": {base}/{file}: ")),
            "{}",
            e[0]
        );
    }
    // Both problems at once, and with the other sip2 checks.
    assert_eq!(
        sip2("tls = true\ntls_server_name = \"\"\ntls_ca_file = \"empty.pem\"\nconnections = 0")
            .len(),
        3
    );
    // No host in addr to default the server name to.
    assert_eq!(
        build_err(
            "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \":6001\"\ntls = true",
            dir.path()
        ),
        [
            "\"addr\" \":6001\" has no host name or IP address to check the ACS's certificate \
          against; set \"tls_server_name\""
        ]
    );
    assert_eq!(
        build_err(
            "kind = \"http\"\ninstitutions = [\"x\"]\nurl = \"https://x/\"\ntls_ca_file = \"c\"",
            dir.path()
        ),
        ["\"tls_ca_file\" is a setting of kind \"sip2\", not \"http\""]
    );

    // The server name defaults to the host of addr; without tls there is none.
    let shown = |text: &str| format!("{:?}", build(&from_toml(text), dir.path()).unwrap());
    let plain = shown("kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"acs.example.no:6001\"");
    assert!(plain.contains("tls: None"), "{plain}");
    let tls = shown(
        "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"acs.example.no:6001\"\ntls = true",
    );
    assert!(
        tls.contains("acs.example.no") && tls.contains("extra_roots: 0"),
        "{tls}"
    );
    let named = shown(
        "kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"10.0.0.5:6001\"\ntls = true\n\
         tls_server_name = \"sip.bibliotek.no\"",
    );
    assert!(
        named.contains("sip.bibliotek.no") && !named.contains("10.0.0.5\")"),
        "{named}"
    );
}

#[test]
fn addr_host_takes_the_host_of_host_port() {
    assert_eq!(addr_host("acs.example.no:6001"), Some("acs.example.no"));
    assert_eq!(addr_host("10.0.0.5:6001"), Some("10.0.0.5"));
    assert_eq!(addr_host("[2001:db8::5]:6001"), Some("2001:db8::5"));
    assert_eq!(addr_host("acs.example.no"), Some("acs.example.no"));
    assert_eq!(addr_host(":6001"), None);
    assert_eq!(addr_host("[]:6001"), None);
    assert_eq!(addr_host("[::1"), None);
}

#[test]
fn defaults_and_durations() {
    assert_eq!(parse_timeout("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_timeout("1500ms"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_timeout("2m"), Some(Duration::from_secs(120)));
    for bad in ["0s", "5", "s", "-1s", "1.5s", "5h"] {
        assert_eq!(parse_timeout(bad), None, "{bad}");
    }
    // Nothing set but addr: connections 2, checksums on, utf-8, 5 s.
    let v = build(
        &from_toml("kind = \"sip2\"\ninstitutions = [\"x\"]\naddr = \"h:1\""),
        Path::new("."),
    )
    .unwrap();
    let shown = format!("{v:?}");
    for part in [
        "connections: 2",
        "checksums: true",
        "encoding: Utf8",
        "timeout: 5s",
    ] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
}

#[test]
fn secret_files_lose_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    for (content, expected) in [
        ("pw\n", Ok("pw")),
        ("pw\r\n", Ok("pw")),
        ("pw\n\n", Ok("pw\n")),
        (" pw ", Ok(" pw ")),
        ("\n", Err(())),
    ] {
        std::fs::write(dir.path().join("secret"), content).unwrap();
        let got = read_secret("token_file", Path::new("secret"), dir.path());
        assert_eq!(got.as_deref().map_err(|_| ()), expected, "{content:?}");
        if let Err(e) = got {
            assert!(e.starts_with("\"token_file\": "), "{e}");
        }
    }
}

#[test]
fn build_all_prefixes_and_finds_institutions_served_twice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), PATRONS).unwrap();
    let cfgs = [
        from_toml("kind = \"file\"\ninstitutions = [\"NO-1\", \"NO-2\"]\npath = \"p.toml\""),
        from_toml("kind = \"sip2\"\ninstitutions = [\"NO-2\"]"),
    ];
    assert_eq!(
        build_all(&cfgs, dir.path()).unwrap_err(),
        [
            "card_backend[1]: institution \"NO-2\" is already served by card_backend[0]",
            "card_backend[1]: kind \"sip2\" needs \"addr\" (host:port of the ACS)",
        ]
    );
    let built = build_all(&cfgs[..1], dir.path()).unwrap();
    assert_eq!(built[0].institutions, ["NO-1", "NO-2"]);
}

// ---- redaction --------------------------------------------------------------------------

#[test]
fn outcomes_do_not_debug_print_the_person() {
    let outcome = accepted(Age::BirthDate(date(2010, 6, 1)), Some("NO-2390700"));
    let shown = format!("{outcome:?}");
    assert!(
        !shown.contains("2010") && !shown.contains("2390700"),
        "{shown}"
    );
    let e = VerifyError::Unavailable("timeout".into());
    assert_eq!(e.to_string(), "the library system is not answering");
}
