//! The counts themselves: metrics, packed cell keys, the live shards the hot path writes
//! and the archive of sorted per-day tables the exports read.
//!
//! A cell key packs every dimension into one `u64`, ordered institution, service, metric,
//! reason, affiliation, age band from the top, so a sorted table groups by institution and
//! service for free and masking the low bytes merges breakdowns without reordering.
//! Institution and service ids are interned to `u16` indexes ([`Names`]); the table of
//! names is persisted with the counts, so indexes stay valid across restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use jiff::civil::Date;
use rustc_hash::{FxBuildHasher, FxHashMap};

use policy::subject::Affiliation;
use policy::{AgeBand, DenyReason};

/// The metrics of `docs/statistics.md`, by their documented names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Logins = 0,
    LoginFailures = 1,
    Accesses = 2,
    Denials = 3,
    UniqueUsers = 4,
    Requests = 5,
    Bytes = 6,
    Searches = 7,
    ItemRequests = 8,
    UniqueItemRequests = 9,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Self::Logins,
        Self::LoginFailures,
        Self::Accesses,
        Self::Denials,
        Self::UniqueUsers,
        Self::Requests,
        Self::Bytes,
        Self::Searches,
        Self::ItemRequests,
        Self::UniqueItemRequests,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logins => "logins",
            Self::LoginFailures => "login_failures",
            Self::Accesses => "accesses",
            Self::Denials => "denials",
            Self::UniqueUsers => "unique_users",
            Self::Requests => "requests",
            Self::Bytes => "bytes",
            Self::Searches => "searches",
            Self::ItemRequests => "item_requests",
            Self::UniqueItemRequests => "unique_item_requests",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(usize::from(c)).copied()
    }
}

/// "No reason" in the reason byte (every metric but denials).
pub const NO_REASON: u8 = 0xFF;
/// "Every affiliation" / "every age band": the cells of `unique_users` that count each
/// person once whatever their band.
pub const ALL: u8 = 0xFF;

pub fn reason_code(r: DenyReason) -> u8 {
    DenyReason::ALL
        .iter()
        .position(|x| *x == r)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(NO_REASON)
}
pub fn reason_of(code: u8) -> Option<DenyReason> {
    DenyReason::ALL.get(usize::from(code)).copied()
}
pub fn affiliation_code(a: Affiliation) -> u8 {
    match a {
        Affiliation::Patron => 0,
        Affiliation::Student => 1,
        Affiliation::Staff => 2,
        Affiliation::WalkIn => 3,
    }
}
pub fn affiliation_of(code: u8) -> Option<Affiliation> {
    Affiliation::ALL.get(usize::from(code)).copied()
}
pub fn band_code(b: AgeBand) -> u8 {
    AgeBand::ALL
        .iter()
        .position(|x| *x == b)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(ALL)
}
pub fn band_of(code: u8) -> Option<AgeBand> {
    AgeBand::ALL.get(usize::from(code)).copied()
}

/// Institution, service, affiliation and age band of a count, without the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CellKey(u64);

impl CellKey {
    pub fn new(inst: u16, svc: u16, aff: Affiliation, band: AgeBand) -> Self {
        Self::raw(inst, svc, affiliation_code(aff), band_code(band))
    }
    pub fn raw(inst: u16, svc: u16, aff: u8, band: u8) -> Self {
        CellKey(
            (u64::from(inst) << 48)
                | (u64::from(svc) << 32)
                | (u64::from(aff) << 8)
                | u64::from(band),
        )
    }
    /// The same institution and service, every affiliation and band.
    pub fn all_bands(self) -> Self {
        CellKey(self.0 | 0xFFFF)
    }
    pub fn with(self, metric: Metric, reason: u8) -> u64 {
        self.0 | (u64::from(metric as u8) << 24) | (u64::from(reason) << 16)
    }
}

/// Pieces of a packed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpacked {
    pub inst: u16,
    pub svc: u16,
    pub metric: u8,
    pub reason: u8,
    pub aff: u8,
    pub band: u8,
}

pub fn unpack(k: u64) -> Unpacked {
    let b = k.to_be_bytes();
    Unpacked {
        inst: u16::from_be_bytes([b[0], b[1]]),
        svc: u16::from_be_bytes([b[2], b[3]]),
        metric: b[4],
        reason: b[5],
        aff: b[6],
        band: b[7],
    }
}

/// Institution and service ids ↔ the `u16` indexes in packed keys.
#[derive(Debug, Default)]
pub struct Names {
    pub institutions: Vec<Arc<str>>,
    pub services: Vec<Arc<str>>,
    inst_idx: FxHashMap<Arc<str>, u16>,
    svc_idx: FxHashMap<Arc<str>, u16>,
    dirty: bool,
}

/// The names as persisted.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct NamesFile {
    pub institutions: Vec<String>,
    pub services: Vec<String>,
}

impl Names {
    pub fn from_file(f: NamesFile) -> Option<Self> {
        let mut n = Names::default();
        for i in f.institutions {
            let a: Arc<str> = i.into();
            let idx = u16::try_from(n.institutions.len()).ok()?;
            n.inst_idx.insert(a.clone(), idx);
            n.institutions.push(a);
        }
        for s in f.services {
            let a: Arc<str> = s.into();
            let idx = u16::try_from(n.services.len()).ok()?;
            n.svc_idx.insert(a.clone(), idx);
            n.services.push(a);
        }
        Some(n)
    }

    pub fn get(&self, inst: &str, svc: &str) -> Option<(u16, u16)> {
        Some((*self.inst_idx.get(inst)?, *self.svc_idx.get(svc)?))
    }

    pub fn institution(&self, id: &str) -> Option<u16> {
        self.inst_idx.get(id).copied()
    }
    pub fn service(&self, id: &str) -> Option<u16> {
        self.svc_idx.get(id).copied()
    }

    /// Adds what is missing. `None` past 65 535 of either.
    pub fn intern(&mut self, inst: &str, svc: &str) -> Option<(u16, u16)> {
        let i = Self::one(
            &mut self.institutions,
            &mut self.inst_idx,
            inst,
            &mut self.dirty,
        )?;
        let s = Self::one(&mut self.services, &mut self.svc_idx, svc, &mut self.dirty)?;
        Some((i, s))
    }

    fn one(
        list: &mut Vec<Arc<str>>,
        idx: &mut FxHashMap<Arc<str>, u16>,
        name: &str,
        dirty: &mut bool,
    ) -> Option<u16> {
        if let Some(i) = idx.get(name) {
            return Some(*i);
        }
        let i = u16::try_from(list.len()).ok().filter(|i| *i < u16::MAX)?;
        let a: Arc<str> = name.into();
        list.push(a.clone());
        idx.insert(a, i);
        *dirty = true;
        Some(i)
    }

    pub fn clone_if_dirty(&self) -> Option<NamesFile> {
        self.dirty.then(|| NamesFile {
            institutions: self.institutions.iter().map(|s| s.to_string()).collect(),
            services: self.services.iter().map(|s| s.to_string()).collect(),
        })
    }
    pub fn mark_clean(&mut self) {
        self.dirty = false;
    }
}

/// What the hot path writes: per (day, cell), one slot per metric and denial reason,
/// in shards picked by the cell, so one event is one uncontended lock and one hash lookup
/// whatever its metrics.
#[derive(Debug)]
pub struct Live {
    shards: Box<[Mutex<Increments>]>,
}

/// Slots: the metrics by code (the `denials` slot unused), then denials by reason code.
const SLOTS: usize = 10 + DenyReason::ALL.len();
type Slots = [u64; SLOTS];
type Increments = FxHashMap<(Date, CellKey), Slots>;

const SHARDS: usize = 32;

fn slot(m: Metric, reason: u8) -> usize {
    if m == Metric::Denials {
        10 + usize::from(reason).min(SLOTS - 11)
    } else {
        m as usize
    }
}

impl Live {
    pub fn new() -> Self {
        Live {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn add(&self, day: Date, cell: CellKey, adds: &[(Metric, u8, u64)]) {
        if adds.is_empty() {
            return;
        }
        let shard = (FxBuildHasher.hash_one(cell) >> 32) as usize % SHARDS;
        let mut map = super::lock(&self.shards[shard]);
        let slots = map.entry((day, cell)).or_insert([0; SLOTS]);
        for &(m, reason, v) in adds {
            let s = &mut slots[slot(m, reason)];
            *s = s.saturating_add(v);
        }
    }

    pub fn drain(&self) -> Vec<((Date, u64), u64)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let map = std::mem::take(&mut *super::lock(s));
            for ((day, cell), slots) in map {
                for (i, v) in slots.into_iter().enumerate() {
                    if v == 0 {
                        continue;
                    }
                    let key = if i >= 10 {
                        cell.with(Metric::Denials, (i - 10) as u8)
                    } else {
                        match Metric::from_code(i as u8) {
                            Some(m) => cell.with(m, NO_REASON),
                            None => continue,
                        }
                    };
                    out.push(((day, key), v));
                }
            }
        }
        out
    }
}

/// One period's counts, sorted by packed key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table(pub Vec<(u64, u64)>);

impl Table {
    /// Adds sorted increments.
    fn add_sorted(&mut self, adds: &[(u64, u64)]) {
        if adds.is_empty() {
            return;
        }
        let old = std::mem::take(&mut self.0);
        let mut out = Vec::with_capacity(old.len() + adds.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() && j < adds.len() {
            let (a, b) = (old[i], adds[j]);
            match a.0.cmp(&b.0) {
                std::cmp::Ordering::Less => {
                    out.push(a);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(b);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((a.0, a.1.saturating_add(b.1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&old[i..]);
        out.extend_from_slice(&adds[j..]);
        self.0 = out;
    }

    /// Sets an absolute value (distinct counts are not sums).
    pub fn set(&mut self, key: u64, value: u64) {
        match self.0.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }
}

/// Which tables changed since the last write.
#[derive(Debug, Default)]
pub struct Changes {
    pub days: BTreeSet<Date>,
    pub months: BTreeSet<Date>,
}

impl Changes {
    pub fn absorb(&mut self, other: Changes) {
        self.days.extend(other.days);
        self.months.extend(other.months);
    }
}

/// Everything flushed: a table per day, and one per month (first day as key) for the
/// monthly distinct counts.
#[derive(Debug, Default)]
pub struct Archive {
    pub days: BTreeMap<Date, Table>,
    pub months: BTreeMap<Date, Table>,
}

impl Archive {
    pub fn merge(&mut self, drained: Vec<((Date, u64), u64)>) -> Changes {
        let mut by_day: BTreeMap<Date, Vec<(u64, u64)>> = BTreeMap::new();
        for ((day, key), v) in drained {
            by_day.entry(day).or_default().push((key, v));
        }
        let mut changes = Changes::default();
        for (day, mut adds) in by_day {
            adds.sort_unstable_by_key(|e| e.0);
            self.days.entry(day).or_default().add_sorted(&adds);
            changes.days.insert(day);
        }
        changes
    }

    pub fn span(&self) -> Option<(Date, Date)> {
        let first = self.days.iter().find(|(_, t)| !t.0.is_empty())?.0;
        let last = self.days.iter().rev().find(|(_, t)| !t.0.is_empty())?.0;
        Some((*first, *last))
    }
}
