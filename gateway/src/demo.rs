//! `portvakt demo`: everything on loopback in one process, with no files needed — the
//! gateway on the bundled demo policy, a demo library system speaking real SIP2 over
//! loopback, and demo cards covering the interesting cases. It prints what to open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::ToSpan;
use jiff::civil::Date;
use tokio::net::TcpListener;

pub mod federated;
pub mod vendor;

use crate::app::{App, AppParts};
use crate::auth::library_card::sip2::codec::Encoding;
use crate::auth::library_card::sip2::server::{DemoAcsOptions, DemoPatron, serve as serve_acs};
use crate::auth::library_card::{FileCardBackend, build};
use crate::error::StartError;
use crate::server::bind;
use policy::pseudonym::PseudonymKey;
use proxy::Scheme;

/// The demo's fixed pseudonym key. Never use it for real: anyone can compute the
/// pseudonyms it gives.
pub const DEMO_PSEUDONYM_KEY: &[u8; 32] = b"portvakt-demo-key-NOT-FOR-USE!!!";

/// A demo card: what to type, and what it shows.
#[derive(Debug)]
pub struct DemoCard {
    pub library: &'static str,
    pub card: &'static str,
    pub pin: &'static str,
    pub shows: &'static str,
    patron: DemoPatron,
}

/// The demo cards, with ages counted back from `today` so a 14-year-old stays 14.
pub fn demo_cards(today: Date) -> Vec<DemoCard> {
    let born = |years: i64, days: i64| {
        today
            .checked_sub(years.years())
            .and_then(|d| d.checked_sub(days.days()))
            .ok()
    };
    let patron = |card: &str, pin: &str, name: &str, birth: Option<Date>, home: &str| DemoPatron {
        card: card.into(),
        pin: pin.into(),
        name: name.into(),
        birth_date: birth,
        home_library: Some(home.into()),
        blocked: false,
        lost: false,
    };
    vec![
        DemoCard {
            library: "Sandefjordbiblioteket",
            card: "10000001",
            pin: "1234",
            shows: "voksen låner / adult patron: e-bøker, avis, film 15 og 18",
            patron: patron(
                "10000001",
                "1234",
                "Kari Nordmann",
                born(41, 20),
                "sandefjord-bib",
            ),
        },
        DemoCard {
            library: "Tønsberg bibliotek",
            card: "10000002",
            pin: "2345",
            shows: "14 år / 14 years: nektes film 15 og 18 (age_below_min)",
            patron: patron(
                "10000002",
                "2345",
                "Ola Nordmann",
                born(14, 30),
                "NO-2390500",
            ),
        },
        DemoCard {
            library: "Tønsberg bibliotek",
            card: "10000003",
            pin: "3456",
            shows: "17 år / 17 years: film 15 ja, film 18 nei",
            patron: patron("10000003", "3456", "Nora Hansen", born(17, 60), "2390500"),
        },
        DemoCard {
            library: "Horten bibliotek",
            card: "10000004",
            pin: "4567",
            shows: "sperret kort / blocked card",
            patron: DemoPatron {
                blocked: true,
                ..patron("10000004", "4567", "Per Blokk", born(35, 0), "horten-bib")
            },
        },
        DemoCard {
            library: "Horten bibliotek",
            card: "10000005",
            pin: "5678",
            shows: "låner i Horten / Horten patron: film 18-avtalen er utløpt (outside_period)",
            patron: patron(
                "10000005",
                "5678",
                "Åse Horten",
                born(52, 100),
                "horten-bib",
            ),
        },
        DemoCard {
            library: "Sandefjordbiblioteket",
            card: "N000000042",
            pin: "9999",
            shows: "nasjonalt lånekort fra et annet bibliotek (Oslo) / national card of another library",
            patron: patron(
                "N000000042",
                "9999",
                "Ingrid Oslo",
                born(30, 5),
                "NO-2030100",
            ),
        },
    ]
}

/// Where the demo listens.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
}

/// The demo county's policy (`demo/policy/` in the repository), built into the binary so
/// that `portvakt demo` needs no files.
pub const POLICY_FILES: [(&str, &str); 4] = [
    (
        "entitlements.toml",
        include_str!("../../demo/policy/entitlements.toml"),
    ),
    ("groups.toml", include_str!("../../demo/policy/groups.toml")),
    (
        "institutions.toml",
        include_str!("../../demo/policy/institutions.toml"),
    ),
    (
        "services.toml",
        include_str!("../../demo/policy/services.toml"),
    ),
];

/// Where the demo's policy is read from.
enum PolicyDir {
    /// A directory the operator named (`--policy`).
    Given(PathBuf),
    /// The bundled policy, written to a temporary directory for as long as the demo runs,
    /// so that it can be edited and reloaded like any other.
    Bundled(tempfile::TempDir),
}

impl PolicyDir {
    fn path(&self) -> &Path {
        match self {
            Self::Given(p) => p,
            Self::Bundled(d) => d.path(),
        }
    }
}

/// A running demo: the gateway, its cards, and the policy directory it runs on.
pub struct Demo {
    pub running: crate::server::Running,
    pub cards: Vec<DemoCard>,
    /// `bib.localhost:<port>`.
    pub public_host: String,
    policy_dir: PolicyDir,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("public_host", &self.public_host)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// The text `portvakt demo` prints.
    pub fn banner(&self) -> String {
        banner(
            &self.public_host,
            self.running.admin_addr,
            &self.cards,
            self.policy_dir.path(),
        )
    }

    /// Runs until `stop` resolves, then stops the gateway (and removes the bundled
    /// policy's temporary directory).
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) {
        crate::server::run_until(self.running, stop).await;
    }
}

fn demo_failed(what: &str, e: impl std::fmt::Display) -> StartError {
    StartError::Demo(format!("{what}: {e}"))
}

/// Starts the demo on the bundled policy, or on `policy` when given.
pub async fn start(opts: DemoOptions, policy: Option<PathBuf>) -> Result<Demo, StartError> {
    let policy_dir = match policy {
        Some(dir) => PolicyDir::Given(dir),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("portvakt-demo-policy-")
                .tempdir()
                .map_err(|e| demo_failed("cannot write the demo policy", e))?;
            for (name, text) in POLICY_FILES {
                std::fs::write(dir.path().join(name), text)
                    .map_err(|e| demo_failed("cannot write the demo policy", e))?;
            }
            PolicyDir::Bundled(dir)
        }
    };
    let (policy, _warnings) =
        policy::load_dir(policy_dir.path()).map_err(|error| StartError::Policy {
            dir: policy_dir.path().to_path_buf(),
            error,
        })?;

    let today = policy::oslo_today(jiff::Timestamp::now());
    let cards = demo_cards(today);
    let acs = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| demo_failed("cannot start the demo library system", e))?;
    let acs_addr = acs
        .local_addr()
        .map_err(|e| demo_failed("cannot start the demo library system", e))?;
    let patrons = cards.iter().map(|c| c.patron.clone()).collect();
    tokio::spawn(async move {
        let _ = serve_acs(
            acs,
            patrons,
            DemoAcsOptions {
                institution_id: "VESTFOLD".into(),
                login: None,
                encoding: Encoding::Utf8,
            },
        )
        .await;
    });

    // A demo vendor on each proxied service's loopback origin.
    for svc in policy.services() {
        if let policy::Access::Proxy(p) = &svc.access {
            let addr = |u: &url::Url| -> Option<SocketAddr> {
                let host = u.host_str()?;
                (host == "127.0.0.1").then_some(())?;
                Some(SocketAddr::from((
                    [127, 0, 0, 1],
                    u.port_or_known_default()?,
                )))
            };
            if let Some(origin) = addr(&p.origin) {
                let cdn = p.hosts.first().and_then(addr);
                vendor::spawn(&svc.name, origin, cdn).await;
            }
        }
    }

    // The demo SAML and OIDC vendors, started once the signing certificate exists.
    let saml_sp = policy.services().iter().find_map(|svc| match &svc.access {
        policy::Access::Saml(s) if svc.id.as_str() == "ebok" => Some(s.clone()),
        _ => None,
    });
    let oidc_rp = policy.services().iter().find_map(|svc| match &svc.access {
        policy::Access::Oidc(o) if svc.id.as_str() == "fagportalen" => Some(o.clone()),
        _ => None,
    });

    // One library system for the whole county, as a consortium shares one.
    let libraries: Vec<String> = policy
        .institutions()
        .iter()
        .filter(|i| !matches!(i.kind, policy::InstitutionKind::School))
        .map(|i| i.id.to_string())
        .collect();
    let backend = FileCardBackend {
        kind: "sip2".into(),
        institutions: libraries.clone(),
        addr: Some(acs_addr.to_string()),
        institution_id: Some("VESTFOLD".into()),
        ..FileCardBackend::default()
    };
    let verifier = build(&backend, policy_dir.path()).map_err(StartError::CardBackends)?;
    let verifiers: HashMap<String, _> = libraries
        .into_iter()
        .map(|l| (l, verifier.clone()))
        .collect();

    let public = bind(opts.listen, "", " (try --port)").await?;
    let admin = bind(opts.admin_listen, " (admin)", " (try --admin-port)").await?;
    let port = public
        .local_addr()
        .map_err(|e| demo_failed("cannot listen", e))?
        .port();
    let public_host = format!("bib.localhost:{port}");

    let mut session_key = [0u8; 32];
    getrandom::fill(&mut session_key).map_err(StartError::Random)?;
    let clock: Arc<dyn store::Clock> = Arc::new(store::SystemClock);
    // A fresh signing key for the demo's SAML and OIDC services, never written to disk.
    let (key_pem, cert_pem) = federation::SigningKey::generate_pem()?;
    let signing = crate::app::Signing {
        key: federation::SigningKey::from_pem(&key_pem, &cert_pem)?,
        previous: Vec::new(),
        saml_entity_id: None,
        saml_scope: None,
    };
    let statisticians = demo_statisticians()?;
    let usage = usage::Usage::open(
        None,
        std::time::Duration::from_secs(1),
        clock.clone(),
        &crate::app::usage_salt_key(DEMO_PSEUDONYM_KEY).ok_or(StartError::UsageKey)?,
    )?;
    let app = App::new(AppParts {
        usage,
        statisticians,
        k_anonymity: 5,
        signing: Some(signing),
        policy,
        policy_dir: policy_dir.path().to_path_buf(),
        store: crate::app::memory_store(&clock),
        clock,
        verifiers,
        pseudonym_key: PseudonymKey::new(DEMO_PSEUDONYM_KEY)?,
        session_key,
        public_host: public_host.clone(),
        public_scheme: Scheme::Http,
        session_ttl: std::time::Duration::from_secs(8 * 3600),
        trusted_proxies: Vec::new(),
        upstream_settings: Default::default(),
        feide: None,
    })?;
    let running = crate::server::start(app, public, admin, None)
        .map_err(|e| demo_failed("cannot start the gateway", e))?;
    let gateway_url = format!("http://{public_host}");
    spawn_federated(saml_sp, oidc_rp, &gateway_url, port, &cert_pem).await;
    Ok(Demo {
        running,
        cards,
        public_host,
        policy_dir,
    })
}

/// The demo statistician's API key (it sees every library and school of the demo).
pub const DEMO_STATISTICIAN_KEY: &str = "demo-statistikk";

fn demo_statisticians() -> Result<usage::Statisticians, StartError> {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(DEMO_STATISTICIAN_KEY.as_bytes());
    usage::Statisticians::check(&[usage::FileStatistician {
        name: "Demo".into(),
        api_key_sha256: data_encoding::HEXLOWER.encode(&digest),
        institutions: Vec::new(),
        groups: vec![
            "vestfold-bibliotek".into(),
            "bibliotek24".into(),
            "vestfold-vgs".into(),
        ],
    }])
    .map_err(|p| demo_failed("the demo statistician", format!("{p:?}")))
}

/// The client secret of the demo OIDC vendor; its SHA-256 is in the demo policy.
pub const DEMO_OIDC_SECRET: &str = "demo-oidc-secret";

fn loopback(u: &url::Url) -> Option<SocketAddr> {
    (u.host_str()? == "127.0.0.1").then_some(())?;
    Some(SocketAddr::from((
        [127, 0, 0, 1],
        u.port_or_known_default()?,
    )))
}

/// Starts the demo SAML vendor on `ebok`'s ACS origin and the demo OIDC vendor on
/// `fagportalen`'s redirect URI origin, when the policy has them on loopback.
async fn spawn_federated(
    saml: Option<policy::SamlSettings>,
    oidc: Option<policy::OidcSettings>,
    gateway_url: &str,
    gateway_port: u16,
    cert_pem: &str,
) {
    if let Some(sp) = saml
        && let Some(addr) = loopback(&sp.acs_url)
    {
        let v = federated::SamlVendor {
            gateway_url: gateway_url.to_owned(),
            cert_pem: cert_pem.to_owned(),
            entity_id: sp.entity_id,
        };
        federated::spawn(addr, federated::saml_router(v), "ebok").await;
    }
    if let Some(rp) = oidc
        && let Some(redirect_uri) = rp.redirect_uris.first()
        && let Some(addr) = url::Url::parse(redirect_uri)
            .ok()
            .as_ref()
            .and_then(loopback)
    {
        use sha2::Digest;
        let hash = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(DEMO_OIDC_SECRET));
        if rp.client_secret_sha256.as_deref() != Some(hash.as_str()) {
            tracing::warn!(
                vendor = "fagportalen",
                "demo vendor not started: the policy's client secret is not the demo secret"
            );
            return;
        }
        let v = federated::OidcVendor {
            gateway_url: gateway_url.to_owned(),
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], gateway_port)),
            client_id: rp.client_id,
            client_secret: DEMO_OIDC_SECRET.to_owned(),
            redirect_uri: redirect_uri.clone(),
        };
        federated::spawn(addr, federated::oidc_router(v), "fagportalen").await;
    }
}

/// The text `portvakt demo` prints.
fn banner(public_host: &str, admin: SocketAddr, cards: &[DemoCard], policy: &Path) -> String {
    let today = policy::oslo_today(jiff::Timestamp::now());
    let mut s = String::new();
    s.push_str("Portvakt demo — alt kjører lokalt / everything runs on loopback\n\n");
    s.push_str(
        "MERK / NOTE: the demo uses a fixed, public pseudonym key. Never use it for real.\n\n",
    );
    s.push_str(&format!("  Start page:   http://{public_host}/\n"));
    s.push_str(&format!(
        "  Entry links:  http://{public_host}/go/lokalhistorie   (link)\n"
    ));
    s.push_str(&format!(
        "                http://{public_host}/go/filmbib-18      (proxy, age limit 18)\n"
    ));
    s.push_str(&format!(
        "                http://{public_host}/go/avis            (proxy; its /headers page shows what the vendor gets)\n"
    ));
    s.push_str(
        "  SAML vendor:  http://127.0.0.1:8391/   (ebok: checks the signature, lists every attribute)\n",
    );
    s.push_str(
        "  OIDC vendor:  http://127.0.0.1:8392/   (fagportalen, students only: checks the id_token, lists every claim)\n",
    );
    s.push_str(&format!(
        "  Usage:        curl -H 'Authorization: Bearer {DEMO_STATISTICIAN_KEY}' 'http://{public_host}/api/v1/usage?from={today}&to={today}&format=csv'\n"
    ));
    s.push_str(&format!(
        "                http://{public_host}/sushi/r51/reports?api_key={DEMO_STATISTICIAN_KEY}&customer_id=vestfold-bibliotek   (SUSHI)\n"
    ));
    s.push_str(&format!("  Admin:        http://{admin}/metrics   http://{admin}/readyz   POST http://{admin}/reload\n"));
    s.push_str("  (*.localhost resolves to 127.0.0.1 in browsers and curl.)\n\n");
    s.push_str("  Demo cards (library — card / PIN — what it shows):\n");
    for c in cards {
        s.push_str(&format!(
            "    {:<22} {:<11} / {}   {}\n",
            c.library, c.card, c.pin, c.shows
        ));
    }
    s.push_str(&format!(
        "\n  Policy:       {}   (edit it, then POST /reload on the admin port)\n",
        policy.display()
    ));
    s.push_str("\n  Try a wrong PIN too. Walk-in and on-site access: `portvakt decide --ip 192.0.2.70 ...`\n");
    s.push_str("  Stop with Ctrl-C.\n");
    s
}
