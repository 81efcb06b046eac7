//! Tests of the policy engine: every decision rule of `docs/policy.md`, release, the
//! loader's diagnostics, the demo policy, and property tests over random small policies.

use std::net::IpAddr;

use jiff::Timestamp;
use jiff::civil::{Date, date};

use super::release::Value;
use super::*;
use crate::ids::{InstitutionId, SubjectKey};
use crate::pseudonym::PseudonymKey;
use crate::subject::{Affiliation, Age, Subject};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Noon in Europe/Oslo on a day.
fn noon(d: Date) -> Timestamp {
    oslo().to_timestamp(d.at(12, 0, 0, 0)).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Loads one in-memory file; panics with the diagnostics when it has errors.
fn load(text: &str) -> Policy {
    match load_files(vec![("p.toml".into(), text.into())]) {
        Ok((p, _)) => p,
        Err(e) => panic!("policy did not load:\n{e}\n--- policy ---\n{text}"),
    }
}

/// Loads one in-memory file and returns its warnings.
fn warnings(text: &str) -> Vec<String> {
    match load_files(vec![("p.toml".into(), text.into())]) {
        Ok((_, w)) => w.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("policy did not load:\n{e}\n--- policy ---\n{text}"),
    }
}

fn fail_files(files: &[(&str, &str)]) -> LoadError {
    let files = files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    match load_files(files) {
        Ok(_) => panic!("expected errors, but the policy loaded"),
        Err(e) => e,
    }
}

/// The error lines (not warnings) of a policy that must fail, checking the count line.
fn errors(text: &str) -> Vec<String> {
    let e = fail_files(&[("p.toml", text)]);
    let lines: Vec<String> = e.errors().map(ToString::to_string).collect();
    let n = lines.len();
    let last = if n == 1 {
        "1 error".to_owned()
    } else {
        format!("{n} errors")
    };
    assert_eq!(e.to_string().lines().last(), Some(last.as_str()), "{e}");
    lines
}

/// Asserts that a policy fails with exactly this one error line.
#[track_caller]
fn assert_error(text: &str, expected: &str) {
    assert_eq!(errors(text), vec![expected.to_owned()], "policy:\n{text}");
}

fn inst(id: &str, extra: &str) -> String {
    format!("[[institution]]\nid = \"{id}\"\nname = \"Inst {id}\"\nkind = \"other\"\n{extra}\n\n")
}

/// A link service; `extra` holds top-level service keys.
fn svc(id: &str, extra: &str) -> String {
    format!(
        "[[service]]\nid = \"{id}\"\nname = \"Svc {id}\"\naccess = \"link\"\n{extra}\n\
         [service.link]\nurl = \"https://{id}.example/\"\n\n"
    )
}

/// An entitlement of an institution (`"XX-A"`) or a group (`"g:name"`). Without a `from`
/// in `extra`, the period starts 2020-01-01 and is open-ended.
fn ent(who: &str, service: &str, extra: &str) -> String {
    let target = match who.strip_prefix("g:") {
        Some(g) => format!("group = \"{g}\""),
        None => format!("institution = \"{who}\""),
    };
    let from = if extra.contains("from") {
        ""
    } else {
        "from = 2020-01-01\n"
    };
    format!("[[entitlement]]\n{target}\nservice = \"{service}\"\n{from}{extra}\n\n")
}

fn group(id: &str, members: &[&str]) -> String {
    let m: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[group]]\nid = \"{id}\"\nname = \"Group {id}\"\nmembers = [{}]\n\n",
        m.join(", ")
    )
}

fn subject(aff: Affiliation, insts: &[&str]) -> Subject {
    Subject {
        key: SubjectKey::new("card:XX-A:1"),
        affiliation: aff,
        institutions: insts.iter().map(|s| InstitutionId::from(*s)).collect(),
        age: Age::Unknown,
    }
}

fn patron(insts: &[&str]) -> Subject {
    subject(Affiliation::Patron, insts)
}

fn aged(mut s: Subject, age: Age) -> Subject {
    s.age = age;
    s
}

fn outcome(d: &Decision) -> String {
    match d {
        Decision::Permit(p) => format!("permit {}", p.institution),
        Decision::Deny(r) => format!("deny {r}"),
    }
}

/// The decision at noon (Oslo) of `day`, as "permit ID" or "deny reason".
fn run(p: &Policy, s: &Subject, service: &str, client: Option<&str>, day: Date) -> String {
    outcome(&decide(p, s, service, client.map(ip), noon(day)))
}

fn permit_of(d: Decision) -> Permit {
    match d {
        Decision::Permit(p) => p,
        Decision::Deny(r) => panic!("expected a permit, got {r}"),
    }
}

const DAY: Date = date(2026, 6, 15);

// ---------------------------------------------------------------------------------------
// Decision: step 1
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_service_is_denied_first() {
    let p = load(&(inst("XX-A", "") + &svc("s", "") + &ent("XX-A", "s", "")));
    assert_eq!(run(&p, &patron(&["XX-A"]), "s", None, DAY), "permit XX-A");
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "nope", None, DAY),
        "deny unknown_service"
    );
    // Ids are exact: no case folding.
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "S", None, DAY),
        "deny unknown_service"
    );
    assert_eq!(DenyReason::UnknownService.http_status(), 404);
    assert_eq!(DenyReason::UnknownService.counter_metric(), None);
}

#[test]
fn disabled_service_is_suspended_even_where_entitled() {
    let p = load(&(inst("XX-A", "") + &svc("s", "enabled = false") + &ent("XX-A", "s", "")));
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "s", None, DAY),
        "deny service_suspended"
    );
    // Before any candidate is looked at: a subject with no institution gets the same.
    assert_eq!(
        run(&p, &patron(&[]), "s", None, DAY),
        "deny service_suspended"
    );
    assert_eq!(
        run(&p, &Subject::walk_in(), "s", None, DAY),
        "deny service_suspended"
    );
}

#[test]
fn deny_reason_names_statuses_and_metrics_follow_the_policy_reference() {
    let names: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "unknown_service",
            "service_suspended",
            "not_subscribed",
            "outside_period",
            "entitlement_suspended",
            "onsite_only",
            "audience_not_allowed",
            "age_below_min",
            "age_above_max",
            "age_unverified",
            "rate_limited"
        ]
    );
    for r in DenyReason::ALL {
        let (status, metric) = match r {
            DenyReason::UnknownService => (404, None),
            DenyReason::RateLimited => (429, Some("Limit_Exceeded")),
            _ => (403, Some("No_License")),
        };
        assert_eq!(
            (r.http_status(), r.counter_metric()),
            (status, metric),
            "{r}"
        );
        assert!(!r.message_nb().is_empty() && !r.message_en().is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Decision: candidates
// ---------------------------------------------------------------------------------------

/// A on 192.0.2.0/26 (walk-in), B on 192.0.2.64/26, C without networks; all entitled to `s`.
fn three_entitled() -> Policy {
    load(
        &(inst("XX-A", "networks = [\"192.0.2.0/26\"]\nwalk_in = true")
            + &inst("XX-B", "networks = [\"192.0.2.64/26\"]")
            + &inst("XX-C", "")
            + &inst("XX-D", "")
            + &svc("s", "audience = [\"patron\", \"walk_in\"]")
            + &ent("XX-A", "s", "")
            + &ent("XX-B", "s", "")
            + &ent("XX-C", "s", "")),
    )
}

#[test]
fn onsite_institution_comes_first_and_is_credited() {
    let p = three_entitled();
    let s = patron(&["XX-C"]);
    let on_a = permit_of(decide(&p, &s, "s", Some(ip("192.0.2.10")), noon(DAY)));
    assert_eq!(on_a.institution.as_str(), "XX-A");
    assert!(on_a.onsite);
    assert_eq!(on_a.day, DAY);
    assert_eq!(on_a.service.as_str(), "s");
    let remote = permit_of(decide(&p, &s, "s", Some(ip("198.51.100.1")), noon(DAY)));
    assert_eq!(remote.institution.as_str(), "XX-C");
    assert!(!remote.onsite);
    let no_ip = permit_of(decide(&p, &s, "s", None, noon(DAY)));
    assert_eq!(no_ip.institution.as_str(), "XX-C");
    assert!(!no_ip.onsite);
    // On B's network with home institution A: B is credited, and `onsite` is true.
    let on_b = permit_of(decide(
        &p,
        &patron(&["XX-A"]),
        "s",
        Some(ip("192.0.2.70")),
        noon(DAY),
    ));
    assert_eq!(on_b.institution.as_str(), "XX-B");
    assert!(on_b.onsite);
}

#[test]
fn subject_institutions_in_order_first_passing_is_credited() {
    let p = three_entitled();
    assert_eq!(
        run(&p, &patron(&["XX-C", "XX-B"]), "s", None, DAY),
        "permit XX-C"
    );
    assert_eq!(
        run(&p, &patron(&["XX-B", "XX-C"]), "s", None, DAY),
        "permit XX-B"
    );
    // D is not entitled: the next one is credited.
    assert_eq!(
        run(&p, &patron(&["XX-D", "XX-C"]), "s", None, DAY),
        "permit XX-C"
    );
    // Unknown references are skipped.
    assert_eq!(
        run(&p, &patron(&["XX-NOPE", "XX-B"]), "s", None, DAY),
        "permit XX-B"
    );
    // The home institution is the on-site one too: it is credited, once.
    let d = permit_of(decide(
        &p,
        &patron(&["XX-B", "XX-C"]),
        "s",
        Some(ip("192.0.2.65")),
        noon(DAY),
    ));
    assert_eq!((d.institution.as_str(), d.onsite), ("XX-B", true));
    // Off B's network, the same B is not on-site.
    let d = permit_of(decide(
        &p,
        &patron(&["XX-B"]),
        "s",
        Some(ip("192.0.2.200")),
        noon(DAY),
    ));
    assert_eq!((d.institution.as_str(), d.onsite), ("XX-B", false));
}

#[test]
fn one_institution_named_several_ways_is_one_candidate() {
    // A (named three ways) is outside its period, B is suspended: both fail at stage 1, so
    // the reason is that of whichever is named first, however often A is repeated.
    // (Checking a repeat again could not change a decision: same stage, same reason.)
    let p = load(
        &(inst("NO-2390500", "aliases = [\"a-bib\"]")
            + &inst("XX-B", "")
            + &svc("s", "")
            + &ent("NO-2390500", "s", "from = 2030-01-01")
            + &ent("XX-B", "s", "enabled = false")),
    );
    let s = patron(&["a-bib", "2390500", "NO-2390500", "XX-B", "a-bib"]);
    assert_eq!(run(&p, &s, "s", None, DAY), "deny outside_period");
    let s = patron(&["XX-B", "a-bib", "XX-B"]);
    assert_eq!(run(&p, &s, "s", None, DAY), "deny entitlement_suspended");
}

#[test]
fn walk_in_gets_only_a_walk_in_onsite_institution() {
    let p = three_entitled();
    let w = Subject::walk_in();
    assert_eq!(run(&p, &w, "s", Some("192.0.2.1"), DAY), "permit XX-A");
    // B is entitled and on-site, but has no walk_in = true: no candidate at all.
    assert_eq!(
        run(&p, &w, "s", Some("192.0.2.65"), DAY),
        "deny not_subscribed"
    );
    assert_eq!(
        run(&p, &w, "s", Some("198.51.100.1"), DAY),
        "deny not_subscribed"
    );
    assert_eq!(run(&p, &w, "s", None, DAY), "deny not_subscribed");
    // Institutions on a walk-in subject are ignored.
    let w_with = subject(Affiliation::WalkIn, &["XX-C"]);
    assert_eq!(run(&p, &w_with, "s", None, DAY), "deny not_subscribed");
    assert_eq!(run(&p, &w_with, "s", Some("192.0.2.1"), DAY), "permit XX-A");
}

#[test]
fn walk_in_needs_walk_in_in_the_audience() {
    let p = load(
        &(inst("XX-A", "networks = [\"192.0.2.0/24\"]\nwalk_in = true")
            + &svc("plain", "")
            + &svc("open", "audience = [\"walk_in\"]")
            + &ent("XX-A", "plain", "")
            + &ent("XX-A", "open", "")),
    );
    let w = Subject::walk_in();
    assert_eq!(
        run(&p, &w, "plain", Some("192.0.2.9"), DAY),
        "deny audience_not_allowed"
    );
    assert_eq!(run(&p, &w, "open", Some("192.0.2.9"), DAY), "permit XX-A");
    // A patron is not a walk-in.
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "open", Some("192.0.2.9"), DAY),
        "deny audience_not_allowed"
    );
}

#[test]
fn no_candidates_is_not_subscribed() {
    let p = three_entitled();
    assert_eq!(run(&p, &patron(&[]), "s", None, DAY), "deny not_subscribed");
    assert_eq!(
        run(&p, &patron(&["XX-NOPE", "2390500"]), "s", None, DAY),
        "deny not_subscribed"
    );
    assert_eq!(
        run(&p, &patron(&[]), "s", Some("203.0.113.5"), DAY),
        "deny not_subscribed"
    );
}

#[test]
fn institutions_are_referenced_by_id_alias_and_bare_number() {
    let p = load(
        &(inst("NO-2390500", "aliases = [\"tonsberg-bib\", \"SIP-77\"]")
            + &inst("XX-B", "aliases = [\"b-bib\"]")
            + &svc("s", "")
            + &ent("NO-2390500", "s", "")
            + &ent("XX-B", "s", "")),
    );
    for r in ["NO-2390500", "2390500", "tonsberg-bib", "SIP-77"] {
        assert_eq!(
            run(&p, &patron(&[r]), "s", None, DAY),
            "permit NO-2390500",
            "{r}"
        );
        assert_eq!(p.institution(r).map(|i| i.id.as_str()), Some("NO-2390500"));
    }
    assert_eq!(run(&p, &patron(&["b-bib"]), "s", None, DAY), "permit XX-B");
    // References are exact: no case folding, and a non-Norwegian id has no bare number.
    assert!(p.institution("TONSBERG-BIB").is_none());
    assert!(p.institution("B").is_none());
    assert_eq!(
        run(&p, &patron(&["sip-77"]), "s", None, DAY),
        "deny not_subscribed"
    );
}

// ---------------------------------------------------------------------------------------
// Decision: on-site lookup
// ---------------------------------------------------------------------------------------

#[test]
fn longest_prefix_wins_and_a_tie_goes_to_the_smallest_id() {
    // Written in the file in reverse id order, so the tie is not decided by file order.
    let text = inst("XX-Z", "networks = [\"192.0.2.0/24\", \"198.51.100.0/25\"]")
        + &inst("XX-M", "networks = [\"192.0.2.64/26\"]")
        + &inst("XX-B", "networks = [\"198.51.100.0/25\"]")
        + &inst("XX-A", "networks = [\"198.51.100.0/25\"]\nwalk_in = true")
        + &svc("s", "audience = [\"patron\", \"walk_in\"]")
        + &ent("XX-Z", "s", "")
        + &ent("XX-M", "s", "")
        + &ent("XX-A", "s", "")
        + &ent("XX-B", "s", "");
    let p = load(&text);
    let on = |a: &str| p.onsite_institution(ip(a)).map(|i| i.id.to_string());
    assert_eq!(on("192.0.2.70").as_deref(), Some("XX-M"));
    assert_eq!(on("192.0.2.63").as_deref(), Some("XX-Z"));
    assert_eq!(on("192.0.2.128").as_deref(), Some("XX-Z"));
    assert_eq!(on("198.51.100.5").as_deref(), Some("XX-A"));
    assert_eq!(on("198.51.100.128"), None);
    // The decision credits the same institution.
    let w = Subject::walk_in();
    assert_eq!(run(&p, &w, "s", Some("198.51.100.5"), DAY), "permit XX-A");
    let d = permit_of(decide(
        &p,
        &patron(&["XX-Z"]),
        "s",
        Some(ip("192.0.2.70")),
        noon(DAY),
    ));
    assert_eq!((d.institution.as_str(), d.onsite), ("XX-M", true));
}

#[test]
fn ipv6_networks_and_ipv4_mapped_clients() {
    let p = load(
        &(inst(
            "XX-A",
            "networks = [\"2001:db8:3905::/48\", \"192.0.2.48/28\"]\nwalk_in = true",
        ) + &inst("XX-B", "networks = [\"2001:db8:3905:1::/64\"]")
            + &svc(
                "s",
                "audience = [\"patron\", \"walk_in\"]\nlocation = \"onsite\"",
            )
            + &ent("XX-A", "s", "")),
    );
    let on = |a: &str| p.onsite_institution(ip(a)).map(|i| i.id.to_string());
    assert_eq!(on("2001:db8:3905::1").as_deref(), Some("XX-A"));
    assert_eq!(on("2001:db8:3905:ffff::1").as_deref(), Some("XX-A"));
    assert_eq!(on("2001:db8:3905:1::9").as_deref(), Some("XX-B"));
    assert_eq!(on("2001:db8:3906::1"), None);
    assert_eq!(on("::ffff:192.0.2.50").as_deref(), Some("XX-A"));
    let w = Subject::walk_in();
    assert_eq!(
        run(&p, &w, "s", Some("2001:db8:3905::1"), DAY),
        "permit XX-A"
    );
    assert_eq!(
        run(&p, &w, "s", Some("2001:db8:3906::1"), DAY),
        "deny not_subscribed"
    );
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "s", Some("2001:db8:3906::1"), DAY),
        "deny onsite_only"
    );
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "s", Some("::ffff:192.0.2.49"), DAY),
        "permit XX-A"
    );
}

// ---------------------------------------------------------------------------------------
// Decision: subscription
// ---------------------------------------------------------------------------------------

#[test]
fn subscription_directly_and_through_a_group() {
    let p = load(
        &(inst("XX-A", "")
            + &inst("XX-B", "")
            + &inst("XX-C", "")
            + &group("g", &["XX-A", "XX-B"])
            + &svc("s", "")
            + &svc("t", "")
            + &ent("g:g", "s", "")
            + &ent("XX-C", "t", "")),
    );
    assert_eq!(run(&p, &patron(&["XX-A"]), "s", None, DAY), "permit XX-A");
    assert_eq!(run(&p, &patron(&["XX-B"]), "s", None, DAY), "permit XX-B");
    assert_eq!(
        run(&p, &patron(&["XX-C"]), "s", None, DAY),
        "deny not_subscribed"
    );
    assert_eq!(run(&p, &patron(&["XX-C"]), "t", None, DAY), "permit XX-C");
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "t", None, DAY),
        "deny not_subscribed"
    );
}

#[test]
fn periods_are_inclusive_at_both_ends() {
    let p = load(
        &(inst("XX-A", "")
            + &inst("XX-B", "")
            + &svc("s", "")
            + &ent("XX-A", "s", "from = 2025-03-01\nuntil = 2025-03-31")
            + &ent("XX-B", "s", "from = 2025-03-01")),
    );
    let a = patron(&["XX-A"]);
    assert_eq!(
        run(&p, &a, "s", None, date(2025, 2, 28)),
        "deny outside_period"
    );
    assert_eq!(run(&p, &a, "s", None, date(2025, 3, 1)), "permit XX-A");
    assert_eq!(run(&p, &a, "s", None, date(2025, 3, 15)), "permit XX-A");
    assert_eq!(run(&p, &a, "s", None, date(2025, 3, 31)), "permit XX-A");
    assert_eq!(
        run(&p, &a, "s", None, date(2025, 4, 1)),
        "deny outside_period"
    );
    let b = patron(&["XX-B"]);
    assert_eq!(
        run(&p, &b, "s", None, date(2025, 2, 28)),
        "deny outside_period"
    );
    assert_eq!(run(&p, &b, "s", None, date(2099, 12, 31)), "permit XX-B");
}

#[test]
fn days_are_oslo_calendar_days() {
    let p = load(
        &(inst("XX-A", "")
            + &inst("XX-B", "")
            + &svc("s", "")
            + &ent("XX-A", "s", "from = 2026-01-01")
            + &ent("XX-B", "s", "from = 2025-01-01\nuntil = 2025-06-30")),
    );
    let a = patron(&["XX-A"]);
    // Winter, UTC+1: 23:30 UTC on 31 December is 00:30 on 1 January in Oslo.
    let d = decide(&p, &a, "s", None, ts("2025-12-31T23:30:00Z"));
    assert_eq!(permit_of(d).day, date(2026, 1, 1));
    assert_eq!(
        outcome(&decide(&p, &a, "s", None, ts("2025-12-31T22:59:59Z"))),
        "deny outside_period"
    );
    assert_eq!(
        outcome(&decide(&p, &a, "s", None, ts("2025-12-31T23:00:00Z"))),
        "permit XX-A"
    );
    // Summer, UTC+2: 22:30 UTC on 30 June is 00:30 on 1 July in Oslo.
    let b = patron(&["XX-B"]);
    assert_eq!(
        outcome(&decide(&p, &b, "s", None, ts("2025-06-30T21:30:00Z"))),
        "permit XX-B"
    );
    assert_eq!(
        outcome(&decide(&p, &b, "s", None, ts("2025-06-30T22:30:00Z"))),
        "deny outside_period"
    );
    assert_eq!(oslo_today(ts("2025-06-30T22:30:00Z")), date(2025, 7, 1));
    assert_eq!(oslo_today(ts("2025-06-30T21:59:59Z")), date(2025, 6, 30));
}

#[test]
fn suspended_versus_outside_period_versus_not_subscribed() {
    let p = load(
        &(inst("XX-A", "")
            + &inst("XX-B", "")
            + &inst("XX-C", "")
            + &inst("XX-D", "")
            + &inst("XX-E", "")
            + &svc("s", "")
            // A: only a disabled entitlement that holds today.
            + &ent("XX-A", "s", "enabled = false")
            // B: a disabled one holds today, an enabled one does not.
            + &ent("XX-B", "s", "enabled = false")
            + &ent("XX-B", "s", "from = 2030-01-01")
            // C: a disabled one that does not hold today: outside the period.
            + &ent("XX-C", "s", "from = 2020-01-01\nuntil = 2020-12-31\nenabled = false")
            // D: a disabled and an enabled one both hold: permit.
            + &ent("XX-D", "s", "enabled = false")
            + &ent("XX-D", "s", "from = 2026-06-15")),
    );
    let r = |i: &str| run(&p, &patron(&[i]), "s", None, DAY);
    assert_eq!(r("XX-A"), "deny entitlement_suspended");
    assert_eq!(r("XX-B"), "deny entitlement_suspended");
    assert_eq!(r("XX-C"), "deny outside_period");
    assert_eq!(r("XX-D"), "permit XX-D");
    assert_eq!(r("XX-E"), "deny not_subscribed");
    // D's enabled one starts today: the day before, only the disabled one holds.
    assert_eq!(
        run(&p, &patron(&["XX-D"]), "s", None, date(2026, 6, 14)),
        "deny entitlement_suspended"
    );
}

// ---------------------------------------------------------------------------------------
// Decision: location and audience, with entitlement overrides
// ---------------------------------------------------------------------------------------

#[test]
fn onsite_only_services() {
    let p = load(
        &(inst("XX-A", "networks = [\"192.0.2.0/25\"]")
            + &inst("XX-B", "networks = [\"192.0.2.128/25\"]")
            + &svc("s", "location = \"onsite\"")
            + &ent("XX-A", "s", "")),
    );
    let a = patron(&["XX-A"]);
    assert_eq!(run(&p, &a, "s", None, DAY), "deny onsite_only");
    assert_eq!(
        run(&p, &a, "s", Some("198.51.100.1"), DAY),
        "deny onsite_only"
    );
    assert_eq!(run(&p, &a, "s", Some("192.0.2.1"), DAY), "permit XX-A");
    // On B's network: B is not subscribed (stage 1), A is not on-site (stage 2).
    assert_eq!(
        run(&p, &a, "s", Some("192.0.2.200"), DAY),
        "deny onsite_only"
    );
    // A patron of B on A's network: A is on-site and credited.
    assert_eq!(
        run(&p, &patron(&["XX-B"]), "s", Some("192.0.2.1"), DAY),
        "permit XX-A"
    );
}

#[test]
fn audience_of_the_service() {
    let p = load(
        &(inst("XX-A", "")
            + &svc("s", "audience = [\"student\"]")
            + &svc("d", "")
            + &ent("XX-A", "s", "")
            + &ent("XX-A", "d", "")),
    );
    let as_ = |a| run(&p, &subject(a, &["XX-A"]), "s", None, DAY);
    assert_eq!(as_(Affiliation::Student), "permit XX-A");
    assert_eq!(as_(Affiliation::Patron), "deny audience_not_allowed");
    assert_eq!(as_(Affiliation::Staff), "deny audience_not_allowed");
    // The default audience: patron, student and staff.
    let d = |a| run(&p, &subject(a, &["XX-A"]), "d", None, DAY);
    assert_eq!(d(Affiliation::Patron), "permit XX-A");
    assert_eq!(d(Affiliation::Student), "permit XX-A");
    assert_eq!(d(Affiliation::Staff), "permit XX-A");
}

#[test]
fn entitlement_overrides_widen_and_narrow() {
    let p = load(
        &(inst("XX-A", "")
            + &inst("XX-B", "")
            + &inst("XX-C", "networks = [\"192.0.2.0/24\"]")
            + &svc("s", "audience = [\"student\"]")
            + &svc("o", "location = \"onsite\"")
            + &ent("XX-A", "s", "audience = [\"patron\"]")
            + &ent("XX-B", "s", "")
            + &ent("XX-A", "o", "location = \"anywhere\"")
            + &ent("XX-B", "o", "")
            + &ent("XX-C", "o", "")
            + &svc("any", "")
            + &ent("XX-C", "any", "location = \"onsite\"")),
    );
    let r = |aff, i: &str, s: &str, client| run(&p, &subject(aff, &[i]), s, client, DAY);
    // A's audience replaces the service's: patrons in, students out.
    assert_eq!(r(Affiliation::Patron, "XX-A", "s", None), "permit XX-A");
    assert_eq!(
        r(Affiliation::Student, "XX-A", "s", None),
        "deny audience_not_allowed"
    );
    assert_eq!(
        r(Affiliation::Patron, "XX-B", "s", None),
        "deny audience_not_allowed"
    );
    assert_eq!(r(Affiliation::Student, "XX-B", "s", None), "permit XX-B");
    // A lifts the on-site limit; B keeps it.
    assert_eq!(r(Affiliation::Patron, "XX-A", "o", None), "permit XX-A");
    assert_eq!(
        r(Affiliation::Patron, "XX-B", "o", None),
        "deny onsite_only"
    );
    assert_eq!(
        r(Affiliation::Patron, "XX-C", "o", Some("192.0.2.1")),
        "permit XX-C"
    );
    // An entitlement can make an "anywhere" service on-site only.
    assert_eq!(
        r(Affiliation::Patron, "XX-C", "any", None),
        "deny onsite_only"
    );
    assert_eq!(
        r(Affiliation::Patron, "XX-C", "any", Some("192.0.2.1")),
        "permit XX-C"
    );
}

/// The service is on-site only for students. A's group entitlement keeps that; A's own
/// entitlement brings `location = "anywhere"` with `audience = ["staff"]`.
fn two_entitlements(direct_first: bool) -> Policy {
    let via_group = ent("g:g", "s", "");
    let direct = ent(
        "XX-A",
        "s",
        "location = \"anywhere\"\naudience = [\"staff\"]",
    );
    let (e1, e2) = if direct_first {
        (direct, via_group)
    } else {
        (via_group, direct)
    };
    load(
        &(inst("XX-A", "networks = [\"192.0.2.0/24\"]")
            + &group("g", &["XX-A"])
            + &svc("s", "location = \"onsite\"\naudience = [\"student\"]")
            + &e1
            + &e2),
    )
}

#[test]
fn one_of_several_entitlements_lets_the_candidate_through() {
    for direct_first in [false, true] {
        let p = two_entitlements(direct_first);
        let r = |aff, client| run(&p, &subject(aff, &["XX-A"]), "s", client, DAY);
        // Staff off-site: only the direct entitlement lets them through.
        assert_eq!(r(Affiliation::Staff, None), "permit XX-A", "{direct_first}");
        // Students on-site: only the group's.
        assert_eq!(
            r(Affiliation::Student, Some("192.0.2.7")),
            "permit XX-A",
            "{direct_first}"
        );
        assert_eq!(r(Affiliation::Staff, Some("192.0.2.7")), "permit XX-A");
    }
}

#[test]
fn stages_two_and_three_must_pass_on_the_same_entitlement() {
    for direct_first in [false, true] {
        let p = two_entitlements(direct_first);
        let r = |aff, client| run(&p, &subject(aff, &["XX-A"]), "s", client, DAY);
        // Student off-site: the group's entitlement fails the location, the direct one
        // passes the location but not the audience. Mixing them would permit; it must not.
        // The candidate got as far as the audience stage.
        assert_eq!(
            r(Affiliation::Student, None),
            "deny audience_not_allowed",
            "{direct_first}"
        );
        // A patron is in neither audience.
        assert_eq!(r(Affiliation::Patron, None), "deny audience_not_allowed");
        assert_eq!(
            r(Affiliation::Patron, Some("192.0.2.7")),
            "deny audience_not_allowed"
        );
    }
}

#[test]
fn overrides_of_inactive_entitlements_do_not_count() {
    let p = load(
        &(inst("XX-A", "")
            + &svc("s", "location = \"onsite\"\naudience = [\"student\"]")
            + &ent("XX-A", "s", "")
            // Disabled: its "anywhere" and its audience must not help.
            + &ent("XX-A", "s", "enabled = false\nlocation = \"anywhere\"\naudience = [\"patron\"]")
            // Outside its period: the same.
            + &ent(
                "XX-A",
                "s",
                "from = 2020-01-01\nuntil = 2020-12-31\nlocation = \"anywhere\"\naudience = [\"patron\"]",
            )),
    );
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "s", None, DAY),
        "deny onsite_only"
    );
    assert_eq!(
        run(
            &p,
            &subject(Affiliation::Student, &["XX-A"]),
            "s",
            None,
            DAY
        ),
        "deny onsite_only"
    );
    assert_eq!(
        run(&p, &patron(&["XX-A"]), "s", None, date(2020, 6, 1)),
        "permit XX-A"
    );
}

// ---------------------------------------------------------------------------------------
// Decision: age
// ---------------------------------------------------------------------------------------

fn age_policy() -> Policy {
    load(
        &(inst("XX-A", "")
            + &svc("min15", "min_age = 15")
            + &svc("max12", "max_age = 12")
            + &svc("teen", "min_age = 13\nmax_age = 19")
            + &svc("min14", "min_age = 14")
            + &svc("max13", "max_age = 13")
            + &svc("nolimit", "")
            + &svc("zero", "min_age = 0")
            + &svc("min16", "min_age = 16")
            + &ent("XX-A", "min16", "")
            + &ent("XX-A", "min15", "")
            + &ent("XX-A", "max12", "")
            + &ent("XX-A", "teen", "")
            + &ent("XX-A", "min14", "")
            + &ent("XX-A", "max13", "")
            + &ent("XX-A", "nolimit", "")
            + &ent("XX-A", "zero", "")),
    )
}

fn age_run(p: &Policy, service: &str, age: Age, day: Date) -> String {
    run(p, &aged(patron(&["XX-A"]), age), service, None, day)
}

#[test]
fn exact_birth_dates_and_inclusive_limits() {
    let p = age_policy();
    let born = Age::BirthDate(date(2011, 6, 15));
    // 15th birthday on 2026-06-15.
    assert_eq!(
        age_run(&p, "min15", born, date(2026, 6, 14)),
        "deny age_below_min"
    );
    assert_eq!(age_run(&p, "min15", born, date(2026, 6, 15)), "permit XX-A");
    // 13th birthday of someone born 2013-06-15: max_age 12 is inclusive.
    let born13 = Age::BirthDate(date(2013, 6, 15));
    assert_eq!(
        age_run(&p, "max12", born13, date(2026, 6, 14)),
        "permit XX-A"
    );
    assert_eq!(
        age_run(&p, "max12", born13, date(2026, 6, 15)),
        "deny age_above_max"
    );
    // Both limits.
    let teen = |y, m, d| age_run(&p, "teen", Age::BirthDate(date(y, m, d)), DAY);
    assert_eq!(teen(2013, 6, 16), "deny age_below_min"); // 12
    assert_eq!(teen(2013, 6, 15), "permit XX-A"); // 13
    assert_eq!(teen(2006, 6, 16), "permit XX-A"); // 19
    assert_eq!(teen(2006, 6, 15), "deny age_above_max"); // 20
    // The birthday is counted on the Oslo day: 22:30 UTC on 14 June is 15 June in Oslo.
    let s = aged(patron(&["XX-A"]), born);
    assert_eq!(
        outcome(&decide(&p, &s, "min15", None, ts("2026-06-14T22:30:00Z"))),
        "permit XX-A"
    );
    assert_eq!(
        outcome(&decide(&p, &s, "min15", None, ts("2026-06-14T21:30:00Z"))),
        "deny age_below_min"
    );
}

#[test]
fn leap_day_birthdays_are_on_first_of_march_in_other_years() {
    let p = age_policy();
    let born = Age::BirthDate(date(2012, 2, 29));
    // 2026 is not a leap year: still 13 on 28 February, 14 on 1 March.
    assert_eq!(
        age_run(&p, "min14", born, date(2026, 2, 28)),
        "deny age_below_min"
    );
    assert_eq!(age_run(&p, "min14", born, date(2026, 3, 1)), "permit XX-A");
    assert_eq!(age_run(&p, "max13", born, date(2026, 2, 28)), "permit XX-A");
    assert_eq!(
        age_run(&p, "max13", born, date(2026, 3, 1)),
        "deny age_above_max"
    );
    // In a leap year, 29 February itself.
    let born = Age::BirthDate(date(2012, 2, 29));
    assert_eq!(
        age_run(&p, "min16", born, date(2028, 2, 28)),
        "deny age_below_min"
    );
    assert_eq!(age_run(&p, "min16", born, date(2028, 2, 29)), "permit XX-A");
}

#[test]
fn birth_year_only_decides_when_both_ends_agree() {
    let p = age_policy();
    let y = |year| Age::BirthYear(year);
    // In 2026, born 2011 means 14 or 15.
    assert_eq!(age_run(&p, "min15", y(2010), DAY), "permit XX-A"); // 15–16
    assert_eq!(age_run(&p, "min15", y(2011), DAY), "deny age_unverified"); // 14–15
    assert_eq!(age_run(&p, "min15", y(2012), DAY), "deny age_below_min"); // 13–14
    assert_eq!(age_run(&p, "max12", y(2014), DAY), "permit XX-A"); // 11–12
    assert_eq!(age_run(&p, "max12", y(2013), DAY), "deny age_unverified"); // 12–13
    assert_eq!(age_run(&p, "max12", y(2012), DAY), "deny age_above_max"); // 13–14
    assert_eq!(age_run(&p, "teen", y(2013), DAY), "deny age_unverified"); // 12–13 vs ≥13
    assert_eq!(age_run(&p, "teen", y(2012), DAY), "permit XX-A"); // 13–14
    assert_eq!(age_run(&p, "teen", y(2011), DAY), "permit XX-A"); // 14–15
    assert_eq!(age_run(&p, "teen", y(2006), DAY), "deny age_unverified"); // 19–20 vs ≤19
    assert_eq!(age_run(&p, "teen", y(2005), DAY), "deny age_above_max"); // 20–21
    // The same birth year on 1 January and 31 December gives the same answer.
    assert_eq!(
        age_run(&p, "min15", y(2011), date(2026, 12, 31)),
        "deny age_unverified"
    );
    assert_eq!(
        age_run(&p, "min15", y(2011), date(2026, 1, 1)),
        "deny age_unverified"
    );
}

#[test]
fn unknown_age_is_unverified_only_where_there_is_a_limit() {
    let p = age_policy();
    for s in ["min15", "max12", "teen", "zero"] {
        assert_eq!(
            age_run(&p, s, Age::Unknown, DAY),
            "deny age_unverified",
            "{s}"
        );
    }
    assert_eq!(age_run(&p, "nolimit", Age::Unknown, DAY), "permit XX-A");
    // A birth date after today is garbage and counts as unknown.
    assert_eq!(
        age_run(&p, "zero", Age::BirthDate(date(2027, 1, 1)), DAY),
        "deny age_unverified"
    );
    assert_eq!(
        age_run(&p, "zero", Age::BirthDate(date(2026, 6, 15)), DAY),
        "permit XX-A"
    );
    // min_age = 0 with a birth year of this year: 0 either way.
    assert_eq!(
        age_run(&p, "zero", Age::BirthYear(2026), DAY),
        "permit XX-A"
    );
}

// ---------------------------------------------------------------------------------------
// Decision: the reason of a deny
// ---------------------------------------------------------------------------------------

#[test]
fn the_reason_is_from_the_latest_stage_and_on_a_tie_the_earliest_candidate() {
    let p = load(
        &(inst("XX-N", "")
            + &inst("XX-P", "")
            + &inst("XX-S", "")
            + &inst("XX-O", "networks = [\"192.0.2.0/24\"]")
            + &inst("XX-U", "")
            + &inst("XX-G", "")
            + &svc("s", "location = \"onsite\"\nmin_age = 18")
            // N: not subscribed. P: outside period. S: suspended.
            + &ent("XX-P", "s", "from = 2030-01-01")
            + &ent("XX-S", "s", "enabled = false")
            // O: on-site only (and on-site on 192.0.2.0/24, where it reaches the age stage).
            + &ent("XX-O", "s", "")
            // U: passes location, fails the audience.
            + &ent("XX-U", "s", "location = \"anywhere\"\naudience = [\"staff\"]")
            // G: passes everything but the age.
            + &ent("XX-G", "s", "location = \"anywhere\"")),
    );
    let r = |insts: &[&str], client| run(&p, &patron(insts), "s", client, DAY);
    // Ties at stage 1: the earliest candidate's reason.
    assert_eq!(r(&["XX-N", "XX-P", "XX-S"], None), "deny not_subscribed");
    assert_eq!(r(&["XX-P", "XX-N", "XX-S"], None), "deny outside_period");
    assert_eq!(
        r(&["XX-S", "XX-P", "XX-N"], None),
        "deny entitlement_suspended"
    );
    // A later stage wins wherever the candidate is.
    assert_eq!(r(&["XX-N", "XX-P", "XX-O"], None), "deny onsite_only");
    assert_eq!(
        r(&["XX-O", "XX-U", "XX-N"], None),
        "deny audience_not_allowed"
    );
    assert_eq!(r(&["XX-U", "XX-O"], None), "deny audience_not_allowed");
    assert_eq!(r(&["XX-G", "XX-U", "XX-O"], None), "deny age_unverified");
    assert_eq!(r(&["XX-U", "XX-G"], None), "deny age_unverified");
    // The on-site institution is the earliest candidate.
    assert_eq!(r(&["XX-G"], Some("192.0.2.1")), "deny age_unverified");
    assert_eq!(r(&["XX-P"], Some("192.0.2.1")), "deny age_unverified");
}

// ---------------------------------------------------------------------------------------
// Release
// ---------------------------------------------------------------------------------------

fn vector_key() -> PseudonymKey {
    let bytes: Vec<u8> = (0u8..32).collect();
    PseudonymKey::new(&bytes).unwrap()
}

fn release_policy(release_list: &str, extra: &str) -> Policy {
    load(
        &(inst(
            "NO-2390700",
            "name = \"Sandefjordbiblioteket\"\nmunicipality = \"3907\"",
        )
        .replace("name = \"Inst NO-2390700\"\n", "")
            + &inst("XX-B", "")
            + &svc("ebok", &format!("release = {release_list}\n{extra}"))
            + &ent("NO-2390700", "ebok", "")
            + &ent("XX-B", "ebok", "")),
    )
}

fn released(p: &Policy, s: &Subject, key: Option<&PseudonymKey>, day: Date) -> Release {
    let permit = permit_of(decide(p, s, "ebok", None, noon(day)));
    release(p, &permit, s, key)
}

fn card_subject(inst: &str, age: Age) -> Subject {
    Subject {
        key: SubjectKey::new("card:NO-2390700:12345678"),
        affiliation: Affiliation::Patron,
        institutions: vec![InstitutionId::from(inst)],
        age,
    }
}

fn text(v: &str) -> Value {
    Value::Text(v.into())
}

#[test]
fn release_in_the_order_of_the_list() {
    let p = release_policy(
        "[\"age_band\", \"municipality\", \"institution_name\", \"affiliation\", \
         \"institution\", \"age_over_18\", \"pseudonym\"]",
        "",
    );
    let s = card_subject("NO-2390700", Age::BirthDate(date(1990, 5, 17)));
    let r = released(&p, &s, Some(&vector_key()), DAY);
    assert_eq!(
        r.attributes,
        vec![
            (Attribute::AgeBand, text("20-44")),
            (Attribute::Municipality, text("3907")),
            (Attribute::InstitutionName, text("Sandefjordbiblioteket")),
            (Attribute::Affiliation, text("patron")),
            (Attribute::Institution, text("NO-2390700")),
            (Attribute::AgeOver(18), Value::Bool(true)),
            // The published test vector (pseudonym.rs and docs/policy.md).
            (
                Attribute::Pseudonym,
                text("wsjo7zg7ncm2hv5g3637l5tuh4p5yvwu")
            ),
        ]
    );
    assert_eq!(r.get(Attribute::Municipality), Some(&text("3907")));
    assert_eq!(r.get(Attribute::AgeOver(17)), None);
}

#[test]
fn release_default_list_and_empty_list() {
    let p = load(
        &(inst("XX-A", "")
            + &svc("ebok", "")
            + &svc("none", "release = []")
            + &ent("XX-A", "ebok", "")
            + &ent("XX-A", "none", "")),
    );
    let s = card_subject("XX-A", Age::BirthDate(date(1990, 5, 17)));
    let key = vector_key();
    let r = released(&p, &s, Some(&key), DAY);
    assert_eq!(
        r.attributes,
        vec![
            (
                Attribute::Pseudonym,
                text("wsjo7zg7ncm2hv5g3637l5tuh4p5yvwu")
            ),
            (Attribute::Institution, text("XX-A")),
        ]
    );
    let permit = permit_of(decide(&p, &s, "none", None, noon(DAY)));
    assert_eq!(release(&p, &permit, &s, Some(&key)).attributes, vec![]);
}

#[test]
fn pseudonym_needs_a_key_and_follows_the_sector() {
    let p = load(
        &(inst("XX-A", "")
            + &svc("ebok", "release = [\"pseudonym\"]")
            + &svc("film", "release = [\"pseudonym\"]\nsector = \"ebok\"")
            + &svc("other", "release = [\"pseudonym\"]")
            + &ent("XX-A", "ebok", "")
            + &ent("XX-A", "film", "")
            + &ent("XX-A", "other", "")),
    );
    let s = card_subject("XX-A", Age::Unknown);
    let key = vector_key();
    let pseudo = |service: &str, key: Option<&PseudonymKey>| {
        let permit = permit_of(decide(&p, &s, service, None, noon(DAY)));
        release(&p, &permit, &s, key).attributes
    };
    let expected = vec![(
        Attribute::Pseudonym,
        text("wsjo7zg7ncm2hv5g3637l5tuh4p5yvwu"),
    )];
    assert_eq!(pseudo("ebok", Some(&key)), expected);
    assert_eq!(pseudo("film", Some(&key)), expected);
    let other = pseudo("other", Some(&key));
    assert_eq!(other.len(), 1);
    assert_ne!(other, expected);
    assert_eq!(other[0].1, text(key.pairwise("other", &s.key).expose()));
    // Without a key the attribute is left out, never sent empty.
    assert_eq!(pseudo("ebok", None), vec![]);
}

#[test]
fn institution_attributes_and_missing_municipality() {
    let p = release_policy(
        "[\"institution\", \"institution_name\", \"municipality\"]",
        "",
    );
    let r = released(&p, &card_subject("XX-B", Age::Unknown), None, DAY);
    assert_eq!(
        r.attributes,
        vec![
            (Attribute::Institution, text("XX-B")),
            (Attribute::InstitutionName, text("Inst XX-B")),
        ]
    );
    // The credited institution is the one released, not the home one.
    let p2 = load(
        &(inst(
            "XX-A",
            "networks = [\"192.0.2.0/24\"]\nmunicipality = \"3905\"",
        ) + &inst("XX-B", "municipality = \"3907\"")
            + &svc("ebok", "release = [\"institution\", \"municipality\"]")
            + &ent("XX-A", "ebok", "")
            + &ent("XX-B", "ebok", "")),
    );
    let s = card_subject("XX-B", Age::Unknown);
    let permit = permit_of(decide(&p2, &s, "ebok", Some(ip("192.0.2.3")), noon(DAY)));
    assert_eq!(
        release(&p2, &permit, &s, None).attributes,
        vec![
            (Attribute::Institution, text("XX-A")),
            (Attribute::Municipality, text("3905")),
        ]
    );
}

#[test]
fn affiliation_is_released_as_its_name() {
    let p = load(
        &(inst("XX-A", "networks = [\"192.0.2.0/24\"]\nwalk_in = true")
            + &svc(
                "ebok",
                "release = [\"affiliation\"]\naudience = [\"patron\", \"student\", \"staff\", \"walk_in\"]",
            )
            + &ent("XX-A", "ebok", "")),
    );
    for aff in Affiliation::ALL {
        let s = subject(aff, &["XX-A"]);
        let permit = permit_of(decide(&p, &s, "ebok", Some(ip("192.0.2.1")), noon(DAY)));
        assert_eq!(
            release(&p, &permit, &s, None).attributes,
            vec![(Attribute::Affiliation, text(aff.as_str()))]
        );
    }
}

#[test]
fn age_band_at_every_boundary() {
    let p = release_policy("[\"age_band\"]", "");
    let band = |age: Age| {
        let r = released(&p, &card_subject("XX-B", age), None, DAY);
        match r.attributes.as_slice() {
            [(Attribute::AgeBand, Value::Text(t))] => t.clone(),
            other => panic!("unexpected release {other:?}"),
        }
    };
    // Born on 15 June: exactly `n` years old on DAY (2026-06-15); born on 16 June: n − 1.
    let exactly = |n: i16| band(Age::BirthDate(date(2026 - n, 6, 15)));
    let just_under = |n: i16| band(Age::BirthDate(date(2026 - n, 6, 16)));
    assert_eq!(exactly(0), "0-5");
    for (n, below, at) in [
        (6, "0-5", "6-12"),
        (13, "6-12", "13-15"),
        (16, "13-15", "16-19"),
        (20, "16-19", "20-44"),
        (45, "20-44", "45-66"),
        (67, "45-66", "67+"),
    ] {
        assert_eq!(just_under(n), below, "just under {n}");
        assert_eq!(exactly(n), at, "exactly {n}");
    }
    assert_eq!(exactly(110), "67+");
    assert_eq!(band(Age::Unknown), "unknown");
    // A birth year: the band holding both ends of the range, else unknown.
    let by_year = |n: i16| band(Age::BirthYear(2026 - n)); // n − 1 ..= n
    assert_eq!(by_year(5), "0-5");
    assert_eq!(by_year(6), "unknown"); // 5–6
    assert_eq!(by_year(7), "6-12");
    assert_eq!(by_year(12), "6-12");
    assert_eq!(by_year(13), "unknown");
    assert_eq!(by_year(15), "13-15");
    assert_eq!(by_year(16), "unknown");
    assert_eq!(by_year(19), "16-19");
    assert_eq!(by_year(20), "unknown");
    assert_eq!(by_year(44), "20-44");
    assert_eq!(by_year(45), "unknown");
    assert_eq!(by_year(66), "45-66");
    assert_eq!(by_year(67), "unknown");
    assert_eq!(by_year(68), "67+");
    assert_eq!(by_year(0), "0-5");
    // A future birth date is garbage: unknown.
    assert_eq!(band(Age::BirthDate(date(2027, 1, 1))), "unknown");
    assert_eq!(AgeBand::ALL.len(), 8);
}

#[test]
fn age_over_n_is_true_false_or_absent() {
    let p = release_policy(
        "[\"age_over_1\", \"age_over_13\", \"age_over_18\", \"age_over_130\"]",
        "",
    );
    let over = |age: Age| {
        released(&p, &card_subject("XX-B", age), None, DAY)
            .attributes
            .into_iter()
            .map(|(a, v)| format!("{}={}", a.name(), v.as_text()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // 18 on the day itself.
    assert_eq!(
        over(Age::BirthDate(date(2008, 6, 15))),
        "age_over_1=true age_over_13=true age_over_18=true age_over_130=false"
    );
    assert_eq!(
        over(Age::BirthDate(date(2008, 6, 16))),
        "age_over_1=true age_over_13=true age_over_18=false age_over_130=false"
    );
    // Born 2008: 17 or 18, so age_over_18 is undecidable and left out.
    assert_eq!(
        over(Age::BirthYear(2008)),
        "age_over_1=true age_over_13=true age_over_130=false"
    );
    // Born this year: 0, so age_over_1 is false.
    assert_eq!(
        over(Age::BirthYear(2026)),
        "age_over_1=false age_over_13=false age_over_18=false age_over_130=false"
    );
    // Born last year: 0 or 1.
    assert_eq!(
        over(Age::BirthYear(2025)),
        "age_over_1=false age_over_13=false age_over_18=false age_over_130=false"
            .replace("age_over_1=false ", "")
    );
    assert_eq!(over(Age::Unknown), "");
}

#[test]
fn nothing_outside_the_release_list_is_ever_released() {
    let all = [
        "pseudonym",
        "institution",
        "institution_name",
        "municipality",
        "affiliation",
        "age_band",
        "age_over_18",
    ];
    let key = vector_key();
    // Every single attribute alone, and pairs: exactly that set, in that order.
    for a in all {
        for b in all {
            let list = if a == b {
                format!("[\"{a}\"]")
            } else {
                format!("[\"{a}\", \"{b}\"]")
            };
            let p = release_policy(&list, "");
            let s = card_subject("NO-2390700", Age::BirthDate(date(1990, 5, 17)));
            let names: Vec<String> = released(&p, &s, Some(&key), DAY)
                .attributes
                .iter()
                .map(|(attr, _)| attr.name())
                .collect();
            let expected: Vec<String> = if a == b {
                vec![a.into()]
            } else {
                vec![a.into(), b.into()]
            };
            assert_eq!(names, expected, "{list}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loader: one test per error family
// ---------------------------------------------------------------------------------------

/// Makes the policy valid around a mistake: institution XX-A, link service s, entitlement.
const TAIL: &str = r#"
[[institution]]
id = "XX-A"
name = "A"
kind = "other"

[[service]]
id = "s"
name = "S"
access = "link"

[service.link]
url = "https://s.example/"

[[entitlement]]
institution = "XX-A"
service = "s"
from = 2025-01-01
"#;

#[test]
fn the_tail_alone_is_valid() {
    assert_eq!(warnings(TAIL), Vec::<String>::new());
}

#[test]
fn unknown_top_level_key() {
    assert_error(
        &format!("title = \"Vestfold\"\n{TAIL}"),
        "p.toml:1:1: error: unknown key \"title\" (a policy file holds [[institution]], \
         [[group]], [[service]] and [[entitlement]] tables)",
    );
    assert_error(
        &format!("[[instituton]]\nid = \"XX-B\"\n{TAIL}"),
        "p.toml:1:3: error: unknown key \"instituton\" (a policy file holds [[institution]], \
         [[group]], [[service]] and [[entitlement]] tables)",
    );
}

#[test]
fn single_brackets_instead_of_an_array_of_tables() {
    assert_error(
        "[group]\nid = \"g\"\nname = \"G\"\nmembers = []\n",
        "p.toml:1:1: error: \"group\" must be an array of tables: write [[group]], not [group]",
    );
    let e = fail_files(&[(
        "p.toml",
        &format!("{TAIL}\n[institution]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\n"),
    )]);
    // After [[institution]], a single [institution] is a TOML error itself: one line.
    let errs: Vec<String> = e.errors().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 1, "{e}");
    assert!(
        errs[0].starts_with("p.toml:20:2: error: invalid TOML: "),
        "{e}"
    );
}

#[test]
fn unknown_keys_in_every_table_kind_with_a_hint() {
    assert_error(
        &format!(
            "[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nnetwork = []\n{TAIL}"
        ),
        "p.toml:5:1: error: institution \"XX-B\": unknown key \"network\" (did you mean \"networks\"?)",
    );
    assert_error(
        &format!(
            "[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\ncolour = \"red\"\n{TAIL}"
        ),
        "p.toml:5:1: error: institution \"XX-B\": unknown key \"colour\"",
    );
    assert_error(
        &format!(
            "{TAIL}\n[[group]]\nid = \"g\"\nname = \"G\"\nmembers = [\"XX-A\"]\n  member = \"XX-A\"\n"
        ),
        "p.toml:24:3: error: group \"g\": unknown key \"member\" (did you mean \"members\"?)",
    );
    assert_error(
        &format!(
            "[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"link\"\nmin_ag = 3\n[service.link]\nurl = \"https://t.example/\"\n{TAIL}"
        ),
        "p.toml:5:1: error: service \"t\": unknown key \"min_ag\" (did you mean \"min_age\"?)",
    );
    assert_error(
        &format!("{TAIL}untill = 2025-12-31\n"),
        "p.toml:19:1: error: entitlement XX-A → s: unknown key \"untill\" (did you mean \"until\"?)",
    );
    assert_error(
        &format!(
            "[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"proxy\"\n[service.proxy]\norigin = \"https://t.example\"\norign = \"x\"\n{TAIL}"
        ),
        "p.toml:7:1: error: service \"t\" [service.proxy]: unknown key \"orign\" (did you mean \"origin\"?)",
    );
    assert_error(
        &format!(
            "[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"saml\"\n[service.saml]\nentity_id = \"e\"\nacs_url = \"https://t.example/acs\"\nstart = \"x\"\n{TAIL}"
        ),
        "p.toml:8:1: error: service \"t\" [service.saml]: unknown key \"start\"",
    );
    assert_error(
        &format!(
            "[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"oidc\"\n[service.oidc]\nclient_id = \"c\"\nredirect_uris = [\"https://t.example/cb\"]\nredirect_uri = \"https://t.example/cb\"\nstart_url = \"https://t.example/\"\npublic = true\n{TAIL}"
        ),
        "p.toml:8:1: error: service \"t\" [service.oidc]: unknown key \"redirect_uri\" (did you mean \"redirect_uris\"?)",
    );
    assert_error(
        &format!(
            "[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"link\"\n[service.link]\nurl = \"https://t.example/\"\nulr = \"x\"\n{TAIL}"
        ),
        "p.toml:7:1: error: service \"t\" [service.link]: unknown key \"ulr\" (did you mean \"url\"?)",
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        errors(&format!(
            "[[institution]]\nid = \"XX-B\"\nname = 5\nkind = \"other\"\nwalk_in = \"yes\"\nnetworks = \"192.0.2.0/24\"\naliases = [\"b\", 7]\n{TAIL}"
        )),
        vec![
            "p.toml:3:8: error: institution \"XX-B\": \"name\" must be a string, found an integer",
            "p.toml:5:11: error: institution \"XX-B\": \"walk_in\" must be true or false, found a string",
            "p.toml:6:12: error: institution \"XX-B\": \"networks\" must be an array of strings, found a string",
            "p.toml:7:17: error: institution \"XX-B\": each item of \"aliases\" must be a string, found an integer",
        ]
    );
    assert_error(
        &format!(
            "[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"link\"\nmin_age = \"15\"\n[service.link]\nurl = \"https://t.example/\"\n{TAIL}"
        ),
        "p.toml:5:11: error: service \"t\": \"min_age\" must be an integer, found a string",
    );
    assert_error(
        &format!("{TAIL}enabled = 1.5\n"),
        "p.toml:19:11: error: entitlement XX-A → s: \"enabled\" must be true or false, found a float",
    );
    assert_error(
        &TAIL.replace("from = 2025-01-01", "from = 20250101"),
        "p.toml:18:8: error: entitlement XX-A → s: \"from\" must be a date (2025-01-01), found an integer",
    );
    assert_error(
        &format!("[[institution]]\nid = [\"XX-B\"]\nname = \"B\"\nkind = \"other\"\n{TAIL}"),
        "p.toml:2:6: error: institution: \"id\" must be a string, found an array",
    );
    assert_error(
        "institution = [1]\n",
        "p.toml:1:16: error: each \"institution\" must be a table, found an integer",
    );
}

#[test]
fn missing_required_keys_are_reported_at_the_table() {
    assert_error(
        &format!("\n\n[[institution]]\nid = \"XX-B\"\nname = \"B\"\n{TAIL}"),
        "p.toml:3:1: error: institution \"XX-B\": missing required key \"kind\"",
    );
    assert_error(
        &format!("[[institution]]\nname = \"B\"\nkind = \"other\"\n{TAIL}"),
        "p.toml:1:1: error: institution: missing required key \"id\"",
    );
    assert_error(
        &format!("{TAIL}\n[[group]]\nid = \"g\"\nname = \"G\"\n"),
        "p.toml:20:1: error: group \"g\": missing required key \"members\"",
    );
    assert_error(
        &format!("{TAIL}\n[[service]]\nid = \"t\"\nname = \"T\"\n"),
        "p.toml:20:1: error: service \"t\": missing required key \"access\"",
    );
    assert_error(
        &format!("{TAIL}\n[[entitlement]]\ninstitution = \"XX-A\"\nservice = \"s\"\n"),
        "p.toml:20:1: error: entitlement XX-A → s: missing required key \"from\"",
    );
    assert_error(
        &format!("{TAIL}\n[[entitlement]]\ninstitution = \"XX-A\"\nfrom = 2025-01-01\n"),
        "p.toml:20:1: error: entitlement: missing required key \"service\"",
    );
    assert_error(
        &format!(
            "{TAIL}\n[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"proxy\"\n[service.proxy]\nhosts = []\n"
        ),
        "p.toml:24:1: error: service \"t\" [service.proxy]: missing required key \"origin\"",
    );
    assert_error(
        &format!("[[institution]]\nid = \"XX-B\"\nname = \"  \"\nkind = \"other\"\n{TAIL}"),
        "p.toml:3:8: error: institution \"XX-B\": \"name\" must not be empty",
    );
}

#[test]
fn institution_ids_must_be_isils() {
    let isil = |id: &str| {
        format!("[[institution]]\nid = \"{id}\"\nname = \"B\"\nkind = \"other\"\n{TAIL}")
    };
    for bad in [
        "no-2390500",
        "NO2390500",
        "N-1",
        "NO-",
        "NOR-1",
        "NO-123456789012",
        "NO-12 3",
        "NO-1_2",
    ] {
        assert_error(
            &isil(bad),
            &format!(
                "p.toml:2:6: error: institution \"{bad}\": \"{bad}\" is not an ISIL (two upper-case \
                 letters, -, then 1–11 of A-Z a-z 0-9 : / -, such as \"NO-2390700\")"
            ),
        );
    }
    for good in ["XX-1", "DE-Bo1:x/y-z", "XX-12345678901"] {
        load(&isil(good));
    }
}

#[test]
fn bad_kind_and_municipality() {
    assert_error(
        &format!("[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"library\"\n{TAIL}"),
        "p.toml:4:8: error: institution \"XX-B\": \"kind\" must be one of \"public_library\", \
         \"county_library\", \"school\" or \"other\", found \"library\"",
    );
    for bad in ["390", "39055", "39a5", " 3905"] {
        assert_error(
            &format!(
                "[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nmunicipality = \"{bad}\"\n{TAIL}"
            ),
            &format!(
                "p.toml:5:16: error: institution \"XX-B\": \"municipality\" must be a 4-digit \
                 municipality number, found \"{bad}\""
            ),
        );
    }
}

#[test]
fn duplicate_ids() {
    assert_error(
        &format!("{TAIL}\n[[institution]]\nid = \"XX-A\"\nname = \"A2\"\nkind = \"other\"\n"),
        "p.toml:20:1: error: institution \"XX-A\" is defined twice (first at p.toml:2:1)",
    );
    assert_error(
        &format!("{TAIL}\n{}{}", group("g", &["XX-A"]), group("g", &[])),
        "p.toml:25:1: error: group \"g\" is defined twice (first at p.toml:20:1)",
    );
    assert_error(
        &format!(
            "{TAIL}\n[[service]]\nid = \"s\"\nname = \"S2\"\naccess = \"link\"\n[service.link]\nurl = \"https://s2.example/\"\n"
        ),
        "p.toml:21:6: error: service \"s\" is defined twice (first at p.toml:7:1)",
    );
}

#[test]
fn aliases_and_realms_belong_to_one_institution() {
    assert_error(
        &format!(
            "{TAIL}\n[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\naliases = [\"bib\"]\n\
             [[institution]]\nid = \"XX-C\"\nname = \"C\"\nkind = \"other\"\naliases = [\"x\", \"bib\"]\n"
        ),
        "p.toml:29:17: error: institution \"XX-C\": alias \"bib\" is already used by institution \"XX-B\"",
    );
    // An alias may not be another institution's id or bare library number either.
    assert_eq!(
        errors(&format!(
            "{TAIL}\n[[institution]]\nid = \"NO-2390500\"\nname = \"B\"\nkind = \"public_library\"\n\
             [[institution]]\nid = \"XX-C\"\nname = \"C\"\nkind = \"other\"\naliases = [\"2390500\", \"XX-A\"]\n"
        )),
        vec![
            "p.toml:28:12: error: institution \"XX-C\": alias \"2390500\" is already used by institution \"NO-2390500\"",
            "p.toml:28:23: error: institution \"XX-C\": alias \"XX-A\" is already used by institution \"XX-A\"",
        ]
    );
    // An institution may repeat its own id or number as an alias.
    load(&format!(
        "{TAIL}\n[[institution]]\nid = \"NO-2390500\"\nname = \"B\"\nkind = \"public_library\"\naliases = [\"2390500\", \"NO-2390500\"]\n"
    ));
    assert_error(
        &format!(
            "{TAIL}\n[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nfeide_realms = [\"skole.example.no\"]\n\
             [[institution]]\nid = \"XX-C\"\nname = \"C\"\nkind = \"other\"\nfeide_realms = [\"Skole.Example.NO\"]\n"
        ),
        "p.toml:29:17: error: institution \"XX-C\": Feide realm \"skole.example.no\" is already \
         claimed by institution \"XX-B\"",
    );
    assert_error(
        &format!(
            "[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nfeide_realms = [\"kari@skole.no\"]\n{TAIL}"
        ),
        "p.toml:5:17: error: institution \"XX-B\": \"kari@skole.no\" is not a Feide realm (a \
         domain such as \"skole.no\", the part after @ of a Feide user id)",
    );
    let p = load(&format!(
        "[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nfeide_realms = [\"Skole.Example.NO\"]\n{TAIL}"
    ));
    assert_eq!(
        p.institution_for_realm("SKOLE.example.no")
            .map(|i| i.id.as_str()),
        Some("XX-B")
    );
}

#[test]
fn networks_with_host_bits_are_errors_and_bare_addresses_are_hosts() {
    let nets = |n: &str| {
        format!(
            "[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nnetworks = [{n}]\n{TAIL}"
        )
    };
    assert_error(
        &nets("\"192.0.2.1/24\""),
        "p.toml:5:13: error: institution \"XX-B\": network \"192.0.2.1/24\" has host bits set \
         (did you mean \"192.0.2.0/24\"?)",
    );
    assert_error(
        &nets("\"192.0.2.0/24\", \"2001:db8::1/32\""),
        "p.toml:5:29: error: institution \"XX-B\": network \"2001:db8::1/32\" has host bits set \
         (did you mean \"2001:db8::/32\"?)",
    );
    assert_error(
        &nets("\"192.0.2.0/33\""),
        "p.toml:5:13: error: institution \"XX-B\": \"192.0.2.0/33\" is not a network (write a \
         CIDR such as \"192.0.2.0/24\" or an address)",
    );
    let p = load(&nets("\"192.0.2.5\", \"2001:db8::5\""));
    let b = p.institution("XX-B").unwrap();
    assert_eq!(
        b.networks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["192.0.2.5/32", "2001:db8::5/128"]
    );
    let on = |a: &str| p.onsite_institution(ip(a)).map(|i| i.id.to_string());
    assert_eq!(on("192.0.2.5").as_deref(), Some("XX-B"));
    assert_eq!(on("192.0.2.4"), None);
    assert_eq!(on("2001:db8::5").as_deref(), Some("XX-B"));
    assert_eq!(on("2001:db8::6"), None);
}

#[test]
fn overlapping_networks_are_only_a_warning() {
    let text = format!(
        "{TAIL}\n[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nnetworks = [\"192.0.2.0/24\"]\n\
         [[institution]]\nid = \"XX-C\"\nname = \"C\"\nkind = \"other\"\nnetworks = [\"192.0.2.64/26\", \"198.51.100.0/24\"]\n"
    );
    assert_eq!(
        warnings(&text),
        vec![
            "p.toml:29:13: warning: institution \"XX-C\": network 192.0.2.64/26 overlaps \
             192.0.2.0/24 of institution \"XX-B\" (the longest prefix wins; on a tie, the \
             smallest id)"
        ]
    );
    let p = load(&text);
    assert_eq!(
        p.onsite_institution(ip("192.0.2.65"))
            .map(|i| i.id.as_str()),
        Some("XX-C")
    );
    // Networks of one institution may overlap each other without a warning.
    assert_eq!(
        warnings(&format!(
            "{TAIL}\n[[institution]]\nid = \"XX-B\"\nname = \"B\"\nkind = \"other\"\nnetworks = [\"192.0.2.0/24\", \"192.0.2.0/25\"]\n"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn service_ids_are_slugs() {
    let slug = |id: &str| {
        format!(
            "{TAIL}\n[[service]]\nid = \"{id}\"\nname = \"T\"\naccess = \"link\"\n[service.link]\nurl = \"https://t.example/\"\n"
        )
    };
    let long_ok = "a".repeat(40);
    let too_long = "a".repeat(41);
    for bad in ["Film", "film_bib", "-film", "film-", "", too_long.as_str()] {
        let e = errors(&slug(bad));
        let expected = if bad.is_empty() {
            "p.toml:21:6: error: service: \"id\" must not be empty".to_owned()
        } else {
            format!(
                "p.toml:21:6: error: service \"{bad}\": a service id is 1–40 of a-z, 0-9 and -, \
                 not starting or ending with - (it is also a host name label)"
            )
        };
        assert_eq!(e, vec![expected], "{bad:?}");
    }
    for good in ["a", "9", "film-bib-18", long_ok.as_str()] {
        load(&slug(good));
    }
}

#[test]
fn group_ids_are_slugs() {
    assert_error(
        &format!("{TAIL}\n{}", group("Vestfold", &["XX-A"])),
        "p.toml:21:6: error: group \"Vestfold\": a group id is a lower-case slug (a-z, 0-9 and -, \
         not starting or ending with -)",
    );
}

fn service_with(extra: &str) -> String {
    format!(
        "{TAIL}\n[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"link\"\n{extra}\n[service.link]\nurl = \"https://t.example/\"\n"
    )
}

#[test]
fn age_limits() {
    assert_error(
        &service_with("min_age = 16\nmax_age = 12"),
        "p.toml:25:11: error: service \"t\": min_age 16 > max_age 12",
    );
    load(&service_with("min_age = 12\nmax_age = 12"));
    load(&service_with("min_age = 0\nmax_age = 130"));
    assert_error(
        &service_with("min_age = 131"),
        "p.toml:24:11: error: service \"t\": \"min_age\" must be an integer from 0 to 130, found 131",
    );
    assert_error(
        &service_with("max_age = -1"),
        "p.toml:24:11: error: service \"t\": \"max_age\" must be an integer from 0 to 130, found -1",
    );
    // Any TOML integer form is an integer.
    for (form, n) in [
        ("0x0f", 15),
        ("0o17", 15),
        ("0b1111", 15),
        ("1_5", 15),
        ("+15", 15),
    ] {
        let p = load(&service_with(&format!("min_age = {form}")));
        assert_eq!(p.service("t").unwrap().min_age, Some(n), "{form}");
    }
    // Out of range, the value is quoted as written.
    assert_error(
        &service_with("min_age = 0xff"),
        "p.toml:24:11: error: service \"t\": \"min_age\" must be an integer from 0 to 130, found 0xff",
    );
}

#[test]
fn release_attributes() {
    let rel = |list: &str| service_with(&format!("release = {list}"));
    let msg = |a: &str, col: usize| {
        format!(
            "p.toml:24:{col}: error: service \"t\": \"{a}\" cannot be released (use \"pseudonym\", \
             \"institution\", \"institution_name\", \"municipality\", \"affiliation\" or \
             \"age_band\", or age_over_N with N from 1 to 130)"
        )
    };
    assert_error(&rel("[\"email\"]"), &msg("email", 12));
    assert_error(&rel("[\"age_over_0\"]"), &msg("age_over_0", 12));
    assert_error(&rel("[\"age_over_131\"]"), &msg("age_over_131", 12));
    assert_error(
        &rel("[\"pseudonym\", \"age_over_018\"]"),
        &msg("age_over_018", 25),
    );
    assert_error(&rel("[\"age_over_+18\"]"), &msg("age_over_+18", 12));
    assert_error(&rel("[\"birth_date\"]"), &msg("birth_date", 12));
    let p = load(&rel("[\"age_over_18\", \"age_over_1\", \"age_over_130\"]"));
    assert_eq!(
        p.service("t").unwrap().release,
        [
            Attribute::AgeOver(18),
            Attribute::AgeOver(1),
            Attribute::AgeOver(130)
        ]
    );
    // Twice is a warning, released once.
    let w = warnings(&(rel("[\"institution\", \"institution\"]") + &ent("XX-A", "t", "")));
    assert_eq!(
        w,
        ["p.toml:24:27: warning: service \"t\": \"institution\" is released twice"]
    );
}

#[test]
fn durations_and_rates() {
    let ttl = |s: &str| service_with(&format!("session_ttl = \"{s}\""));
    for bad in ["8 hours", "0h", "8", "h", "-1h", "1.5h", "8H", "1w"] {
        assert_error(
            &ttl(bad),
            &format!(
                "p.toml:24:15: error: service \"t\": \"session_ttl\" must be a duration such as \
                 \"30m\", \"8h\" or \"2d\", found \"{bad}\""
            ),
        );
    }
    for (good, secs) in [("30m", 1800), ("8h", 28_800), ("2d", 172_800), ("90s", 90)] {
        let p = load(&ttl(good));
        assert_eq!(
            p.service("t").unwrap().session_ttl,
            Some(std::time::Duration::from_secs(secs))
        );
    }
    let rate = |s: &str| service_with(&format!("rate_per_user = \"{s}\""));
    for bad in ["60/minute", "0/s", "60", "/min", "x/h", "-5/s", "60/d"] {
        assert_error(
            &rate(bad),
            &format!(
                "p.toml:24:17: error: service \"t\": \"rate_per_user\" must be \"N/s\", \"N/min\" \
                 or \"N/h\" with N at least 1, found \"{bad}\""
            ),
        );
    }
    for (good, count, per) in [("5/s", 5, 1), ("60/min", 60, 60), ("600/h", 600, 3600)] {
        let p = load(&rate(good));
        assert_eq!(
            p.service("t").unwrap().rate_per_user,
            Some(Rate {
                count,
                per: std::time::Duration::from_secs(per)
            })
        );
    }
}

fn service_text(access: &str, sub: &str) -> String {
    format!("{TAIL}\n[[service]]\nid = \"t\"\nname = \"T\"\naccess = \"{access}\"\n{sub}")
}

#[test]
fn access_mode_and_its_sub_table() {
    assert_error(
        &service_text("saml", ""),
        "p.toml:20:1: error: service \"t\": missing required key \"saml\"",
    );
    assert_error(
        &service_text("ftp", ""),
        "p.toml:23:10: error: service \"t\": \"access\" must be one of \"proxy\", \"saml\", \
         \"oidc\" or \"link\", found \"ftp\"",
    );
    assert_error(
        &service_text(
            "link",
            "[service.link]\nurl = \"https://t.example/\"\n[service.proxy]\norigin = \"https://t.example\"\n",
        ),
        "p.toml:26:10: error: service \"t\": [service.proxy] does not apply to access = \"link\"",
    );
    assert_error(
        &service_text("link", "link = \"https://t.example/\"\n"),
        "p.toml:24:8: error: service \"t\": \"link\" must be a table, found a string",
    );
    assert_error(
        &service_text("link", "[service.link]\nurl = \"ftp://t.example/\"\n"),
        "p.toml:25:7: error: service \"t\" [service.link]: \"url\" must be an absolute http:// \
         or https:// URL, found \"ftp://t.example/\"",
    );
}

#[test]
fn proxy_origins() {
    let proxy = |origin: &str| {
        service_text(
            "proxy",
            &format!("[service.proxy]\norigin = \"{origin}\"\n"),
        )
    };
    for bad in [
        "https://t.example/path",
        "https://t.example/?q=1",
        "https://t.example#f",
        "https://user@t.example",
        "https://t.example//",
    ] {
        assert_error(
            &proxy(bad),
            &format!(
                "p.toml:25:10: error: service \"t\" [service.proxy]: an origin is scheme, host and \
                 optional port only (no path, query, fragment or user), found \"{bad}\""
            ),
        );
    }
    assert_error(
        &proxy("ftp://t.example"),
        "p.toml:25:10: error: service \"t\" [service.proxy]: \"origin\" must be an absolute \
         http:// or https:// URL, found \"ftp://t.example\"",
    );
    for good in [
        "https://t.example",
        "http://127.0.0.1:8381",
        "https://t.example/",
    ] {
        load(&proxy(good));
    }
    assert_error(
        &service_text(
            "proxy",
            "[service.proxy]\norigin = \"https://t.example\"\nitem_paths = [\"/film/*x\"]\n",
        ),
        "p.toml:26:15: error: service \"t\" [service.proxy]: \"item_paths\" pattern \"/film/*x\": \
         * and ** must stand alone as a whole path segment",
    );
    assert_error(
        &service_text(
            "proxy",
            "[service.proxy]\norigin = \"https://t.example\"\nhosts = [\"https://t.example:443\"]\n",
        ),
        "p.toml:26:10: error: service \"t\" [service.proxy]: origin \"https://t.example:443\" is \
         listed twice",
    );
}

#[test]
fn saml_acs_url_must_be_https_except_on_loopback() {
    let saml = |acs: &str| {
        service_text(
            "saml",
            &format!("[service.saml]\nentity_id = \"https://t.example/md\"\nacs_url = \"{acs}\"\n"),
        )
    };
    assert_error(
        &saml("http://t.example/acs"),
        "p.toml:26:11: error: service \"t\" [service.saml]: \"acs_url\" must use https (http \
         only on loopback), found \"http://t.example/acs\"",
    );
    for good in [
        "https://t.example/acs",
        "http://127.0.0.1:8391/saml/acs",
        "http://[::1]:8391/acs",
        "http://localhost:8391/acs",
    ] {
        load(&saml(good));
    }
    assert_error(
        &service_text(
            "saml",
            "[service.saml]\nentity_id = \"e\"\nacs_url = \"https://t.example/acs\"\ncertificate = \"vendor.pem\"\n",
        ),
        "p.toml:27:15: error: service \"t\" [service.saml]: certificate files can only be read \
         from a policy directory",
    );
}

const SECRET: &str = "6247a79d1734ec92179cc9156fbdc5321bdc30386d0a0a8edba7fd082a74ef52";

fn oidc(id: &str, client: &str, auth: &str) -> String {
    format!(
        "\n[[service]]\nid = \"{id}\"\nname = \"T\"\naccess = \"oidc\"\n[service.oidc]\n\
         client_id = \"{client}\"\nredirect_uris = [\"https://t.example/cb\"]\n\
         start_url = \"https://t.example/\"\n{auth}\n"
    )
}

#[test]
fn oidc_clients() {
    let both = format!("client_secret_sha256 = \"{SECRET}\"\npublic = true");
    assert_error(
        &format!("{TAIL}{}", oidc("t", "c", &both)),
        "p.toml:24:1: error: service \"t\" [service.oidc]: give either \"client_secret_sha256\" \
         or public = true, not both",
    );
    assert_error(
        &format!("{TAIL}{}", oidc("t", "c", "")),
        "p.toml:24:1: error: service \"t\" [service.oidc]: a client needs \
         \"client_secret_sha256\", or public = true (PKCE)",
    );
    assert_error(
        &format!("{TAIL}{}", oidc("t", "c", "public = false")),
        "p.toml:24:1: error: service \"t\" [service.oidc]: a client needs \
         \"client_secret_sha256\", or public = true (PKCE)",
    );
    assert_error(
        &format!(
            "{TAIL}{}",
            oidc("t", "c", "client_secret_sha256 = \"demo-oidc-secret\"")
        ),
        "p.toml:28:24: error: service \"t\" [service.oidc]: \"client_secret_sha256\" must be 64 \
         hex digits (the SHA-256 of the secret, not the secret)",
    );
    let p = load(&format!(
        "{TAIL}{}",
        oidc(
            "t",
            "c",
            &format!("client_secret_sha256 = \"{}\"", SECRET.to_uppercase())
        )
    ));
    match &p.service("t").unwrap().access {
        Access::Oidc(o) => assert_eq!(o.client_secret_sha256.as_deref(), Some(SECRET)),
        other => panic!("{other:?}"),
    }
    let p = load(&format!("{TAIL}{}", oidc("t", "c", "public = true")));
    match &p.service("t").unwrap().access {
        Access::Oidc(o) => assert_eq!(o.client_secret_sha256, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn federation_identifiers_are_unique() {
    let saml = |id: &str, entity: &str| {
        format!(
            "\n[[service]]\nid = \"{id}\"\nname = \"T\"\naccess = \"saml\"\n[service.saml]\n\
             entity_id = \"{entity}\"\nacs_url = \"https://t.example/acs\"\n"
        )
    };
    assert_error(
        &format!(
            "{TAIL}{}{}",
            saml("t", "https://v.example/md"),
            saml("u", "https://v.example/md")
        ),
        "p.toml:33:13: error: service \"u\": SAML entity_id \"https://v.example/md\" is already \
         used by service \"t\"",
    );
    assert_error(
        &format!(
            "{TAIL}{}{}",
            oidc("t", "c1", "public = true"),
            oidc("u", "c1", "public = true")
        ),
        "p.toml:35:13: error: service \"u\": OIDC client_id \"c1\" is already used by service \"t\"",
    );
    // A SAML entity id and an OIDC client id live in different namespaces.
    load(&format!(
        "{TAIL}{}{}",
        saml("t", "x"),
        oidc("u", "x", "public = true")
    ));
}

#[test]
fn entitlement_names_exactly_one_of_institution_and_group() {
    assert_error(
        &format!(
            "{TAIL}\n{}\n[[entitlement]]\ninstitution = \"XX-A\"\ngroup = \"g\"\nservice = \"s\"\nfrom = 2025-01-01\n",
            group("g", &["XX-A"])
        ),
        "p.toml:26:1: error: entitlement: give exactly one of \"institution\" and \"group\", not both",
    );
    assert_error(
        &format!("{TAIL}\n[[entitlement]]\nservice = \"s\"\nfrom = 2025-01-01\n"),
        "p.toml:20:1: error: entitlement: missing \"institution\" or \"group\"",
    );
}

#[test]
fn unknown_references_with_hints() {
    assert_error(
        &format!("{TAIL}{}", ent("XX-AB", "s", "")),
        "p.toml:20:15: error: entitlement XX-AB → s: unknown institution \"XX-AB\" (did you mean \"XX-A\"?)",
    );
    assert_error(
        &format!("{TAIL}{}", ent("Tromsø", "s", "")),
        "p.toml:20:15: error: entitlement Tromsø → s: unknown institution \"Tromsø\"",
    );
    assert_eq!(
        errors(&format!(
            "[[institution]]\nid = \"NO-2390500\"\nname = \"T\"\nkind = \"public_library\"\naliases = [\"tonsberg-bib\"]\n{TAIL}{}{}",
            ent("tonsberg-bib", "s", ""),
            ent("2390500", "s", "")
        )),
        vec![
            "p.toml:25:15: error: entitlement tonsberg-bib → s: unknown institution \
             \"tonsberg-bib\" (that is an alias of \"NO-2390500\"; use the id here)",
            "p.toml:31:15: error: entitlement 2390500 → s: unknown institution \"2390500\" (that \
             is an alias of \"NO-2390500\"; use the id here)",
        ]
    );
    assert_error(
        &format!(
            "{TAIL}{}{}",
            group("vestfold", &["XX-A"]),
            ent("g:vestfol", "s", "")
        ),
        "p.toml:25:9: error: entitlement vestfol → s: unknown group \"vestfol\" (did you mean \"vestfold\"?)",
    );
    assert_error(
        &format!("{TAIL}{}", ent("XX-A", "ss", "")),
        "p.toml:21:11: error: entitlement XX-A → ss: unknown service \"ss\" (did you mean \"s\"?)",
    );
    assert_error(
        &format!("{TAIL}{}", group("g", &["XX-A", "XX-Q"])),
        "p.toml:22:20: error: group \"g\": unknown institution \"XX-Q\" (did you mean \"XX-A\"?)",
    );
}

#[test]
fn periods_and_dates() {
    let period = |extra: &str| format!("{TAIL}{}", ent("XX-A", "s", extra));
    assert_error(
        &period("from = 2025-02-01\nuntil = 2025-01-31"),
        "p.toml:23:9: error: entitlement XX-A → s: from 2025-02-01 > until 2025-01-31",
    );
    // One day is fine.
    load(&period("from = 2025-02-01\nuntil = 2025-02-01"));
    // TOML dates and strings are the same date.
    let a = load(&period("from = 2025-02-01\nuntil = 2025-03-01"));
    let b = load(&period("from = \"2025-02-01\"\nuntil = \"2025-03-01\""));
    let dates = |p: &Policy| {
        p.entitlements()
            .iter()
            .map(|e| (e.from, e.until))
            .collect::<Vec<_>>()
    };
    assert_eq!(dates(&a), dates(&b));
    assert_eq!(dates(&a)[1], (date(2025, 2, 1), Some(date(2025, 3, 1))));
    let msg = |key: &str, col: usize| {
        format!(
            "p.toml:22:{col}: error: entitlement XX-A → s: \"{key}\" must be a date written \
             YYYY-MM-DD, without a time"
        )
    };
    for bad in [
        "2025-02-01T00:00:00",
        "2025-02-01T00:00:00Z",
        "2025-02-01 10:00:00+01:00",
        "\"2025-2-1\"",
        "\"2025-02-30\"",
        "\"01.02.2025\"",
        "\"2025-02-01T00:00\"",
    ] {
        assert_error(&period(&format!("from = {bad}")), &msg("from", 8));
    }
    assert_error(&period("from = 2025-01-01\nuntil = \"snart\""), &{
        msg("until", 9).replace("p.toml:22:", "p.toml:23:")
    });
    // A time of day alone is a TOML date-time too.
    assert_error(&period("from = 10:00:00"), &msg("from", 8));
}

#[test]
fn invalid_toml_is_one_line() {
    let e = fail_files(&[("p.toml", "[[institution]]\nid = \"XX-A\nname = \"A\"\n")]);
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("p.toml:2:11: error: invalid TOML: "),
        "{text}"
    );
    assert_eq!(lines[1], "1 error");
    // A syntax error in one file does not make references into it "unknown" elsewhere.
    let e = fail_files(&[
        (
            "a.toml",
            "[[institution]]\nid = \"XX-B\"\nname = \"B\nkind = \"other\"\n",
        ),
        ("b.toml", &format!("{TAIL}{}", ent("XX-B", "s", ""))),
    ]);
    let errors: Vec<String> = e.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(
        errors[0].starts_with("a.toml:3:10: error: invalid TOML: "),
        "{e}"
    );
    assert!(e.to_string().ends_with("\n1 error"));
}

#[test]
fn a_broken_table_does_not_make_its_references_unknown() {
    // The service has a bad slug and no access: two errors on it, none on its entitlements.
    let text = format!(
        "{TAIL}\n[[service]]\nid = \"Film\"\nname = \"F\"\n{}{}",
        ent("XX-A", "Film", ""),
        ent("XX-A", "Film", "from = 2026-01-01")
    );
    assert_eq!(
        errors(&text),
        vec![
            "p.toml:20:1: error: service \"Film\": missing required key \"access\"",
            "p.toml:21:6: error: service \"Film\": a service id is 1–40 of a-z, 0-9 and -, not \
             starting or ending with - (it is also a host name label)",
        ]
    );
    // The same for a broken institution and a broken group.
    let text = format!(
        "{TAIL}\n[[institution]]\nid = \"XX-B\"\nname = \"B\"\n{}{}{}",
        group("g", &["XX-B"]),
        ent("XX-B", "s", ""),
        ent("g:h", "s", "")
    );
    assert_eq!(
        errors(&text),
        vec![
            "p.toml:20:1: error: institution \"XX-B\": missing required key \"kind\"",
            "p.toml:35:9: error: entitlement h → s: unknown group \"h\" (did you mean \"g\"?)",
        ]
    );
    let text = format!(
        "{TAIL}\n[[group]]\nid = \"g\"\nname = \"G\"\n{}",
        ent("g:g", "s", "")
    );
    assert_eq!(
        errors(&text),
        vec!["p.toml:20:1: error: group \"g\": missing required key \"members\""]
    );
}

#[test]
fn an_entitlement_with_a_broken_period_does_not_claim_its_service_is_unused() {
    // The only entitlement of `t` has a bad date: that is the one finding; `t` does have an
    // entitlement, so "has no entitlements" would send the reader the wrong way.
    let e = fail_files(&[(
        "p.toml",
        &format!(
            "{TAIL}{}{}",
            svc("t", ""),
            ent("XX-A", "t", "from = \"2025-13-01\"")
        ),
    )]);
    assert_eq!(
        e.to_string(),
        "p.toml:30:8: error: entitlement XX-A → t: \"from\" must be a date written YYYY-MM-DD, \
         without a time\n1 error"
    );
}

// ---------------------------------------------------------------------------------------
// Loader: many mistakes at once, and directories
// ---------------------------------------------------------------------------------------

/// Thirty mistakes in two files, one finding each.
const MISTAKES_A: &str = r#"title = "Vestfold"
[[institution]]
id = "no-2390100"
name = "Horten"
kind = "library"
municipality = "390"
networks = ["192.0.2.1/28", "192.0.2.300/24"]
walk_in = "yes"
colour = "blue"

[[institution]]
id = "XX-B"
name = "B"
kind = "other"
aliases = ["h", 5]
feide_realms = ["skole.example.no", "skole"]

[[institution]]
id = "XX-C"
name = "C"
kind = "other"
aliases = ["XX-B"]
feide_realms = ["SKOLE.example.no"]

[[institution]]
id = "XX-C"
name = "C again"
kind = "school"

[[group]]
id = "Vestfold"
name = "G"
members = ["XX-B", "XX-Q"]
"#;

const MISTAKES_B: &str = r#"[[service]]
id = "film_bib"
name = "F"
access = "link"
min_age = 18
max_age = 15
release = ["email", "age_over_0"]
session_ttl = "8 hours"
rate_per_user = "60/minute"
audience = ["patron", "visitor"]
[service.link]
url = "https://f.example/"
[service.proxy]
origin = "https://f.example/x"

[[service]]
id = "o"
name = "O"
access = "oidc"
[service.oidc]
client_id = "c"
redirect_uris = ["https://o.example/cb"]
start_url = "https://o.example/"

[[service]]
id = "l"
name = "L"
access = "link"

[[service]]
id = "v"
name = "V"
access = "saml"
[service.saml]
entity_id = "e"
acs_url = "http://v.example/acs"

[[entitlement]]
institution = "XX-B"
group = "Vestfold"
service = "o"
from = 2025-01-01

[[entitlement]]
institution = "XX-B"
service = "ebok"
from = 2025-06-01
until = 2025-01-01

[[entitlement]]
institution = "XX-C"
service = "l"
from = "2025-02-30"
"#;

#[test]
fn thirty_mistakes_give_thirty_lines_sorted() {
    // Given in reverse order: the report is sorted by file name, then position.
    let e = fail_files(&[("b.toml", MISTAKES_B), ("a.toml", MISTAKES_A)]);
    assert_eq!(e.error_count(), 30);
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let released = "cannot be released (use \"pseudonym\", \"institution\", \"institution_name\", \
                    \"municipality\", \"affiliation\" or \"age_band\", or age_over_N with N from 1 \
                    to 130)";
    let expected = [
        "a.toml:1:1: error: unknown key \"title\" (a policy file holds [[institution]], [[group]], [[service]] and [[entitlement]] tables)".to_owned(),
        "a.toml:3:6: error: institution \"no-2390100\": \"no-2390100\" is not an ISIL (two upper-case letters, -, then 1–11 of A-Z a-z 0-9 : / -, such as \"NO-2390700\")".to_owned(),
        "a.toml:5:8: error: institution \"no-2390100\": \"kind\" must be one of \"public_library\", \"county_library\", \"school\" or \"other\", found \"library\"".to_owned(),
        "a.toml:6:16: error: institution \"no-2390100\": \"municipality\" must be a 4-digit municipality number, found \"390\"".to_owned(),
        "a.toml:7:13: error: institution \"no-2390100\": network \"192.0.2.1/28\" has host bits set (did you mean \"192.0.2.0/28\"?)".to_owned(),
        "a.toml:7:29: error: institution \"no-2390100\": \"192.0.2.300/24\" is not a network (write a CIDR such as \"192.0.2.0/24\" or an address)".to_owned(),
        "a.toml:8:11: error: institution \"no-2390100\": \"walk_in\" must be true or false, found a string".to_owned(),
        "a.toml:9:1: error: institution \"no-2390100\": unknown key \"colour\"".to_owned(),
        "a.toml:15:17: error: institution \"XX-B\": each item of \"aliases\" must be a string, found an integer".to_owned(),
        "a.toml:16:37: error: institution \"XX-B\": \"skole\" is not a Feide realm (a domain such as \"skole.no\", the part after @ of a Feide user id)".to_owned(),
        "a.toml:22:12: error: institution \"XX-C\": alias \"XX-B\" is already used by institution \"XX-B\"".to_owned(),
        "a.toml:23:17: error: institution \"XX-C\": Feide realm \"skole.example.no\" is already claimed by institution \"XX-B\"".to_owned(),
        "a.toml:25:1: error: institution \"XX-C\" is defined twice (first at a.toml:18:1)".to_owned(),
        "a.toml:31:6: error: group \"Vestfold\": a group id is a lower-case slug (a-z, 0-9 and -, not starting or ending with -)".to_owned(),
        "a.toml:33:20: error: group \"Vestfold\": unknown institution \"XX-Q\" (did you mean \"XX-B\"?)".to_owned(),
        "b.toml:2:6: error: service \"film_bib\": a service id is 1–40 of a-z, 0-9 and -, not starting or ending with - (it is also a host name label)".to_owned(),
        "b.toml:6:11: error: service \"film_bib\": min_age 18 > max_age 15".to_owned(),
        format!("b.toml:7:12: error: service \"film_bib\": \"email\" {released}"),
        format!("b.toml:7:21: error: service \"film_bib\": \"age_over_0\" {released}"),
        "b.toml:8:15: error: service \"film_bib\": \"session_ttl\" must be a duration such as \"30m\", \"8h\" or \"2d\", found \"8 hours\"".to_owned(),
        "b.toml:9:17: error: service \"film_bib\": \"rate_per_user\" must be \"N/s\", \"N/min\" or \"N/h\" with N at least 1, found \"60/minute\"".to_owned(),
        "b.toml:10:23: error: service \"film_bib\": unknown audience \"visitor\" (use \"patron\", \"student\", \"staff\" or \"walk_in\")".to_owned(),
        "b.toml:13:10: error: service \"film_bib\": [service.proxy] does not apply to access = \"link\"".to_owned(),
        "b.toml:20:1: error: service \"o\" [service.oidc]: a client needs \"client_secret_sha256\", or public = true (PKCE)".to_owned(),
        "b.toml:25:1: error: service \"l\": missing required key \"link\"".to_owned(),
        "b.toml:36:11: error: service \"v\" [service.saml]: \"acs_url\" must use https (http only on loopback), found \"http://v.example/acs\"".to_owned(),
        "b.toml:38:1: error: entitlement: give exactly one of \"institution\" and \"group\", not both".to_owned(),
        "b.toml:46:11: error: entitlement XX-B → ebok: unknown service \"ebok\"".to_owned(),
        "b.toml:48:9: error: entitlement XX-B → ebok: from 2025-06-01 > until 2025-01-01".to_owned(),
        "b.toml:53:8: error: entitlement XX-C → l: \"from\" must be a date written YYYY-MM-DD, without a time".to_owned(),
    ];
    assert_eq!(expected.len(), 30);
    assert_eq!(lines.len(), 31, "{text}");
    for (got, want) in lines.iter().zip(&expected) {
        assert_eq!(got, want, "\n{text}");
    }
    assert_eq!(lines[30], "30 errors");
}

#[test]
fn load_dir_of_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = load_dir(&missing).err().unwrap();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!(
            "{}: error: cannot read the policy directory: ",
            missing.display()
        )),
        "{text}"
    );
    assert_eq!(lines[1], "1 error");
}

#[test]
fn load_dir_without_policy_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("README.md"), "# not a policy").unwrap();
    std::fs::write(tmp.path().join("policy.toml.bak"), TAIL).unwrap();
    std::fs::create_dir(tmp.path().join("dir.toml")).unwrap();
    let e = load_dir(tmp.path()).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: error: no policy files: the directory has no *.toml files\n1 error",
            tmp.path().display()
        )
    );
}

#[test]
fn load_dir_reports_a_non_utf8_file_with_its_position() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.toml"), TAIL).unwrap();
    let mut bad = b"[[institution]]\nid = \"XX-\xf8\"\nname = \"B\"\nkind = \"other\"\n".to_vec();
    bad.extend_from_slice(
        b"[[entitlement]]\ninstitution = \"XX-Q\"\nservice = \"s\"\nfrom = 2025-01-01\n",
    );
    std::fs::write(tmp.path().join("b.toml"), bad).unwrap();
    let e = load_dir(tmp.path()).err().unwrap();
    let file = tmp.path().join("b.toml");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:10: error: the file is not UTF-8 text (save it as UTF-8)\n1 error",
            file.display()
        )
    );
}

#[test]
fn load_dir_reads_only_toml_files_in_name_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Written in reverse order; read as 10-…, 20-…, 30-….
    std::fs::write(
        d.join("30-entitlements.toml"),
        ent("XX-A", "s", "from = 2025-03-01") + &ent("XX-B", "s", "from = 2025-03-02"),
    )
    .unwrap();
    std::fs::write(
        d.join("20-more.toml"),
        inst("XX-B", "") + &ent("XX-A", "s", "from = 2025-02-01"),
    )
    .unwrap();
    std::fs::write(d.join("10-base.toml"), TAIL).unwrap();
    std::fs::write(d.join("notes.txt"), "not toml at all [[[").unwrap();
    std::fs::write(d.join("old.toml.orig"), "garbage = [").unwrap();
    std::fs::write(d.join("TOML"), "garbage = [").unwrap();
    std::fs::create_dir(d.join("sub.toml")).unwrap();
    std::fs::write(d.join("sub.toml").join("x.toml"), "garbage = [").unwrap();
    let (p, warnings) = match load_dir(d) {
        Ok(x) => x,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(warnings, vec![]);
    let froms: Vec<Date> = p.entitlements().iter().map(|e| e.from).collect();
    assert_eq!(
        froms,
        [
            date(2025, 1, 1),
            date(2025, 2, 1),
            date(2025, 3, 1),
            date(2025, 3, 2)
        ]
    );
    // A duplicate names the file read first as the first definition.
    std::fs::write(d.join("05-dup.toml"), inst("XX-B", "")).unwrap();
    let e = load_dir(d).err().unwrap();
    let first = d.join("05-dup.toml").display().to_string();
    let second = d.join("20-more.toml").display().to_string();
    assert_eq!(
        e.to_string(),
        format!(
            "{second}:1:1: error: institution \"XX-B\" is defined twice (first at {first}:1:1)\n1 error"
        )
    );
}

// ---------------------------------------------------------------------------------------
// The demo policy
// ---------------------------------------------------------------------------------------

fn demo() -> Policy {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/policy"));
    match load_dir(dir) {
        Ok((p, warnings)) => {
            assert_eq!(warnings, vec![], "the demo policy has warnings");
            p
        }
        Err(e) => panic!("the demo policy does not load:\n{e}"),
    }
}

#[test]
fn demo_policy_loads_cleanly() {
    let p = demo();
    assert_eq!(
        p.summary().to_string(),
        "10 institutions, 3 groups, 9 services, 16 entitlements"
    );
    assert_eq!(
        p.institution_for_realm("nottero-vgs.example.no")
            .map(|i| i.id.as_str()),
        Some("NO-3391101")
    );
}

#[test]
fn demo_decisions_match_its_readme() {
    let p = demo();
    let day = date(2025, 9, 1);
    let r = |s: &Subject, service: &str, client: Option<&str>| run(&p, s, service, client, day);
    let horten = patron(&["NO-2390100"]);
    let adult = |i: &str| aged(patron(&[i]), Age::BirthDate(date(1990, 5, 17)));
    let w = Subject::walk_in();
    // ebok through the national-agreement group.
    assert_eq!(r(&horten, "ebok", None), "permit NO-2390100");
    assert_eq!(r(&patron(&["vfk-bib"]), "ebok", None), "permit NO-2390590");
    // avis: walk-ins at Sandefjord, not at Tønsberg.
    assert_eq!(r(&w, "avis", Some("192.0.2.65")), "permit NO-2390700");
    assert_eq!(r(&w, "avis", Some("2001:db8:3907::1")), "permit NO-2390700");
    assert_eq!(
        r(&w, "avis", Some("192.0.2.49")),
        "deny audience_not_allowed"
    );
    assert_eq!(r(&patron(&["2390500"]), "avis", None), "permit NO-2390500");
    // filmbib: 15 years.
    let teen = aged(patron(&["NO-2390500"]), Age::BirthDate(date(2012, 1, 1)));
    assert_eq!(r(&teen, "filmbib", None), "deny age_below_min");
    let by_year = aged(patron(&["NO-2390500"]), Age::BirthYear(2010));
    assert_eq!(r(&by_year, "filmbib", None), "deny age_unverified");
    assert_eq!(
        r(&adult("NO-2390500"), "filmbib", None),
        "permit NO-2390500"
    );
    // filmbib-18: expired at Horten, switched off at Larvik, fine at Sandefjord.
    assert_eq!(
        r(&adult("horten-bib"), "filmbib-18", None),
        "deny outside_period"
    );
    assert_eq!(
        run(
            &p,
            &adult("horten-bib"),
            "filmbib-18",
            None,
            date(2024, 12, 31)
        ),
        "permit NO-2390100"
    );
    assert_eq!(
        r(&adult("larvik-bib"), "filmbib-18", None),
        "deny entitlement_suspended"
    );
    assert_eq!(
        r(&adult("sandefjord-bib"), "filmbib-18", None),
        "permit NO-2390700"
    );
    assert_eq!(
        r(&adult("NO-2391100"), "filmbib-18", None),
        "deny not_subscribed"
    );
    // rettskilden: on-site only, except for the county library's patrons.
    assert_eq!(r(&horten, "rettskilden", None), "deny onsite_only");
    assert_eq!(
        r(&horten, "rettskilden", Some("192.0.2.17")),
        "permit NO-2390100"
    );
    assert_eq!(
        r(&w, "rettskilden", Some("192.0.2.50")),
        "permit NO-2390500"
    );
    assert_eq!(
        r(&w, "rettskilden", Some("192.0.2.18")),
        "deny not_subscribed"
    );
    assert_eq!(
        r(&patron(&["vfk-bib"]), "rettskilden", None),
        "permit NO-2390590"
    );
    // Horten patron in the county library: credited to the county library.
    assert_eq!(
        r(&horten, "rettskilden", Some("192.0.2.113")),
        "permit NO-2390590"
    );
    // fagportalen: students; staff only at Nøtterøy.
    let student = subject(Affiliation::Student, &["NO-3390701"]);
    let staff_n = subject(Affiliation::Staff, &["NO-3391101"]);
    let staff_s = subject(Affiliation::Staff, &["NO-3390701"]);
    assert_eq!(r(&student, "fagportalen", None), "permit NO-3390701");
    assert_eq!(r(&staff_n, "fagportalen", None), "permit NO-3391101");
    assert_eq!(
        r(&staff_s, "fagportalen", None),
        "deny audience_not_allowed"
    );
    assert_eq!(
        run(&p, &student, "fagportalen", None, date(2025, 7, 31)),
        "deny outside_period"
    );
    // lokalhistorie is open to walk-ins; lesehulen stops at 12.
    assert_eq!(
        r(&w, "lokalhistorie", Some("192.0.2.70")),
        "permit NO-2390700"
    );
    let thirteen = aged(patron(&["NO-2390100"]), Age::BirthDate(date(2012, 9, 1)));
    assert_eq!(r(&thirteen, "lesehulen", None), "deny age_above_max");
    let twelve = aged(patron(&["NO-2390100"]), Age::BirthDate(date(2012, 9, 2)));
    assert_eq!(r(&twelve, "lesehulen", None), "permit NO-2390100");
    // emagasin: the emergency brake.
    assert_eq!(r(&horten, "emagasin", None), "deny service_suspended");
}

#[test]
fn demo_release_shares_the_filmbib_sector() {
    let p = demo();
    let day = date(2025, 9, 1);
    let s = Subject {
        key: SubjectKey::new("card:NO-2390700:12345678"),
        affiliation: Affiliation::Patron,
        institutions: vec![InstitutionId::from("NO-2390700")],
        age: Age::BirthDate(date(1990, 5, 17)),
    };
    let key = vector_key();
    let rel = |service: &str| {
        let permit = permit_of(decide(&p, &s, service, None, noon(day)));
        release(&p, &permit, &s, Some(&key)).attributes
    };
    let film = rel("filmbib");
    let film18 = rel("filmbib-18");
    assert_eq!(film[0].0, Attribute::Pseudonym);
    assert_eq!(film[0], film18[0]);
    assert_eq!(film18[2], (Attribute::AgeOver(18), Value::Bool(true)));
    assert_eq!(film[2], (Attribute::AgeBand, text("20-44")));
    assert_eq!(
        rel("ebok")[0],
        (
            Attribute::Pseudonym,
            text("wsjo7zg7ncm2hv5g3637l5tuh4p5yvwu")
        )
    );
    assert_eq!(
        rel("avis"),
        vec![
            (
                Attribute::Pseudonym,
                text(key.pairwise("avis", &s.key).expose())
            ),
            (Attribute::Institution, text("NO-2390700")),
            (Attribute::Municipality, text("3907")),
        ]
    );
    // A link service sends nothing (the link handler never calls release), whatever its
    // (default) release list says.
    assert!(matches!(
        p.service("lokalhistorie").unwrap().access,
        Access::Link { .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Property tests over small random policies
// ---------------------------------------------------------------------------------------

mod props {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    const CASES: u32 = 200;

    /// The first day that periods and decisions are counted from.
    const BASE: Date = date(2026, 1, 1);

    fn day(offset: i64) -> Date {
        BASE.checked_add(jiff::Span::new().days(offset)).unwrap()
    }

    /// A network inside 192.0.2.0/24: (network's last octet, prefix length).
    type Net = (u8, u8);

    fn last_octet_mask(len: u8) -> u8 {
        ((0xffu32 << (32 - u32::from(len))) & 0xff) as u8
    }

    fn contains(net: Net, octet: u8) -> bool {
        octet & last_octet_mask(net.1) == net.0
    }

    #[derive(Clone, Debug)]
    struct MInst {
        nets: Vec<Net>,
        walk_in: bool,
    }

    #[derive(Clone, Debug)]
    struct MSvc {
        enabled: bool,
        min_age: Option<u8>,
        max_age: Option<u8>,
        /// Bit i: `Affiliation::ALL[i]`.
        audience: u8,
        onsite: bool,
        /// Written out when not empty; else the default list.
        release: Vec<String>,
    }

    #[derive(Clone, Debug)]
    struct MEnt {
        /// An institution index, or `None` for the group.
        inst: Option<usize>,
        service: usize,
        from: i64,
        until: Option<i64>,
        enabled: bool,
        audience: Option<u8>,
        onsite: Option<bool>,
    }

    #[derive(Clone, Debug)]
    struct Model {
        insts: Vec<MInst>,
        /// Bit i: institution i is a member of group "g".
        members: u8,
        svcs: Vec<MSvc>,
        ents: Vec<MEnt>,
    }

    #[derive(Clone, Debug)]
    struct Case {
        model: Model,
        aff: Affiliation,
        /// Names of institutions (see `refs_of`): an id, an alias, or an unknown name.
        refs: Vec<usize>,
        age: Age,
        service: usize,
        /// `Some(x)`: 192.0.2.x; `None` with `other_ip`: 198.51.100.7; else no address.
        octet: Option<u8>,
        other_ip: bool,
        day: i64,
    }

    fn aff_bit(a: Affiliation) -> u8 {
        let i = Affiliation::ALL.iter().position(|x| *x == a).unwrap();
        1 << i
    }

    fn audience_toml(mask: u8) -> String {
        let names: Vec<String> = Affiliation::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, a)| format!("\"{}\"", a.as_str()))
            .collect();
        format!("[{}]", names.join(", "))
    }

    fn id(i: usize) -> String {
        format!("XX-I{i}")
    }

    fn render(m: &Model) -> String {
        let mut s = String::new();
        for (i, inst) in m.insts.iter().enumerate() {
            let nets: Vec<String> = inst
                .nets
                .iter()
                .map(|(b, l)| format!("\"192.0.2.{b}/{l}\""))
                .collect();
            s += &format!(
                "[[institution]]\nid = \"{}\"\nname = \"I{i}\"\nkind = \"other\"\n\
                 aliases = [\"alias{i}\"]\nnetworks = [{}]\nwalk_in = {}\n\n",
                id(i),
                nets.join(", "),
                inst.walk_in
            );
        }
        let members: Vec<String> = (0..m.insts.len())
            .filter(|i| m.members & (1 << i) != 0)
            .map(|i| format!("\"{}\"", id(i)))
            .collect();
        s += &format!(
            "[[group]]\nid = \"g\"\nname = \"G\"\nmembers = [{}]\n\n",
            members.join(", ")
        );
        for (j, svc) in m.svcs.iter().enumerate() {
            s += &format!(
                "[[service]]\nid = \"s{j}\"\nname = \"S{j}\"\naccess = \"link\"\nenabled = {}\n\
                 audience = {}\nlocation = \"{}\"\n",
                svc.enabled,
                audience_toml(svc.audience),
                if svc.onsite { "onsite" } else { "anywhere" }
            );
            if let Some(n) = svc.min_age {
                s += &format!("min_age = {n}\n");
            }
            if let Some(n) = svc.max_age {
                s += &format!("max_age = {n}\n");
            }
            if !svc.release.is_empty() {
                let quoted: Vec<String> = svc.release.iter().map(|a| format!("\"{a}\"")).collect();
                s += &format!("release = [{}]\n", quoted.join(", "));
            }
            s += &format!("[service.link]\nurl = \"https://s{j}.example/\"\n\n");
        }
        for (k, e) in m.ents.iter().enumerate() {
            s += "[[entitlement]]\n";
            s += &match e.inst {
                Some(i) => format!("institution = \"{}\"\n", id(i)),
                None => "group = \"g\"\n".to_owned(),
            };
            // Both date forms, alternately.
            let quote = if k % 2 == 0 { "" } else { "\"" };
            s += &format!(
                "service = \"s{}\"\nfrom = {quote}{}{quote}\nenabled = {}\n",
                e.service,
                day(e.from),
                e.enabled
            );
            if let Some(u) = e.until {
                s += &format!("until = {}\n", day(u));
            }
            if let Some(a) = e.audience {
                s += &format!("audience = {}\n", audience_toml(a));
            }
            if let Some(o) = e.onsite {
                s += &format!("location = \"{}\"\n", if o { "onsite" } else { "anywhere" });
            }
            s += "\n";
        }
        s
    }

    fn build(m: &Model) -> Policy {
        let text = render(m);
        match load_files(vec![("p.toml".into(), text.clone())]) {
            Ok((p, _)) => p,
            Err(e) => panic!("generated policy did not load:\n{e}\n{text}"),
        }
    }

    fn refs_of(c: &Case) -> Vec<String> {
        let n = c.model.insts.len();
        c.refs
            .iter()
            .map(|&r| match r % 5 {
                0 | 1 => id(r / 5 % n),
                2 | 3 => format!("alias{}", r / 5 % n),
                _ => "XX-NOPE".to_owned(),
            })
            .collect()
    }

    fn subject_of(c: &Case) -> Subject {
        Subject {
            key: SubjectKey::new("card:XX-I0:1"),
            affiliation: c.aff,
            institutions: refs_of(c)
                .iter()
                .map(|r| InstitutionId::from(r.as_str()))
                .collect(),
            age: c.age,
        }
    }

    fn client(c: &Case) -> Option<IpAddr> {
        match (c.octet, c.other_ip) {
            (Some(x), _) => Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, x))),
            (None, true) => Some(ip("198.51.100.7")),
            (None, false) => None,
        }
    }

    fn decide_case(p: &Policy, c: &Case) -> Decision {
        decide(
            p,
            &subject_of(c),
            &format!("s{}", c.service),
            client(c),
            noon(day(c.day)),
        )
    }

    // --- A reference model of docs/policy.md, written from its text -------------------------

    fn onsite_of(m: &Model, octet: Option<u8>) -> Option<usize> {
        let x = octet?;
        let mut best: Option<(u8, usize)> = None;
        for (i, inst) in m.insts.iter().enumerate() {
            for &net in &inst.nets {
                // Longer prefix wins; institutions are visited in id order, so on a tie
                // the first (smallest id) stays.
                if contains(net, x) && best.is_none_or(|(len, _)| net.1 > len) {
                    best = Some((net.1, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn ref_age(age: Age, today: Date) -> Option<(i32, i32)> {
        let ty = i32::from(today.year());
        match age {
            Age::Unknown => None,
            Age::BirthDate(b) => {
                if b > today {
                    return None;
                }
                let had_birthday = (today.month(), today.day()) >= (b.month(), b.day());
                let years = ty - i32::from(b.year()) - i32::from(!had_birthday);
                Some((years, years))
            }
            Age::BirthYear(y) => {
                let high = ty - i32::from(y);
                (high >= 0).then_some(((high - 1).max(0), high))
            }
        }
    }

    /// `Ok(institution index)` or `Err(reason)`.
    fn reference(c: &Case) -> Result<usize, DenyReason> {
        let m = &c.model;
        let svc = &m.svcs[c.service];
        if !svc.enabled {
            return Err(DenyReason::ServiceSuspended);
        }
        let today = day(c.day);
        let onsite = onsite_of(m, c.octet);
        let mut candidates: Vec<usize> = Vec::new();
        if c.aff == Affiliation::WalkIn {
            candidates.extend(onsite.filter(|&o| m.insts[o].walk_in));
        } else {
            candidates.extend(onsite);
            let n = m.insts.len();
            for &r in &c.refs {
                let idx = match r % 5 {
                    0..=3 => Some(r / 5 % n),
                    _ => None,
                };
                if let Some(i) = idx
                    && !candidates.contains(&i)
                {
                    candidates.push(i);
                }
            }
        }
        let mut best: Option<(u8, DenyReason)> = None;
        for &cand in &candidates {
            let result = check(m, svc, c, cand, onsite, today);
            match result {
                Ok(()) => return Ok(cand),
                Err((stage, reason)) => {
                    if best.is_none_or(|(s, _)| stage > s) {
                        best = Some((stage, reason));
                    }
                }
            }
        }
        Err(best.map_or(DenyReason::NotSubscribed, |(_, r)| r))
    }

    fn check(
        m: &Model,
        svc: &MSvc,
        c: &Case,
        cand: usize,
        onsite: Option<usize>,
        today: Date,
    ) -> Result<(), (u8, DenyReason)> {
        let for_pair: Vec<&MEnt> = m
            .ents
            .iter()
            .filter(|e| {
                e.service == c.service
                    && match e.inst {
                        Some(i) => i == cand,
                        None => m.members & (1 << cand) != 0,
                    }
            })
            .collect();
        if for_pair.is_empty() {
            return Err((1, DenyReason::NotSubscribed));
        }
        let holding: Vec<&&MEnt> = for_pair
            .iter()
            .filter(|e| day(e.from) <= today && e.until.is_none_or(|u| today <= day(u)))
            .collect();
        if holding.is_empty() {
            return Err((1, DenyReason::OutsidePeriod));
        }
        let active: Vec<&&&MEnt> = holding.iter().filter(|e| e.enabled).collect();
        if active.is_empty() {
            return Err((1, DenyReason::EntitlementSuspended));
        }
        let location_ok = |e: &MEnt| !e.onsite.unwrap_or(svc.onsite) || onsite == Some(cand);
        let audience_ok = |e: &MEnt| e.audience.unwrap_or(svc.audience) & aff_bit(c.aff) != 0;
        if !active.iter().any(|e| location_ok(e) && audience_ok(e)) {
            return Err(if active.iter().any(|e| location_ok(e)) {
                (3, DenyReason::AudienceNotAllowed)
            } else {
                (2, DenyReason::OnsiteOnly)
            });
        }
        if svc.min_age.is_none() && svc.max_age.is_none() {
            return Ok(());
        }
        let Some((low, high)) = ref_age(c.age, today) else {
            return Err((4, DenyReason::AgeUnverified));
        };
        let mut reason = None;
        if let Some(min) = svc.min_age.map(i32::from) {
            let (lo_ok, hi_ok) = (low >= min, high >= min);
            reason = match (lo_ok, hi_ok) {
                (true, true) => None,
                (false, false) => Some(DenyReason::AgeBelowMin),
                _ => Some(DenyReason::AgeUnverified),
            };
        }
        if reason.is_none()
            && let Some(max) = svc.max_age.map(i32::from)
        {
            reason = match (low <= max, high <= max) {
                (true, true) => None,
                (false, false) => Some(DenyReason::AgeAboveMax),
                _ => Some(DenyReason::AgeUnverified),
            };
        }
        reason.map_or(Ok(()), |r| Err((4, r)))
    }

    // --- Strategies -----------------------------------------------------------------

    fn net() -> impl Strategy<Value = Net> {
        (prop_oneof![3 => 24u8..=27, 1 => 28u8..=32], any::<u8>())
            .prop_map(|(len, x)| (x & last_octet_mask(len), len))
    }

    fn inst() -> impl Strategy<Value = MInst> {
        (prop::collection::vec(net(), 0..=2), any::<bool>())
            .prop_map(|(nets, walk_in)| MInst { nets, walk_in })
    }

    fn svc() -> impl Strategy<Value = MSvc> {
        (
            prop::bool::weighted(0.95),
            prop::option::weighted(0.4, 0u8..=20),
            prop::option::weighted(0.3, 0u8..=20),
            1u8..16,
            prop::bool::weighted(0.3),
        )
            .prop_map(|(enabled, min, max, audience, onsite)| {
                let (min_age, max_age) = match (min, max) {
                    (Some(a), Some(b)) if a > b => (Some(b), Some(a)),
                    other => other,
                };
                MSvc {
                    enabled,
                    min_age,
                    max_age,
                    audience,
                    onsite,
                    release: Vec::new(),
                }
            })
    }

    fn ent() -> impl Strategy<Value = MEnt> {
        (
            prop::option::weighted(0.75, 0usize..4),
            0usize..2,
            0i64..30,
            prop::option::weighted(0.5, 0i64..30),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.3, 0u8..16),
            prop::option::weighted(0.3, any::<bool>()),
        )
            .prop_map(
                |(inst, service, from, len, enabled, audience, onsite)| MEnt {
                    inst,
                    service,
                    from,
                    until: len.map(|l| from + l),
                    enabled,
                    audience,
                    onsite,
                },
            )
    }

    fn model() -> impl Strategy<Value = Model> {
        (
            prop::collection::vec(inst(), 1..=3),
            any::<u8>(),
            prop::collection::vec(svc(), 1..=2),
            prop::collection::vec(ent(), 0..=10),
        )
            .prop_map(|(insts, members, svcs, mut ents)| {
                let n = insts.len();
                for e in &mut ents {
                    e.inst = e.inst.map(|i| i % n);
                    e.service %= svcs.len();
                }
                Model {
                    members: members & ((1u8 << n) - 1),
                    insts,
                    svcs,
                    ents,
                }
            })
    }

    fn age() -> impl Strategy<Value = Age> {
        prop_oneof![
            Just(Age::Unknown),
            // Ages up to 21, around the services' limits (0 to 20).
            (2005i16..=2027).prop_map(Age::BirthYear),
            (2005i16..=2026, 1i8..=12, 1i8..=28)
                .prop_map(|(y, m, d)| Age::BirthDate(date(y, m, d))),
            Just(Age::BirthDate(date(2012, 2, 29))),
        ]
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            model(),
            prop_oneof![
                2 => Just(Affiliation::Patron),
                2 => Just(Affiliation::Student),
                2 => Just(Affiliation::Staff),
                1 => Just(Affiliation::WalkIn),
            ],
            prop::collection::vec(0usize..15, 1..=3),
            age(),
            0usize..2,
            prop::option::weighted(0.6, any::<u8>()),
            any::<bool>(),
            0i64..45,
        )
            .prop_map(|(model, aff, refs, age, service, octet, other_ip, day)| {
                let service = service % model.svcs.len();
                Case {
                    model,
                    aff,
                    refs,
                    age,
                    service,
                    octet,
                    other_ip,
                    day,
                }
            })
    }

    /// The age limits and releases of real services, and ages on either side of them.
    const LIMITS: [u8; 7] = [0, 6, 13, 15, 16, 18, 20];
    const OVER: [u8; 4] = [1, 6, 13, 18];

    fn limit() -> impl Strategy<Value = Option<u8>> {
        prop::option::weighted(0.7, prop::sample::select(LIMITS.to_vec()))
    }

    fn age_near_limits() -> impl Strategy<Value = Age> {
        let years = (prop::sample::select(LIMITS.to_vec()), -1i16..=1)
            .prop_map(|(l, d)| 2026 - i16::from(l) + d);
        prop_oneof![
            1 => Just(Age::Unknown),
            3 => years.clone().prop_map(Age::BirthYear),
            4 => (years, 1i8..=12, 1i8..=31).prop_map(|(y, m, d)| {
                Age::BirthDate(date(y, m, d.min(28)))
            }),
            1 => prop::sample::select(vec![2008i16, 2012])
                .prop_map(|y| Age::BirthDate(date(y, 2, 29))),
        ]
    }

    /// One institution with an active entitlement, a service with random age limits that
    /// releases the age attributes, a patron of any age, any day of 2026.
    fn age_case() -> impl Strategy<Value = Case> {
        (limit(), limit(), age_near_limits(), 0i64..365).prop_map(|(a, b, age, day)| {
            let (min_age, max_age) = match (a, b) {
                (Some(a), Some(b)) if a > b => (Some(b), Some(a)),
                other => other,
            };
            let mut release = vec!["age_band".to_owned()];
            release.extend(OVER.iter().map(|n| format!("age_over_{n}")));
            Case {
                model: Model {
                    insts: vec![MInst {
                        nets: vec![],
                        walk_in: false,
                    }],
                    members: 0,
                    svcs: vec![MSvc {
                        enabled: true,
                        min_age,
                        max_age,
                        audience: 0b1111,
                        onsite: false,
                        release,
                    }],
                    ents: vec![MEnt {
                        inst: Some(0),
                        service: 0,
                        from: 0,
                        until: None,
                        enabled: true,
                        audience: None,
                        onsite: None,
                    }],
                },
                aff: Affiliation::Patron,
                refs: vec![0],
                age,
                service: 0,
                octet: None,
                other_ip: false,
                day,
            }
        })
    }

    fn ref_band(low: i32, high: i32) -> &'static str {
        let band = |y: i32| match y {
            0..=5 => "0-5",
            6..=12 => "6-12",
            13..=15 => "13-15",
            16..=19 => "16-19",
            20..=44 => "20-44",
            45..=66 => "45-66",
            _ => "67+",
        };
        if band(low) == band(high) {
            band(low)
        } else {
            "unknown"
        }
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: CASES,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// The engine agrees with a direct reading of docs/policy.md on every generated case.
        #[test]
        fn decide_matches_the_reference_model(c in case()) {
            let p = build(&c.model);
            let got = outcome(&decide_case(&p, &c));
            let want = match reference(&c) {
                Ok(i) => format!("permit {}", id(i)),
                Err(r) => format!("deny {r}"),
            };
            prop_assert_eq!(got, want, "policy:\n{}", render(&c.model));
        }

        /// Age limits, `age_band` and `age_over_N` agree with the reference on ages around
        /// the limits, on every day of a year.
        #[test]
        fn ages_match_the_reference_model(c in age_case()) {
            let p = build(&c.model);
            let d = decide_case(&p, &c);
            let want = match reference(&c) {
                Ok(i) => format!("permit {}", id(i)),
                Err(r) => format!("deny {r}"),
            };
            prop_assert_eq!(outcome(&d), want);
            // Release on a service without limits, same person and day.
            let mut open = c.clone();
            open.model.svcs[0].min_age = None;
            open.model.svcs[0].max_age = None;
            let p = build(&open.model);
            let permit = permit_of(decide_case(&p, &open));
            let got: Vec<String> = release(&p, &permit, &subject_of(&open), None)
                .attributes
                .iter()
                .map(|(a, v)| format!("{}={}", a.name(), v.as_text()))
                .collect();
            let range = ref_age(c.age, day(c.day));
            let mut want = vec![format!(
                "age_band={}",
                range.map_or("unknown", |(lo, hi)| ref_band(lo, hi))
            )];
            for n in OVER {
                let n32 = i32::from(n);
                match range {
                    Some((lo, _)) if lo >= n32 => want.push(format!("age_over_{n}=true")),
                    Some((_, hi)) if hi < n32 => want.push(format!("age_over_{n}=false")),
                    _ => {}
                }
            }
            prop_assert_eq!(got, want);
        }

        /// (a) The same inputs give the same decision, also from a second load of the
        /// same text.
        #[test]
        fn decide_is_deterministic(c in case()) {
            let p = build(&c.model);
            let first = decide_case(&p, &c);
            prop_assert_eq!(&first, &decide_case(&p, &c));
            prop_assert_eq!(&first, &decide_case(&build(&c.model), &c));
        }

        /// (b) A permit goes to a candidate with an active entitlement for the service.
        #[test]
        fn a_permit_is_a_candidate_with_an_active_entitlement(c in case()) {
            let p = build(&c.model);
            let Decision::Permit(permit) = decide_case(&p, &c) else {
                return Ok(());
            };
            let m = &c.model;
            let i = (0..m.insts.len())
                .find(|&i| id(i) == permit.institution.as_str())
                .unwrap();
            let onsite = p
                .onsite_institution(client(&c).unwrap_or(ip("203.0.113.1")))
                .map(|x| x.id.to_string());
            let is_onsite = onsite.as_deref() == Some(permit.institution.as_str());
            prop_assert_eq!(permit.onsite, is_onsite);
            if c.aff == Affiliation::WalkIn {
                prop_assert!(is_onsite && m.insts[i].walk_in);
            } else {
                let named = refs_of(&c).iter().any(|r| {
                    p.institution(r).map(|x| x.id.as_str()) == Some(permit.institution.as_str())
                });
                prop_assert!(is_onsite || named);
            }
            let today = day(c.day);
            prop_assert_eq!(permit.day, today);
            prop_assert_eq!(permit.service.as_str(), format!("s{}", c.service));
            prop_assert!(m.svcs[c.service].enabled);
            let active = m.ents.iter().any(|e| {
                e.service == c.service
                    && e.enabled
                    && day(e.from) <= today
                    && e.until.is_none_or(|u| today <= day(u))
                    && match e.inst {
                        Some(x) => x == i,
                        None => m.members & (1 << i) != 0,
                    }
            });
            prop_assert!(active, "policy:\n{}", render(m));
        }

        /// (c) Taking away an entitlement never turns a deny into a permit.
        #[test]
        fn removing_an_entitlement_never_permits_more(c in case()) {
            let p = build(&c.model);
            if decide_case(&p, &c).is_permit() {
                return Ok(());
            }
            for k in 0..c.model.ents.len() {
                let mut fewer = c.clone();
                fewer.model.ents.remove(k);
                let d = decide_case(&build(&fewer.model), &fewer);
                prop_assert!(!d.is_permit(), "removing entitlement {} permits:\n{}", k, render(&c.model));
            }
        }

        /// (d) A new network elsewhere does not change the decision for a client off it.
        #[test]
        fn adding_a_network_elsewhere_changes_nothing(c in case(), extra in net(), who in 0usize..4) {
            if c.octet.is_some_and(|x| contains(extra, x)) {
                return Ok(());
            }
            let p = build(&c.model);
            let mut more = c.clone();
            let who = who % more.model.insts.len();
            more.model.insts[who].nets.push(extra);
            let q = build(&more.model);
            prop_assert_eq!(decide_case(&p, &c), decide_case(&q, &more));
        }

        /// The loader never panics on damaged text, and every error has a position in it.
        #[test]
        fn damaged_policies_are_reported_not_panicked(
            c in case(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..12), 1..4),
        ) {
            let mut text: Vec<char> = render(&c.model).chars().collect();
            for (at, what) in edits {
                let i = at.index(text.len() + 1);
                let insert = ['[', ']', '"', '=', ',', '\n', '#', 'ø', '{', ' '];
                match insert.get(what) {
                    Some(ch) => text.insert(i, *ch),
                    None if i < text.len() => {
                        text.remove(i);
                    }
                    None => {}
                }
            }
            let text: String = text.into_iter().collect();
            let lines = text.lines().count().max(1);
            if let Err(e) = load_files(vec![("p.toml".into(), text.clone())]) {
                prop_assert!(e.error_count() >= 1);
                for d in &e.diagnostics {
                    let (line, col) = d.position.unwrap();
                    prop_assert!(line >= 1 && line <= lines + 1 && col >= 1, "{} in\n{}", d, text);
                }
            }
        }
    }
}

mod host_labels {
    use super::*;

    fn proxied(id: &str, hosts: &str) -> String {
        format!(
            "[[service]]\nid = \"{id}\"\nname = \"Svc {id}\"\naccess = \"proxy\"\n\
             [service.proxy]\norigin = \"https://{id}.vendor.example\"\nhosts = [{hosts}]\n\n"
        )
    }

    #[test]
    fn each_origin_of_a_proxied_service_has_a_label() {
        let p = load(&format!(
            "{}{}{}",
            inst("XX-A", ""),
            proxied(
                "avis",
                "\"https://cdn.vendor.example\", \"https://img.vendor.example:8443\""
            ),
            ent("XX-A", "avis", "")
        ));
        let (s, _, o) = p.proxy_origin("avis").unwrap();
        assert_eq!(
            (s.id.as_str(), o.as_str()),
            ("avis", "https://avis.vendor.example/")
        );
        assert_eq!(
            p.proxy_origin("avis--1").unwrap().2.as_str(),
            "https://cdn.vendor.example/"
        );
        assert_eq!(
            p.proxy_origin("avis--2").unwrap().2.as_str(),
            "https://img.vendor.example:8443/"
        );
        assert!(p.proxy_origin("avis--3").is_none());
        assert!(p.proxy_origin("avis--0").is_none());
    }

    #[test]
    fn link_services_have_no_host() {
        let p = load(&format!(
            "{}{}{}",
            inst("XX-A", ""),
            svc("arkiv", ""),
            ent("XX-A", "arkiv", "")
        ));
        assert!(p.proxy_origin("arkiv").is_none());
    }

    #[test]
    fn a_service_id_may_not_be_another_services_host_label() {
        let e = errors(&format!(
            "{}{}{}{}{}",
            inst("XX-A", ""),
            proxied("avis", "\"https://cdn.vendor.example\""),
            svc("avis--1", ""),
            ent("XX-A", "avis", ""),
            ent("XX-A", "avis--1", "")
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(
                "service \"avis--1\": the id is also the host label of origin 1 of service \"avis\""
            ),
            "{e:?}"
        );
    }
}
