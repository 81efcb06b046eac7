//! Starting the gateway: `serve` (config file → logging → keys → policy → store → card
//! backends → listeners) and `demo` (the same parts, built in code on loopback).
//!
//! Everything that can stop a start is one [`StartError`], which the binary prints.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use policy::pseudonym::PseudonymKey;
use store::{Clock, SystemClock};

use crate::app::{self, App, AppParts};
use crate::auth::feide::FeideClient;
use crate::config::{Config, ConfigError, LogFormat, StoreBackend};
use crate::error::StartError;
use crate::server::bind;

/// The config `serve` runs on: `--config`, else `./portvakt.toml`, else every default
/// (which then stops on the missing keys, saying how to make them).
pub fn read_config(config_path: Option<PathBuf>) -> Result<Config, ConfigError> {
    match config_path {
        Some(path) => Config::load(&path),
        None if Path::new("portvakt.toml").exists() => Config::load(Path::new("portvakt.toml")),
        None => Config::parse("portvakt.toml", "", Path::new(".")),
    }
}

/// `portvakt serve`.
pub async fn serve(config_path: Option<PathBuf>) -> Result<(), StartError> {
    let config = read_config(config_path)?;
    crate::telemetry::init(config.log_format);
    let app = build_app(&config)?;
    if let StoreBackend::Redis { .. } = config.store {
        match app.store.ping().await {
            Ok(()) => tracing::info!("store: redis, shared with the other replicas"),
            Err(e) => tracing::warn!(
                error = %e,
                "store: redis is not answering; not ready (and no logins) until it does, connecting again by itself"
            ),
        }
    }
    for section in &config.not_yet_supported {
        tracing::warn!(
            section,
            "this section is read but not acted on by this version"
        );
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::tls::server_config(cert, key)?),
        None => None,
    };
    // Before anything listens: see `termination`.
    let stop = crate::server::termination();
    let public = bind(config.listen, "", "").await?;
    let admin = bind(config.admin_listen, " (admin)", "").await?;
    let running = crate::server::start(app.clone(), public, admin, tls).map_err(|source| {
        StartError::Listen {
            addr: config.listen,
            what: "",
            hint: "",
            source,
        }
    })?;
    tracing::info!(
        public = %running.public_addr,
        admin = %running.admin_addr,
        host = %app.public_host,
        policy = %app.policy().summary(),
        "portvakt is serving"
    );
    crate::server::run_until(running, stop).await;
    Ok(())
}

/// The shared state from a checked config.
pub fn build_app(config: &Config) -> Result<Arc<App>, StartError> {
    build_app_with_clock(config, Arc::new(SystemClock))
}

/// [`build_app`] with another clock, for tests that move time (sessions, usage days).
pub fn build_app_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<App>, StartError> {
    let key = crate::keys::read_key_file(
        "pseudonym key",
        &config.pseudonym_key_file,
        policy::pseudonym::MIN_KEY_BYTES,
    )?;
    let pseudonym_key = PseudonymKey::new(&key)?;
    let usage_salt_key = app::usage_salt_key(&key).ok_or(StartError::UsageKey)?;
    let session_key = match &config.session_key_file {
        Some(path) => {
            let bytes = crate::keys::read_key_file("session key", path, 32)?;
            let mut k = [0u8; 32];
            // Every session key, whatever its length, is hashed to the 32 bytes used.
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
            k.copy_from_slice(&digest);
            k
        }
        None => {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).map_err(StartError::Random)?;
            k
        }
    };
    let (policy, warnings) =
        policy::load_dir(&config.policy_dir).map_err(|error| StartError::Policy {
            dir: config.policy_dir.clone(),
            error,
        })?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let store = match &config.store {
        StoreBackend::Memory => app::memory_store(&clock),
        StoreBackend::Redis { url } => app::redis_store(url)?,
    };
    let built = crate::auth::library_card::build_all(&config.card_backends, &config.base_dir)
        .map_err(StartError::CardBackends)?;
    let mut verifiers = HashMap::new();
    for backend in built {
        let verifier = backend.verifier;
        for i in backend.institutions {
            if policy.institution(&i).is_none() {
                tracing::warn!(institution = %i, "a card backend serves an institution that is not in the policy");
            }
            verifiers.insert(i, verifier.clone());
        }
    }
    let signing = match (&config.signing_key_file, &config.signing_cert_file) {
        (Some(key), Some(cert)) => {
            let key = federation::SigningKey::load(key, cert)?;
            let mut previous = Vec::new();
            for path in &config.previous_signing_cert_files {
                let pem = std::fs::read_to_string(path).map_err(|source| StartError::Read {
                    path: path.clone(),
                    source,
                })?;
                previous.push(federation::previous_jwk(&pem).map_err(|source| {
                    StartError::PreviousCertificate {
                        path: path.clone(),
                        source,
                    }
                })?);
            }
            Some(app::Signing {
                key,
                previous,
                saml_entity_id: config.saml_entity_id.clone(),
                saml_scope: config.saml_scope.clone(),
            })
        }
        _ => {
            tracing::warn!(
                "no signing key: SAML and OIDC services are not available (set [keys] signing_key_file and signing_cert_file)"
            );
            None
        }
    };
    for id in config.statisticians.unknown_ids(&policy) {
        tracing::warn!(id = %id, "a statistician's scope names an institution or group the policy does not have");
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // With Redis the counts are shared by every replica (usage/shared.rs); `data_dir` then
    // only holds what a stop could not send.
    let usage = match store.redis() {
        Some(conn) => usage::Usage::open_shared(
            Some(&config.data_dir),
            config.flush_interval,
            clock.clone(),
            &usage_salt_key,
            conn,
            usage::SharedOptions::default(),
        ),
        None => usage::Usage::open(
            Some(&config.data_dir),
            config.flush_interval,
            clock.clone(),
            &usage_salt_key,
        ),
    }?;
    let feide = match &config.feide {
        Some(f) => Some(Arc::new(FeideClient::new(f)?)),
        None => None,
    };
    Ok(App::new(AppParts {
        usage,
        statisticians: config.statisticians.clone(),
        k_anonymity: config.k_anonymity,
        signing,
        policy,
        policy_dir: config.policy_dir.clone(),
        store,
        clock,
        verifiers,
        pseudonym_key,
        session_key,
        public_host: config.public_host.clone(),
        public_scheme: config.public_scheme,
        session_ttl: config.session_ttl,
        trusted_proxies: config.trusted_proxies.clone(),
        upstream_settings: Default::default(),
        feide,
    })?)
}

/// `portvakt demo`: the bundled demo policy unless `policy` names another directory.
pub async fn demo(port: u16, admin_port: u16, policy: Option<PathBuf>) -> Result<(), StartError> {
    crate::telemetry::init(LogFormat::Text);
    let opts = crate::demo::DemoOptions {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
    };
    let stop = crate::server::termination();
    let demo = crate::demo::start(opts, policy).await?;
    println!("{}", demo.banner());
    demo.run_until(stop).await;
    Ok(())
}
