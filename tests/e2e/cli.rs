//! The offline commands as an operator runs them: `portvakt check-policy` and
//! `portvakt decide`, through the real binary, checking stdout, stderr and exit codes.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn portvakt(args: &[&str]) -> Output {
    Command::new(crate::support::PORTVAKT)
        .args(args)
        .output()
        .expect("portvakt runs")
}

fn demo_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn decide(extra: &[&str]) -> (i32, serde_json::Value, String) {
    let policy = demo_policy();
    let mut args = vec!["decide", "--policy", policy.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = portvakt(&args);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let json = serde_json::from_str(&stdout).expect("valid JSON");
    (out.status.code().unwrap(), json, text(&out.stderr))
}

#[test]
fn the_demo_policy_checks_clean() {
    let out = portvakt(&["check-policy", demo_policy().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok: ")
            && stdout.contains(" institutions, ")
            && stdout.ends_with(" entitlements\n"),
        "{stdout}"
    );
    assert_eq!(text(&out.stderr), "", "no warnings in the demo policy");
}

#[test]
fn a_broken_policy_lists_every_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[[institution]]\nid = \"NO-2390700\"\nname = \"Sandefjord\"\nkind = \"library\"\n\n\
         [[service]]\nid = \"filmbib\"\nname = \"Filmbib\"\naccess = \"link\"\nmin_age = 18\nmax_age = 15\n\
         [service.link]\nurl = \"https://film.example/\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[[entitlement]]\ninstitution = \"NO-2390700\"\nservice = \"filmbob\"\nfrom = 2025-01-01\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy file").unwrap();
    let out = portvakt(&["check-policy", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let a = dir.path().join("a.toml").display().to_string();
    let b = dir.path().join("b.toml").display().to_string();
    assert_eq!(
        lines,
        vec![
            format!(
                "{a}:4:8: error: institution \"NO-2390700\": \"kind\" must be one of \"public_library\", \"county_library\", \"school\" or \"other\", found \"library\""
            ),
            format!(
                "{a}:6:1: warning: service \"filmbib\" has no entitlements, so nobody can use it"
            ),
            format!("{a}:11:11: error: service \"filmbib\": min_age 18 > max_age 15"),
            format!(
                "{b}:3:11: error: entitlement NO-2390700 → filmbob: unknown service \"filmbob\" (did you mean \"filmbib\"?)"
            ),
            "3 errors".to_owned(),
        ]
    );
}

#[test]
fn unreadable_policies_say_so_in_one_line() {
    let out = portvakt(&["check-policy", "/nonexistent/policy"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/policy: error: cannot read the policy directory"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().unwrap();
    let out = portvakt(&["check-policy", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no policy files"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.toml"), b"id = \"\xff\"\n").unwrap();
    std::fs::write(dir.path().join("y.toml"), "[[service]\n").unwrap();
    let out = portvakt(&["check-policy", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("x.toml:1:7: error: the file is not UTF-8"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("y.toml:1:") && lines[1].contains("error: invalid TOML"),
        "{stderr}"
    );
    assert_eq!(lines[2], "2 errors");
}

#[test]
fn decide_permits_with_exit_0_and_the_release() {
    let (code, json, _) = decide(&[
        "--service",
        "avis",
        "--institution",
        "NO-2390700",
        "--at",
        "2026-06-01",
    ]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["decision"], "permit");
    assert_eq!(json["service"], "avis");
    assert_eq!(json["institution"], "NO-2390700");
    assert_eq!(json["onsite"], false);
    assert_eq!(json["release"]["institution"], "NO-2390700");
}

#[test]
fn decide_denies_with_exit_2_reason_and_message() {
    let (code, json, _) = decide(&[
        "--service",
        "filmbib-18",
        "--institution",
        "NO-2390500",
        "--birth-date",
        "2010-05-01",
        "--at",
        "2026-06-01",
    ]);
    assert_eq!(code, 2);
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["reason"], "age_below_min");
    assert!(json["message"].as_str().unwrap().contains("aldersgrense"));

    let (code, json, _) = decide(&["--service", "no-such-service"]);
    assert_eq!(
        (code, json["reason"].as_str()),
        (2, Some("unknown_service"))
    );
}

#[test]
fn decide_walk_in_on_site_network() {
    // Sandefjord's network is 192.0.2.64/28 and it allows walk-ins.
    let (code, json, _) = decide(&[
        "--service",
        "rettskilden",
        "--affiliation",
        "walk_in",
        "--ip",
        "192.0.2.70",
        "--at",
        "2026-06-01",
    ]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["onsite"], true);
    let (code, json, _) = decide(&[
        "--service",
        "rettskilden",
        "--affiliation",
        "walk_in",
        "--ip",
        "203.0.113.200",
        "--at",
        "2026-06-01",
    ]);
    assert_eq!((code, json["reason"].as_str()), (2, Some("not_subscribed")));
}

#[test]
fn decide_shows_the_published_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pseudonym.key");
    std::fs::write(&key, (0u8..32).collect::<Vec<u8>>()).unwrap();
    // ebok releases the pseudonym; its sector is its id.
    let (code, json, stderr) = decide(&[
        "--service",
        "ebok",
        "--institution",
        "NO-2390700",
        "--at",
        "2026-06-01",
        "--subject",
        "card:NO-2390700:12345678",
        "--pseudonym-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{json} {stderr}");
    assert_eq!(
        json["release"]["pseudonym"],
        "wsjo7zg7ncm2hv5g3637l5tuh4p5yvwu"
    );

    std::fs::write(&key, b"too short").unwrap();
    let policy = demo_policy();
    let out = portvakt(&[
        "decide",
        "--policy",
        policy.to_str().unwrap(),
        "--service",
        "ebok",
        "--subject",
        "x",
        "--pseudonym-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("at least 32"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_mistakes_are_one_line_and_exit_1() {
    for args in [
        vec!["decide", "--policy", "policy"],
        vec![
            "decide",
            "--policy",
            "policy",
            "--service",
            "x",
            "--affiliation",
            "king",
        ],
        vec![
            "decide",
            "--policy",
            "policy",
            "--service",
            "x",
            "--birth-date",
            "2001-01-01",
            "--birth-year",
            "2001",
        ],
        vec!["frobnicate"],
    ] {
        let out = portvakt(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    let policy = demo_policy();
    for bad in [
        ["--ip", "1.2.3"],
        ["--at", "yesterday"],
        ["--birth-date", "2001-13-01"],
    ] {
        let mut args = vec![
            "decide",
            "--policy",
            policy.to_str().unwrap(),
            "--service",
            "avis",
        ];
        args.extend_from_slice(&bad);
        let out = portvakt(&args);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert_eq!(text(&out.stderr).lines().count(), 1);
    }
}

#[test]
fn keys_generate_makes_private_files_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let r = portvakt(&["keys", "generate", "--out", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    for (name, len) in [
        ("pseudonym.key", Some(32)),
        ("session.key", Some(32)),
        ("signing.key", None),
        ("signing.crt", None),
    ] {
        let meta = std::fs::metadata(out.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        if let Some(len) = len {
            assert_eq!(meta.len(), len, "{name}");
        }
    }
    // A second run never replaces a pseudonym key.
    let before = std::fs::read(out.join("pseudonym.key")).unwrap();
    let r = portvakt(&["keys", "generate", "--out", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(text(&r.stderr).lines().count(), 1, "{}", text(&r.stderr));
    assert_eq!(std::fs::read(out.join("pseudonym.key")).unwrap(), before);
}

#[test]
fn serve_refuses_to_start_without_keys_or_on_a_broken_policy() {
    let dir = tempfile::tempdir().unwrap();
    // No config file at all: every default, and one line on the missing key.
    let r = Command::new(crate::support::PORTVAKT)
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let stderr = text(&r.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("portvakt keys generate"), "{stderr}");

    // A short key is refused with its size.
    std::fs::write(dir.path().join("p.key"), b"short").unwrap();
    std::fs::create_dir(dir.path().join("policy")).unwrap();
    std::fs::write(
        dir.path().join("policy/a.toml"),
        "[[service]]\nid = \"x\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("portvakt.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[keys]\npseudonym_key_file = \"p.key\"\n",
    )
    .unwrap();
    let config = dir.path().join("portvakt.toml");
    let r = portvakt(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("at least 32"),
        "{}",
        text(&r.stderr)
    );

    // A broken policy: the gateway does not start, and says every error.
    std::fs::write(dir.path().join("p.key"), [5u8; 32]).unwrap();
    let r = portvakt(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    let stderr = text(&r.stderr);
    assert!(
        stderr.contains("will not start on a broken policy"),
        "{stderr}"
    );
    assert!(
        stderr.contains("a.toml:1:1: error: service \"x\": missing required key \"name\""),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn the_demo_runs_and_a_demo_card_logs_in() {
    use std::io::{BufRead, BufReader, Read, Write};
    // From a directory with no files at all: the demo brings its own policy.
    let empty = tempfile::tempdir().unwrap();
    let mut child = Command::new(crate::support::PORTVAKT)
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .current_dir(empty.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let host = loop {
        let line = lines.next().expect("the demo prints its banner").unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.trim().strip_prefix("Start page:") {
            break rest
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
        }
    };
    // Up to the line that names the policy directory, which comes after the cards.
    for line in lines.by_ref().take(40) {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.trim().starts_with("Policy:") {
            break;
        }
    }
    // The bundled policy, written out where the banner says, to be edited and reloaded.
    let policy_dir = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("Policy:"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the banner names the policy directory:\n{banner}"));
    for file in [
        "institutions.toml",
        "groups.toml",
        "services.toml",
        "entitlements.toml",
    ] {
        assert!(policy_dir.join(file).is_file(), "{file} in {banner}");
    }
    assert!(
        banner.contains("10000001") && banner.contains("1234"),
        "{banner}"
    );
    assert!(banner.contains("fixed, public pseudonym key"), "{banner}");
    let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let send = |req: String| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let page = send(format!(
        "GET /login HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ));
    let nonce = page
        .split("portvakt-login=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let body =
        format!("library=NO-2390700&card=10000001&pin=1234&csrf={csrf}&service=lokalhistorie");
    let reply = send(format!(
        "POST /login HTTP/1.1\r\nHost: {host}\r\nCookie: portvakt-login={nonce}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    // A clean stop removes the policy's temporary directory again.
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = child.wait().unwrap();
    assert!(reply.starts_with("HTTP/1.1 303"), "{reply}");
    assert!(reply.contains("location: /go/lokalhistorie"), "{reply}");
    assert!(status.success(), "{status}");
    assert!(
        !policy_dir.exists(),
        "{} is left behind",
        policy_dir.display()
    );
}

#[test]
fn the_demo_refuses_a_broken_policy_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "[[service]]\nid = \"x\"\n").unwrap();
    let out = portvakt(&[
        "demo",
        "--port",
        "0",
        "--admin-port",
        "0",
        "--policy",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("a.toml:1:1: error: service \"x\": missing required key \"name\""),
        "{stderr}"
    );
    // Printed as the policy's own lines, not after another "error: ".
    assert!(!stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
