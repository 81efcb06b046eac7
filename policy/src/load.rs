//! Loading a policy directory: read → parse with spans → check every rule → build.
//!
//! Every mistake in every file is collected as a [`Diagnostic`] with the file, line and
//! column of the offending value (or of its table when a key is missing). A [`Policy`] is
//! built only when there is no error at all, so a caller never sees a partial policy.
//! Checking walks the spanned TOML tree by hand rather than through serde, because serde
//! stops at the first error and librarians need all of them at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jiff::civil::Date;
use rustc_hash::FxHashMap;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use url::Url;

use super::model::{
    Access, Attribute, Audience, Entitlement, Grant, Group, InstIdx, Institution, InstitutionKind,
    Location, OidcSettings, PathPattern, Policy, ProxySettings, Rate, SamlSettings, Service,
    SvcIdx,
};
use super::network::NetworkTable;
use crate::ids::{InstitutionId, ServiceId};
use crate::subject::Affiliation;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, printed as `FILE:LINE:COLUMN: error: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line and column (in characters); `None` for problems with a whole file or
    /// directory.
    pub position: Option<(usize, usize)>,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {sev}: {}", self.file, self.message),
            None => write!(f, "{}: {sev}: {}", self.file, self.message),
        }
    }
}

/// A policy that could not be loaded: every diagnostic (errors and warnings) in file order.
#[derive(Clone, Debug, thiserror::Error)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Every diagnostic on its own line, then `N errors`.
impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        let n = self.error_count();
        write!(f, "{n} {}", if n == 1 { "error" } else { "errors" })
    }
}

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

struct Source {
    name: String,
    text: String,
    line_starts: Vec<usize>,
}

impl Source {
    fn new(name: String, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name,
            text,
            line_starts,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }
}

fn line_col_in(text: &str, offset: usize) -> (usize, usize) {
    Source::new(String::new(), text.to_owned()).line_col(offset)
}

/// Where something was written: file index and byte offset.
#[derive(Clone, Copy, Debug)]
struct Loc {
    file: usize,
    offset: usize,
}

type Val<'i> = Spanned<DeValue<'i>>;

#[derive(Default)]
struct Raw {
    institutions: Vec<(Loc, Institution)>,
    groups: Vec<(Loc, Group, Vec<Loc>)>,
    services: Vec<(Loc, Service, Option<Loc>)>,
    entitlements: Vec<(Loc, RawEntitlement)>,
    network_locs: Vec<Vec<Loc>>,
    alias_locs: Vec<Vec<Loc>>,
    realm_locs: Vec<Vec<Loc>>,
    saml_entity_locs: Vec<Option<Loc>>,
    oidc_client_locs: Vec<Option<Loc>>,
    /// Ids written in the policy, including those of tables with errors, so that a broken
    /// service does not also make every entitlement of it "unknown".
    known_institutions: rustc_hash::FxHashSet<String>,
    known_groups: rustc_hash::FxHashSet<String>,
    known_services: rustc_hash::FxHashSet<String>,
}

struct RawEntitlement {
    institution: Option<(String, Loc)>,
    group: Option<(String, Loc)>,
    service: (String, Loc),
    /// `None` when missing or invalid (already reported); references are still checked.
    from: Option<Date>,
    until: Option<Date>,
    enabled: bool,
    audience: Option<Audience>,
    location: Option<Location>,
    location_loc: Option<Loc>,
}

struct Checker<'s> {
    sources: &'s [Source],
    diags: Vec<Diagnostic>,
    base: Option<&'s Path>,
}

const INSTITUTION_KEYS: &[&str] = &[
    "id",
    "name",
    "kind",
    "municipality",
    "aliases",
    "networks",
    "walk_in",
    "feide_realms",
];
const GROUP_KEYS: &[&str] = &["id", "name", "members"];
const SERVICE_KEYS: &[&str] = &[
    "id",
    "name",
    "vendor",
    "access",
    "enabled",
    "min_age",
    "max_age",
    "audience",
    "location",
    "release",
    "sector",
    "session_ttl",
    "rate_per_user",
    "proxy",
    "saml",
    "oidc",
    "link",
];
const ENTITLEMENT_KEYS: &[&str] = &[
    "institution",
    "group",
    "service",
    "from",
    "until",
    "enabled",
    "audience",
    "location",
];
const ACCESS_MODES: &[&str] = &["proxy", "saml", "oidc", "link"];

/// One table being read: its keys are taken one by one, so that whatever is left over at
/// the end is an unknown key.
struct Table<'t, 'i> {
    file: usize,
    span: Range<usize>,
    map: &'t DeTable<'i>,
    /// How messages name the thing, e.g. `service "filmbib"`.
    what: String,
}

impl<'t, 'i> Table<'t, 'i> {
    fn loc(&self) -> Loc {
        Loc {
            file: self.file,
            offset: self.span.start,
        }
    }

    fn get(&self, key: &str) -> Option<&'t Val<'i>> {
        self.map.get(key)
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date/time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'s> Checker<'s> {
    fn push(&mut self, severity: Severity, file: usize, offset: usize, message: String) {
        let src = &self.sources[file];
        self.diags.push(Diagnostic {
            file: src.name.clone(),
            position: Some(src.line_col(offset)),
            severity,
            message,
        });
    }

    fn error(&mut self, file: usize, span: Range<usize>, message: String) {
        self.push(Severity::Error, file, span.start, message);
    }

    fn error_at(&mut self, loc: Loc, message: String) {
        self.push(Severity::Error, loc.file, loc.offset, message);
    }

    fn warn_at(&mut self, loc: Loc, message: String) {
        self.push(Severity::Warning, loc.file, loc.offset, message);
    }

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

    fn unknown_keys(&mut self, t: &Table<'_, '_>, allowed: &[&str]) {
        for (key, _) in t.map.iter() {
            let k: &str = key.get_ref();
            if !allowed.contains(&k) {
                let hint = suggest(k, allowed)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                self.error(
                    t.file,
                    key.span(),
                    format!("{}: unknown key \"{k}\"{hint}", t.what),
                );
            }
        }
    }

    fn missing(&mut self, t: &Table<'_, '_>, key: &str) {
        self.error(
            t.file,
            t.span.clone(),
            format!("{}: missing required key \"{key}\"", t.what),
        );
    }

    fn wrong_type(&mut self, t: &Table<'_, '_>, key: &str, v: &Val<'_>, expected: &str) {
        self.error(
            t.file,
            v.span(),
            format!(
                "{}: \"{key}\" must be {expected}, found {}",
                t.what,
                type_name(v.get_ref())
            ),
        );
    }

    fn opt_str(&mut self, t: &Table<'_, '_>, key: &str) -> Option<(String, Loc)> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((
                s.to_string(),
                Loc {
                    file: t.file,
                    offset: v.span().start,
                },
            )),
            _ => {
                self.wrong_type(t, key, v, "a string");
                None
            }
        }
    }

    /// A required string. `Err(())` when it is missing or of the wrong type (already
    /// reported); a present but empty string is reported here too.
    fn req_str(&mut self, t: &Table<'_, '_>, key: &str) -> Option<(String, Loc)> {
        if t.get(key).is_none() {
            self.missing(t, key);
            return None;
        }
        let (s, loc) = self.opt_str(t, key)?;
        if s.trim().is_empty() {
            self.error_at(loc, format!("{}: \"{key}\" must not be empty", t.what));
            return None;
        }
        Some((s, loc))
    }

    fn opt_bool(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(t, key, v, "true or false");
                None
            }
        }
    }

    fn opt_int(&mut self, t: &Table<'_, '_>, key: &str, range: Range<i64>) -> Option<(i64, Loc)> {
        let v = t.get(key)?;
        let loc = Loc {
            file: t.file,
            offset: v.span().start,
        };
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(t, key, v, "an integer");
            return None;
        };
        // `as_str` is already in `from_str_radix` form: no `0x`/`0o`/`0b` prefix.
        let digits = i.as_str().replace('_', "");
        let parsed = i64::from_str_radix(&digits, i.radix()).ok();
        match parsed {
            Some(n) if range.contains(&n) => Some((n, loc)),
            _ => {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"{key}\" must be an integer from {} to {}, found {}",
                        t.what,
                        range.start,
                        range.end - 1,
                        i
                    ),
                );
                None
            }
        }
    }

    /// An array of strings, each with its location.
    fn opt_str_array(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Vec<(String, Loc)>> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(t, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((
                    s.to_string(),
                    Loc {
                        file: t.file,
                        offset: item.span().start,
                    },
                )),
                other => {
                    ok = false;
                    self.error(
                        t.file,
                        item.span(),
                        format!(
                            "{}: each item of \"{key}\" must be a string, found {}",
                            t.what,
                            type_name(other)
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn opt_date(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Date> {
        let v = t.get(key)?;
        let loc = Loc {
            file: t.file,
            offset: v.span().start,
        };
        let date = match v.get_ref() {
            DeValue::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => dt
                .date
                .and_then(|d| Date::new(d.year as i16, d.month as i8, d.day as i8).ok()),
            DeValue::String(s) => parse_date(s),
            DeValue::Datetime(_) => None,
            _ => {
                self.wrong_type(t, key, v, "a date (2025-01-01)");
                return None;
            }
        };
        if date.is_none() {
            self.error_at(
                loc,
                format!(
                    "{}: \"{key}\" must be a date written YYYY-MM-DD, without a time",
                    t.what
                ),
            );
        }
        date
    }

    fn opt_enum<T>(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let (s, loc) = self.opt_str(t, key)?;
        let parsed = parse(&s);
        if parsed.is_none() {
            self.error_at(
                loc,
                format!(
                    "{}: \"{key}\" must be one of {}, found \"{s}\"",
                    t.what,
                    quoted_list(names)
                ),
            );
        }
        parsed
    }

    fn audience(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Audience> {
        let items = self.opt_str_array(t, key)?;
        let mut set = Audience::default();
        let mut ok = true;
        for (s, loc) in items {
            match Affiliation::parse(&s) {
                Some(a) => set.insert(a),
                None => {
                    ok = false;
                    self.error_at(
                        loc,
                        format!(
                            "{}: unknown audience \"{s}\" (use {})",
                            t.what,
                            quoted_list(&["patron", "student", "staff", "walk_in"])
                        ),
                    );
                }
            }
        }
        if ok && set.is_empty() {
            let loc = Loc {
                file: t.file,
                offset: t.get(key).map_or(t.span.start, |v| v.span().start),
            };
            self.warn_at(
                loc,
                format!("{}: the audience is empty, so nobody can use it", t.what),
            );
        }
        ok.then_some(set)
    }

    fn location(&mut self, t: &Table<'_, '_>) -> Option<Location> {
        self.opt_enum(t, "location", &["anywhere", "onsite"], |s| match s {
            "anywhere" => Some(Location::Anywhere),
            "onsite" => Some(Location::Onsite),
            _ => None,
        })
    }

    fn institution(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let id = self.req_str(t, "id");
        if let Some((id, _)) = &id {
            t.what = format!("institution \"{id}\"");
            raw.known_institutions.insert(id.clone());
        }
        self.unknown_keys(t, INSTITUTION_KEYS);
        if let Some((id, loc)) = &id
            && let Err(why) = check_isil(id)
        {
            self.error_at(*loc, format!("{}: {why}", t.what));
        }
        let name = self.req_str(t, "name");
        let kind = if t.get("kind").is_none() {
            self.missing(t, "kind");
            None
        } else {
            self.opt_enum(t, "kind", &InstitutionKind::NAMES, InstitutionKind::parse)
        };
        let municipality = self.opt_str(t, "municipality");
        if let Some((m, loc)) = &municipality
            && !(m.len() == 4 && m.bytes().all(|b| b.is_ascii_digit()))
        {
            self.error_at(
                *loc,
                format!(
                    "{}: \"municipality\" must be a 4-digit municipality number, found \"{m}\"",
                    t.what
                ),
            );
        }
        if let (Some((id, loc)), Some(kind)) = (&id, kind) {
            self.norwegian_number_warnings(&t.what, id, *loc, kind, municipality.as_ref());
        }
        let aliases = self.opt_str_array(t, "aliases").unwrap_or_default();
        let walk_in = self.opt_bool(t, "walk_in").unwrap_or(false);
        let mut networks = Vec::new();
        let mut network_locs = Vec::new();
        for (s, loc) in self.opt_str_array(t, "networks").unwrap_or_default() {
            match parse_network(&s) {
                Ok(net) => {
                    networks.push(net);
                    network_locs.push(loc);
                }
                Err(why) => self.error_at(loc, format!("{}: {why}", t.what)),
            }
        }
        if walk_in && networks.is_empty() {
            self.warn_at(
                t.loc(),
                format!(
                    "{}: walk_in = true has no effect without \"networks\"",
                    t.what
                ),
            );
        }
        let mut realms = Vec::new();
        let mut realm_locs = Vec::new();
        for (s, loc) in self.opt_str_array(t, "feide_realms").unwrap_or_default() {
            let realm = s.trim().to_ascii_lowercase();
            if realm.is_empty()
                || realm.contains(['@', '/', ' '])
                || !realm.contains('.')
                || realm.starts_with('.')
                || realm.ends_with('.')
            {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"{s}\" is not a Feide realm (a domain such as \"skole.no\", \
                         the part after @ of a Feide user id)",
                        t.what
                    ),
                );
                continue;
            }
            realms.push(realm);
            realm_locs.push(loc);
        }
        let (Some((id, _)), Some((name, _)), Some(kind)) = (id, name, kind) else {
            return;
        };
        let (alias_names, alias_locs): (Vec<_>, Vec<_>) = aliases.into_iter().unzip();
        raw.institutions.push((
            t.loc(),
            Institution {
                id: InstitutionId::new(id),
                name,
                kind,
                municipality: municipality.map(|m| m.0),
                aliases: alias_names,
                networks,
                walk_in,
                feide_realms: realms,
            },
        ));
        raw.network_locs.push(network_locs);
        raw.alias_locs.push(alias_locs);
        raw.realm_locs.push(realm_locs);
    }

    /// Hints for Norwegian library numbers: they are not errors, since ISIL allows any
    /// suffix, but a mismatch is almost always a typo.
    fn norwegian_number_warnings(
        &mut self,
        what: &str,
        id: &str,
        loc: Loc,
        kind: InstitutionKind,
        municipality: Option<&(String, Loc)>,
    ) {
        let Some(number) = id.strip_prefix("NO-") else {
            return;
        };
        if !(number.len() == 7 && number.bytes().all(|b| b.is_ascii_digit())) {
            self.warn_at(
                loc,
                format!("{what}: Norwegian ids are \"NO-\" and the 7-digit library number"),
            );
            return;
        }
        let expected = match kind {
            InstitutionKind::PublicLibrary | InstitutionKind::CountyLibrary => Some('2'),
            InstitutionKind::School => None,
            InstitutionKind::Other => None,
        };
        if let Some(first) = expected
            && !number.starts_with(first)
        {
            self.warn_at(
                loc,
                format!("{what}: library numbers of public and county libraries start with 2"),
            );
        }
        if kind == InstitutionKind::School && !(number.starts_with('3') || number.starts_with('4'))
        {
            self.warn_at(
                loc,
                format!("{what}: school library numbers start with 3 or 4"),
            );
        }
        if let Some((m, mloc)) = municipality
            && m.len() == 4
            && number.get(1..5) != Some(m.as_str())
        {
            self.warn_at(
                *mloc,
                format!(
                    "{what}: municipality {m} differs from digits 2–5 of the library number ({})",
                    number.get(1..5).unwrap_or("")
                ),
            );
        }
    }

    fn group(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let id = self.req_str(t, "id");
        if let Some((id, _)) = &id {
            t.what = format!("group \"{id}\"");
            raw.known_groups.insert(id.clone());
        }
        self.unknown_keys(t, GROUP_KEYS);
        if let Some((id, loc)) = &id
            && !is_group_slug(id)
        {
            self.error_at(
                *loc,
                format!(
                    "{}: a group id is a lower-case slug (a-z, 0-9 and -, not starting or \
                     ending with -)",
                    t.what
                ),
            );
        }
        let name = self.req_str(t, "name");
        let members = if t.get("members").is_none() {
            self.missing(t, "members");
            None
        } else {
            self.opt_str_array(t, "members")
        };
        if let Some(m) = &members
            && m.is_empty()
        {
            self.warn_at(t.loc(), format!("{}: the group has no members", t.what));
        }
        let (Some((id, _)), Some((name, _)), Some(members)) = (id, name, members) else {
            return;
        };
        let (names, locs): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        raw.groups.push((
            t.loc(),
            Group {
                id,
                name,
                members: names.into_iter().map(InstitutionId::new).collect(),
            },
            locs,
        ));
    }

    fn service(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let id = self.req_str(t, "id");
        if let Some((id, _)) = &id {
            t.what = format!("service \"{id}\"");
            raw.known_services.insert(id.clone());
        }
        self.unknown_keys(t, SERVICE_KEYS);
        if let Some((id, loc)) = &id
            && !is_service_slug(id)
        {
            self.error_at(
                *loc,
                format!(
                    "{}: a service id is 1–40 of a-z, 0-9 and -, not starting or ending \
                     with - (it is also a host name label)",
                    t.what
                ),
            );
        }
        let name = self.req_str(t, "name");
        let vendor = self.opt_str(t, "vendor").map(|v| v.0);
        let enabled = self.opt_bool(t, "enabled").unwrap_or(true);
        let min_age = self.opt_int(t, "min_age", 0..131);
        let max_age = self.opt_int(t, "max_age", 0..131);
        if let (Some((min, _)), Some((max, loc))) = (min_age, max_age)
            && min > max
        {
            self.error_at(loc, format!("{}: min_age {min} > max_age {max}", t.what));
        }
        let audience = self.audience(t, "audience");
        let location = self.location(t);
        let release = self.release(t);
        let sector = self.opt_str(t, "sector");
        if let Some((s, loc)) = &sector
            && s.trim().is_empty()
        {
            self.error_at(*loc, format!("{}: \"sector\" must not be empty", t.what));
        }
        let session_ttl = self.opt_str(t, "session_ttl").and_then(|(s, loc)| {
            let d = parse_duration(&s);
            if d.is_none() {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"session_ttl\" must be a duration such as \"30m\", \"8h\" or \
                         \"2d\", found \"{s}\"",
                        t.what
                    ),
                );
            }
            d
        });
        let rate = self.opt_str(t, "rate_per_user").and_then(|(s, loc)| {
            let r = parse_rate(&s);
            if r.is_none() {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"rate_per_user\" must be \"N/s\", \"N/min\" or \"N/h\" with N \
                         at least 1, found \"{s}\"",
                        t.what
                    ),
                );
            }
            r
        });
        let access = if t.get("access").is_none() {
            self.missing(t, "access");
            None
        } else {
            self.opt_enum(t, "access", ACCESS_MODES, |s| {
                ACCESS_MODES.iter().find(|m| **m == s).copied()
            })
        };
        // A settings table of another mode is a mistake: it would be silently ignored.
        for mode in ACCESS_MODES {
            if Some(*mode) != access
                && let Some((k, _)) = t.map.get_key_value(*mode)
                && access.is_some()
            {
                self.error(
                    t.file,
                    k.span(),
                    format!(
                        "{}: [service.{mode}] does not apply to access = \"{}\"",
                        t.what,
                        access.unwrap_or_default()
                    ),
                );
            }
        }
        let mut entity_loc = None;
        let mut client_loc = None;
        let access = access.and_then(|mode| {
            let Some(v) = t.get(mode) else {
                self.missing(t, mode);
                return None;
            };
            let DeValue::Table(map) = v.get_ref() else {
                self.wrong_type(t, mode, v, "a table");
                return None;
            };
            let sub = Table {
                file: t.file,
                span: v.span(),
                map,
                what: format!("{} [service.{mode}]", t.what),
            };
            match mode {
                "proxy" => self.proxy(&sub).map(Access::Proxy),
                "saml" => self.saml(&sub, &mut entity_loc).map(Access::Saml),
                "oidc" => self.oidc(&sub, &mut client_loc).map(Access::Oidc),
                _ => self.link(&sub),
            }
        });
        let (Some((id, _)), Some((name, _)), Some(access)) = (id, name, access) else {
            return;
        };
        let (Some(release), Some(audience)) = (release, audience.or(Some(Audience::DEFAULT)))
        else {
            return;
        };
        let id_loc = t.get("id").map(|v| Loc {
            file: t.file,
            offset: v.span().start,
        });
        raw.services.push((
            t.loc(),
            Service {
                sector: sector.map_or_else(|| id.clone(), |s| s.0),
                id: ServiceId::new(id),
                name,
                vendor,
                access,
                enabled,
                min_age: min_age.map(|(n, _)| n as u8),
                max_age: max_age.map(|(n, _)| n as u8),
                audience,
                location: location.unwrap_or(Location::Anywhere),
                release,
                session_ttl,
                rate_per_user: rate,
            },
            id_loc,
        ));
        raw.saml_entity_locs.push(entity_loc);
        raw.oidc_client_locs.push(client_loc);
    }

    fn release(&mut self, t: &Table<'_, '_>) -> Option<Vec<Attribute>> {
        let Some(items) = self.opt_str_array(t, "release") else {
            return if t.get("release").is_some() {
                None
            } else {
                Some(vec![Attribute::Pseudonym, Attribute::Institution])
            };
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (s, loc) in items {
            match Attribute::parse(&s) {
                Some(a) if out.contains(&a) => {
                    self.warn_at(loc, format!("{}: \"{s}\" is released twice", t.what));
                }
                Some(a) => out.push(a),
                None => {
                    ok = false;
                    self.error_at(
                        loc,
                        format!(
                            "{}: \"{s}\" cannot be released (use {}, or age_over_N with N \
                             from 1 to 130)",
                            t.what,
                            quoted_list(&[
                                "pseudonym",
                                "institution",
                                "institution_name",
                                "municipality",
                                "affiliation",
                                "age_band"
                            ])
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn url(&mut self, t: &Table<'_, '_>, key: &str, s: &str, loc: Loc) -> Option<Url> {
        match Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"{key}\" must be an absolute http:// or https:// URL, found \"{s}\"",
                        t.what
                    ),
                );
                None
            }
        }
    }

    fn origin(&mut self, t: &Table<'_, '_>, key: &str, s: &str, loc: Loc) -> Option<Url> {
        let u = self.url(t, key, s, loc)?;
        let has_path = u.path() != "/" || s.trim_end_matches('/').matches('/').count() > 2;
        if has_path || u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
            self.error_at(
                loc,
                format!(
                    "{}: an origin is scheme, host and optional port only (no path, query, \
                     fragment or user), found \"{s}\"",
                    t.what
                ),
            );
            return None;
        }
        Some(u)
    }

    fn proxy(&mut self, t: &Table<'_, '_>) -> Option<ProxySettings> {
        self.unknown_keys(t, &["origin", "hosts", "item_paths", "search_paths"]);
        let origin = self
            .req_str(t, "origin")
            .and_then(|(s, loc)| self.origin(t, "origin", &s, loc));
        let mut hosts = Vec::new();
        let mut ok = true;
        for (s, loc) in self.opt_str_array(t, "hosts").unwrap_or_default() {
            match self.origin(t, "hosts", &s, loc) {
                Some(u)
                    if origin.as_ref().is_some_and(|o| o.origin() == u.origin())
                        || hosts.iter().any(|h: &Url| h.origin() == u.origin()) =>
                {
                    self.error_at(loc, format!("{}: origin \"{s}\" is listed twice", t.what));
                    ok = false;
                }
                Some(u) => hosts.push(u),
                None => ok = false,
            }
        }
        let item_paths = self.globs(t, "item_paths");
        let search_paths = self.globs(t, "search_paths");
        Some(ProxySettings {
            origin: origin?,
            hosts: ok.then_some(hosts)?,
            item_paths: item_paths?,
            search_paths: search_paths?,
        })
    }

    fn globs(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Vec<PathPattern>> {
        let items = self.opt_str_array(t, key);
        if items.is_none() && t.get(key).is_some() {
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (s, loc) in items.unwrap_or_default() {
            if let Err(why) = check_glob(&s) {
                ok = false;
                self.error_at(loc, format!("{}: \"{key}\" pattern \"{s}\": {why}", t.what));
            } else {
                out.push(PathPattern::new(&s));
            }
        }
        ok.then_some(out)
    }

    fn saml(&mut self, t: &Table<'_, '_>, entity_loc: &mut Option<Loc>) -> Option<SamlSettings> {
        self.unknown_keys(t, &["entity_id", "acs_url", "start_url", "certificate"]);
        let entity = self.req_str(t, "entity_id");
        *entity_loc = entity.as_ref().map(|e| e.1);
        let acs = self.req_str(t, "acs_url").and_then(|(s, loc)| {
            let u = self.url(t, "acs_url", &s, loc)?;
            if u.scheme() == "http" && !is_loopback_host(&u) {
                self.error_at(
                    loc,
                    format!(
                        "{}: \"acs_url\" must use https (http only on loopback), found \"{s}\"",
                        t.what
                    ),
                );
                return None;
            }
            Some(u)
        });
        let start = self.opt_str(t, "start_url");
        let start_ok = match &start {
            Some((s, loc)) => self.url(t, "start_url", s, *loc).is_some(),
            None => true,
        };
        let certificate = match self.opt_str(t, "certificate") {
            None => Some(None),
            Some((path, loc)) => self.certificate(t, &path, loc).map(Some),
        };
        Some(SamlSettings {
            entity_id: entity?.0,
            acs_url: acs?,
            start_url: if start_ok { start.map(|s| s.0) } else { None? },
            certificate: certificate?,
        })
    }

    fn certificate(&mut self, t: &Table<'_, '_>, path: &str, loc: Loc) -> Option<String> {
        let Some(base) = self.base else {
            self.error_at(
                loc,
                format!(
                    "{}: certificate files can only be read from a policy directory",
                    t.what
                ),
            );
            return None;
        };
        let full = base.join(path);
        match std::fs::read_to_string(&full) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.error_at(
                    loc,
                    format!("{}: {} is not a PEM certificate", t.what, full.display()),
                );
                None
            }
            Err(e) => {
                self.error_at(
                    loc,
                    format!("{}: cannot read {}: {e}", t.what, full.display()),
                );
                None
            }
        }
    }

    fn oidc(&mut self, t: &Table<'_, '_>, client_loc: &mut Option<Loc>) -> Option<OidcSettings> {
        self.unknown_keys(
            t,
            &[
                "client_id",
                "redirect_uris",
                "start_url",
                "client_secret_sha256",
                "public",
            ],
        );
        let client = self.req_str(t, "client_id");
        *client_loc = client.as_ref().map(|c| c.1);
        let uris = if t.get("redirect_uris").is_none() {
            self.missing(t, "redirect_uris");
            None
        } else {
            self.opt_str_array(t, "redirect_uris")
        };
        let mut redirect_uris = Vec::new();
        let mut ok = uris.is_some();
        for (s, loc) in uris.unwrap_or_default() {
            match Url::parse(&s) {
                Ok(u) if u.fragment().is_none() && u.has_host() => redirect_uris.push(s),
                _ => {
                    ok = false;
                    self.error_at(
                        loc,
                        format!(
                            "{}: redirect URI \"{s}\" must be an absolute URL without a fragment",
                            t.what
                        ),
                    );
                }
            }
        }
        if ok && redirect_uris.is_empty() {
            ok = false;
            self.error_at(
                t.loc(),
                format!("{}: \"redirect_uris\" must list at least one URI", t.what),
            );
        }
        let start = self
            .req_str(t, "start_url")
            .and_then(|(s, loc)| self.url(t, "start_url", &s, loc));
        let secret = self.opt_str(t, "client_secret_sha256");
        let public = self.opt_bool(t, "public");
        let secret = match (secret, public) {
            (Some(_), Some(true)) => {
                self.error_at(
                    t.loc(),
                    format!(
                        "{}: give either \"client_secret_sha256\" or public = true, not both",
                        t.what
                    ),
                );
                None
            }
            (Some((s, loc)), _) => {
                if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Some(Some(s.to_ascii_lowercase()))
                } else {
                    self.error_at(
                        loc,
                        format!(
                            "{}: \"client_secret_sha256\" must be 64 hex digits (the SHA-256 \
                             of the secret, not the secret)",
                            t.what
                        ),
                    );
                    None
                }
            }
            (None, Some(true)) => Some(None),
            (None, _) => {
                self.error_at(
                    t.loc(),
                    format!(
                        "{}: a client needs \"client_secret_sha256\", or public = true (PKCE)",
                        t.what
                    ),
                );
                None
            }
        };
        Some(OidcSettings {
            client_id: client?.0,
            redirect_uris: ok.then_some(redirect_uris)?,
            start_url: start?,
            client_secret_sha256: secret?,
        })
    }

    fn link(&mut self, t: &Table<'_, '_>) -> Option<Access> {
        self.unknown_keys(t, &["url"]);
        let url = self
            .req_str(t, "url")
            .and_then(|(s, loc)| self.url(t, "url", &s, loc))?;
        Some(Access::Link { url })
    }

    fn entitlement(&mut self, t: &mut Table<'_, '_>, raw: &mut Raw) {
        let institution = self.opt_str(t, "institution");
        let group = self.opt_str(t, "group");
        let service = self.opt_str(t, "service");
        if t.get("service").is_none() {
            self.missing(t, "service");
        }
        t.what = match (&institution, &group, &service) {
            (Some(i), None, Some(s)) => format!("entitlement {} → {}", i.0, s.0),
            (None, Some(g), Some(s)) => format!("entitlement {} → {}", g.0, s.0),
            _ => "entitlement".into(),
        };
        self.unknown_keys(t, ENTITLEMENT_KEYS);
        match (&institution, &group) {
            (Some(_), Some(_)) => self.error_at(
                t.loc(),
                format!(
                    "{}: give exactly one of \"institution\" and \"group\", not both",
                    t.what
                ),
            ),
            (None, None) if t.get("institution").is_none() && t.get("group").is_none() => self
                .error_at(
                    t.loc(),
                    format!("{}: missing \"institution\" or \"group\"", t.what),
                ),
            _ => {}
        }
        let from = if t.get("from").is_none() {
            self.missing(t, "from");
            None
        } else {
            self.opt_date(t, "from")
        };
        let until = self.opt_date(t, "until");
        if let (Some(f), Some(u)) = (from, until)
            && f > u
        {
            let loc = Loc {
                file: t.file,
                offset: t.get("until").map_or(t.span.start, |v| v.span().start),
            };
            self.error_at(loc, format!("{}: from {f} > until {u}", t.what));
        }
        let enabled = self.opt_bool(t, "enabled").unwrap_or(true);
        let audience = self.audience(t, "audience");
        let location = self.location(t);
        let location_loc = t.get("location").map(|v| Loc {
            file: t.file,
            offset: v.span().start,
        });
        let Some(service) = service else {
            return;
        };
        if institution.is_some() == group.is_some() {
            return;
        }
        raw.entitlements.push((
            t.loc(),
            RawEntitlement {
                institution,
                group,
                service,
                from,
                until,
                enabled,
                audience,
                location,
                location_loc,
            },
        ));
    }

    /// Uniqueness, references and the indexes. Returns the policy when everything resolved;
    /// the caller still refuses it if any error was reported anywhere.
    fn cross_check(&mut self, raw: Raw, parse_failed: bool) -> Option<Policy> {
        let Raw {
            institutions: raw_insts,
            groups: raw_groups,
            services: raw_services,
            entitlements: raw_ents,
            network_locs,
            alias_locs,
            realm_locs,
            saml_entity_locs,
            oidc_client_locs,
            known_institutions,
            known_groups,
            known_services,
        } = raw;
        // Report a dangling reference only when it is really unknown, and only when every
        // file parsed (a reference into a file with a syntax error is not the mistake).
        let report_unknown =
            |known: &rustc_hash::FxHashSet<String>, id: &str| !parse_failed && !known.contains(id);

        // Institutions: unique ids, then sorted so indexes follow id order.
        let mut first_seen: BTreeMap<String, Loc> = BTreeMap::new();
        let mut order: Vec<usize> = Vec::new();
        for (i, (loc, inst)) in raw_insts.iter().enumerate() {
            let id = inst.id.as_str().to_owned();
            if let Some(prev) = first_seen.get(&id) {
                let p = self.place(*prev);
                self.error_at(
                    *loc,
                    format!("institution \"{id}\" is defined twice (first at {p})"),
                );
            } else {
                first_seen.insert(id, *loc);
                order.push(i);
            }
        }
        order.sort_by(|a, b| raw_insts[*a].1.id.cmp(&raw_insts[*b].1.id));
        let institutions: Vec<Institution> =
            order.iter().map(|&i| raw_insts[i].1.clone()).collect();

        // Every way to name an institution, each owned by exactly one.
        let mut refs: FxHashMap<String, InstIdx> = FxHashMap::default();
        for (idx, inst) in institutions.iter().enumerate() {
            refs.insert(inst.id.as_str().to_owned(), idx as InstIdx);
        }
        for (idx, inst) in institutions.iter().enumerate() {
            if let Some(number) = bare_number(inst.id.as_str()) {
                refs.entry(number.to_owned()).or_insert(idx as InstIdx);
            }
        }
        for (idx, &ri) in order.iter().enumerate() {
            let inst = &institutions[idx];
            for (alias, loc) in inst.aliases.iter().zip(&alias_locs[ri]) {
                match refs.get(alias.as_str()) {
                    Some(&owner) if owner as usize == idx => {}
                    Some(&owner) => self.error_at(
                        *loc,
                        format!(
                            "institution \"{}\": alias \"{alias}\" is already used by \
                             institution \"{}\"",
                            inst.id, institutions[owner as usize].id
                        ),
                    ),
                    None => {
                        refs.insert(alias.clone(), idx as InstIdx);
                    }
                }
            }
        }

        // Feide realms, each claimed by one institution.
        let mut realms: FxHashMap<String, InstIdx> = FxHashMap::default();
        for (idx, &ri) in order.iter().enumerate() {
            let inst = &institutions[idx];
            for (realm, loc) in inst.feide_realms.iter().zip(&realm_locs[ri]) {
                match realms.get(realm) {
                    Some(&owner) if owner as usize == idx => {}
                    Some(&owner) => self.error_at(
                        *loc,
                        format!(
                            "institution \"{}\": Feide realm \"{realm}\" is already claimed by \
                             institution \"{}\"",
                            inst.id, institutions[owner as usize].id
                        ),
                    ),
                    None => {
                        realms.insert(realm.clone(), idx as InstIdx);
                    }
                }
            }
        }

        // Networks: the lookup table, and a warning where institutions overlap.
        let mut networks = NetworkTable::default();
        let mut spans: Vec<(u128, u128, bool, usize, Loc, IpNet)> = Vec::new();
        for (idx, &ri) in order.iter().enumerate() {
            for (net, loc) in institutions[idx].networks.iter().zip(&network_locs[ri]) {
                networks.insert(*net, idx as InstIdx);
                let (lo, hi, v6) = match net {
                    IpNet::V4(n) => (
                        u128::from(u32::from(n.network())),
                        u128::from(u32::from(n.broadcast())),
                        false,
                    ),
                    IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), true),
                };
                spans.push((lo, hi, v6, idx, *loc, *net));
            }
        }
        spans.sort_by_key(|s| (s.2, s.0, std::cmp::Reverse(s.1)));
        let mut reach: Option<(u128, bool, usize, IpNet)> = None;
        for &(lo, hi, v6, idx, loc, net) in &spans {
            if let Some((end, fam, owner, owner_net)) = reach
                && fam == v6
                && lo <= end
                && owner != idx
            {
                self.warn_at(
                    loc,
                    format!(
                        "institution \"{}\": network {net} overlaps {owner_net} of institution \
                         \"{}\" (the longest prefix wins; on a tie, the smallest id)",
                        institutions[idx].id, institutions[owner].id
                    ),
                );
            }
            match reach {
                Some((end, fam, ..)) if fam == v6 && end >= hi => {}
                _ => reach = Some((hi, v6, idx, net)),
            }
        }

        // Groups.
        let mut groups: Vec<Group> = Vec::new();
        let mut group_index: FxHashMap<String, usize> = FxHashMap::default();
        let mut group_first: FxHashMap<String, Loc> = FxHashMap::default();
        for (loc, group, member_locs) in raw_groups {
            if let Some(prev) = group_first.get(&group.id) {
                let p = self.place(*prev);
                self.error_at(
                    loc,
                    format!("group \"{}\" is defined twice (first at {p})", group.id),
                );
                continue;
            }
            group_first.insert(group.id.clone(), loc);
            let mut seen = Vec::new();
            for (m, mloc) in group.members.iter().zip(&member_locs) {
                if !first_seen.contains_key(m.as_str()) {
                    if report_unknown(&known_institutions, m.as_str()) {
                        let hint = self.reference_hint(m.as_str(), &refs, &institutions);
                        self.error_at(
                            *mloc,
                            format!("group \"{}\": unknown institution \"{m}\"{hint}", group.id),
                        );
                    }
                } else if seen.contains(m) {
                    self.warn_at(
                        *mloc,
                        format!("group \"{}\": \"{m}\" is listed twice", group.id),
                    );
                } else {
                    seen.push(m.clone());
                }
            }
            group_index.insert(group.id.clone(), groups.len());
            groups.push(group);
        }

        // Services: unique ids and federation identifiers.
        let mut svc_first: BTreeMap<String, Loc> = BTreeMap::new();
        let mut entity_first: FxHashMap<String, (Loc, String)> = FxHashMap::default();
        let mut client_first: FxHashMap<String, (Loc, String)> = FxHashMap::default();
        let mut services: Vec<Service> = Vec::new();
        for (i, (loc, svc, id_loc)) in raw_services.into_iter().enumerate() {
            let id = svc.id.as_str().to_owned();
            if let Some(prev) = svc_first.get(&id) {
                let p = self.place(*prev);
                self.error_at(
                    id_loc.unwrap_or(loc),
                    format!("service \"{id}\" is defined twice (first at {p})"),
                );
                continue;
            }
            svc_first.insert(id.clone(), loc);
            let (key, table, seen) = match &svc.access {
                Access::Saml(s) => (s.entity_id.clone(), saml_entity_locs[i], &mut entity_first),
                Access::Oidc(o) => (o.client_id.clone(), oidc_client_locs[i], &mut client_first),
                _ => {
                    services.push(svc);
                    continue;
                }
            };
            let what = if matches!(svc.access, Access::Saml(_)) {
                "SAML entity_id"
            } else {
                "OIDC client_id"
            };
            if let Some((_, other)) = seen.get(&key) {
                let other = other.clone();
                self.error_at(
                    table.unwrap_or(loc),
                    format!(
                        "service \"{id}\": {what} \"{key}\" is already used by service \"{other}\""
                    ),
                );
            } else {
                seen.insert(key, (table.unwrap_or(loc), id));
            }
            services.push(svc);
        }
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let service_index: FxHashMap<String, SvcIdx> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str().to_owned(), i as SvcIdx))
            .collect();

        // Entitlements: references, then one grant per institution and service.
        let mut grants: FxHashMap<(InstIdx, SvcIdx), Vec<Grant>> = FxHashMap::default();
        let mut entitlements = Vec::new();
        let mut entitled_services = vec![false; services.len()];
        for (loc, e) in raw_ents {
            let what = match (&e.institution, &e.group) {
                (Some(i), _) => format!("entitlement {} → {}", i.0, e.service.0),
                (_, Some(g)) => format!("entitlement {} → {}", g.0, e.service.0),
                _ => "entitlement".into(),
            };
            let svc = service_index.get(&e.service.0).copied();
            // Counted even when this entitlement has its own errors: the service has one, so
            // "has no entitlements" would be a second, misleading finding.
            if let Some(si) = svc {
                entitled_services[si as usize] = true;
            }
            if svc.is_none() && report_unknown(&known_services, &e.service.0) {
                let hint = suggest_owned(&e.service.0, known_services.iter())
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                self.error_at(
                    e.service.1,
                    format!("{what}: unknown service \"{}\"{hint}", e.service.0),
                );
            }
            let members: Option<Vec<InstIdx>> = match (&e.institution, &e.group) {
                (Some((id, iloc)), _) => match first_seen.contains_key(id) {
                    true => refs.get(id.as_str()).map(|&i| vec![i]),
                    false => {
                        if report_unknown(&known_institutions, id) {
                            let hint = self.reference_hint(id, &refs, &institutions);
                            self.error_at(
                                *iloc,
                                format!("{what}: unknown institution \"{id}\"{hint}"),
                            );
                        }
                        None
                    }
                },
                (_, Some((gid, gloc))) => match group_index.get(gid) {
                    Some(&g) => Some(
                        groups[g]
                            .members
                            .iter()
                            .filter_map(|m| {
                                first_seen
                                    .contains_key(m.as_str())
                                    .then(|| refs.get(m.as_str()).copied())
                                    .flatten()
                            })
                            .collect(),
                    ),
                    None => {
                        if report_unknown(&known_groups, gid) {
                            let hint = suggest_owned(gid, known_groups.iter())
                                .map(|s| format!(" (did you mean \"{s}\"?)"))
                                .unwrap_or_default();
                            self.error_at(*gloc, format!("{what}: unknown group \"{gid}\"{hint}"));
                        }
                        None
                    }
                },
                _ => None,
            };
            let (Some(si), Some(members), Some(from)) = (svc, members, e.from) else {
                continue;
            };
            let service = &services[si as usize];
            let location = e.location.unwrap_or(service.location);
            if location == Location::Onsite
                && let Some(lloc) = e.location_loc.or(Some(loc))
                && members
                    .iter()
                    .all(|&m| institutions[m as usize].networks.is_empty())
                && e.location.is_some()
            {
                self.warn_at(
                    lloc,
                    format!(
                        "{what}: location = \"onsite\" but no entitled institution has networks"
                    ),
                );
            }
            let grant = Grant {
                from,
                until: e.until,
                enabled: e.enabled,
                audience: e.audience.unwrap_or(service.audience),
                location,
            };
            for m in members {
                grants.entry((m, si)).or_default().push(grant);
            }
            entitlements.push(Entitlement {
                institution: e.institution.map(|i| InstitutionId::new(i.0)),
                group: e.group.map(|g| g.0),
                service: service.id.clone(),
                from,
                until: e.until,
                enabled: e.enabled,
                audience: e.audience,
                location: e.location,
            });
        }
        if !parse_failed {
            for (svc, entitled) in services.iter().zip(&entitled_services) {
                if !entitled && let Some(loc) = svc_first.get(svc.id.as_str()) {
                    self.warn_at(
                        *loc,
                        format!(
                            "service \"{}\" has no entitlements, so nobody can use it",
                            svc.id
                        ),
                    );
                }
            }
        }

        // Host labels of proxied origins: `<service>` and `<service>--<n>`, each naming one
        // origin. A service id that looks like another's derived label would be ambiguous.
        let mut host_labels: FxHashMap<String, (SvcIdx, usize)> = FxHashMap::default();
        for (si, svc) in services.iter().enumerate() {
            if let Access::Proxy(p) = &svc.access {
                for n in 0..=p.hosts.len() {
                    host_labels.insert(
                        super::model::host_label(svc.id.as_str(), n),
                        (si as SvcIdx, n),
                    );
                }
            }
        }
        for svc in &services {
            let id = svc.id.as_str();
            if let Some(&(owner, n)) = host_labels.get(id)
                && n > 0
                && let Some(loc) = svc_first.get(id)
            {
                self.error_at(
                    *loc,
                    format!(
                        "service \"{id}\": the id is also the host label of origin {n} of service \"{}\" ([service.proxy] hosts); choose another id",
                        services[owner as usize].id
                    ),
                );
            }
        }

        Some(Policy {
            institutions,
            groups,
            services,
            entitlements,
            institution_refs: refs,
            service_index,
            host_labels,
            realms,
            grants,
            networks,
        })
    }

    fn place(&self, loc: Loc) -> String {
        let src = &self.sources[loc.file];
        let (l, c) = src.line_col(loc.offset);
        format!("{}:{l}:{c}", src.name)
    }

    /// A hint when an institution was named by an alias or number where an id is needed.
    fn reference_hint(
        &self,
        name: &str,
        refs: &FxHashMap<String, InstIdx>,
        institutions: &[Institution],
    ) -> String {
        if let Some(&i) = refs.get(name) {
            return format!(
                " (that is an alias of \"{}\"; use the id here)",
                institutions[i as usize].id
            );
        }
        suggest_owned(name, institutions.iter().map(|i| i.id.as_str()))
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default()
    }
}

fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The closest allowed name, when it is close enough to be a typo.
fn suggest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a)
}

fn suggest_owned<'a, S: AsRef<str> + 'a>(
    name: &str,
    allowed: impl Iterator<Item = S>,
) -> Option<String> {
    allowed
        .map(|a| (edit_distance(name, a.as_ref()), a.as_ref().to_owned()))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ISIL: two upper-case letters, `-`, then 1–11 of `A-Z a-z 0-9 : / -`.
fn check_isil(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    let ok = b.len() >= 4
        && b.len() <= 14
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_uppercase()
        && b[2] == b'-'
        && b[3..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'/' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{id}\" is not an ISIL (two upper-case letters, -, then 1–11 of A-Z a-z 0-9 : / -, \
             such as \"NO-2390700\")"
        ))
    }
}

/// The 7-digit library number of a Norwegian ISIL.
pub(crate) fn bare_number(id: &str) -> Option<&str> {
    id.strip_prefix("NO-")
        .filter(|n| n.len() == 7 && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_service_slug(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=40).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(inner)
}

fn is_group_slug(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn parse_network(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("\"{s}\" is not a network (write a CIDR such as \"192.0.2.0/24\" or an address)")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "network \"{s}\" has host bits set (did you mean \"{}\"?)",
            net.trunc()
        ));
    }
    Ok(net)
}

fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

/// `*` matches one path segment and `**` any number, so each must be a whole segment.
fn check_glob(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("a path pattern starts with /");
    }
    for seg in p.split('/').skip(1) {
        if seg.contains('*') && seg != "*" && seg != "**" {
            return Err("* and ** must stand alone as a whole path segment");
        }
    }
    Ok(())
}

/// Exactly `YYYY-MM-DD`, a real day (no time, no other spelling).
pub fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    let y = s.get(0..4)?.parse().ok()?;
    let m = s.get(5..7)?.parse().ok()?;
    let d = s.get(8..10)?.parse().ok()?;
    Date::new(y, m, d).ok()
}

/// `"90s"`, `"30m"`, `"8h"`, `"2d"`; a positive whole number and one unit.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(unit_at);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

fn parse_rate(s: &str) -> Option<Rate> {
    let (n, per) = s.trim().split_once('/')?;
    let count: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    Some(Rate { count, per })
}
