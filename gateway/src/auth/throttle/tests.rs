//! The throttle's numbers, driven by an instant passed in: no test sleeps.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn throttle() -> Throttle {
    Throttle::new([7; 32], ThrottleSettings::default())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One full try that fails, as the login page would make it.
fn fail(t: &Throttle, card: &str, ip: IpAddr, now: Instant) {
    t.check(card, ip, now).unwrap();
    t.failed(card, ip, now);
}

#[test]
fn three_failures_are_free_then_delays_double_up_to_a_minute() {
    let limits = Limits::CARD;
    let delays: Vec<u64> = (1..=12).map(|n| limits.delay(n).as_secs()).collect();
    assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);

    let t = throttle();
    let t0 = Instant::now();
    for _ in 0..3 {
        fail(&t, "1234", IP, t0);
    }
    // Three failures in: the fourth try is still free.
    fail(&t, "1234", IP, t0);
    assert_eq!(
        t.check("1234", IP, t0),
        Err(ThrottleError::Slowed {
            retry_after: secs(1)
        })
    );
    let mut now = t0 + secs(1);
    for expected in [2, 4, 8, 16] {
        fail(&t, "1234", IP, now);
        assert_eq!(
            t.check("1234", IP, now).unwrap_err().retry_after(),
            secs(expected)
        );
        // Just before the delay is over, still slowed, with the rest to wait.
        let almost = now + secs(expected) - Duration::from_millis(500);
        assert_eq!(
            t.check("1234", IP, almost).unwrap_err().retry_after(),
            Duration::from_millis(500)
        );
        now += secs(expected);
    }
}

#[test]
fn ten_failures_in_fifteen_minutes_refuse_for_fifteen_minutes() {
    let t = throttle();
    let mut now = Instant::now();
    for n in 1..=10 {
        fail(&t, "1234", IP, now);
        now += Limits::CARD.delay(n);
    }
    let refused_at = now - Limits::CARD.delay(10);
    let e = t.check("1234", IP, refused_at).unwrap_err();
    assert_eq!(
        e,
        ThrottleError::Refused {
            retry_after: secs(15 * 60)
        }
    );
    assert_eq!(
        e.to_string(),
        "too many failed logins; try again in 15 minutes"
    );
    // Even the right PIN is not tried while refused; afterwards the count starts afresh.
    assert!(t.check("1234", IP, refused_at + secs(14 * 60)).is_err());
    let after = refused_at + secs(15 * 60);
    for _ in 0..4 {
        fail(&t, "1234", IP, after);
    }
    assert!(matches!(
        t.check("1234", IP, after),
        Err(ThrottleError::Slowed { .. })
    ));
}

#[test]
fn failures_older_than_the_window_stop_counting() {
    let t = throttle();
    let t0 = Instant::now();
    for _ in 0..3 {
        fail(&t, "1234", IP, t0);
    }
    // Three more, each past the window of the earlier ones: never a delay.
    let later = t0 + secs(15 * 60);
    for _ in 0..3 {
        fail(&t, "1234", IP, later);
    }
    assert!(t.check("1234", IP, later).is_ok());
}

#[test]
fn a_success_clears_the_card_but_not_the_address() {
    let t = throttle();
    let now = Instant::now();
    for _ in 0..4 {
        fail(&t, "1234", IP, now);
    }
    // Also four on the address from another card, so the address has 8 now.
    for _ in 0..4 {
        fail(&t, "5678", IP, now);
    }
    assert!(t.check("1234", IP, now).is_err());
    let later = now + secs(1);
    t.check("1234", IP, later).unwrap();
    t.succeeded("1234", IP, later);
    // The card is fresh: three free failures again, from another address.
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    for _ in 0..4 {
        fail(&t, "1234", other, later);
    }
    // The first address kept its 8: three more, the last past its free 10, slow it down.
    fail(&t, "9999", IP, later);
    fail(&t, "9998", IP, later);
    fail(&t, "9997", IP, later);
    assert!(matches!(
        t.check("9996", IP, later),
        Err(ThrottleError::Slowed { .. })
    ));
}

#[test]
fn one_address_is_limited_across_many_cards() {
    let t = throttle();
    let mut now = Instant::now();
    // A different card each time: the card limits never bite, the address ones do.
    for n in 1..=30 {
        let card = format!("CARD{n}");
        t.check(&card, IP, now).unwrap();
        t.failed(&card, IP, now);
        now += Limits::ADDRESS.delay(n);
        if n == 10 {
            assert!(t.check("CARD-X", IP, now).is_ok());
            t.abandoned("CARD-X", IP, now);
        }
        if n == 11 {
            assert_eq!(
                t.check("CARD-Y", IP, now - secs(1))
                    .unwrap_err()
                    .retry_after(),
                secs(1)
            );
        }
    }
    assert!(matches!(
        t.check("CARD-Z", IP, now),
        Err(ThrottleError::Refused { .. })
    ));
    // Another address is not affected.
    let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8));
    assert!(t.check("CARD-Z", other, now).is_ok());
}

#[test]
fn an_ipv6_slash_64_is_one_address_and_mapped_ipv4_is_ipv4() {
    let t = throttle();
    let now = Instant::now();
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    // Eleven failures: one past the address's free ten.
    for n in 0..11 {
        let ip = if n % 2 == 0 { a } else { b };
        fail(&t, &format!("C{n}"), ip, now);
    }
    assert!(t.check("NEW", b, now).is_err());
    assert!(t.check("NEW", c, now).is_ok());

    let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 5).to_ipv6_mapped());
    for n in 0..11 {
        fail(&t, &format!("D{n}"), v4, now);
    }
    assert!(t.check("NEW2", mapped, now).is_err());
}

#[test]
fn card_numbers_are_normalized_before_counting() {
    let t = throttle();
    let now = Instant::now();
    for card in ["n123456789", " N123456789", "N123456789 ", "N123456789"] {
        fail(&t, card, IP, now);
    }
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    assert!(t.check("n123456789", other, now).is_err());
}

#[test]
fn parallel_tries_past_the_free_ones_go_one_at_a_time() {
    let t = throttle();
    let now = Instant::now();
    for _ in 0..2 {
        fail(&t, "1234", IP, now);
    }
    // One free try left: the first parallel try takes it, the second must wait.
    t.check("1234", IP, now).unwrap();
    assert!(t.check("1234", IP, now).is_err());
    // The library system did not answer: that try gave nothing away and frees its place.
    t.abandoned("1234", IP, now);
    t.check("1234", IP, now).unwrap();
    // A try never reported stops holding its place after a minute.
    assert!(t.check("1234", IP, now + secs(59)).is_err());
    assert!(t.check("1234", IP, now + secs(60)).is_ok());
}

#[test]
fn entries_expire_and_the_table_stays_bounded() {
    let t = Throttle::new(
        [1; 32],
        ThrottleSettings {
            max_entries: 100,
            ..ThrottleSettings::default()
        },
    );
    let t0 = Instant::now();
    for n in 0..20u8 {
        fail(
            &t,
            &format!("C{n}"),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
            t0,
        );
    }
    assert_eq!(t.len(), 40);
    t.prune(t0 + secs(15 * 60) - Duration::from_millis(1));
    assert_eq!(t.len(), 40);
    t.prune(t0 + secs(15 * 60));
    assert!(t.is_empty());

    // A flood of new keys: the oldest go, the newest stay, the cap holds.
    for n in 0..500u32 {
        let now = t0 + Duration::from_millis(u64::from(n));
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        fail(&t, &format!("F{n}"), ip, now);
        assert!(t.len() <= 100, "{} entries after {n}", t.len());
    }
    let now = t0 + secs(1);
    // The last card still counts its failure: three more make a delay.
    let last_ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 499));
    for _ in 0..3 {
        fail(&t, "F499", last_ip, now);
    }
    let fresh = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
    assert!(t.check("F499", fresh, now).is_err());
    // The first card was dropped long ago.
    for _ in 0..3 {
        fail(&t, "F0", fresh, now);
    }
    assert!(
        t.check("F0", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 201)), now)
            .is_ok()
    );
}

#[test]
fn debug_and_errors_hold_no_card_number() {
    let t = throttle();
    let now = Instant::now();
    for _ in 0..4 {
        fail(&t, "N987654321", IP, now);
    }
    let now = now + secs(1);
    fail(&t, "N987654321", IP, now);
    let e = t.check("N987654321", IP, now).unwrap_err();
    for shown in [format!("{t:?}"), format!("{e:?}"), e.to_string()] {
        assert!(!shown.contains("987654321"), "{shown}");
    }
    assert_eq!(
        e.to_string(),
        "too many failed logins; try again in 2 seconds"
    );
}
