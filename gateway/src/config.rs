//! The gateway's configuration, in two stages: the file as written ([`FileConfig`], serde
//! with `deny_unknown_fields`) and the checked [`Config`] the server runs on.
//!
//! Reading goes: parse with spans → walk the tree for unknown keys (all of them, with
//! file:line:col) → deserialize → check every value (all errors at once, each with its
//! place). Settings left out take their defaults (loopback listeners, the memory store,
//! `policy/`), but keys never default: without a pseudonym key the gateway stops with one
//! line saying how to make one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub mod card_backend;
pub mod feide;

pub use proxy::Scheme;

use self::card_backend::FileCardBackend;
use self::feide::{FeideSettings, FileFeide};

/// Every mistake in a config file, each as `FILE:LINE:COLUMN: error: MESSAGE`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub policy: FilePolicy,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default)]
    pub keys: FileKeys,
    #[serde(default)]
    pub card_backend: Vec<Spanned<FileCardBackend>>,
    pub feide: Option<Spanned<FileFeide>>,
    pub saml: Option<FileSaml>,
    #[serde(default)]
    pub usage: FileUsage,
    #[serde(default)]
    pub statistician: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    pub telemetry: FileTelemetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub public_host: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub public_scheme: Option<Spanned<String>>,
    pub session_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    pub dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    pub backend: Option<Spanned<String>>,
    pub redis_url: Option<Spanned<String>>,
    pub data_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeys {
    pub pseudonym_key_file: Option<Spanned<String>>,
    pub session_key_file: Option<Spanned<String>>,
    pub signing_key_file: Option<Spanned<String>>,
    pub signing_cert_file: Option<Spanned<String>>,
    /// Certificates of signing keys rotated out: still published in the JWKS.
    #[serde(default)]
    pub previous_signing_cert_files: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSaml {
    pub entity_id: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUsage {
    pub k_anonymity: Option<Spanned<i64>>,
    pub flush_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTelemetry {
    pub log_format: Option<Spanned<String>>,
    pub otlp_endpoint: Option<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where sessions, tickets and the shared counters live.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// In this process: one replica.
    Memory,
    /// One Redis shared by every replica (`redis://host:port/db`, `rediss://` for TLS).
    /// Needs `[keys] session_key_file`, the same on every replica.
    Redis { url: String },
}

/// The URL may hold a password: never printed.
impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis { .. } => f.write_str("Redis { url: <redacted> }"),
        }
    }
}

/// The checked configuration. Paths are resolved against the config file's directory.
#[derive(Debug)]
pub struct Config {
    /// Public listener. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener (health, metrics, reload). Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Host (and optional port) of the login pages; services answer at
    /// `<service>.<public_host>`. Default `bib.localhost:8080`.
    pub public_host: String,
    /// Scheme of every absolute URL the gateway builds. Default: `https` with TLS, else
    /// `http`.
    pub public_scheme: Scheme,
    /// Certificate chain and key (PEM) for TLS on the public listener.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Default session lifetime when a service sets none. Default 8 h.
    pub session_ttl: Duration,
    /// Load balancers whose `X-Forwarded-For` is believed. Default none.
    pub trusted_proxies: Vec<IpNet>,
    /// Default `policy` beside the config file.
    pub policy_dir: PathBuf,
    pub store: StoreBackend,
    /// Where the memory store persists what must survive a restart. Default `data`.
    pub data_dir: PathBuf,
    pub pseudonym_key_file: PathBuf,
    pub session_key_file: Option<PathBuf>,
    pub signing_key_file: Option<PathBuf>,
    pub signing_cert_file: Option<PathBuf>,
    pub previous_signing_cert_files: Vec<PathBuf>,
    /// `[saml] entity_id`, default `<scheme>://<public_host>/saml/metadata`.
    pub saml_entity_id: Option<String>,
    /// `[saml] scope`, default the public host without a port.
    pub saml_scope: Option<String>,
    pub card_backends: Vec<FileCardBackend>,
    /// `[feide]`, when present.
    pub feide: Option<FeideSettings>,
    /// Directory that relative paths in `card_backends` are read from.
    pub base_dir: PathBuf,
    /// Minimum count shown in breakdowns by affiliation or age band. Default 5.
    pub k_anonymity: u32,
    /// Default 1 s.
    pub flush_interval: Duration,
    /// `[[statistician]]`: who may read usage (native API, SUSHI). Default none.
    pub statisticians: usage::Statisticians,
    pub log_format: LogFormat,
    /// Sections accepted by the format but not yet acted on by this version; the server
    /// warns about each at start.
    pub not_yet_supported: Vec<&'static str>,
}

/// Allowed keys per section, for the unknown-key walk (serde would stop at the first).
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "admin_listen",
            "public_host",
            "tls_cert",
            "tls_key",
            "public_scheme",
            "session_ttl",
            "trusted_proxies",
        ],
    ),
    ("policy", &["dir"]),
    ("store", &["backend", "redis_url", "data_dir"]),
    (
        "keys",
        &[
            "pseudonym_key_file",
            "session_key_file",
            "signing_key_file",
            "signing_cert_file",
            "previous_signing_cert_files",
        ],
    ),
    (
        "card_backend",
        &[
            "kind",
            "institutions",
            "addr",
            "tls",
            "tls_ca_file",
            "tls_server_name",
            "login_user",
            "login_password_file",
            "institution_id",
            "location",
            "checksums",
            "encoding",
            "timeout",
            "connections",
            "url",
            "token_file",
            "path",
        ],
    ),
    (
        "feide",
        &[
            "issuer",
            "client_id",
            "client_secret_file",
            "scopes",
            "extended_userinfo_url",
        ],
    ),
    ("saml", &["entity_id", "scope"]),
    ("usage", &["k_anonymity", "flush_interval"]),
    (
        "statistician",
        &["name", "api_key_sha256", "institutions", "groups"],
    ),
    ("telemetry", &["log_format", "otlp_endpoint"]),
];

struct Places<'a> {
    name: &'a str,
    text: &'a str,
}

impl Places<'_> {
    fn at(&self, offset: usize, message: impl std::fmt::Display) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{line}:{col}: error: {message}", self.name)
    }
}

impl Config {
    /// Reads and checks a config file. `Err` holds every error found.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![format!(
                "{name}: error: cannot read the config file: {e}"
            )])
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&name, &text, &base)
    }

    /// Checks config text; `name` is used in messages, `base` resolves relative paths.
    pub fn parse(name: &str, text: &str, base: &Path) -> Result<Config, ConfigError> {
        let places = Places { name, text };
        let doc = DeTable::parse(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            ConfigError(vec![
                places.at(at, format!("invalid TOML: {}", e.message().trim())),
            ])
        })?;
        let mut errors = Vec::new();
        unknown_keys(doc.get_ref(), &places, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigError(by_position(errors)));
        }
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            ConfigError(vec![places.at(at, e.message().trim())])
        })?;
        check(file, &places, base).map_err(|e| ConfigError(by_position(e.0)))
    }
}

/// Orders `FILE:LINE:COL: …` lines by line and column (whole-file lines first).
fn by_position(mut errors: Vec<String>) -> Vec<String> {
    let key = |e: &String| {
        let mut parts = e.splitn(4, ':').skip(1);
        let line = parts
            .next()
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0);
        let col = parts
            .next()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(0);
        (line, col)
    };
    errors.sort_by_key(key);
    errors
}

fn unknown_keys(doc: &DeTable<'_>, places: &Places<'_>, errors: &mut Vec<String>) {
    for (key, value) in doc.iter() {
        let section: &str = key.get_ref();
        let Some((_, allowed)) = SECTIONS.iter().find(|(s, _)| *s == section) else {
            let known: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
            errors.push(places.at(
                key.span().start,
                format!(
                    "unknown section \"{section}\" (known: {})",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let tables: Vec<&DeTable<'_>> = match value.get_ref() {
            DeValue::Table(t) => vec![t],
            DeValue::Array(a) => a
                .iter()
                .filter_map(|v| match v.get_ref() {
                    DeValue::Table(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for t in tables {
            for (k, _) in t.iter() {
                let k: &str = k.get_ref();
                if !allowed.contains(&k)
                    && let Some((kspan, _)) = t.get_key_value(k)
                {
                    errors.push(places.at(
                        kspan.span().start,
                        format!("[{section}]: unknown key \"{k}\""),
                    ));
                }
            }
        }
    }
}

fn check(file: FileConfig, places: &Places<'_>, base: &Path) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    let path = |s: &str| {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let addr = |v: &Option<Spanned<String>>, default: &str, key: &str, errors: &mut Vec<String>| {
        let Some(v) = v else {
            return default.parse::<SocketAddr>().ok();
        };
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(places.at(
                    v.span().start,
                    format!(
                        "[server] {key}: \"{}\" is not an address and port (e.g. \"127.0.0.1:8080\" or \"[::]:443\")",
                        v.get_ref()
                    ),
                ));
                None
            }
        }
    };
    let duration =
        |v: &Option<Spanned<String>>, default: Duration, key: &str, errors: &mut Vec<String>| {
            match v {
                None => default,
                Some(v) => policy::parse_duration(v.get_ref()).unwrap_or_else(|| {
                    errors.push(places.at(
                    v.span().start,
                    format!(
                        "{key}: \"{}\" is not a duration (e.g. \"90s\", \"30m\", \"8h\", \"2d\")",
                        v.get_ref()
                    ),
                ));
                    default
                }),
            }
        };

    let s = &file.server;
    let listen = addr(&s.listen, "127.0.0.1:8080", "listen", &mut errors);
    let admin_listen = addr(
        &s.admin_listen,
        "127.0.0.1:9090",
        "admin_listen",
        &mut errors,
    );
    if let (Some(l), Some(a)) = (listen, admin_listen)
        && l == a
        && l.port() != 0
        && let Some(v) = &s.admin_listen
    {
        errors.push(places.at(
            v.span().start,
            "[server] admin_listen must differ from listen: the admin endpoints are never public",
        ));
    }
    let public_host = match &s.public_host {
        None => "bib.localhost:8080".to_owned(),
        Some(v) => {
            let h = v.get_ref().to_ascii_lowercase();
            let ok = !h.is_empty()
                && url::Url::parse(&format!("http://{h}/")).is_ok_and(|u| {
                    u.host_str().is_some() && u.path() == "/" && u.username().is_empty()
                })
                && !h.contains(['/', '?', '#', '@']);
            if !ok {
                errors.push(places.at(
                    v.span().start,
                    format!("[server] public_host: \"{}\" is not a host name with an optional port (e.g. \"bib.example.no\")", v.get_ref()),
                ));
            }
            h
        }
    };
    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => Some((path(c.get_ref()), path(k.get_ref()))),
        (None, None) => None,
        (Some(v), None) | (None, Some(v)) => {
            errors.push(places.at(v.span().start, "[server] tls_cert and tls_key go together"));
            None
        }
    };
    let public_scheme = match &s.public_scheme {
        None if tls.is_some() => Scheme::Https,
        None => Scheme::Http,
        Some(v) => {
            match v.get_ref().as_str() {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                other => {
                    errors.push(places.at(
                    v.span().start,
                    format!("[server] public_scheme must be \"http\" or \"https\", found \"{other}\""),
                ));
                    Scheme::Http
                }
            }
        }
    };
    let session_ttl = duration(
        &s.session_ttl,
        Duration::from_secs(8 * 3600),
        "[server] session_ttl",
        &mut errors,
    );
    let mut trusted_proxies = Vec::new();
    for v in &s.trusted_proxies {
        let t = v.get_ref();
        match t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => errors.push(places.at(
                v.span().start,
                format!("[server] trusted_proxies: \"{t}\" is not a CIDR or address"),
            )),
        }
    }

    let policy_dir = file
        .policy
        .dir
        .as_ref()
        .map_or_else(|| path("policy"), |d| path(d.get_ref()));
    let store = match file
        .store
        .backend
        .as_ref()
        .map(|b| (b.get_ref().as_str(), b.span().start))
    {
        None | Some(("memory", _)) => StoreBackend::Memory,
        Some(("redis", at)) => match &file.store.redis_url {
            Some(u) => {
                // Parsed now (no connection is made), so a typo stops the start with its
                // place. The crate's message names the fault, never the URL's password.
                if let Err(e) = redis::Client::open(u.get_ref().as_str()) {
                    errors.push(places.at(
                        u.span().start,
                        format!("[store] redis_url is not a usable Redis URL: {e}"),
                    ));
                }
                // Replicas must agree on the keys of login forms, service-host cookies
                // and the keyed hashes in Redis: a random key per process would not do.
                if file.keys.session_key_file.is_none() {
                    errors.push(places.at(
                        at,
                        "[store] backend = \"redis\" needs [keys] session_key_file, the same file on every replica",
                    ));
                }
                StoreBackend::Redis {
                    url: u.get_ref().clone(),
                }
            }
            None => {
                errors.push(places.at(at, "[store] backend = \"redis\" needs redis_url"));
                StoreBackend::Memory
            }
        },
        Some((other, at)) => {
            errors.push(places.at(
                at,
                format!("[store] backend must be \"memory\" or \"redis\", found \"{other}\""),
            ));
            StoreBackend::Memory
        }
    };
    if store == StoreBackend::Memory
        && file.store.backend.is_some()
        && let Some(u) = &file.store.redis_url
    {
        errors.push(places.at(
            u.span().start,
            "[store] redis_url needs backend = \"redis\"",
        ));
    }
    let data_dir = file
        .store
        .data_dir
        .as_ref()
        .map_or_else(|| path("data"), |d| path(d.get_ref()));

    let k = &file.keys;
    if k.signing_key_file.is_some() != k.signing_cert_file.is_some()
        && let Some(v) = k.signing_key_file.as_ref().or(k.signing_cert_file.as_ref())
    {
        errors.push(places.at(
            v.span().start,
            "[keys] signing_key_file and signing_cert_file go together",
        ));
    }
    let pseudonym_key_file = match &k.pseudonym_key_file {
        Some(p) => Some(path(p.get_ref())),
        None => {
            errors.push(format!(
                "{}: error: [keys] pseudonym_key_file is not set: make keys with `portvakt keys generate --out keys`, then set pseudonym_key_file = \"keys/pseudonym.key\" (and the other [keys] files)",
                places.name
            ));
            None
        }
    };

    let k_anonymity = match &file.usage.k_anonymity {
        None => 5,
        Some(v) if (1..=1000).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            errors.push(places.at(v.span().start, "[usage] k_anonymity must be from 1 to 1000"));
            5
        }
    };
    let flush_interval = duration(
        &file.usage.flush_interval,
        Duration::from_secs(1),
        "[usage] flush_interval",
        &mut errors,
    );
    let log_format = match file.telemetry.log_format.as_ref() {
        None => LogFormat::Text,
        Some(v) => match v.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                errors.push(places.at(
                    v.span().start,
                    format!(
                        "[telemetry] log_format must be \"text\" or \"json\", found \"{other}\""
                    ),
                ));
                LogFormat::Text
            }
        },
    };
    let feide = file.feide.as_ref().and_then(|f| {
        f.get_ref()
            .check(f.span().start, base)
            .map_err(|problems| {
                for (at, message) in problems {
                    errors.push(places.at(at, message));
                }
            })
            .ok()
    });
    let tables: Vec<toml::Table> = file
        .statistician
        .iter()
        .map(|t| t.get_ref().clone())
        .collect();
    let statisticians = match usage::Statisticians::from_tables(&tables) {
        Ok(s) => s,
        Err(problems) => {
            for p in problems {
                let at = file.statistician.get(p.index).map_or(0, |t| t.span().start);
                errors.push(places.at(at, format!("statistician[{}]: {}", p.index, p.message)));
            }
            Default::default()
        }
    };
    let mut not_yet_supported = Vec::new();
    if file.telemetry.otlp_endpoint.is_some() {
        not_yet_supported.push("[telemetry] otlp_endpoint");
    }

    let mut card_backends = Vec::new();
    for (i, b) in file.card_backend.iter().enumerate() {
        if let Err(problems) = crate::auth::library_card::build(b.get_ref(), base) {
            for p in problems {
                errors.push(places.at(b.span().start, format!("card_backend[{i}]: {p}")));
            }
        }
        card_backends.push(b.get_ref().clone());
    }

    match (listen, admin_listen, pseudonym_key_file) {
        (Some(listen), Some(admin_listen), Some(pseudonym_key_file)) if errors.is_empty() => {
            Ok(Config {
                listen,
                admin_listen,
                public_host,
                public_scheme,
                tls,
                session_ttl,
                trusted_proxies,
                policy_dir,
                store,
                data_dir,
                pseudonym_key_file,
                session_key_file: k.session_key_file.as_ref().map(|p| path(p.get_ref())),
                signing_key_file: k.signing_key_file.as_ref().map(|p| path(p.get_ref())),
                signing_cert_file: k.signing_cert_file.as_ref().map(|p| path(p.get_ref())),
                previous_signing_cert_files: k
                    .previous_signing_cert_files
                    .iter()
                    .map(|p| path(p.get_ref()))
                    .collect(),
                saml_entity_id: file
                    .saml
                    .as_ref()
                    .and_then(|s| s.entity_id.as_ref())
                    .map(|e| e.get_ref().clone()),
                saml_scope: file
                    .saml
                    .as_ref()
                    .and_then(|s| s.scope.as_ref())
                    .map(|e| e.get_ref().clone()),
                card_backends,
                feide,
                base_dir: base.to_path_buf(),
                k_anonymity,
                flush_interval,
                statisticians,
                log_format,
                not_yet_supported,
            })
        }
        _ => Err(ConfigError(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse("portvakt.toml", text, Path::new("/etc/portvakt")).map_err(|e| e.0)
    }

    const KEYS: &str = "[keys]\npseudonym_key_file = \"keys/pseudonym.key\"\n";

    #[test]
    fn defaults_are_loopback_memory_and_policy_beside_the_file() {
        let c = parse(KEYS).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.public_host, "bib.localhost:8080");
        assert_eq!(c.public_scheme, Scheme::Http);
        assert_eq!(c.store, StoreBackend::Memory);
        assert_eq!(c.policy_dir, Path::new("/etc/portvakt/policy"));
        assert_eq!(
            c.pseudonym_key_file,
            Path::new("/etc/portvakt/keys/pseudonym.key")
        );
        assert_eq!(c.session_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(c.k_anonymity, 5);
        assert_eq!(c.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn keys_never_default() {
        let e = parse("").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("portvakt keys generate"), "{e:?}");
        assert!(e[0].starts_with("portvakt.toml: error: "), "{e:?}");
    }

    #[test]
    fn every_unknown_key_at_once_with_its_place() {
        let e = parse(&format!(
            "{KEYS}[server]\nlisten = \"127.0.0.1:1\"\nlissten = \"x\"\n[stor]\nbackend = \"memory\"\n[policy]\ndirr = \"p\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "portvakt.toml:5:1: error: [server]: unknown key \"lissten\"".to_owned(),
                "portvakt.toml:6:2: error: unknown section \"stor\" (known: server, policy, store, keys, card_backend, feide, saml, usage, statistician, telemetry)".to_owned(),
                "portvakt.toml:9:1: error: [policy]: unknown key \"dirr\"".to_owned(),
            ]
        );
    }

    #[test]
    fn every_bad_value_at_once_with_its_place() {
        let e = parse(&format!(
            "{KEYS}[server]\nlisten = \"nowhere\"\npublic_scheme = \"gopher\"\nsession_ttl = \"forever\"\ntrusted_proxies = [\"10.0.0.0/8\", \"bogus\"]\ntls_cert = \"a.pem\"\n[store]\nbackend = \"redis\"\n[usage]\nk_anonymity = 0\n"
        ))
        .unwrap_err();
        let joined = e.join("\n");
        for expected in [
            "portvakt.toml:4:10: error: [server] listen: \"nowhere\" is not an address",
            "portvakt.toml:5:17: error: [server] public_scheme must be",
            "portvakt.toml:6:15: error: [server] session_ttl: \"forever\" is not a duration",
            "portvakt.toml:7:34: error: [server] trusted_proxies: \"bogus\" is not a CIDR",
            "portvakt.toml:8:12: error: [server] tls_cert and tls_key go together",
            "portvakt.toml:10:11: error: [store] backend = \"redis\" needs redis_url",
            "portvakt.toml:12:15: error: [usage] k_anonymity must be from 1 to 1000",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert_eq!(e.len(), 7, "{joined}");
    }

    #[test]
    fn card_backend_errors_name_the_backend_and_key() {
        let e = parse(&format!(
            "{KEYS}[[card_backend]]\nkind = \"sip2\"\ninstitutions = [\"NO-2390700\"]\n"
        ))
        .unwrap_err();
        assert!(
            e.iter().any(
                |l| l.starts_with("portvakt.toml:3:1: error: card_backend[0]: ")
                    && l.contains("addr")
            ),
            "{e:?}"
        );
    }

    #[test]
    fn statisticians_are_checked_with_their_place() {
        let good = format!(
            "{KEYS}[[statistician]]\nname = \"ssb\"\napi_key_sha256 = \"{}\"\ngroups = [\"vestfold-bibliotek\"]\n",
            "ab".repeat(32)
        );
        let c = parse(&good).expect("valid");
        assert!(!c.statisticians.is_empty());
        let bad = format!("{KEYS}[[statistician]]\nname = \"ssb\"\napi_key_sha256 = \"nope\"\n");
        let e = parse(&bad).expect_err("invalid");
        assert!(e.iter().any(|l| l.contains("error: statistician[0]: api_key_sha256 must be 64 hex digits")), "{e:?}");
        assert!(
            e.iter()
                .any(|l| l.contains("statistician[0]: needs institutions or groups")),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_toml_is_one_line() {
        let e = parse("[server\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("portvakt.toml:1:"), "{e:?}");
    }

    #[test]
    fn tls_implies_https_and_admin_must_differ() {
        let c = parse(&format!(
            "{KEYS}[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\npublic_host = \"Bib.Example.NO\"\n"
        ))
        .unwrap();
        assert_eq!(c.public_scheme, Scheme::Https);
        assert_eq!(c.public_host, "bib.example.no");
        let e = parse(&format!(
            "{KEYS}[server]\nlisten = \"127.0.0.1:80\"\nadmin_listen = \"127.0.0.1:80\"\n"
        ))
        .unwrap_err();
        assert!(e[0].contains("admin_listen must differ"), "{e:?}");
    }
}

#[cfg(test)]
mod example_file {
    /// The example shipped at the repository root stays valid.
    #[test]
    fn the_example_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../portvakt.example.toml");
        let c = super::Config::load(&path).unwrap();
        assert_eq!(c.card_backends.len(), 1);
        assert_eq!(c.public_host, "bib.localhost:8080");
        // The policy it names is the demo county's, and it loads.
        assert!(c.policy_dir.ends_with("demo/policy"), "{:?}", c.policy_dir);
        policy::load_dir(&c.policy_dir).unwrap();
    }
}
