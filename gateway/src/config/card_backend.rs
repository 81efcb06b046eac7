//! `[[card_backend]]` as written in `portvakt.toml`: one library system and the
//! institutions whose cards it checks. `auth::library_card::build` checks a section and
//! makes its verifier.

use std::path::PathBuf;

use serde::Deserialize;

/// One `[[card_backend]]` section of `portvakt.toml`, as written.
/// [`build`](crate::auth::library_card::build) checks it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCardBackend {
    /// `"sip2"`, `"http"` or `"file"`.
    pub kind: String,
    /// The institutions whose cards this backend checks (ids, bare numbers or aliases).
    pub institutions: Vec<String>,

    /// sip2: `host:port` of the ACS.
    pub addr: Option<String>,
    /// sip2: TLS to the ACS. Default false.
    pub tls: Option<bool>,
    /// sip2, with `tls`: a PEM file of extra CA certificates to trust besides the Mozilla
    /// roots (a library system's own CA).
    pub tls_ca_file: Option<PathBuf>,
    /// sip2, with `tls`: the name the ACS's certificate must carry. Default: the host of
    /// `addr`.
    pub tls_server_name: Option<String>,
    /// sip2: `CN` of message 93; needs `login_password_file`.
    pub login_user: Option<String>,
    /// sip2: file holding `CO` of message 93 (one trailing newline is dropped).
    pub login_password_file: Option<PathBuf>,
    /// sip2: `AO`. Default empty.
    pub institution_id: Option<String>,
    /// sip2: `CP` of message 93.
    pub location: Option<String>,
    /// sip2: `AY`/`AZ` error detection. Default true.
    pub checksums: Option<bool>,
    /// sip2: `"utf-8"` (default) or `"latin1"`.
    pub encoding: Option<String>,
    /// sip2 and http: the longest one check may take, such as `"5s"` or `"1500ms"`.
    /// Default 5 s.
    pub timeout: Option<String>,
    /// sip2: TCP connections kept open and reused. Default 2.
    pub connections: Option<usize>,

    /// http: the patron API's `http://` or `https://` URL.
    pub url: Option<String>,
    /// http: file holding the bearer token (one trailing newline is dropped).
    pub token_file: Option<PathBuf>,

    /// file: the TOML patron list.
    pub path: Option<PathBuf>,
}
