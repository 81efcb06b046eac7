//! `[[statistician]]`: who may read the counts, in two stages like the rest of the config
//! ([`FileStatistician`] as written, [`Statistician`] checked). A key is stored only as
//! its SHA-256, compared in constant time; a statistician sees its `institutions` and the
//! members of its `groups`, resolved against the policy in force at each request, so a
//! policy reload that changes a group changes what its statisticians see.

use std::collections::BTreeSet;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use policy::Policy;

/// One `[[statistician]]` table as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStatistician {
    pub name: String,
    /// Hex SHA-256 of the API key (`printf %s KEY | sha256sum`).
    pub api_key_sha256: String,
    #[serde(default)]
    pub institutions: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A checked statistician.
#[derive(Clone)]
pub struct Statistician {
    pub name: String,
    key_sha256: [u8; 32],
    pub institutions: Vec<String>,
    pub groups: Vec<String>,
}

impl std::fmt::Debug for Statistician {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statistician")
            .field("name", &self.name)
            .field("institutions", &self.institutions)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// A problem in one `[[statistician]]` table: its index and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub index: usize,
    pub message: String,
}

/// Every configured statistician.
#[derive(Clone, Debug, Default)]
pub struct Statisticians(Vec<Statistician>);

impl Statisticians {
    /// Checks the tables; every problem at once. `config.rs` turns each into
    /// `FILE:LINE:COL: error: statistician[i]: …` with the table's span.
    pub fn check(tables: &[FileStatistician]) -> Result<Self, Vec<ConfigProblem>> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (index, t) in tables.iter().enumerate() {
            let mut bad = |message: String| problems.push(ConfigProblem { index, message });
            if t.name.trim().is_empty() {
                bad("name must not be empty".into());
            } else if !names.insert(t.name.clone()) {
                bad(format!("name \"{}\" is used twice", t.name));
            }
            let key = match data_encoding::HEXLOWER_PERMISSIVE.decode(t.api_key_sha256.as_bytes()) {
                Ok(k) if k.len() == 32 => {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(&k);
                    if !keys.insert(a) {
                        bad("api_key_sha256 is the same as another statistician's".into());
                    }
                    Some(a)
                }
                _ => {
                    bad("api_key_sha256 must be 64 hex digits (the SHA-256 of the key: printf %s KEY | sha256sum)".into());
                    None
                }
            };
            if t.institutions.is_empty() && t.groups.is_empty() {
                bad(
                    "needs institutions or groups (or both): a key that sees nothing is a mistake"
                        .into(),
                );
            }
            if let Some(key_sha256) = key {
                out.push(Statistician {
                    name: t.name.clone(),
                    key_sha256,
                    institutions: t.institutions.clone(),
                    groups: t.groups.clone(),
                });
            }
        }
        if problems.is_empty() {
            Ok(Statisticians(out))
        } else {
            Err(problems)
        }
    }

    /// Parses and checks `[[statistician]]` tables as `config.rs` holds them.
    pub fn from_tables(tables: &[toml::Table]) -> Result<Self, Vec<ConfigProblem>> {
        let mut parsed = Vec::new();
        let mut problems = Vec::new();
        for (index, t) in tables.iter().enumerate() {
            match FileStatistician::deserialize(toml::Value::Table(t.clone())) {
                Ok(s) => parsed.push(s),
                Err(e) => problems.push(ConfigProblem {
                    index,
                    message: e.message().trim().to_owned(),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Self::check(&parsed)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The statistician whose key this is. Every configured key is compared, in constant
    /// time, so the answer's timing tells nothing about which one nearly matched.
    pub fn authenticate(&self, api_key: &str) -> Option<&Statistician> {
        let digest: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        let mut found = None;
        for s in &self.0 {
            if bool::from(s.key_sha256.ct_eq(&digest)) {
                found = Some(s);
            }
        }
        found
    }

    /// Ids in the config that the policy does not know, as warnings for the start.
    pub fn unknown_ids(&self, policy: &Policy) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.0 {
            for i in &s.institutions {
                if policy.institution(i).is_none() {
                    out.push(format!(
                        "statistician \"{}\": unknown institution \"{i}\"",
                        s.name
                    ));
                }
            }
            for g in &s.groups {
                if !policy.groups().iter().any(|x| &x.id == g) {
                    out.push(format!(
                        "statistician \"{}\": unknown group \"{g}\"",
                        s.name
                    ));
                }
            }
        }
        out
    }
}

impl Statistician {
    /// The institution ids (canonical, as in the policy) this statistician may see.
    pub fn scope(&self, policy: &Policy) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for i in &self.institutions {
            match policy.institution(i) {
                Some(inst) => out.insert(inst.id.to_string()),
                // Kept: the counts of an institution since removed from the policy.
                None => out.insert(i.clone()),
            };
        }
        for g in &self.groups {
            if let Some(group) = policy.groups().iter().find(|x| &x.id == g) {
                out.extend(group.members.iter().map(|m| m.to_string()));
            }
        }
        out
    }

    /// Whether a group id is one of this statistician's.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
