//! A policy with SAML and OIDC services, signing keys, and a patron, shared by the
//! federation tests.

use std::path::{Path, PathBuf};

use federation::SigningKey;
use jiff::Timestamp;
use policy::ids::InstitutionId;
use policy::pseudonym::PseudonymKey;
use policy::subject::{Affiliation, Age, Subject, card_subject_key};
use policy::{Decision, Policy, Release, decide, release};

/// The patron's card number: it must never appear in anything a vendor receives.
pub const CARD: &str = "40012345";
pub const INSTITUTION: &str = "NO-2390700";
pub const INSTITUTION_NAME: &str = "Sandefjord bibliotek & kultur";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub policy: std::sync::Arc<Policy>,
    pub idp_key: SigningKey,
    /// The key and certificate files the vendor "sp-signed" signs its requests with.
    pub sp_key: PathBuf,
    pub sp_cert: PathBuf,
    /// Another key pair, the configured certificate's stranger.
    pub other_key: PathBuf,
    pub other_cert: PathBuf,
    pub pseudonym_key: PseudonymKey,
}

pub fn signing_key(dir: &Path) -> SigningKey {
    gateway::keys::generate(dir).unwrap();
    SigningKey::load(&dir.join("signing.key"), &dir.join("signing.crt")).unwrap()
}

/// `release` lists of the services, by id.
pub const SERVICES: &[(&str, &[&str])] = &[
    (
        "ebok",
        &["pseudonym", "institution", "age_band", "affiliation"],
    ),
    ("emag", &["institution_name", "age_over_18", "municipality"]),
    (
        "fag",
        &["pseudonym", "institution", "affiliation", "age_over_18"],
    ),
    ("fagpub", &["institution"]),
];

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let idp_dir = dir.path().join("idp");
    let sp_dir = dir.path().join("sp");
    let other_dir = dir.path().join("other");
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    let idp_key = signing_key(&idp_dir);
    signing_key(&sp_dir);
    signing_key(&other_dir);
    std::fs::copy(sp_dir.join("signing.crt"), policy_dir.join("sp-signed.crt")).unwrap();
    let secret_sha = data_encoding::HEXLOWER.encode(&sha2_256(b"fag-secret"));
    let policy = format!(
        r#"
[[institution]]
id = "{INSTITUTION}"
name = "{INSTITUTION_NAME}"
kind = "public_library"
municipality = "3907"

[[service]]
id = "ebok"
name = "E-bøker"
access = "saml"
release = ["pseudonym", "institution", "age_band", "affiliation"]
[service.saml]
entity_id = "https://ebok.example/sp"
acs_url = "http://127.0.0.1:9/acs/ebok"
start_url = "https://ebok.example/start?a=1&b=<2>"

[[service]]
id = "emag"
name = "E-magasin"
access = "saml"
release = ["institution_name", "age_over_18", "municipality"]
[service.saml]
entity_id = "https://emag.example/sp"
acs_url = "http://127.0.0.1:9/acs/emag"
certificate = "sp-signed.crt"

[[service]]
id = "fag"
name = "Fagportalen"
access = "oidc"
release = ["pseudonym", "institution", "affiliation", "age_over_18"]
[service.oidc]
client_id = "fag-client"
redirect_uris = ["http://127.0.0.1:9/cb", "http://127.0.0.1:9/cb2"]
start_url = "http://127.0.0.1:9/"
client_secret_sha256 = "{secret_sha}"

[[service]]
id = "fagpub"
name = "Fagportalen app"
access = "oidc"
release = ["institution"]
[service.oidc]
client_id = "fag-public"
redirect_uris = ["http://127.0.0.1:9/app"]
start_url = "http://127.0.0.1:9/"
public = true

[[entitlement]]
institution = "{INSTITUTION}"
service = "ebok"
from = 2020-01-01

[[entitlement]]
institution = "{INSTITUTION}"
service = "emag"
from = 2020-01-01

[[entitlement]]
institution = "{INSTITUTION}"
service = "fag"
from = 2020-01-01

[[entitlement]]
institution = "{INSTITUTION}"
service = "fagpub"
from = 2020-01-01
"#
    );
    std::fs::write(policy_dir.join("policy.toml"), policy).unwrap();
    let (policy, _) = policy::load_dir(&policy_dir).unwrap_or_else(|e| panic!("{e}"));
    let policy = std::sync::Arc::new(policy);
    Fixture {
        policy,
        idp_key,
        sp_key: sp_dir.join("signing.key"),
        sp_cert: sp_dir.join("signing.crt"),
        other_key: other_dir.join("signing.key"),
        other_cert: other_dir.join("signing.crt"),
        pseudonym_key: PseudonymKey::new(&[7u8; 32]).unwrap(),
        dir,
    }
}

fn sha2_256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

pub fn patron(affiliation: Affiliation) -> Subject {
    let inst = InstitutionId::new(INSTITUTION);
    Subject {
        key: card_subject_key(&inst, CARD),
        affiliation,
        institutions: vec![inst],
        age: Age::BirthDate(jiff::civil::date(1990, 5, 17)),
    }
}

impl Fixture {
    /// The decision and release for `service`, which must permit.
    pub fn release(&self, service: &str, subject: &Subject, now: Timestamp) -> Release {
        match decide(&self.policy, subject, service, None, now) {
            Decision::Permit(p) => release(&self.policy, &p, subject, Some(&self.pseudonym_key)),
            other => panic!("{service}: expected a permit, got {other:?}"),
        }
    }

    pub fn pseudonym(&self, service: &str, subject: &Subject) -> String {
        let sector = self.policy.service(service).unwrap().sector.clone();
        self.pseudonym_key
            .pairwise(&sector, &subject.key)
            .expose()
            .to_owned()
    }

    /// The release list of a service as written in the fixture.
    pub fn allowed(service: &str) -> &'static [&'static str] {
        SERVICES.iter().find(|(s, _)| *s == service).unwrap().1
    }
}
