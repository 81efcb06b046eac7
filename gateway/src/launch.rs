//! Starting the gateway: `serve` (config file → keys → policy → store → card backends →
//! listeners) and `demo` (all of it built in code, on loopback).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{App, AppParts};
use crate::config::{Config, StoreBackend};
use policy::pseudonym::PseudonymKey;
use store::{Clock, SystemClock};

/// `portvakt serve`.
pub async fn serve(config_path: Option<PathBuf>) -> Result<(), String> {
    let config = match config_path {
        Some(path) => Config::load(&path),
        // Without --config: ./portvakt.toml, or every default when there is none (which
        // then stops on the missing keys, saying how to make them).
        None if Path::new("portvakt.toml").exists() => Config::load(Path::new("portvakt.toml")),
        None => Config::parse("portvakt.toml", "", Path::new(".")),
    }
    .map_err(|e| e.to_string())?;
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
        Some((cert, key)) => Some(crate::tls::server_config(cert, key).map_err(|e| e.to_string())?),
        None => None,
    };
    // Before anything listens: see `termination`.
    let stop = crate::server::termination();
    let public = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", config.admin_listen))?;
    let running =
        crate::server::start(app.clone(), public, admin, tls).map_err(|e| e.to_string())?;
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
pub fn build_app(config: &Config) -> Result<Arc<App>, String> {
    build_app_with_clock(config, Arc::new(SystemClock))
}

/// [`build_app`] with another clock, for tests that move time (sessions, usage days).
pub fn build_app_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<App>, String> {
    let key = crate::keys::read_key_file(
        "pseudonym key",
        &config.pseudonym_key_file,
        policy::pseudonym::MIN_KEY_BYTES,
    )
    .map_err(|e| e.to_string())?;
    let pseudonym_key = PseudonymKey::new(&key).map_err(|e| e.to_string())?;
    let usage_salt_key = usage_salt_key(&key)?;
    let session_key = match &config.session_key_file {
        Some(path) => {
            let bytes =
                crate::keys::read_key_file("session key", path, 32).map_err(|e| e.to_string())?;
            let mut k = [0u8; 32];
            // A longer key is folded in through SHA-256 rather than cut.
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
            k.copy_from_slice(&digest);
            k
        }
        None => {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).map_err(|e| format!("no randomness: {e}"))?;
            k
        }
    };
    let (policy, warnings) = policy::load_dir(&config.policy_dir).map_err(|e| {
        format!(
            "the policy in {} does not load; the gateway will not start on a broken policy:\n{e}",
            config.policy_dir.display()
        )
    })?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let store = match &config.store {
        StoreBackend::Memory => memory_store(&clock),
        StoreBackend::Redis { url } => redis_store(url)?,
    };
    let built = crate::auth::library_card::build_all(&config.card_backends, &config.base_dir)
        .map_err(|e| e.join("\n"))?;
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
            let key = federation::SigningKey::load(key, cert).map_err(|e| e.to_string())?;
            let mut previous = Vec::new();
            for path in &config.previous_signing_cert_files {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                previous.push(
                    federation::previous_jwk(&pem)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                );
            }
            Some(crate::app::Signing {
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
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        )
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
    }
    .map_err(|e| format!("cannot open the usage counters: {e}"))?;
    App::new(AppParts {
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
        feide: match &config.feide {
            Some(f) => Some(Arc::new(
                crate::auth::feide::FeideClient::new(f).map_err(|e| e.to_string())?,
            )),
            None => None,
        },
    })
}

/// The key of usage counting's person tokens, derived from the pseudonym key: secret,
/// the same on every replica and across restarts, and never stored under `data_dir`.
pub fn usage_salt_key(pseudonym_key: &[u8]) -> Result<[u8; 32], String> {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pseudonym_key)
        .map_err(|_| "the pseudonym key cannot key an HMAC".to_owned())?;
    mac.update(b"portvakt-usage-salt-key");
    Ok(mac.finalize().into_bytes().into())
}

/// The memory store, swept every minute so expired sessions do not pile up.
pub fn memory_store(clock: &Arc<dyn Clock>) -> Arc<dyn store::Store> {
    let store = Arc::new(store::memory::MemoryStore::new());
    store.spawn_sweeper(clock.clone(), std::time::Duration::from_secs(60));
    store
}

/// The Redis store behind this replica's session cache. No connection is made here: a
/// Redis that is down at start leaves the gateway running but not ready (`/readyz` 503,
/// logins refused with a clear page) and connecting again by itself until Redis answers,
/// so replicas and Redis may start in any order. A malformed URL stops the start.
pub fn redis_store(url: &str) -> Result<Arc<dyn store::Store>, String> {
    let conn = store::redis::RedisConn::open(url).map_err(|e| e.to_string())?;
    let redis: Arc<dyn store::Store> = Arc::new(store::redis::RedisStore::new(conn));
    Ok(Arc::new(store::cache::CachedStore::new(redis)))
}

/// `portvakt demo`.
pub async fn demo(port: u16, admin_port: u16, policy: PathBuf) -> Result<(), String> {
    crate::telemetry::init(crate::config::LogFormat::Text);
    let opts = crate::demo::DemoOptions {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
    };
    let stop = crate::server::termination();
    let (running, cards, host) = crate::demo::start(opts, policy).await?;
    println!("{}", crate::demo::banner(&host, running.admin_addr, &cards));
    crate::server::run_until(running, stop).await;
    Ok(())
}
