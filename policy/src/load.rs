//! Loading a policy directory: read → parse with spans → check every rule → build.
//!
//! Every mistake in every file is collected as a [`Diagnostic`] with the file, line and
//! column of the offending value (or of its table when a key is missing). A [`Policy`] is
//! built only when there is no error at all, so a caller never sees a partial policy.
//! Checking walks the spanned TOML tree by hand rather than through serde, because serde
//! stops at the first error and librarians need all of them at once.
//!
//! The checks are split by table over one small toolkit ([`toolkit`]): each table's rules
//! in its own module ([`institution`], [`group`], [`service`], [`entitlement`]), collected
//! in [`raw`], then [`cross_check`] resolves references and builds the [`Policy`].

mod cross_check;
mod diagnostic;
mod entitlement;
mod group;
mod institution;
mod raw;
mod service;
mod toolkit;

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

pub use self::diagnostic::{Diagnostic, LoadError, Severity};
use self::raw::Raw;
use self::toolkit::{Checker, Source, Table, line_col_in, type_name};
pub use self::toolkit::{parse_date, parse_duration};
use crate::model::Policy;

/// A loaded policy and the warnings it produced.
pub type Loaded = (Policy, Vec<Diagnostic>);

/// Reads every `*.toml` file directly in `dir`, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let dir_name = dir.display().to_string();
    let whole = |message: String| LoadError {
        diagnostics: vec![Diagnostic {
            file: dir_name.clone(),
            position: None,
            severity: Severity::Error,
            message,
        }],
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| whole(format!("cannot read the policy directory: {e}")))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| whole(format!("cannot read the policy directory: {e}")))?;
        let path = entry.path();
        let is_toml = path.extension().is_some_and(|x| x == "toml");
        // A directory named `x.toml` is not a policy file; a symlink to a file is.
        if is_toml && !path.is_dir() {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(whole(
            "no policy files: the directory has no *.toml files".into(),
        ));
    }

    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
        let name = path.display().to_string();
        let file_error = |position, message| Diagnostic {
            file: name.clone(),
            position,
            severity: Severity::Error,
            message,
        };
        match std::fs::read(path) {
            Err(e) => diagnostics.push(file_error(None, format!("cannot read the file: {e}"))),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => files.push((name, text)),
                Err(e) => {
                    let valid = e.utf8_error().valid_up_to();
                    let bytes = e.as_bytes();
                    let prefix = String::from_utf8_lossy(&bytes[..valid]);
                    let pos = line_col_in(&prefix, valid);
                    diagnostics.push(file_error(
                        Some(pos),
                        "the file is not UTF-8 text (save it as UTF-8)".into(),
                    ));
                }
            },
        }
    }
    load_inner(files, Some(dir), diagnostics)
}

/// Loads a policy from in-memory files `(name, text)`, in the order given. Certificate
/// files named in `[service.saml]` cannot be read this way and are reported as errors.
pub fn load_files(files: Vec<(String, String)>) -> Result<Loaded, LoadError> {
    load_inner(files, None, Vec::new())
}

fn load_inner(
    files: Vec<(String, String)>,
    base: Option<&Path>,
    mut diagnostics: Vec<Diagnostic>,
) -> Result<Loaded, LoadError> {
    let sources: Vec<Source> = files
        .into_iter()
        .map(|(name, text)| Source::new(name, text))
        .collect();
    let mut ck = Checker {
        sources: &sources,
        diags: Vec::new(),
        base,
    };
    let mut raw = Raw::default();
    let mut parse_failed = !diagnostics.is_empty();
    for (fi, src) in sources.iter().enumerate() {
        match DeTable::parse(&src.text) {
            Err(e) => {
                parse_failed = true;
                let span = e.span().unwrap_or(0..0);
                ck.error(fi, span, format!("invalid TOML: {}", e.message().trim()));
            }
            Ok(doc) => ck.document(fi, doc.get_ref(), &mut raw),
        }
    }
    let built = ck.cross_check(raw, parse_failed);
    diagnostics.extend(ck.diags);
    // Whole-file problems first, then by file and position.
    diagnostics
        .sort_by(|a, b| (&a.file, a.position, a.severity).cmp(&(&b.file, b.position, b.severity)));
    let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
    match built {
        Some(policy) if !has_errors => Ok((policy, diagnostics)),
        _ => Err(LoadError { diagnostics }),
    }
}

impl Checker<'_> {
    fn document(&mut self, file: usize, doc: &DeTable<'_>, raw: &mut Raw) {
        for (key, value) in doc.iter() {
            let name: &str = key.get_ref();
            if !["institution", "group", "service", "entitlement"].contains(&name) {
                self.error(
                    file,
                    key.span(),
                    format!(
                        "unknown key \"{name}\" (a policy file holds [[institution]], \
                         [[group]], [[service]] and [[entitlement]] tables)"
                    ),
                );
                continue;
            }
            let DeValue::Array(items) = value.get_ref() else {
                self.error(
                    file,
                    value.span(),
                    format!(
                        "\"{name}\" must be an array of tables: write [[{name}]], not [{name}]"
                    ),
                );
                continue;
            };
            for item in items.iter() {
                let DeValue::Table(map) = item.get_ref() else {
                    self.error(
                        file,
                        item.span(),
                        format!(
                            "each \"{name}\" must be a table, found {}",
                            type_name(item.get_ref())
                        ),
                    );
                    continue;
                };
                let mut t = Table {
                    file,
                    span: item.span(),
                    map,
                    what: name.to_owned(),
                };
                match name {
                    "institution" => self.institution(&mut t, raw),
                    "group" => self.group(&mut t, raw),
                    "service" => self.service(&mut t, raw),
                    _ => self.entitlement(&mut t, raw),
                }
            }
        }
    }
}
