//! The SIP2 client against Portvakt's own demo ACS (`sip2::server`), as `portvakt demo` runs
//! them: both on loopback, port 0.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use std::time::Duration;

use gateway::auth::library_card::sip2::codec;
use gateway::auth::library_card::sip2::server::{DemoAcsOptions, DemoPatron, serve};
use gateway::auth::library_card::sip2::{
    Encoding, Sip2Client, Sip2Error, Sip2Settings, Sip2Verdict,
};
use jiff::civil::date;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn patron(card: &str, pin: &str) -> DemoPatron {
    DemoPatron {
        card: card.into(),
        pin: pin.into(),
        name: "Kari Nordmann".into(),
        birth_date: Some(date(2010, 6, 1)),
        home_library: Some("NO-2390700".into()),
        blocked: false,
        lost: false,
    }
}

/// Starts the demo ACS; it stops when the handle is aborted or dropped with the runtime.
async fn start(encoding: Encoding) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let patrons = vec![
        patron("1001", "1234"),
        DemoPatron {
            blocked: true,
            ..patron("1002", "1234")
        },
        DemoPatron {
            lost: true,
            ..patron("1003", "1234")
        },
        DemoPatron {
            name: "Åse Øvrebø".into(),
            ..patron("1004", "blåbær")
        },
    ];
    let options = DemoAcsOptions {
        institution_id: "demo".into(),
        login: Some(("portvakt".into(), "demo".into())),
        encoding,
    };
    let task = tokio::spawn(async move {
        serve(listener, patrons, options).await.unwrap();
    });
    (addr, task)
}

fn settings(addr: &str, encoding: Encoding) -> Sip2Settings {
    Sip2Settings {
        addr: addr.into(),
        login_user: Some("portvakt".into()),
        login_password: Some("demo".into()),
        institution_id: "demo".into(),
        location: None,
        checksums: true,
        encoding,
        timeout: Duration::from_secs(10),
        connections: 2,
        tls: None,
    }
}

#[tokio::test]
async fn demo_acs_verdicts() {
    let (addr, _task) = start(Encoding::Utf8).await;
    let c = Sip2Client::new(settings(&addr, Encoding::Utf8)).unwrap();
    assert_eq!(
        c.check("1001", "1234").await.unwrap(),
        Sip2Verdict::Accepted {
            birth_date: Some(date(2010, 6, 1)),
            home_library: Some("NO-2390700".into()),
        }
    );
    assert_eq!(
        c.check("1001", "4321").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    assert_eq!(
        c.check("9999", "1234").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    assert_eq!(
        c.check("1002", "1234").await.unwrap(),
        Sip2Verdict::Blocked { lost: false }
    );
    assert_eq!(
        c.check("1003", "1234").await.unwrap(),
        Sip2Verdict::Blocked { lost: true }
    );
    assert_eq!(
        c.check("1001", "12|4").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    // All of it on one connection, logged in once.
    assert_eq!(c.idle_connections(), 1);
}

#[tokio::test]
async fn demo_acs_latin1_and_without_checksums() {
    let (addr, _task) = start(Encoding::Latin1).await;
    let mut s = settings(&addr, Encoding::Latin1);
    s.checksums = false;
    let c = Sip2Client::new(s).unwrap();
    assert!(matches!(
        c.check("1004", "blåbær").await.unwrap(),
        Sip2Verdict::Accepted { .. }
    ));
}

#[tokio::test]
async fn demo_acs_rejects_a_wrong_login() {
    let (addr, _task) = start(Encoding::Utf8).await;
    let mut s = settings(&addr, Encoding::Utf8);
    s.login_password = Some("nope".into());
    let err = Sip2Client::new(s)
        .unwrap()
        .check("1001", "1234")
        .await
        .unwrap_err();
    assert!(matches!(err, Sip2Error::LoginRejected), "{err:?}");
}

#[tokio::test]
async fn concurrent_checks_share_a_bounded_pool() {
    let (addr, _task) = start(Encoding::Utf8).await;
    let c = std::sync::Arc::new(Sip2Client::new(settings(&addr, Encoding::Utf8)).unwrap());
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let c = std::sync::Arc::clone(&c);
        checks.spawn(async move { c.check("1001", "1234").await });
    }
    while let Some(result) = checks.join_next().await {
        assert!(matches!(
            result.unwrap().unwrap(),
            Sip2Verdict::Accepted { .. }
        ));
    }
    assert!((1..=2).contains(&c.idle_connections()));
}

#[tokio::test]
async fn refused_connection_is_an_error() {
    // Bind and drop, so the port is (almost certainly) closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let err = Sip2Client::new(settings(&addr, Encoding::Utf8))
        .unwrap()
        .check("1001", "1234")
        .await
        .unwrap_err();
    assert!(matches!(err, Sip2Error::Connect(_)), "{err:?}");
}

#[test]
fn settings_are_checked() {
    let mut s = settings("127.0.0.1:1", Encoding::Latin1);
    s.connections = 0;
    assert!(Sip2Client::new(s.clone()).is_err());
    s.connections = 1;
    s.institution_id = "a|b".into();
    assert!(Sip2Client::new(s.clone()).is_err());
    s.institution_id = "demo".into();
    s.login_password = Some("€".into());
    assert!(Sip2Client::new(s.clone()).is_err());
    assert!(!format!("{s:?}").contains('€'));
}

#[tokio::test]
async fn demo_acs_asks_for_a_resend_on_a_bad_checksum() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _task) = start(Encoding::Utf8).await;
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A valid 99 is "9900302.00AY1AZFCA5"; one digit of the checksum is off.
    stream.write_all(b"9900302.00AY1AZFCA6\r").await.unwrap();
    let mut buf = Vec::new();
    let frame = loop {
        if let Some(frame) = codec::take_frame(&mut buf).unwrap() {
            break frame;
        }
        assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0);
    };
    let decoded = codec::decode(&frame, Encoding::Utf8).unwrap();
    assert_eq!(decoded.message, codec::Message::RequestScResend);
}
