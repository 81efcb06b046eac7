//! What a vendor learns about a permitted person: the service's `release` list, turned
//! into values (`docs/policy.md`, Release). Nothing outside that list is ever produced here, so
//! every access mode that sends attributes gets them from this one place.

use jiff::civil::Date;

use super::eval::Permit;
use super::model::{Attribute, Policy};
use crate::pseudonym::PseudonymKey;
use crate::subject::{Age, Subject};

/// Age bands: the `age_band` attribute and the statistics dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgeBand {
    B0To5,
    B6To12,
    B13To15,
    B16To19,
    B20To44,
    B45To66,
    B67Plus,
    Unknown,
}

impl AgeBand {
    pub const ALL: [AgeBand; 8] = [
        Self::B0To5,
        Self::B6To12,
        Self::B13To15,
        Self::B16To19,
        Self::B20To44,
        Self::B45To66,
        Self::B67Plus,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::B0To5 => "0-5",
            Self::B6To12 => "6-12",
            Self::B13To15 => "13-15",
            Self::B16To19 => "16-19",
            Self::B20To44 => "20-44",
            Self::B45To66 => "45-66",
            Self::B67Plus => "67+",
            Self::Unknown => "unknown",
        }
    }

    fn of_years(years: i32) -> Self {
        match years {
            ..0 => Self::Unknown,
            0..=5 => Self::B0To5,
            6..=12 => Self::B6To12,
            13..=15 => Self::B13To15,
            16..=19 => Self::B16To19,
            20..=44 => Self::B20To44,
            45..=66 => Self::B45To66,
            _ => Self::B67Plus,
        }
    }

    /// The band that holds the whole age range, else `Unknown`.
    pub fn of(age: Age, today: Date) -> Self {
        match age.range_on(today) {
            Some(r) if Self::of_years(r.low) == Self::of_years(r.high) => Self::of_years(r.low),
            _ => Self::Unknown,
        }
    }
}

/// `age_over_N` by the age rules: `Some(true)` when certainly at least N, `Some(false)`
/// when certainly not, `None` when undecidable.
pub fn age_over(age: Age, n: u8, today: Date) -> Option<bool> {
    let r = age.range_on(today)?;
    let n = i32::from(n);
    if r.low >= n {
        Some(true)
    } else if r.high < n {
        Some(false)
    } else {
        None
    }
}

/// One released value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Bool(bool),
}

impl Value {
    pub fn as_text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// The released attributes, in the order of the service's `release` list. Attributes
/// without a value (no municipality, an undecidable `age_over_N`, a pseudonym without a
/// key) are left out rather than sent empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    pub attributes: Vec<(Attribute, Value)>,
}

impl Release {
    pub fn get(&self, a: Attribute) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == a)
            .map(|(_, v)| v)
    }
}

pub fn release(
    policy: &Policy,
    permit: &Permit,
    subject: &Subject,
    key: Option<&PseudonymKey>,
) -> Release {
    let svc = &policy.services[permit.svc_idx as usize];
    let inst = &policy.institutions[permit.inst_idx as usize];
    let today = permit.day;
    let mut out = Vec::with_capacity(svc.release.len());
    for &attr in &svc.release {
        let value = match attr {
            Attribute::Pseudonym => {
                key.map(|k| Value::Text(k.pairwise(&svc.sector, &subject.key).expose().to_owned()))
            }
            Attribute::Institution => Some(Value::Text(inst.id.to_string())),
            Attribute::InstitutionName => Some(Value::Text(inst.name.clone())),
            Attribute::Municipality => inst.municipality.clone().map(Value::Text),
            Attribute::Affiliation => Some(Value::Text(subject.affiliation.as_str().into())),
            Attribute::AgeBand => {
                Some(Value::Text(AgeBand::of(subject.age, today).as_str().into()))
            }
            Attribute::AgeOver(n) => age_over(subject.age, n, today).map(Value::Bool),
        };
        if let Some(v) = value {
            out.push((attr, v));
        }
    }
    Release { attributes: out }
}
