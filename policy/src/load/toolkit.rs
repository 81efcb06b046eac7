//! The small toolkit every table's checks are written with: the sources and places
//! (file, line, column), the [`Checker`] that collects diagnostics, a [`Table`] being
//! read, typed getters that report a wrong type or a missing key and go on, and the
//! helpers for messages ("did you mean …?").

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use jiff::civil::Date;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::model::{Audience, Location};
use crate::subject::Affiliation;

use super::diagnostic::{Diagnostic, Severity};

/// One policy file: its name as reported, its text, and where each line starts.
pub(super) struct Source {
    pub(super) name: String,
    pub(super) text: String,
    pub(super) line_starts: Vec<usize>,
}

impl Source {
    pub(super) fn new(name: String, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name,
            text,
            line_starts,
        }
    }

    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
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

/// Line and column (1-based, in characters) of a byte offset in `text`.
pub(super) fn line_col_in(text: &str, offset: usize) -> (usize, usize) {
    Source::new(String::new(), text.to_owned()).line_col(offset)
}

/// Where something was written: file index and byte offset.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    pub(super) file: usize,
    pub(super) offset: usize,
}

/// A TOML value with its place.
pub(super) type Val<'i> = Spanned<DeValue<'i>>;

/// Reads every table of every file and collects what it finds: an error or a warning
/// never stops the reading, so one run reports every mistake.
pub(super) struct Checker<'s> {
    pub(super) sources: &'s [Source],
    pub(super) diags: Vec<Diagnostic>,
    pub(super) base: Option<&'s Path>,
}

/// One table being read: its keys are taken one by one, so that whatever is left over at
/// the end is an unknown key.
pub(super) struct Table<'t, 'i> {
    pub(super) file: usize,
    pub(super) span: Range<usize>,
    pub(super) map: &'t DeTable<'i>,
    /// How messages name the thing, e.g. `service "filmbib"`.
    pub(super) what: String,
}

impl<'t, 'i> Table<'t, 'i> {
    pub(super) fn loc(&self) -> Loc {
        Loc {
            file: self.file,
            offset: self.span.start,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'t Val<'i>> {
        self.map.get(key)
    }
}

pub(super) fn type_name(v: &DeValue<'_>) -> &'static str {
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
    pub(super) fn push(&mut self, severity: Severity, file: usize, offset: usize, message: String) {
        let src = &self.sources[file];
        self.diags.push(Diagnostic {
            file: src.name.clone(),
            position: Some(src.line_col(offset)),
            severity,
            message,
        });
    }

    pub(super) fn error(&mut self, file: usize, span: Range<usize>, message: String) {
        self.push(Severity::Error, file, span.start, message);
    }

    pub(super) fn error_at(&mut self, loc: Loc, message: String) {
        self.push(Severity::Error, loc.file, loc.offset, message);
    }

    pub(super) fn warn_at(&mut self, loc: Loc, message: String) {
        self.push(Severity::Warning, loc.file, loc.offset, message);
    }

    pub(super) fn unknown_keys(&mut self, t: &Table<'_, '_>, allowed: &[&str]) {
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

    pub(super) fn missing(&mut self, t: &Table<'_, '_>, key: &str) {
        self.error(
            t.file,
            t.span.clone(),
            format!("{}: missing required key \"{key}\"", t.what),
        );
    }

    pub(super) fn wrong_type(&mut self, t: &Table<'_, '_>, key: &str, v: &Val<'_>, expected: &str) {
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

    pub(super) fn opt_str(&mut self, t: &Table<'_, '_>, key: &str) -> Option<(String, Loc)> {
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
    pub(super) fn req_str(&mut self, t: &Table<'_, '_>, key: &str) -> Option<(String, Loc)> {
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

    pub(super) fn opt_bool(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(t, key, v, "true or false");
                None
            }
        }
    }

    pub(super) fn opt_int(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        range: Range<i64>,
    ) -> Option<(i64, Loc)> {
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
    pub(super) fn opt_str_array(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
    ) -> Option<Vec<(String, Loc)>> {
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

    pub(super) fn opt_date(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Date> {
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

    pub(super) fn opt_enum<T>(
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

    pub(super) fn audience(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Audience> {
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

    pub(super) fn location(&mut self, t: &Table<'_, '_>) -> Option<Location> {
        self.opt_enum(t, "location", &["anywhere", "onsite"], |s| match s {
            "anywhere" => Some(Location::Anywhere),
            "onsite" => Some(Location::Onsite),
            _ => None,
        })
    }

    pub(super) fn place(&self, loc: Loc) -> String {
        let src = &self.sources[loc.file];
        let (l, c) = src.line_col(loc.offset);
        format!("{}:{l}:{c}", src.name)
    }
}

pub(super) fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The closest allowed name, when it is close enough to be a typo.
pub(super) fn suggest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a)
}

pub(super) fn suggest_owned<'a, S: AsRef<str> + 'a>(
    name: &str,
    allowed: impl Iterator<Item = S>,
) -> Option<String> {
    allowed
        .map(|a| (edit_distance(name, a.as_ref()), a.as_ref().to_owned()))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
