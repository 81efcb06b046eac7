//! The SAML identity provider against a real service provider: pysaml2 (with Debian's
//! xmlsec1), run by `tests/peers/saml_sp.py`. It must accept our signed responses and
//! produce the AuthnRequests we parse. pysaml2 must be installed
//! (`pip install -r tests/peers/requirements.txt`); without it these tests fail, not skip.

// Helpers here may unwrap and panic like the tests themselves: clippy exempts `cfg(test)`.
#![cfg(test)]

use crate::support::federation as federation_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use federation::saml::{
    ATTR_PAIRWISE_ID, ATTR_PORTVAKT_PREFIX, ATTR_SCOPED_AFFILIATION, Idp, NAMEID_PERSISTENT,
    NAMEID_TRANSIENT, PostBinding, SamlError, post_form_csp,
};
use federation_support::{CARD, Fixture, INSTITUTION, INSTITUTION_NAME, fixture, patron};
use jiff::Timestamp;
use policy::subject::Affiliation;
use policy::{Access, SamlSettings};
use serde_json::Value;

const ENTITY: &str = "http://127.0.0.1:9/saml/metadata";
const SSO: &str = "http://127.0.0.1:9/saml/sso";
const SCOPE: &str = "bib.example.no";

fn idp(f: &Fixture) -> Idp {
    Idp {
        entity_id: ENTITY.into(),
        sso_url: SSO.into(),
        scope: SCOPE.into(),
        key: f.idp_key.clone(),
    }
}

fn sp(f: &Fixture, service: &str) -> SamlSettings {
    match &f.policy.service(service).unwrap().access {
        Access::Saml(s) => s.clone(),
        _ => panic!("{service} is not SAML"),
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/saml_sp.py")
}

/// Runs the peer; `Ok(json)` on exit 0, `Err(json)` when pysaml2 refused.
fn run_sp(args: &[&str], stdin: &str) -> Result<Value, Value> {
    let mut child = Command::new("python3")
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 for the SAML SP: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "the pysaml2 peer printed no JSON (exit {:?}).\nstdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if json.get("install").is_some() {
        panic!(
            "{}: run `pip install -r tests/peers/requirements.txt` (pysaml2==7.5.5) and \
             `apt-get install xmlsec1`",
            json["error"]
        );
    }
    if out.status.success() {
        Ok(json)
    } else {
        Err(json)
    }
}

struct SpPeer {
    metadata: PathBuf,
    entity_id: String,
    acs: String,
}

impl SpPeer {
    fn new(dir: &Path, idp: &Idp, entity_id: &str, acs: &str) -> Self {
        let metadata = dir.join(format!("idp-{}.xml", rand_suffix()));
        std::fs::write(&metadata, idp.metadata().unwrap()).unwrap();
        Self {
            metadata,
            entity_id: entity_id.into(),
            acs: acs.into(),
        }
    }

    fn base(&self, cmd: &str) -> Vec<String> {
        vec![
            cmd.into(),
            "--idp-metadata".into(),
            self.metadata.display().to_string(),
            "--entity-id".into(),
            self.entity_id.clone(),
            "--acs".into(),
            self.acs.clone(),
        ]
    }

    fn consume(&self, post: &PostBinding, outstanding: Option<&str>) -> Result<Value, Value> {
        let mut args = self.base("consume");
        if let Some(id) = outstanding {
            args.extend(["--outstanding".into(), id.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_sp(&args, &post.saml_response())
    }

    fn authn_request(&self, binding: &str, sign: Option<(&Path, &Path)>, relay: &str) -> Value {
        let mut args = self.base("authn-request");
        args.extend([
            "--binding".into(),
            binding.into(),
            "--relay-state".into(),
            relay.into(),
        ]);
        if let Some((key, cert)) = sign {
            args.extend([
                "--key".into(),
                key.display().to_string(),
                "--cert".into(),
                cert.display().to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_sp(&args, "").unwrap_or_else(|e| panic!("authn-request failed: {e}"))
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    data_encoding::HEXLOWER.encode(&b)
}

/// The raw query string of an HTTP-Redirect URL.
fn query_of(url: &str) -> String {
    url.split_once('?').unwrap().1.to_owned()
}

/// Every assertion the tests make passes through here: what pysaml2 saw must be exactly
/// the service's release, spelled for SAML, and nothing about the person may be in the
/// XML beyond it.
fn check_release_only(f: &Fixture, service: &str, post: &PostBinding, seen: &Value) {
    let allowed = Fixture::allowed(service);
    let mut expected: Vec<String> = allowed
        .iter()
        .map(|a| match *a {
            "pseudonym" => ATTR_PAIRWISE_ID.to_owned(),
            "affiliation" => ATTR_SCOPED_AFFILIATION.to_owned(),
            other => format!("{ATTR_PORTVAKT_PREFIX}{other}"),
        })
        .collect();
    expected.sort();
    let mut names: Vec<String> = seen["attributes"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    assert_eq!(names, expected, "{service}: attributes outside release");
    // Nothing about the person that the release does not allow, anywhere in the document.
    let xml = &post.xml;
    assert!(!xml.contains(CARD), "the card number leaked");
    assert!(!xml.contains("card:"), "the subject key leaked");
    assert!(!xml.contains("1990"), "the birth date leaked");
    if !allowed.contains(&"pseudonym") {
        let p = f.pseudonym(service, &patron(Affiliation::Patron));
        assert!(!xml.contains(&p), "the pseudonym leaked");
    }
    if !allowed.contains(&"institution") {
        assert!(!xml.contains(&format!(">{INSTITUTION}<")));
    }
    if !allowed.contains(&"institution_name") {
        assert!(!xml.contains("Sandefjord"));
    }
    // Both signed, as `docs/vendors.md` promises (pysaml2 was also told to insist).
    assert_eq!(seen["response_signed"], true);
    assert_eq!(seen["assertion_signed"], true);
    assert_eq!(xml.matches("SignatureValue>").count(), 4, "two signatures");
    assert!(xml.contains("http://www.w3.org/2001/10/xml-exc-c14n#"));
    assert!(xml.contains("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"));
}

#[test]
fn unsolicited_response_is_accepted_by_pysaml2() {
    let f = fixture();
    let idp = idp(&f);
    let ebok = sp(&f, "ebok");
    let peer = SpPeer::new(f.dir.path(), &idp, &ebok.entity_id, ebok.acs_url.as_str());
    let now = Timestamp::now();
    let subject = patron(Affiliation::Patron);
    let rel = f.release("ebok", &subject, now);
    let post = idp.unsolicited_response(&ebok, &rel, now, now).unwrap();
    assert_eq!(post.acs_url, "http://127.0.0.1:9/acs/ebok");
    assert_eq!(
        post.relay_state.as_deref(),
        Some("https://ebok.example/start?a=1&b=<2>")
    );

    let seen = peer
        .consume(&post, None)
        .unwrap_or_else(|e| panic!("pysaml2 refused: {e}"));
    let pseudonym = f.pseudonym("ebok", &subject);
    assert_eq!(seen["name_id"], pseudonym.as_str());
    assert_eq!(seen["name_id_format"], NAMEID_PERSISTENT);
    assert_eq!(seen["name_qualifier"], ENTITY);
    assert_eq!(seen["sp_name_qualifier"], "https://ebok.example/sp");
    assert_eq!(seen["issuer"], ENTITY);
    assert_eq!(seen["in_response_to"], Value::Null);
    let attrs = &seen["attributes"];
    assert_eq!(
        attrs[ATTR_PAIRWISE_ID],
        serde_json::json!([format!("{pseudonym}@{SCOPE}")])
    );
    assert_eq!(
        attrs[ATTR_SCOPED_AFFILIATION],
        serde_json::json!([format!("member@{SCOPE}")])
    );
    assert_eq!(
        attrs["urn:portvakt:attribute:institution"],
        serde_json::json!([INSTITUTION])
    );
    assert_eq!(
        attrs["urn:portvakt:attribute:age_band"],
        serde_json::json!(["20-44"])
    );
    check_release_only(&f, "ebok", &post, &seen);

    // The lifetime is at most five minutes, the recipient the ACS.
    assert!(
        post.xml
            .contains(r#"Recipient="http://127.0.0.1:9/acs/ebok""#)
    );
    let form = post.html();
    assert!(form.contains(r#"action="http://127.0.0.1:9/acs/ebok""#));
    assert!(form.contains(r#"name="SAMLResponse""#));
    assert!(form.contains(r#"value="https://ebok.example/start?a=1&amp;b=&lt;2&gt;""#));
    assert!(form.contains("<noscript>"));
    assert!(form.contains(r#"lang="nb""#));
    assert!(post_form_csp(&post.acs_url).contains("form-action http://127.0.0.1:9"));
}

#[test]
fn affiliations_are_scoped() {
    let f = fixture();
    let idp = idp(&f);
    let ebok = sp(&f, "ebok");
    let peer = SpPeer::new(f.dir.path(), &idp, &ebok.entity_id, ebok.acs_url.as_str());
    let now = Timestamp::now();
    for (aff, want) in [
        (Affiliation::Student, "student"),
        (Affiliation::Staff, "member"),
        (Affiliation::Patron, "member"),
    ] {
        let rel = f.release("ebok", &patron(aff), now);
        let post = idp.unsolicited_response(&ebok, &rel, now, now).unwrap();
        let seen = peer.consume(&post, None).unwrap();
        assert_eq!(
            seen["attributes"][ATTR_SCOPED_AFFILIATION],
            serde_json::json!([format!("{want}@{SCOPE}")])
        );
        check_release_only(&f, "ebok", &post, &seen);
    }
}

#[test]
fn without_pseudonym_the_name_id_is_transient_and_values_are_escaped() {
    let f = fixture();
    let idp = idp(&f);
    let emag = sp(&f, "emag");
    let peer = SpPeer::new(f.dir.path(), &idp, &emag.entity_id, emag.acs_url.as_str());
    let now = Timestamp::now();
    let rel = f.release("emag", &patron(Affiliation::Patron), now);
    let a = idp.unsolicited_response(&emag, &rel, now, now).unwrap();
    let b = idp.unsolicited_response(&emag, &rel, now, now).unwrap();
    let seen_a = peer.consume(&a, None).unwrap();
    let seen_b = peer.consume(&b, None).unwrap();
    assert_eq!(seen_a["name_id_format"], NAMEID_TRANSIENT);
    assert_ne!(
        seen_a["name_id"], seen_b["name_id"],
        "transient ids are fresh"
    );
    let attrs = &seen_a["attributes"];
    // "&" in the name survives as text, not as markup.
    assert_eq!(
        attrs["urn:portvakt:attribute:institution_name"],
        serde_json::json!([INSTITUTION_NAME])
    );
    assert_eq!(
        attrs["urn:portvakt:attribute:age_over_18"],
        serde_json::json!(["true"])
    );
    assert_eq!(
        attrs["urn:portvakt:attribute:municipality"],
        serde_json::json!(["3907"])
    );
    check_release_only(&f, "emag", &a, &seen_a);
    check_release_only(&f, "emag", &b, &seen_b);
}

#[test]
fn sp_initiated_redirect_unsigned() {
    let f = fixture();
    let idp = idp(&f);
    let ebok = sp(&f, "ebok");
    let peer = SpPeer::new(f.dir.path(), &idp, &ebok.entity_id, ebok.acs_url.as_str());
    let req = peer.authn_request("redirect", None, "tilbake/hit");
    let url = req["url"].as_str().unwrap();
    assert!(url.starts_with(SSO));
    let checked = idp.parse_redirect(&f.policy, &query_of(url)).unwrap();
    assert_eq!(checked.id, req["id"].as_str().unwrap());
    assert_eq!(checked.service.as_str(), "ebok");
    assert_eq!(checked.relay_state.as_deref(), Some("tilbake/hit"));

    let now = Timestamp::now();
    let rel = f.release("ebok", &patron(Affiliation::Patron), now);
    let post = idp.response_to(&checked, &ebok, &rel, now, now).unwrap();
    assert_eq!(post.relay_state.as_deref(), Some("tilbake/hit"));
    let seen = peer
        .consume(&post, Some(&checked.id))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen["in_response_to"], checked.id.as_str());
    check_release_only(&f, "ebok", &post, &seen);

    // The SP that asked must be the one answered.
    let emag = sp(&f, "emag");
    assert!(matches!(
        idp.response_to(&checked, &emag, &rel, now, now),
        Err(SamlError::WrongSp { .. })
    ));
}

#[test]
fn sp_initiated_redirect_and_post_signed() {
    let f = fixture();
    let idp = idp(&f);
    let emag = sp(&f, "emag");
    let peer = SpPeer::new(f.dir.path(), &idp, &emag.entity_id, emag.acs_url.as_str());
    let signer = Some((f.sp_key.as_path(), f.sp_cert.as_path()));
    let now = Timestamp::now();
    let rel = f.release("emag", &patron(Affiliation::Patron), now);

    let req = peer.authn_request("redirect", signer, "rs-1");
    let url = req["url"].as_str().unwrap();
    assert!(url.contains("Signature="), "pysaml2 signed the redirect");
    let checked = idp.parse_redirect(&f.policy, &query_of(url)).unwrap();
    assert_eq!(checked.service.as_str(), "emag");
    assert_eq!(checked.relay_state.as_deref(), Some("rs-1"));
    let post = idp.response_to(&checked, &emag, &rel, now, now).unwrap();
    let seen = peer.consume(&post, Some(&checked.id)).unwrap();
    assert_eq!(seen["in_response_to"], checked.id.as_str());
    check_release_only(&f, "emag", &post, &seen);

    // A changed RelayState breaks the query signature.
    let tampered = query_of(url).replace("RelayState=rs-1", "RelayState=rs-2");
    assert!(matches!(
        idp.parse_redirect(&f.policy, &tampered),
        Err(SamlError::BadSignature)
    ));

    let req = peer.authn_request("post", signer, "");
    let checked = idp
        .parse_post(
            &f.policy,
            req["saml_request"].as_str().unwrap(),
            Some("rs-2"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.id, req["id"].as_str().unwrap());
    assert_eq!(checked.relay_state.as_deref(), Some("rs-2"));
    let post = idp.response_to(&checked, &emag, &rel, now, now).unwrap();
    let seen = peer.consume(&post, Some(&checked.id)).unwrap();
    check_release_only(&f, "emag", &post, &seen);
}

#[test]
fn requests_are_refused() {
    let f = fixture();
    let idp = idp(&f);
    let emag = sp(&f, "emag");
    let ebok = sp(&f, "ebok");
    let dir = f.dir.path();

    // Unknown SP.
    let stranger = SpPeer::new(
        dir,
        &idp,
        "https://stranger.example/sp",
        "http://127.0.0.1:9/acs/x",
    );
    let req = stranger.authn_request("redirect", None, "");
    let err = idp
        .parse_redirect(&f.policy, &query_of(req["url"].as_str().unwrap()))
        .unwrap_err();
    assert!(matches!(err, SamlError::UnknownSp(_)), "{err}");
    assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    let req = stranger.authn_request("post", None, "");
    let err = idp
        .parse_post(&f.policy, req["saml_request"].as_str().unwrap(), None)
        .unwrap_err();
    assert!(matches!(err, SamlError::UnknownSp(_)), "{err}");

    // A configured SP asking for another ACS.
    let wrong_acs = SpPeer::new(dir, &idp, &ebok.entity_id, "https://evil.example/acs");
    let req = wrong_acs.authn_request("redirect", None, "");
    let err = idp
        .parse_redirect(&f.policy, &query_of(req["url"].as_str().unwrap()))
        .unwrap_err();
    assert!(matches!(err, SamlError::AcsMismatch), "{err}");

    // An SP with a certificate: unsigned, and signed with another key.
    let peer = SpPeer::new(dir, &idp, &emag.entity_id, emag.acs_url.as_str());
    let req = peer.authn_request("redirect", None, "");
    let err = idp
        .parse_redirect(&f.policy, &query_of(req["url"].as_str().unwrap()))
        .unwrap_err();
    assert!(matches!(err, SamlError::MissingSignature), "{err}");
    let req = peer.authn_request("post", None, "");
    let err = idp
        .parse_post(&f.policy, req["saml_request"].as_str().unwrap(), None)
        .unwrap_err();
    assert!(matches!(err, SamlError::MissingSignature), "{err}");

    let other = Some((f.other_key.as_path(), f.other_cert.as_path()));
    let req = peer.authn_request("redirect", other, "");
    let err = idp
        .parse_redirect(&f.policy, &query_of(req["url"].as_str().unwrap()))
        .unwrap_err();
    assert!(matches!(err, SamlError::BadSignature), "{err}");
    let req = peer.authn_request("post", other, "");
    let err = idp
        .parse_post(&f.policy, req["saml_request"].as_str().unwrap(), None)
        .unwrap_err();
    assert!(matches!(err, SamlError::BadSignature), "{err}");

    // Garbage of every kind is a clean error.
    for q in [
        "",
        "SAMLRequest=%%%",
        "SAMLRequest=AAAA",
        "SAMLRequest=a&SAMLRequest=b",
    ] {
        assert!(idp.parse_redirect(&f.policy, q).is_err(), "{q}");
    }
    let doctype =
        data_encoding::BASE64.encode(b"<!DOCTYPE x [<!ENTITY a 'b'>]><samlp:AuthnRequest/>");
    assert!(matches!(
        idp.parse_post(&f.policy, &doctype, None),
        Err(SamlError::Malformed(_))
    ));
}

#[test]
fn pysaml2_refuses_a_tampered_or_misaddressed_response() {
    let f = fixture();
    let idp = idp(&f);
    let ebok = sp(&f, "ebok");
    let peer = SpPeer::new(f.dir.path(), &idp, &ebok.entity_id, ebok.acs_url.as_str());
    let now = Timestamp::now();
    let rel = f.release("ebok", &patron(Affiliation::Patron), now);
    let post = idp.unsolicited_response(&ebok, &rel, now, now).unwrap();

    let mut tampered = post.clone();
    tampered.xml = post.xml.replace(">20-44<", ">67+<");
    assert_ne!(tampered.xml, post.xml);
    assert!(
        peer.consume(&tampered, None).is_err(),
        "a changed attribute must fail"
    );

    // Another SP (another audience) must refuse it too.
    let other = SpPeer::new(
        f.dir.path(),
        &idp,
        "https://emag.example/sp",
        ebok.acs_url.as_str(),
    );
    assert!(other.consume(&post, None).is_err());

    // An old response is refused by the SP: the lifetime is five minutes.
    let old = now.checked_sub(jiff::SignedDuration::from_mins(6)).unwrap();
    let stale = idp.unsolicited_response(&ebok, &rel, old, old).unwrap();
    assert!(peer.consume(&stale, None).is_err());
}

#[test]
fn metadata_has_the_certificate_and_both_bindings() {
    let f = fixture();
    let md = idp(&f).metadata().unwrap();
    assert!(md.contains(r#"entityID="http://127.0.0.1:9/saml/metadata""#));
    assert!(md.contains("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"));
    assert!(md.contains("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"));
    let cert_b64 = data_encoding::BASE64.encode(f.idp_key.cert_der());
    assert!(md.contains(&cert_b64));
    // NameIDFormat before SingleSignOnService, as the schema orders them.
    assert!(md.find("NameIDFormat").unwrap() < md.find("SingleSignOnService").unwrap());
}
