//! Distinct counting without a record about anyone: HyperLogLog sketches of salted hashes
//! for `unique_users` (per day and per month, each period with its own random salt that is
//! deleted with its sketches when the period closes), and the short-lived click state for
//! COUNTER's double-click rule and per-session unique items. The module doc of `usage.rs`
//! gives the method and its error bound.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::hash::Hasher;
use std::sync::Mutex;

use jiff::Timestamp;
use jiff::civil::Date;
use rustc_hash::{FxHashMap, FxHashSet};
use siphasher::sip::SipHasher13;

use super::PersonToken;
use super::counters::{Archive, CellKey, Changes, Metric, NO_REASON};

/// Register index bits of the dense sketch: 2^12 registers.
pub const P: u32 = 12;
pub const M: usize = 1 << P;
/// Index bits of the sparse form: so many buckets that small sets practically never
/// collide, which makes small counts exact.
const SP: u32 = 25;
/// A sparse sketch turns dense once it holds more entries than this (same bytes).
const SPARSE_MAX: usize = M / 4;

/// A HyperLogLog sketch: sparse (sorted `index25 << 6 | rank` entries, as in HLL++)
/// while small, then 2^12 one-byte registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sketch {
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::Sparse(Vec::new())
    }
}

/// Position of the first 1 bit in the top `bits` bits of `w` (`bits + 1` if none).
fn rank(w: u64, bits: u32) -> u8 {
    (w.leading_zeros().min(bits) + 1) as u8
}

/// The dense register and rank a sparse entry stands for.
fn dense_of(entry: u32) -> (usize, u8) {
    let idx25 = u64::from(entry >> 6);
    let r25 = (entry & 0x3F) as u8;
    let idx = (idx25 >> (SP - P)) as usize;
    let low = idx25 & ((1 << (SP - P)) - 1);
    let r = if low != 0 {
        rank(low << (64 - (SP - P)), SP - P)
    } else {
        (SP - P) as u8 + r25
    };
    (idx, r)
}

impl Sketch {
    /// Adds a 64-bit hash; whether the sketch changed.
    pub fn insert(&mut self, h: u64) -> bool {
        match self {
            Sketch::Sparse(v) => {
                let idx = (h >> (64 - SP)) as u32;
                let r = rank(h << SP, 64 - SP);
                match v.binary_search_by_key(&idx, |e| e >> 6) {
                    Ok(i) => {
                        if (v[i] & 0x3F) as u8 >= r {
                            return false;
                        }
                        v[i] = (idx << 6) | u32::from(r);
                    }
                    Err(i) => v.insert(i, (idx << 6) | u32::from(r)),
                }
                if v.len() > SPARSE_MAX {
                    let mut dense = vec![0u8; M].into_boxed_slice();
                    for e in v.iter() {
                        let (i, r) = dense_of(*e);
                        dense[i] = dense[i].max(r);
                    }
                    *self = Sketch::Dense(dense);
                }
                true
            }
            Sketch::Dense(regs) => {
                let slot = &mut regs[(h >> (64 - P)) as usize];
                let r = rank(h << P, 64 - P);
                if *slot >= r {
                    return false;
                }
                *slot = r;
                true
            }
        }
    }

    /// The estimated number of distinct hashes. Sparse: linear counting over 2^25
    /// buckets (exact in practice). Dense: linear counting while registers are empty and
    /// the raw estimate is below 2.5·m, else the HyperLogLog estimate.
    pub fn estimate(&self) -> u64 {
        match self {
            Sketch::Sparse(v) => {
                let m = (1u64 << SP) as f64;
                let zeros = m - v.len() as f64;
                (m * (m / zeros).ln()).round() as u64
            }
            Sketch::Dense(r) => {
                let m = M as f64;
                let zeros = r.iter().filter(|x| **x == 0).count();
                let sum = r.iter().map(|x| 2f64.powi(-i32::from(*x))).sum::<f64>();
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let raw = alpha * m * m / sum;
                let e = if raw <= 2.5 * m && zeros > 0 {
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                };
                e.round() as u64
            }
        }
    }
}

/// A day, or a month (by its first day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeriodKey {
    Day(Date),
    Month(Date),
}

#[derive(Debug)]
pub struct PeriodSketches {
    pub salt: [u8; 16],
    /// By packed `unique_users` key.
    pub sketches: FxHashMap<u64, Sketch>,
    changed: FxHashSet<u64>,
}

impl PeriodSketches {
    pub fn new(salt: [u8; 16], sketches: FxHashMap<u64, Sketch>) -> Self {
        // Loaded sketches are settled already; nothing is pending.
        PeriodSketches {
            salt,
            sketches,
            changed: FxHashSet::default(),
        }
    }
}

/// The open periods' salts and sketches.
#[derive(Debug, Default)]
pub struct Distinct {
    pub periods: BTreeMap<PeriodKey, PeriodSketches>,
    dirty: bool,
}

pub fn first_of_month(d: Date) -> Date {
    d.first_of_month()
}

/// 16 random bytes; the OS generator, else std's randomly seeded hasher (never a fixed
/// value, and never a reason to stop counting).
pub(crate) fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let s = std::collections::hash_map::RandomState::new();
        b[..8].copy_from_slice(&s.hash_one(1u8).to_le_bytes());
        b[8..].copy_from_slice(&s.hash_one(2u8).to_le_bytes());
    }
    b
}

fn keyed(salt: &[u8; 16], token: &PersonToken) -> u64 {
    let mut h = SipHasher13::new_with_key(salt);
    h.write(token.bytes());
    h.finish()
}

impl Distinct {
    pub fn from_periods(periods: BTreeMap<PeriodKey, PeriodSketches>) -> Self {
        Distinct {
            periods,
            dirty: false,
        }
    }

    pub fn insert(&mut self, day: Date, cell: CellKey, person: PersonToken) {
        let keys = [
            cell.with(Metric::UniqueUsers, NO_REASON),
            cell.all_bands().with(Metric::UniqueUsers, NO_REASON),
        ];
        for period in [PeriodKey::Day(day), PeriodKey::Month(first_of_month(day))] {
            let p = self
                .periods
                .entry(period)
                .or_insert_with(|| PeriodSketches::new(random16(), FxHashMap::default()));
            let h = keyed(&p.salt, &person);
            for k in keys {
                if p.sketches.entry(k).or_default().insert(h) {
                    p.changed.insert(k);
                    self.dirty = true;
                }
            }
        }
    }

    /// Writes changed estimates into the archive, then closes (drops, with their salts)
    /// the periods before `today`.
    pub fn settle(&mut self, today: Date, archive: &mut Archive, changes: &mut Changes) {
        for (period, p) in self.periods.iter_mut() {
            if p.changed.is_empty() {
                continue;
            }
            let (table, set) = match period {
                PeriodKey::Day(d) => (archive.days.entry(*d).or_default(), &mut changes.days),
                PeriodKey::Month(d) => (archive.months.entry(*d).or_default(), &mut changes.months),
            };
            let (PeriodKey::Day(d) | PeriodKey::Month(d)) = period;
            set.insert(*d);
            for k in p.changed.drain() {
                if let Some(s) = p.sketches.get(&k) {
                    table.set(k, s.estimate());
                }
            }
        }
        let this_month = first_of_month(today);
        let before = self.periods.len();
        self.periods.retain(|k, _| match k {
            PeriodKey::Day(d) => *d >= today,
            PeriodKey::Month(m) => *m >= this_month,
        });
        if self.periods.len() != before {
            self.dirty = true;
        }
    }

    /// A snapshot that could not be written: take it again next time.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The sketches to persist, when anything changed since they were last taken.
    pub fn take_if_dirty(&mut self) -> Option<&BTreeMap<PeriodKey, PeriodSketches>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(&self.periods)
    }
}

/// COUNTER's double-click window.
pub const DOUBLE_CLICK_MS: i64 = 30_000;
const CLICK_SHARDS: usize = 16;

/// What one click counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Click {
    /// Not a repeat within 30 s of the same session's last click on it.
    pub counts: bool,
    /// The session's first click on it today.
    pub first_today: bool,
}

#[derive(Debug, Default)]
struct ClickShard {
    /// The day the key and entries are for.
    day: Option<Date>,
    key: [u8; 16],
    /// Keyed hash of (service, session, item) → its last click today (ms since the
    /// epoch). Presence is "seen today"; the time drives the double-click rule.
    last: FxHashMap<u64, i64>,
}

/// The double-click and unique-item state: keyed hashes only, bounded, in memory, and
/// forgotten (with the shard's key) when the day changes.
#[derive(Debug)]
pub struct Clicks {
    shards: Box<[Mutex<ClickShard>]>,
}

impl Clicks {
    pub fn new() -> Self {
        Clicks {
            shards: (0..CLICK_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn click(&self, svc: u16, session: &str, item: &str, day: Date, now: Timestamp) -> Click {
        // The shard comes from the session alone (not secret: it only spreads the load).
        let shard_no = rustc_hash::FxBuildHasher.hash_one(session) as usize % CLICK_SHARDS;
        let mut shard = super::lock(&self.shards[shard_no]);
        if shard.day.is_none_or(|d| day > d) {
            // A new day, a new key: yesterday's hashes cannot be matched any more.
            shard.day = Some(day);
            shard.key = random16();
            shard.last = FxHashMap::default();
        }
        let mut h = SipHasher13::new_with_key(&shard.key);
        h.write_u16(svc);
        h.write(session.as_bytes());
        h.write_u8(0xFF);
        h.write(item.as_bytes());
        let h = h.finish();
        let now_ms = now.as_millisecond();
        let cap = super::CLICK_CAPACITY / CLICK_SHARDS;
        match shard.last.get_mut(&h) {
            Some(t) => {
                let repeat = now_ms - *t <= DOUBLE_CLICK_MS;
                *t = now_ms;
                Click {
                    counts: !repeat,
                    first_today: false,
                }
            }
            None => {
                if shard.last.len() < cap {
                    shard.last.insert(h, now_ms);
                }
                // Past the cap a click cannot be tracked, and counts.
                Click {
                    counts: true,
                    first_today: true,
                }
            }
        }
    }
}
