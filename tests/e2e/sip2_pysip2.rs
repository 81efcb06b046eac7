//! The SIP2 client against a real, independent ACS: pysip2 0.1.0, run by
//! `tests/peers/sip2_acs.py` on a free loopback port. pysip2 must be installed
//! (`pip install -r tests/peers/requirements.txt`); without it these tests fail, not skip.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use crate::support::sip2_peer;

use sip2_peer::Sip2Peer as Peer;

use std::time::{Duration, Instant};

use gateway::auth::library_card::sip2::codec::{self, Encoding, Frame, Message};
use gateway::auth::library_card::sip2::{Sip2Client, Sip2Error, Sip2Settings, Sip2Verdict};
use jiff::civil::date;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATRONS: &str = r#"[
  {"card": "1001", "pin": "1234", "name": "Kari Nordmann", "birth_date": "20050315",
   "home_library": "NO-2390700"},
  {"card": "1002", "pin": "1234", "name": "Per Sperret", "birth_date": "19800101", "blocked": true},
  {"card": "1003", "pin": "1234", "name": "Liv Mistet", "lost": true},
  {"card": "1004", "pin": "blåbær", "name": "Åse Øvrebø", "birth_date": "19991231",
   "home_library": "NO-2390700"},
  {"card": "2001", "pin": "1234", "name": "Slow", "mode": "slow"},
  {"card": "2002", "pin": "1234", "name": "Close", "mode": "close"},
  {"card": "2003", "pin": "1234", "name": "Sum", "mode": "bad-checksum"},
  {"card": "2004", "pin": "1234", "name": "Noise", "mode": "garbage"}
]"#;

fn start_peer(args: &[&str]) -> Peer {
    sip2_peer::start_sip2_peer(PATRONS, args)
}

fn settings(peer: &Peer) -> Sip2Settings {
    Sip2Settings {
        addr: peer.addr.clone(),
        login_user: None,
        login_password: None,
        institution_id: "hylte".into(),
        location: None,
        checksums: true,
        encoding: Encoding::Utf8,
        timeout: Duration::from_secs(10),
        connections: 2,
        tls: None,
    }
}

fn client(s: Sip2Settings) -> Sip2Client {
    Sip2Client::new(s).unwrap()
}

#[tokio::test]
async fn good_card_with_login_gives_birth_date_and_home_library() {
    let peer = start_peer(&["--login-user", "portvakt", "--login-password", "s3cret"]);
    let mut s = settings(&peer);
    s.login_user = Some("portvakt".into());
    s.login_password = Some("s3cret".into());
    s.location = Some("web".into());
    let c = client(s);
    assert_eq!(
        c.check("1001", "1234").await.unwrap(),
        Sip2Verdict::Accepted {
            birth_date: Some(date(2005, 3, 15)),
            home_library: Some("NO-2390700".into()),
        }
    );
}

#[tokio::test]
async fn works_without_checksums_too() {
    let peer = start_peer(&[]);
    let mut s = settings(&peer);
    s.checksums = false;
    assert!(matches!(
        client(s).check("1001", "1234").await.unwrap(),
        Sip2Verdict::Accepted { .. }
    ));
}

#[tokio::test]
async fn rejected_login_is_an_error_not_a_wrong_pin() {
    let peer = start_peer(&["--login-user", "portvakt", "--login-password", "s3cret"]);
    let mut s = settings(&peer);
    s.login_user = Some("portvakt".into());
    s.login_password = Some("wrong".into());
    let err = client(s).check("1001", "1234").await.unwrap_err();
    assert!(matches!(err, Sip2Error::LoginRejected), "{err:?}");
}

#[tokio::test]
async fn wrong_pin_and_unknown_card() {
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    assert_eq!(
        c.check("1001", "9999").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    assert_eq!(
        c.check("5555", "1234").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
    // A lost card with a wrong PIN says nothing about the card.
    assert_eq!(
        c.check("1003", "0000").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
}

#[tokio::test]
async fn blocked_and_lost_cards() {
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    assert_eq!(
        c.check("1002", "1234").await.unwrap(),
        Sip2Verdict::Blocked { lost: false }
    );
    assert_eq!(
        c.check("1003", "1234").await.unwrap(),
        Sip2Verdict::Blocked { lost: true }
    );
}

#[tokio::test]
async fn latin1_library_system() {
    let peer = start_peer(&["--encoding", "latin-1"]);
    let mut s = settings(&peer);
    s.encoding = Encoding::Latin1;
    let c = client(s);
    assert_eq!(
        c.check("1004", "blåbær").await.unwrap(),
        Sip2Verdict::Accepted {
            birth_date: Some(date(1999, 12, 31)),
            home_library: Some("NO-2390700".into()),
        }
    );
    // Not representable in latin1: no library system can hold it.
    assert_eq!(
        c.check("1004", "blåbær€").await.unwrap(),
        Sip2Verdict::WrongCardOrPin
    );
}

#[tokio::test]
async fn slow_library_system_times_out_quickly() {
    let peer = start_peer(&["--slow-seconds", "30"]);
    let mut s = settings(&peer);
    s.timeout = Duration::from_millis(500);
    let c = client(s);
    let started = Instant::now();
    let err = c.check("2001", "1234").await.unwrap_err();
    assert!(matches!(err, Sip2Error::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(c.idle_connections(), 0, "a timed-out connection is dropped");
}

#[tokio::test]
async fn slow_login_times_out_too() {
    let peer = start_peer(&[
        "--mode",
        "slow",
        "--login-user",
        "portvakt",
        "--login-password",
        "s3cret",
    ]);
    let mut s = settings(&peer);
    s.login_user = Some("portvakt".into());
    s.login_password = Some("s3cret".into());
    s.timeout = Duration::from_millis(500);
    let err = client(s).check("1001", "1234").await.unwrap_err();
    assert!(matches!(err, Sip2Error::Timeout), "{err:?}");
}

#[tokio::test]
async fn closed_connection_is_an_error() {
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    let err = c.check("2002", "1234").await.unwrap_err();
    assert!(
        matches!(err, Sip2Error::Closed | Sip2Error::Io(_)),
        "{err:?}"
    );
    assert_eq!(c.idle_connections(), 0);
    // The next check gets a fresh connection and works.
    assert!(matches!(
        c.check("1001", "1234").await.unwrap(),
        Sip2Verdict::Accepted { .. }
    ));
}

#[tokio::test]
async fn closing_library_system_by_flag() {
    let peer = start_peer(&["--mode", "close"]);
    let err = client(settings(&peer))
        .check("1001", "1234")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Sip2Error::Closed | Sip2Error::Io(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_checksum_is_an_error() {
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    let err = c.check("2003", "1234").await.unwrap_err();
    assert!(
        matches!(err, Sip2Error::Malformed(codec::CodecError::BadChecksum)),
        "{err:?}"
    );
    assert_eq!(c.idle_connections(), 0);
}

#[tokio::test]
async fn bad_checksum_counts_even_with_checksums_off() {
    let peer = start_peer(&[]);
    let mut s = settings(&peer);
    s.checksums = false;
    let err = client(s).check("2003", "1234").await.unwrap_err();
    assert!(
        matches!(err, Sip2Error::Malformed(codec::CodecError::BadChecksum)),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_is_an_error() {
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    let err = c.check("2004", "1234").await.unwrap_err();
    assert!(matches!(err, Sip2Error::Malformed(_)), "{err:?}");
    assert_eq!(c.idle_connections(), 0);
}

#[tokio::test]
async fn errors_never_name_the_card_or_pin() {
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    for card in ["2002", "2003", "2004"] {
        let err = c.check(card, "1234").await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(card) && !shown.contains("1234"), "{shown}");
    }
}

/// Asks the peer, on a connection of its own, how many connections it has accepted.
async fn connections_accepted(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = Frame {
        message: Message::PatronInformation(codec::PatronInformation {
            language: 0,
            transaction_date: codec::SipDateTime::parse("20240101    120000").unwrap(),
            summary: [false; 10],
            institution_id: "hylte".into(),
            patron_id: "__connections__".into(),
            terminal_password: None,
            patron_password: None,
        }),
        error_detection: None,
    };
    let bytes = codec::encode(&request, Encoding::Utf8).unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut buf = Vec::new();
    let frame = loop {
        if let Some(frame) = codec::take_frame(&mut buf).unwrap() {
            break frame;
        }
        assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0);
    };
    match codec::decode(&frame, Encoding::Utf8).unwrap().message {
        Message::PatronInformationResponse(r) => r.screen_messages.concat(),
        other => panic!("expected 64, got {other:?}"),
    }
}

#[tokio::test]
async fn sequential_checks_reuse_one_connection() {
    let peer = start_peer(&["--login-user", "portvakt", "--login-password", "s3cret"]);
    let mut s = settings(&peer);
    s.login_user = Some("portvakt".into());
    s.login_password = Some("s3cret".into());
    let c = client(s);
    for (card, pin) in [
        ("1001", "1234"),
        ("1001", "0000"),
        ("1002", "1234"),
        ("1003", "1234"),
    ] {
        c.check(card, pin).await.unwrap();
        assert_eq!(c.idle_connections(), 1);
    }
    drop(peer);
    // The count query needs no login; start a peer without one to ask, then redo the run.
    let peer = start_peer(&[]);
    let c = client(settings(&peer));
    for _ in 0..5 {
        c.check("1001", "1234").await.unwrap();
    }
    // One pooled connection for five checks, plus the one asking.
    assert_eq!(connections_accepted(&peer.addr).await, "connections=2");
}
