//! A local TOML patron list as a card backend, for demos and tests only: the file is read
//! once at start → patrons keyed by normalized card number → each check looks one up.
//!
//! ```toml
//! [[patron]]
//! card = "N123456789"       # compared trimmed and upper-cased, as everywhere
//! pin = "1234"
//! birth_date = 2008-11-23   # or "2008-11-23"; or birth_year = 2008; or neither
//! home_library = "NO-2390700"
//! blocked = false           # true: Blocked { lost: false }
//! lost = false              # true: Blocked { lost: true }
//! ```
//!
//! PINs are kept only as SHA-256 digests and compared in constant time, so neither the
//! timing nor a memory dump of a running demo gives a PIN away cheaply. Errors name the
//! patron by its position (`patron[3]`), never by card number.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::verifier::{CardOutcome, PatronInfo, PatronVerifier, VerifyFuture};
use crate::config::card_backend::FileCardBackend;
use policy::ids::InstitutionId;
use policy::subject::{Age, normalize_card};

/// What is wrong with a patron list.
#[derive(Debug, thiserror::Error)]
pub enum PatronFileError {
    #[error("\"path\": cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The position and the parser's message; the offending text is not quoted.
    #[error("\"path\": {path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("\"path\": {path}: {message}")]
    Content { path: String, message: String },
}

/// One patron of the list.
struct Patron {
    pin_digest: [u8; 32],
    age: Age,
    home_library: Option<String>,
    blocked: bool,
    lost: bool,
}

/// Checks cards against a patron list held in memory.
pub struct FileVerifier {
    path: PathBuf,
    patrons: HashMap<String, Patron>,
}

impl fmt::Debug for FileVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileVerifier")
            .field("path", &self.path)
            .field("patrons", &self.patrons.len())
            .finish()
    }
}

impl FileVerifier {
    /// Reads and checks the list at `path`.
    pub fn load(path: &Path) -> Result<Self, Vec<PatronFileError>> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![PatronFileError::Read {
                path: shown.clone(),
                source,
            }]
        })?;
        Self::parse(&text, path)
    }

    /// Checks a list already read; `path` is for messages and `Debug` only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Vec<PatronFileError>> {
        let shown = path.display().to_string();
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            vec![PatronFileError::Syntax {
                path: shown.clone(),
                line,
                column,
                message: e.message().to_owned(),
            }]
        })?;
        let mut messages = Vec::new();
        for key in table.keys().filter(|k| *k != "patron") {
            messages.push(format!(
                "unknown key \"{}\" (expected [[patron]])",
                key.escape_debug()
            ));
        }
        let list = match table.get("patron") {
            None => &Vec::new(),
            Some(toml::Value::Array(list)) => list,
            Some(_) => {
                messages.push("\"patron\" must be an array of tables ([[patron]])".into());
                &Vec::new()
            }
        };
        let mut patrons = HashMap::new();
        for (i, value) in list.iter().enumerate() {
            match patron(value) {
                Ok((card, p)) => {
                    if patrons.insert(card, p).is_some() {
                        messages.push(format!(
                            "patron[{i}]: the same card number as an earlier patron"
                        ));
                    }
                }
                Err(e) => messages.extend(e.into_iter().map(|m| format!("patron[{i}]: {m}"))),
            }
        }
        if messages.is_empty() {
            Ok(Self {
                path: path.to_owned(),
                patrons,
            })
        } else {
            Err(messages
                .into_iter()
                .map(|message| PatronFileError::Content {
                    path: shown.clone(),
                    message,
                })
                .collect())
        }
    }

    pub(super) fn from_config(cfg: &FileCardBackend, base_dir: &Path) -> Result<Self, Vec<String>> {
        let Some(path) = &cfg.path else {
            return Err(vec![
                "kind \"file\" needs \"path\" (the TOML patron list)".into(),
            ]);
        };
        Self::load(&base_dir.join(path))
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    /// Patrons in the list.
    pub fn len(&self) -> usize {
        self.patrons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patrons.is_empty()
    }

    fn check(&self, card: &str, pin: &str) -> CardOutcome {
        let digest: [u8; 32] = Sha256::digest(pin.as_bytes()).into();
        let found = self.patrons.get(&normalize_card(card));
        // An unknown card still costs a comparison, so it answers as fast as a wrong PIN.
        let expected = found.map_or([0; 32], |p| p.pin_digest);
        let pin_ok: bool = digest.ct_eq(&expected).into();
        match found {
            Some(p) if pin_ok => {
                if p.lost {
                    CardOutcome::Blocked { lost: true }
                } else if p.blocked {
                    CardOutcome::Blocked { lost: false }
                } else {
                    CardOutcome::Accepted(PatronInfo {
                        age: p.age,
                        home_library: p.home_library.clone(),
                    })
                }
            }
            _ => CardOutcome::WrongCardOrPin,
        }
    }
}

impl PatronVerifier for FileVerifier {
    fn verify<'a>(
        &'a self,
        _library: &'a InstitutionId,
        card: &'a str,
        pin: &'a str,
    ) -> VerifyFuture<'a> {
        Box::pin(async move { Ok(self.check(card, pin)) })
    }
}

/// One `[[patron]]` table → its normalized card and the patron, or every problem with it.
/// Messages name keys, never values.
fn patron(value: &toml::Value) -> Result<(String, Patron), Vec<String>> {
    let Some(t) = value.as_table() else {
        return Err(vec!["must be a table".into()]);
    };
    let mut errors = Vec::new();
    const KEYS: [&str; 7] = [
        "card",
        "pin",
        "birth_date",
        "birth_year",
        "home_library",
        "blocked",
        "lost",
    ];
    for key in t.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        errors.push(format!(
            "unknown key \"{}\" (expected one of {})",
            key.escape_debug(),
            KEYS.join(", ")
        ));
    }
    let mut string = |key: &str, required: bool| match t.get(key) {
        None if required => {
            errors.push(format!("needs \"{key}\""));
            None
        }
        None => None,
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => {
            errors.push(format!("\"{key}\" must be a non-empty string"));
            None
        }
    };
    let card = string("card", true).map(|c| normalize_card(&c));
    let pin = string("pin", true);
    let home_library = string("home_library", false).map(|s| s.trim().to_owned());
    let mut flag = |key: &str| match t.get(key) {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            errors.push(format!("\"{key}\" must be true or false"));
            false
        }
    };
    let blocked = flag("blocked");
    let lost = flag("lost");
    let age = match (t.get("birth_date"), t.get("birth_year")) {
        (Some(_), Some(_)) => {
            errors.push("give \"birth_date\" or \"birth_year\", not both".into());
            Age::Unknown
        }
        (Some(v), None) => match birth_date(v) {
            Some(d) => Age::BirthDate(d),
            None => {
                errors.push("\"birth_date\" must be a date, 2008-11-23 or \"2008-11-23\"".into());
                Age::Unknown
            }
        },
        (None, Some(v)) => match v.as_integer().and_then(|y| i16::try_from(y).ok()) {
            Some(y) if (1900..=9999).contains(&y) => Age::BirthYear(y),
            _ => {
                errors.push("\"birth_year\" must be a year such as 2008".into());
                Age::Unknown
            }
        },
        (None, None) => Age::Unknown,
    };
    match (card, pin) {
        (Some(card), Some(pin)) if errors.is_empty() => Ok((
            card,
            Patron {
                pin_digest: Sha256::digest(pin.as_bytes()).into(),
                age,
                home_library,
                blocked,
                lost,
            },
        )),
        _ => Err(errors),
    }
}

fn birth_date(v: &toml::Value) -> Option<Date> {
    match v {
        toml::Value::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => {
            let d = dt.date?;
            Date::new(
                i16::try_from(d.year).ok()?,
                d.month.try_into().ok()?,
                d.day.try_into().ok()?,
            )
            .ok()
        }
        toml::Value::String(s) => s.trim().parse::<Date>().ok(),
        _ => None,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
