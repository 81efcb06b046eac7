//! Library card + PIN checks against a library system, behind one [`PatronVerifier`] trait.
//!
//! A `[[card_backend]]` section of the config ([`FileCardBackend`]) goes through [`build`]
//! into an `Arc<dyn PatronVerifier>`; the login page calls [`PatronVerifier::verify`] with the
//! library the patron chose, the card and the PIN, and gets a [`CardOutcome`] or a
//! [`VerifyError`]. Three backends implement the trait:
//!
//! - [`sip2`]: SIP2 (messages 93 and 63/64) to the library system's ACS, pooled;
//! - [`http`]: a JSON patron API, `POST {"library","card","pin"}`;
//! - [`file`]: a local TOML patron list, for demos and tests only.
//!
//! A [`VerifyError`] always reads "the library system is not answering", never "wrong PIN":
//! a patron must not be told their PIN is wrong when we simply did not get an answer. No
//! card number, PIN, name or birth date reaches an error, a log line or a `Debug` output.

pub mod file;
pub mod http;
pub mod sip2;
pub mod verifier;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use self::verifier::{CardOutcome, PatronInfo, PatronVerifier, VerifyError, VerifyFuture};
use self::verifier::{error_chain, read_secret};
pub use crate::config::card_backend::FileCardBackend;
use policy::ids::InstitutionId;
use policy::subject::Age;

/// Default for `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `connections`.
pub const DEFAULT_CONNECTIONS: usize = 2;

const KINDS: [&str; 3] = ["sip2", "http", "file"];

/// Checks one `[[card_backend]]` and builds its verifier. Secret files and the patron list
/// are read now, relative to `base_dir` (the config file's folder). Every problem is
/// reported, each naming its key; the caller prefixes the place (`card_backend[0]: `), or
/// uses [`build_all`], which does.
pub fn build(
    cfg: &FileCardBackend,
    base_dir: &Path,
) -> Result<Arc<dyn PatronVerifier>, Vec<String>> {
    let mut errors = Vec::new();
    let kind = cfg.kind.as_str();
    if !KINDS.contains(&kind) {
        return Err(vec![format!(
            "unknown kind \"{}\" (expected \"sip2\", \"http\" or \"file\")",
            cfg.kind.escape_debug()
        )]);
    }
    if cfg.institutions.is_empty() {
        errors.push(format!(
            "kind \"{kind}\" needs \"institutions\" (at least one)"
        ));
    }
    for (key, set, kinds) in settings(cfg) {
        if set && !kinds.contains(&kind) {
            errors.push(format!(
                "\"{key}\" is a setting of kind {}, not \"{kind}\"",
                kinds
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
    }
    let timeout = match cfg.timeout.as_deref() {
        None => DEFAULT_TIMEOUT,
        Some(s) => parse_timeout(s).unwrap_or_else(|| {
            errors.push(format!(
                "\"timeout\" must be a duration above zero such as \"5s\" or \"1500ms\", not \"{}\"",
                s.escape_debug()
            ));
            DEFAULT_TIMEOUT
        }),
    };
    let built: Result<Arc<dyn PatronVerifier>, Vec<String>> = match kind {
        "sip2" => sip2_backend(cfg, base_dir, timeout).map(|v| Arc::new(v) as _),
        "http" => http::HttpVerifier::from_config(cfg, base_dir, timeout).map(|v| Arc::new(v) as _),
        _ => file::FileVerifier::from_config(cfg, base_dir).map(|v| Arc::new(v) as _),
    };
    match built {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// A built backend and the institution references (as configured) it serves.
#[derive(Clone, Debug)]
pub struct CardBackend {
    pub institutions: Vec<String>,
    pub verifier: Arc<dyn PatronVerifier>,
}

/// Builds every `[[card_backend]]`, prefixing each error with `card_backend[i]: `, and
/// checks that no institution reference is served by two backends.
pub fn build_all(
    cfgs: &[FileCardBackend],
    base_dir: &Path,
) -> Result<Vec<CardBackend>, Vec<String>> {
    let mut errors = Vec::new();
    let mut built = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, cfg) in cfgs.iter().enumerate() {
        for inst in &cfg.institutions {
            if let Some(first) = seen.insert(inst.as_str(), i) {
                errors.push(format!(
                    "card_backend[{i}]: institution \"{}\" is already served by card_backend[{first}]",
                    inst.escape_debug()
                ));
            }
        }
        match build(cfg, base_dir) {
            Ok(verifier) => built.push(CardBackend {
                institutions: cfg.institutions.clone(),
                verifier,
            }),
            Err(e) => errors.extend(e.into_iter().map(|e| format!("card_backend[{i}]: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(built)
    } else {
        Err(errors)
    }
}

/// Each optional setting: its key, whether it is set, and the kinds it belongs to.
fn settings(cfg: &FileCardBackend) -> [(&'static str, bool, &'static [&'static str]); 15] {
    const SIP2: &[&str] = &["sip2"];
    const HTTP: &[&str] = &["http"];
    const FILE: &[&str] = &["file"];
    const TIMED: &[&str] = &["sip2", "http"];
    [
        ("addr", cfg.addr.is_some(), SIP2),
        ("tls", cfg.tls.is_some(), SIP2),
        ("tls_ca_file", cfg.tls_ca_file.is_some(), SIP2),
        ("tls_server_name", cfg.tls_server_name.is_some(), SIP2),
        ("login_user", cfg.login_user.is_some(), SIP2),
        (
            "login_password_file",
            cfg.login_password_file.is_some(),
            SIP2,
        ),
        ("institution_id", cfg.institution_id.is_some(), SIP2),
        ("location", cfg.location.is_some(), SIP2),
        ("checksums", cfg.checksums.is_some(), SIP2),
        ("encoding", cfg.encoding.is_some(), SIP2),
        ("connections", cfg.connections.is_some(), SIP2),
        ("timeout", cfg.timeout.is_some(), TIMED),
        ("url", cfg.url.is_some(), HTTP),
        ("token_file", cfg.token_file.is_some(), HTTP),
        ("path", cfg.path.is_some(), FILE),
    ]
}

/// `"5s"`, `"1500ms"`, `"1m"`: a whole number above zero and one unit.
fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(unit_at);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// Reads a password or token file: its whole content but one trailing newline (`\n` or
/// `\r\n`), which editors add. The content never appears in an error.
fn sip2_backend(
    cfg: &FileCardBackend,
    base_dir: &Path,
    timeout: Duration,
) -> Result<Sip2Verifier, Vec<String>> {
    let mut errors = Vec::new();
    let Some(addr) = cfg.addr.clone() else {
        return Err(vec![
            "kind \"sip2\" needs \"addr\" (host:port of the ACS)".into(),
        ]);
    };
    let tls = sip2_tls(cfg, &addr, base_dir).map_err(|e| errors.extend(e));
    let encoding = match cfg.encoding.as_deref() {
        None => sip2::Encoding::Utf8,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errors.push(format!(
                "\"encoding\" must be \"utf-8\" or \"latin1\", not \"{}\"",
                s.escape_debug()
            ));
            sip2::Encoding::Utf8
        }),
    };
    let login_password = match (&cfg.login_user, &cfg.login_password_file) {
        (Some(_), Some(file)) => read_secret("login_password_file", file, base_dir)
            .map_err(|e| errors.push(e))
            .ok(),
        (None, None) => None,
        (Some(_), None) => {
            errors.push("\"login_user\" needs \"login_password_file\"".into());
            None
        }
        (None, Some(_)) => {
            errors.push("\"login_password_file\" needs \"login_user\"".into());
            None
        }
    };
    if cfg.connections == Some(0) {
        errors.push("\"connections\" must be at least 1".into());
    }
    let Ok(tls) = tls else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let settings = sip2::Sip2Settings {
        addr,
        login_user: cfg.login_user.clone(),
        login_password,
        institution_id: cfg.institution_id.clone().unwrap_or_default(),
        location: cfg.location.clone(),
        checksums: cfg.checksums.unwrap_or(true),
        encoding,
        timeout,
        connections: cfg.connections.unwrap_or(DEFAULT_CONNECTIONS),
        tls,
    };
    sip2::Sip2Client::new(settings)
        .map(Sip2Verifier::new)
        .map_err(|e| vec![e.to_string()])
}

/// The TLS half of a sip2 backend: `None` unless `tls` = true; `tls_ca_file` and
/// `tls_server_name` only with it.
fn sip2_tls(
    cfg: &FileCardBackend,
    addr: &str,
    base_dir: &Path,
) -> Result<Option<sip2::Sip2Tls>, Vec<String>> {
    if cfg.tls != Some(true) {
        let stray = [
            ("tls_ca_file", cfg.tls_ca_file.is_some()),
            ("tls_server_name", cfg.tls_server_name.is_some()),
        ];
        let errors: Vec<String> = stray
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| format!("\"{key}\" needs \"tls\" = true"))
            .collect();
        return if errors.is_empty() {
            Ok(None)
        } else {
            Err(errors)
        };
    }
    let mut errors = Vec::new();
    let server_name = match &cfg.tls_server_name {
        Some(name) => rustls_pki_types::ServerName::try_from(name.clone())
            .map_err(|_| {
                errors.push(format!(
                    "\"tls_server_name\" must be a host name or an IP address, not \"{}\"",
                    name.escape_debug()
                ));
            })
            .ok(),
        None => addr_host(addr)
            .and_then(|host| rustls_pki_types::ServerName::try_from(host.to_owned()).ok())
            .or_else(|| {
                errors.push(format!(
                    "\"addr\" \"{}\" has no host name or IP address to check the ACS's \
                     certificate against; set \"tls_server_name\"",
                    addr.escape_debug()
                ));
                None
            }),
    };
    let extra_roots = match &cfg.tls_ca_file {
        None => Vec::new(),
        Some(file) => read_ca_file(file, base_dir).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        }),
    };
    let Some(server_name) = server_name else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    match sip2::Sip2Tls::new(server_name, &extra_roots) {
        Ok(tls) => Ok(Some(tls)),
        Err(e @ sip2::Sip2TlsError::BadRoot { .. }) => Err(vec![format!(
            "\"tls_ca_file\": {}: {e}",
            base_dir
                .join(cfg.tls_ca_file.as_deref().unwrap_or(Path::new("")))
                .display()
        )]),
        Err(e) => Err(vec![format!("\"tls\": {e}")]),
    }
}

/// The host of `host:port` or `[v6]:port`, without brackets; `None` when there is none.
fn addr_host(addr: &str) -> Option<&str> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => addr.rsplit_once(':').map_or(addr, |(host, _)| host),
    };
    Some(host).filter(|h| !h.is_empty())
}

/// Reads a PEM file of CA certificates (at least one); anything else in it is ignored.
fn read_ca_file(
    file: &Path,
    base_dir: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let path = base_dir.join(file);
    let pem = std::fs::read(&path)
        .map_err(|e| format!("\"tls_ca_file\": cannot read {}: {e}", path.display()))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("\"tls_ca_file\": {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "\"tls_ca_file\": {} holds no certificate (expected PEM `BEGIN CERTIFICATE`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// [`PatronVerifier`] over a [`sip2::Sip2Client`]: one ACS, so `library` is not sent (the
/// ACS knows its own institution through `AO`).
#[derive(Debug)]
pub struct Sip2Verifier {
    client: sip2::Sip2Client,
}

impl Sip2Verifier {
    pub fn new(client: sip2::Sip2Client) -> Self {
        Self { client }
    }
}

impl PatronVerifier for Sip2Verifier {
    fn verify<'a>(
        &'a self,
        _library: &'a InstitutionId,
        card: &'a str,
        pin: &'a str,
    ) -> VerifyFuture<'a> {
        Box::pin(async move {
            match self.client.check(card, pin).await {
                Ok(verdict) => Ok(from_sip2(verdict)),
                Err(e) => Err(VerifyError::Unavailable(error_chain(&e))),
            }
        })
    }
}

fn from_sip2(verdict: sip2::Sip2Verdict) -> CardOutcome {
    match verdict {
        sip2::Sip2Verdict::Accepted {
            birth_date,
            home_library,
        } => CardOutcome::Accepted(PatronInfo {
            age: birth_date.map_or(Age::Unknown, Age::BirthDate),
            home_library,
        }),
        sip2::Sip2Verdict::WrongCardOrPin => CardOutcome::WrongCardOrPin,
        sip2::Sip2Verdict::Blocked { lost } => CardOutcome::Blocked { lost },
    }
}

#[cfg(test)]
mod tests;
