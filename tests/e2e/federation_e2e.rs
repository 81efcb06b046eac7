//! The saml and oidc access modes through the running gateway (in-process, demo policy,
//! keys from `keys::generate`): an entry link to a SAML service posts a signed response
//! carrying only what the service releases; a vendor's OIDC authorization request waits
//! for the login, then gets a code or, when the decision denies, `access_denied`.

#![cfg(test)]

use crate::support::http;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use http::{form, hidden, request};

const CARD: &str = "77701234";
const PIN: &str = "1357";

struct World {
    public: SocketAddr,
    host: String,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        gateway::keys::generate(&dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path().join("patrons.toml"),
            format!("[[patron]]\ncard = \"{CARD}\"\npin = \"{PIN}\"\nbirth_date = 1990-06-01\nhome_library = \"NO-2390700\"\n"),
        )
        .unwrap();
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/policy");
        let config = format!(
            r#"
[server]
public_host = "bib.test"
[policy]
dir = "{}"
[saml]
scope = "bib.test"
[keys]
pseudonym_key_file = "keys/pseudonym.key"
signing_key_file = "keys/signing.key"
signing_cert_file = "keys/signing.crt"
[[card_backend]]
kind = "file"
institutions = ["NO-2390700"]
path = "patrons.toml"
"#,
            policy.display()
        );
        let config = gateway::config::Config::parse("portvakt.toml", &config, dir.path()).unwrap();
        let public = rt.block_on(async {
            let app = gateway::start::build_app(&config).unwrap();
            let p = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let running = gateway::server::start(app, p, a, None).unwrap();
            let addr = running.public_addr;
            std::mem::forget(running);
            addr
        });
        World {
            public,
            host: "bib.test".into(),
            _dir: dir,
            _rt: rt,
        }
    })
}

fn get(target: &str, cookie: Option<&str>) -> http::Reply {
    let w = world();
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("Cookie", c)]).unwrap_or_default();
    request(w.public, "GET", &w.host, target, &headers, None)
}

fn login(next: Option<&str>) -> (String, http::Reply) {
    let w = world();
    let page = get("/login", None);
    let nonce = page.cookie("portvakt-login").unwrap();
    let csrf = hidden(&page.body, "csrf").unwrap();
    let mut fields = vec![
        ("library", "NO-2390700"),
        ("card", CARD),
        ("pin", PIN),
        ("csrf", csrf.as_str()),
    ];
    if let Some(n) = next {
        fields.push(("next", n));
    }
    let r = request(
        w.public,
        "POST",
        &w.host,
        "/login",
        &[("Cookie", &format!("portvakt-login={nonce}"))],
        Some(&form(&fields)),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    (format!("portvakt={}", r.cookie("portvakt").unwrap()), r)
}

fn b64decode(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = data_encoding::BASE64.decode(clean.as_bytes()).unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_saml_entry_link_posts_a_signed_pseudonymous_response() {
    let (cookie, _) = login(None);
    let r = get("/go/ebok", Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("action=\"http://127.0.0.1:8391/saml/acs\""),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("name=\"RelayState\" value=\"http://127.0.0.1:8391/\""),
        "{}",
        r.body
    );
    let b64 = hidden(&r.body, "SAMLResponse").unwrap();
    let xml = b64decode(&b64);
    assert!(xml.contains("urn:oasis:names:tc:SAML:attribute:pairwise-id"));
    assert!(xml.contains("@bib.test"));
    assert!(xml.contains("urn:portvakt:attribute:age_band"));
    assert!(
        xml.contains("<ds:Signature") || xml.contains("Signature"),
        "signed"
    );
    for secret in [
        CARD,
        PIN,
        "1990",
        "06-01",
        "Sandefjordbiblioteket",
        "127.0.0.1:",
    ] {
        if secret == "127.0.0.1:" {
            // The ACS URL is the vendor's own address, and may appear; nothing else may.
            continue;
        }
        assert!(!xml.contains(secret), "{secret} in the assertion");
    }
    // Only what ebok releases: no municipality, no affiliation attribute.
    assert!(!xml.contains("urn:portvakt:attribute:municipality"));
    assert!(!xml.contains("eduPersonScopedAffiliation") || xml.contains("member@bib.test"));
}

#[test]
fn the_saml_metadata_is_published() {
    let r = get("/saml/metadata", None);
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("entityID=\"http://bib.test/saml/metadata\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("http://bib.test/saml/sso"));
}

#[test]
fn an_oidc_request_waits_for_the_login_and_then_is_decided() {
    let query = "response_type=code&client_id=fagportalen-demo&redirect_uri=http%3A%2F%2F127.0.0.1%3A8392%2Fcallback&scope=openid&state=st4te&nonce=n0nce";
    let target = format!("/oidc/authorize?{query}");
    // Not logged in: the login page, which will come back here.
    let r = get(&target, None);
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap().to_owned();
    assert!(
        location.starts_with("/login?service=fagportalen&next="),
        "{location}"
    );
    // Log in (a library patron); the login returns to the authorization request.
    let (cookie, reply) = login(Some(&target));
    assert_eq!(reply.header("location"), Some(target.as_str()));
    // fagportalen is for students only: the client hears access_denied, with its state.
    let r = get(&target, Some(&cookie));
    assert_eq!(r.status, 303);
    let back = r.header("location").unwrap();
    assert!(
        back.starts_with("http://127.0.0.1:8392/callback?"),
        "{back}"
    );
    assert!(
        back.contains("error=access_denied") && back.contains("state=st4te"),
        "{back}"
    );

    // Discovery and keys are served on the public host.
    let d = get("/.well-known/openid-configuration", None);
    assert_eq!(d.status, 200);
    let json: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(json["issuer"], "http://bib.test");
    assert_eq!(get("/oidc/jwks", None).status, 200);
}

#[test]
fn an_unknown_client_gets_a_page_not_a_redirect() {
    let r = get(
        "/oidc/authorize?response_type=code&client_id=nobody&redirect_uri=https%3A%2F%2Fevil.example%2F&scope=openid",
        None,
    );
    assert!(r.status >= 400, "{}", r.status);
    assert!(r.header("location").is_none());
}

#[test]
fn a_next_that_is_not_a_federation_endpoint_is_ignored() {
    let (_, reply) = login(Some("https://evil.example/"));
    assert_eq!(reply.header("location"), Some("/"));
    let (_, reply) = login(Some("/go/../admin"));
    assert_eq!(reply.header("location"), Some("/"));
}
