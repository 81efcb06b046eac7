//! `[feide]`: the settings of the Feide login, as written ([`FileFeide`]) and checked
//! ([`FeideSettings`]). The client that uses them is `auth::feide`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use toml::Spanned;

use crate::auth::feide::http::is_loopback;

/// Feide's issuer.
pub const FEIDE_ISSUER: &str = "https://auth.dataporten.no";
/// Scopes asked for when `scopes` is not set (see `auth::feide`).
pub const DEFAULT_SCOPES: [&str; 5] = ["openid", "userid", "userid-feide", "profile", "groups-org"];
/// `[feide]` as written in `portvakt.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFeide {
    pub issuer: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    pub extended_userinfo_url: Option<Spanned<String>>,
}

/// The checked `[feide]` section.
#[derive(Clone, Debug)]
pub struct FeideSettings {
    /// Discovery base. Default [`FEIDE_ISSUER`].
    pub issuer: String,
    /// Required.
    pub client_id: String,
    /// Required. Its whole content is the secret, less one trailing newline.
    pub client_secret_file: PathBuf,
    /// Default [`DEFAULT_SCOPES`].
    pub scopes: Vec<String>,
    /// Feide's is `https://api.dataporten.no/userinfo/v1/userinfo`. Default none.
    pub extended_userinfo_url: Option<String>,
    /// Per request to Feide, connect to last byte. Default 10 s; not in the file.
    pub timeout: Duration,
    /// How long discovered metadata and keys are used before discovery runs again.
    /// Default 1 h; not in the file.
    pub metadata_ttl: Duration,
    /// CAs trusted beside the Mozilla roots (tests). Default none; not in the file.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl FeideSettings {
    /// Settings with every default but the client.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file: client_secret_file.into(),
            scopes: DEFAULT_SCOPES.map(str::to_owned).to_vec(),
            extended_userinfo_url: None,
            timeout: Duration::from_secs(10),
            metadata_ttl: Duration::from_secs(3600),
            extra_roots: Vec::new(),
        }
    }
}

impl FileFeide {
    /// Checks the section. Errors come as (byte offset in the file, message), every one
    /// found; `table_at` is where the section starts (for missing keys), `base` resolves a
    /// relative `client_secret_file`.
    pub fn check(
        &self,
        table_at: usize,
        base: &Path,
    ) -> Result<FeideSettings, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        let issuer = match &self.issuer {
            None => FEIDE_ISSUER.to_owned(),
            Some(v) => match check_url(v.get_ref(), false) {
                Ok(u) => u,
                Err(e) => {
                    errors.push((v.span().start, format!("[feide] issuer: {e}")));
                    String::new()
                }
            },
        };
        let client_id = match &self.client_id {
            Some(v) if !v.get_ref().trim().is_empty() => v.get_ref().clone(),
            Some(v) => {
                errors.push((v.span().start, "[feide] client_id is empty".to_owned()));
                String::new()
            }
            None => {
                errors.push((
                    table_at,
                    "[feide] client_id is not set: the client id Feide's customer portal gave this service".to_owned(),
                ));
                String::new()
            }
        };
        let client_secret_file = match &self.client_secret_file {
            Some(v) => {
                let p = Path::new(v.get_ref());
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                }
            }
            None => {
                errors.push((
                    table_at,
                    "[feide] client_secret_file is not set: a file holding the client secret from Feide's customer portal".to_owned(),
                ));
                PathBuf::new()
            }
        };
        let scopes = match &self.scopes {
            None => DEFAULT_SCOPES.map(str::to_owned).to_vec(),
            Some(v) => {
                let bad: Vec<&String> = v
                    .get_ref()
                    .iter()
                    .filter(|s| {
                        s.is_empty()
                            || !s
                                .bytes()
                                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                    })
                    .collect();
                if !bad.is_empty() {
                    errors.push((
                        v.span().start,
                        format!(
                            "[feide] scopes: {bad:?} are not scope names (no spaces or quotes)"
                        ),
                    ));
                }
                v.get_ref().clone()
            }
        };
        let extended_userinfo_url = match &self.extended_userinfo_url {
            None => None,
            Some(v) => match check_url(v.get_ref(), true) {
                Ok(u) => Some(u),
                Err(e) => {
                    errors.push((
                        v.span().start,
                        format!("[feide] extended_userinfo_url: {e}"),
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut settings = FeideSettings::new(issuer, client_id, client_secret_file);
        settings.scopes = scopes;
        settings.extended_userinfo_url = extended_userinfo_url;
        Ok(settings)
    }
}

/// An absolute `https` URL, or `http` to a loopback host; no fragment, and a query only
/// where `query_ok`.
pub fn check_url(s: &str, query_ok: bool) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("\"{s}\" is not a URL: {e}"))?;
    let host = u.host_str().unwrap_or("");
    match u.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "\"{s}\" must be https (plain http only to a loopback address, for tests)"
            ));
        }
        other => return Err(format!("\"{s}\": scheme {other} is not https")),
    }
    if host.is_empty() || !u.username().is_empty() || u.password().is_some() {
        return Err(format!("\"{s}\" needs a host and no user name"));
    }
    if u.fragment().is_some() || (!query_ok && u.query().is_some()) {
        return Err(format!("\"{s}\" must not have a query or fragment"));
    }
    // Kept as written: the issuer must match the discovery document's exactly.
    Ok(s.to_owned())
}
