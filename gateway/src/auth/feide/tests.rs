use std::path::Path;

use jiff::civil::date;
use serde_json::json;

use std::time::Duration;

use policy::Policy;
use policy::subject::{Affiliation, Age};

use super::claims::{parse_birth_date, parse_birth_year};
use super::http::{FeideHttp, HttpError};
use super::*;
use crate::config::feide::{FeideSettings, FileFeide, check_url};

fn claims(v: serde_json::Value) -> FeideClaims {
    serde_json::from_value(v).unwrap()
}

fn demo_policy() -> Policy {
    policy::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy"))
        .unwrap()
        .0
}

#[test]
fn the_feide_name_comes_from_userid_sec_and_is_lower_cased() {
    let id = identity(
        &claims(json!({
            "sub": "76a7a061",
            "https://n.feide.no/claims/userid_sec": ["nin:01010112345", "feide:Kari@Nottero-VGS.example.no"],
            "https://n.feide.no/claims/eduPersonPrincipalName": "other@elsewhere.no",
            "eduPersonAffiliation": ["member", "student"],
            "norEduPersonBirthDate": "20080315",
        })),
        None,
    )
    .unwrap();
    assert_eq!(id.user_id, "kari@nottero-vgs.example.no");
    assert_eq!(id.realm(), "nottero-vgs.example.no");
    assert_eq!(
        id.subject_key().expose(),
        "feide:kari@nottero-vgs.example.no"
    );
    assert_eq!(id.affiliation, Some(Affiliation::Student));
    assert_eq!(id.age, Age::BirthDate(date(2008, 3, 15)));
}

#[test]
fn principal_names_are_the_fallback_in_order() {
    let id = identity(
        &claims(json!({"https://n.feide.no/claims/eduPersonPrincipalName": "ola@skole.no"})),
        None,
    )
    .unwrap();
    assert_eq!(id.user_id, "ola@skole.no");
    let id = identity(
        &claims(json!({"eduPersonPrincipalName": "per@skole.no"})),
        None,
    )
    .unwrap();
    assert_eq!(id.user_id, "per@skole.no");
    // Only in the extended userinfo.
    let id = identity(
        &claims(json!({"sub": "x"})),
        Some(&claims(json!({"eduPersonPrincipalName": ["liv@skole.no"]}))),
    )
    .unwrap();
    assert_eq!(id.user_id, "liv@skole.no");
    // A malformed first candidate is skipped for a good later one.
    let id = identity(
        &claims(json!({
            "https://n.feide.no/claims/userid_sec": ["feide:no-realm", "feide:a@b@c"],
            "eduPersonPrincipalName": "ok@skole.no",
        })),
        None,
    )
    .unwrap();
    assert_eq!(id.user_id, "ok@skole.no");
}

#[test]
fn no_usable_user_id_is_an_error() {
    for v in [
        json!({}),
        json!({"https://n.feide.no/claims/userid_sec": ["nin:01010112345"]}),
        json!({"eduPersonPrincipalName": "@skole.no"}),
        json!({"eduPersonPrincipalName": "kari@"}),
        json!({"eduPersonPrincipalName": "ka ri@skole.no"}),
        json!({"eduPersonPrincipalName": 42}),
    ] {
        assert!(
            matches!(
                identity(&claims(v.clone()), None),
                Err(FeideError::NoUserId)
            ),
            "{v}"
        );
    }
}

#[test]
fn affiliation_rules_student_then_staff_else_nothing() {
    let aff = |v: serde_json::Value| {
        identity(
            &claims(json!({"eduPersonPrincipalName": "a@b.no", "eduPersonAffiliation": v})),
            None,
        )
        .unwrap()
        .affiliation
    };
    assert_eq!(
        aff(json!(["employee", "student"])),
        Some(Affiliation::Student)
    );
    assert_eq!(aff(json!(["employee", "member"])), Some(Affiliation::Staff));
    assert_eq!(aff(json!(["faculty"])), Some(Affiliation::Staff));
    assert_eq!(aff(json!("staff")), Some(Affiliation::Staff));
    assert_eq!(aff(json!([" Student "])), Some(Affiliation::Student));
    assert_eq!(aff(json!(["student@b.no"])), Some(Affiliation::Student));
    assert_eq!(aff(json!(["member", "affiliate"])), None);
    assert_eq!(aff(json!([])), None);
    assert_eq!(aff(json!(null)), None);
    // Extended userinfo adds to what userinfo said.
    let id = identity(
        &claims(json!({"eduPersonPrincipalName": "a@b.no", "eduPersonAffiliation": ["member"]})),
        Some(&claims(json!({"eduPersonAffiliation": ["employee"]}))),
    )
    .unwrap();
    assert_eq!(id.affiliation, Some(Affiliation::Staff));
}

#[test]
fn age_from_birth_date_then_year_and_the_directory_wins() {
    let age = |u: serde_json::Value, x: Option<serde_json::Value>| {
        let mut u = u;
        u["eduPersonPrincipalName"] = json!("a@b.no");
        let x = x.map(claims);
        identity(&claims(u), x.as_ref()).unwrap().age
    };
    assert_eq!(
        age(json!({"feideYearOfBirth": 2009}), None),
        Age::BirthYear(2009)
    );
    assert_eq!(
        age(json!({"feideYearOfBirth": "2009"}), None),
        Age::BirthYear(2009)
    );
    assert_eq!(
        age(
            json!({"norEduPersonBirthDate": "20090101", "feideYearOfBirth": 2009}),
            Some(json!({"norEduPersonBirthDate": ["20081231"]}))
        ),
        Age::BirthDate(date(2008, 12, 31))
    );
    // An old DDMMYY value or an impossible date is not guessed at.
    assert_eq!(
        age(json!({"norEduPersonBirthDate": "280889"}), None),
        Age::Unknown
    );
    assert_eq!(
        age(
            json!({"norEduPersonBirthDate": "20080230", "feideYearOfBirth": 2008}),
            None
        ),
        Age::BirthYear(2008)
    );
    assert_eq!(age(json!({}), None), Age::Unknown);
}

#[test]
fn birth_date_and_year_parsing_is_strict() {
    assert_eq!(parse_birth_date("20080315"), Some(date(2008, 3, 15)));
    assert_eq!(parse_birth_date("20080229"), Some(date(2008, 2, 29)));
    for bad in [
        "20070229",
        "2008-03-15",
        "280889",
        "2008031",
        "+2008031",
        "",
    ] {
        assert_eq!(parse_birth_date(bad), None, "{bad}");
    }
    assert_eq!(parse_birth_year("2008"), Some(2008));
    for bad in ["08", "1899", "20o8", "-200", "20081"] {
        assert_eq!(parse_birth_year(bad), None, "{bad}");
    }
}

#[test]
fn the_realm_picks_the_institution_and_affiliation_must_give_service() {
    let policy = demo_policy();
    let id = FeideIdentity {
        user_id: "kari@nottero-vgs.example.no".into(),
        affiliation: Some(Affiliation::Student),
        age: Age::BirthYear(2008),
    };
    let subject = subject_for(&id, &policy).unwrap();
    let inst = policy
        .institution_for_realm("nottero-vgs.example.no")
        .unwrap();
    assert_eq!(subject.institutions, vec![inst.id.clone()]);
    assert_eq!(subject.affiliation, Affiliation::Student);
    assert_eq!(subject.key.expose(), "feide:kari@nottero-vgs.example.no");
    assert_eq!(subject.age, Age::BirthYear(2008));

    let unknown = FeideIdentity {
        user_id: "kari@ukjent-skole.example.no".into(),
        ..id.clone()
    };
    assert_eq!(subject_for(&unknown, &policy), Err(Refusal::UnknownRealm));
    let member = FeideIdentity {
        affiliation: None,
        ..id
    };
    assert_eq!(
        subject_for(&member, &policy),
        Err(Refusal::NoAffiliation {
            institution: inst.id.clone()
        })
    );
}

#[test]
fn nothing_about_the_person_reaches_debug() {
    let id = FeideIdentity {
        user_id: "kari@nottero-vgs.example.no".into(),
        affiliation: Some(Affiliation::Student),
        age: Age::BirthDate(date(2008, 3, 15)),
    };
    let dbg = format!("{id:?}");
    assert!(!dbg.contains("kari"), "{dbg}");
    assert!(!dbg.contains("2008"), "{dbg}");
    assert!(dbg.contains("nottero-vgs.example.no"), "{dbg}");
    let c = claims(json!({"eduPersonPrincipalName": "kari@skole.no"}));
    assert!(!format!("{c:?}").contains("kari"));
}

fn file_feide(text: &str) -> FileFeide {
    toml::from_str(text).unwrap()
}

#[test]
fn settings_default_to_feide_and_the_documented_scopes() {
    let s = file_feide("client_id = \"abc\"\nclient_secret_file = \"feide.secret\"\n")
        .check(0, Path::new("/etc/portvakt"))
        .unwrap();
    assert_eq!(s.issuer, "https://auth.dataporten.no");
    assert_eq!(s.client_id, "abc");
    assert_eq!(
        s.client_secret_file,
        Path::new("/etc/portvakt/feide.secret")
    );
    assert_eq!(
        s.scopes,
        ["openid", "userid", "userid-feide", "profile", "groups-org"]
    );
    assert_eq!(s.extended_userinfo_url, None);
    assert_eq!(s.timeout, Duration::from_secs(10));

    let s = file_feide(
        "issuer = \"http://127.0.0.1:5556\"\nclient_id = \"abc\"\nclient_secret_file = \"/s\"\nscopes = [\"openid\", \"userid-feide\"]\nextended_userinfo_url = \"https://api.dataporten.no/userinfo/v1/userinfo\"\n",
    )
    .check(0, Path::new("/x"))
    .unwrap();
    assert_eq!(s.issuer, "http://127.0.0.1:5556");
    assert_eq!(s.scopes, ["openid", "userid-feide"]);
    assert_eq!(
        s.extended_userinfo_url.as_deref(),
        Some("https://api.dataporten.no/userinfo/v1/userinfo")
    );
}

#[test]
fn every_settings_error_at_once_with_its_place() {
    let text = "issuer = \"http://auth.example.no\"\nscopes = [\"openid\", \"two words\"]\nextended_userinfo_url = \"ftp://x\"\n";
    let errors = file_feide(text).check(0, Path::new("/")).unwrap_err();
    let messages: Vec<&str> = errors.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(errors.len(), 5, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("issuer") && m.contains("must be https"))
    );
    assert!(messages.iter().any(|m| m.contains("scopes")));
    assert!(messages.iter().any(|m| m.contains("extended_userinfo_url")));
    assert!(messages.iter().any(|m| m.contains("client_id is not set")));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("client_secret_file is not set"))
    );
    // Offsets point at the values.
    let (at, _) = errors.iter().find(|(_, m)| m.contains("issuer")).unwrap();
    assert!(text[*at..].starts_with("\"http://auth"), "{at}");
}

#[test]
fn the_config_file_reads_feide_and_places_its_errors() {
    let ok = crate::config::Config::parse(
        "portvakt.toml",
        "[keys]\npseudonym_key_file = \"k\"\n[feide]\nclient_id = \"portvakt\"\nclient_secret_file = \"feide.secret\"\n",
        Path::new("/etc/portvakt"),
    )
    .unwrap();
    let f = ok.feide.unwrap();
    assert_eq!(f.client_id, "portvakt");
    assert!(!ok.not_yet_supported.contains(&"[feide]"));
    let e = crate::config::Config::parse(
        "portvakt.toml",
        "[keys]\npseudonym_key_file = \"k\"\n[feide]\nissuer = \"http://auth.example.no\"\nclient_id = \"p\"\nclient_secret_file = \"s\"\nscope = []\n",
        Path::new("/"),
    )
    .unwrap_err();
    assert_eq!(
        e.0,
        vec!["portvakt.toml:7:1: error: [feide]: unknown key \"scope\"".to_owned()]
    );
    let e = crate::config::Config::parse(
        "portvakt.toml",
        "[keys]\npseudonym_key_file = \"k\"\n[feide]\nissuer = \"http://auth.example.no\"\nclient_id = \"p\"\nclient_secret_file = \"s\"\n",
        Path::new("/"),
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 1, "{:?}", e.0);
    assert!(
        e.0[0].starts_with("portvakt.toml:4:10: error: [feide] issuer: "),
        "{:?}",
        e.0
    );
}

#[test]
fn the_secret_is_the_file_less_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    for (content, want) in [
        ("s3cret\n", Some("s3cret")),
        ("s3cret\r\n", Some("s3cret")),
        ("s3cret", Some("s3cret")),
        ("s3cret\n\n", Some("s3cret\n")),
        (" s3cret \n", Some(" s3cret ")),
        ("\n", None),
        ("", None),
    ] {
        std::fs::write(&p, content).unwrap();
        assert_eq!(read_client_secret(&p).ok().as_deref(), want, "{content:?}");
    }
    std::fs::write(&p, [0xffu8, 0xfe]).unwrap();
    assert!(read_client_secret(&p).is_err());
    let missing = read_client_secret(&dir.path().join("nope")).unwrap_err();
    assert!(
        missing.to_string().contains("client_secret_file"),
        "{missing}"
    );
}

#[test]
fn urls_must_be_https_or_loopback_http() {
    assert!(check_url("https://auth.dataporten.no", false).is_ok());
    assert!(check_url("http://127.0.0.1:8080", false).is_ok());
    assert!(check_url("http://[::1]:8080", false).is_ok());
    assert!(check_url("http://localhost:8080", false).is_ok());
    assert!(check_url("http://auth.dataporten.no", false).is_err());
    assert!(check_url("https://auth.dataporten.no?x=1", false).is_err());
    assert!(check_url("https://api.dataporten.no/u?x=1", true).is_ok());
    assert!(check_url("https://a.no/#f", true).is_err());
    assert!(check_url("https://user@a.no/", true).is_err());
    assert!(check_url("not a url", true).is_err());
}

#[tokio::test]
async fn the_http_client_never_sends_to_plain_http_off_loopback() {
    let client = FeideHttp::new(Duration::from_secs(1), &[]).unwrap();
    let req = ::http::Request::get("http://auth.example.no/token?x=secret")
        .body(Vec::new())
        .unwrap();
    let e = client.send(req).await.unwrap_err();
    assert!(matches!(e, HttpError::Scheme(_)), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
}

fn client_for(issuer: &str, timeout: Duration) -> (FeideClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let mut s = FeideSettings::new(issuer, "portvakt", &secret);
    s.timeout = timeout;
    (FeideClient::new(&s).unwrap(), dir)
}

#[tokio::test]
async fn a_provider_that_is_down_is_unreachable() {
    // Bind and drop: nothing listens on the port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (client, _dir) = client_for(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let e = client
        .begin("http://bib.test/auth/feide/callback")
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept and hold the connections, saying nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (client, _dir) = client_for(&format!("http://{addr}"), Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = client
        .begin("http://bib.test/auth/feide/callback")
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.abort();
}

#[tokio::test]
async fn a_provider_that_answers_nonsense_is_a_provider_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = "{\"issuer\": \"http://elsewhere.example\"}";
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let (client, _dir) = client_for(&format!("http://{addr}"), Duration::from_secs(2));
    let e = client
        .begin("http://bib.test/auth/feide/callback")
        .await
        .unwrap_err();
    assert!(!e.is_unreachable(), "{e}");
    assert!(matches!(e, FeideError::Provider(_)), "{e}");
    server.abort();
}
