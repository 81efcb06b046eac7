//! Usage counts shared between replicas in Redis (`[store] backend = "redis"`).
//!
//! The hot path is the embedded one: [`super::Usage::record`] adds to the live shards (and
//! notes a person in a small in-memory map). Every `flush_interval` the flusher drains both
//! into this replica's buffer and sends it to Redis:
//!
//! - Counts go in numbered batches (at most [`BATCH_CELLS`] cells each) through one Lua
//!   script that `HINCRBY`s each cell into its day's hash and records the batch number as
//!   this replica's last applied one, in the same atomic step. A batch is kept until Redis
//!   confirms it and re-sent as it was, under the same number, so a batch that Redis
//!   applied but whose answer was lost (a timeout) is ignored the second time: each
//!   increment lands exactly once. The replica id is random at each start.
//! - Persons are hashed with SipHash-1-3 under the period's salt, shared through Redis
//!   (the first replica to need it sets a random one with `SET NX`; the others read it),
//!   and `PFADD`ed to a Redis HyperLogLog per period and `unique_users` cell.
//!
//! While Redis is away the buffer keeps everything, up to [`BUFFER_CELLS`] cells and
//! [`BUFFER_PERSONS`] person entries; what comes past that is dropped and counted
//! (`portvakt_usage_dropped_total`). On a clean stop with Redis away the buffer goes to
//! `<data_dir>/usage-unsent-<replica>.json` (already split into numbered batches, so
//! sending it twice counts it once), which the next start sends and then deletes; a crash
//! while Redis is away loses the buffer, as it would lose one `flush_interval`. Persons
//! go into that file only as their hashes under the period salt (which lives in Redis and
//! expires with the period), never as tokens; those whose period salt this replica never
//! got cannot be hashed, and are dropped and counted.
//!
//! Queries send this replica's buffer first, then read Redis; when either fails the query
//! fails (the native API answers 503, SUSHI exception 1000) rather than give a partial
//! answer. Other replicas' counts appear within their `flush_interval`.
//!
//! # Keys
//!
//! | key | type | holds |
//! |---|---|---|
//! | `portvakt:usage:day:<YYYY-MM-DD>` | hash | field [`field`] → count (every metric but `unique_users`) |
//! | `portvakt:usage:days` | sorted set | the days with counts (score `YYYYMMDD`) |
//! | `portvakt:usage:applied:<replica>` | string | the replica's last applied batch number (expires after a year) |
//! | `portvakt:usage:salt:<period>` | string | the period's salt (hex), expiring 10 min after the period closes |
//! | `portvakt:usage:users:<period>` | set | the `unique_users` fields with a sketch in the period |
//! | `portvakt:usage:users:<period>:<field>` | HyperLogLog | the salted hashes of the cell's persons |
//!
//! `<period>` is `day:YYYY-MM-DD` or `month:YYYY-MM`. The counts and sketches are kept (a
//! sketch whose salt is gone cannot tell whether anyone is in it); nothing names a person.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::counters::{self, Archive, CellKey, Live, Metric, NO_REASON, Names, Table};
use super::distinct::{self, PeriodKey};
use super::{PersonToken, UsageError, lock};
use store::redis::{PREFIX, RedisConn, unix_ms};

/// Cells (a day, institution, service, metric and dimensions) this replica keeps while
/// Redis is away: about 100 bytes each, so some 25 MiB at most (and the persons below
/// some 15 MiB more). Increments to a cell
/// already kept are always added (a cell of the batch awaiting confirmation is then kept
/// twice, so the buffer can pass the bound by up to [`BATCH_CELLS`]); new cells past the
/// bound are dropped and counted.
pub const BUFFER_CELLS: usize = 250_000;
/// Person entries kept while Redis is away (a person seen in a cell on a day takes four:
/// the day's and the month's sketch, of the cell and of its all-bands cell); past it, new
/// persons are dropped and counted.
pub const BUFFER_PERSONS: usize = 250_000;
/// Cells in one batch (one script call).
pub const BATCH_CELLS: usize = 5_000;
/// Salted hashes in one `PFADD` pipeline.
const BATCH_HASHES: usize = 10_000;
/// How long a period's salt outlives the period: replicas flush what they counted just
/// before midnight after it.
const SALT_GRACE: Duration = Duration::from_secs(600);
/// How long Redis remembers a replica's last batch number after its last batch: long
/// enough for a leftovers file to be sent after any realistic outage.
const APPLIED_TTL_MS: i64 = 366 * 24 * 3600 * 1000;

/// Bounds of the buffer; the defaults are [`BUFFER_CELLS`] and [`BUFFER_PERSONS`].
#[derive(Clone, Copy, Debug)]
pub struct SharedOptions {
    pub buffer_cells: usize,
    pub buffer_persons: usize,
}

impl Default for SharedOptions {
    fn default() -> Self {
        Self {
            buffer_cells: BUFFER_CELLS,
            buffer_persons: BUFFER_PERSONS,
        }
    }
}

/// What `/metrics` shows of the buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Cells waiting for Redis (`portvakt_usage_buffered_cells`).
    pub buffered_cells: u64,
    /// Cells dropped past the bound (`portvakt_usage_dropped_total{what="cells"}`).
    pub dropped_cells: u64,
    /// Persons seen in a cell on a day and left out of that day's or month's
    /// `unique_users` (`portvakt_usage_dropped_total{what="persons"}`).
    pub dropped_persons: u64,
}

/// Adds each cell of a batch once per batch number and replica.
/// KEYS: the replica's applied key, the days set, then the day hashes.
/// ARGV: batch number, applied TTL (ms), number of days D, D pairs (score, day), then
/// triples (day index from 1, field, increment). Returns 1 if applied, 0 if seen before.
const APPLY: &str = r"
local n = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= last then return 0 end
local d = tonumber(ARGV[3])
for i = 1, d do
  redis.call('ZADD', KEYS[2], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
local i = 4 + 2 * d
while i <= #ARGV do
  redis.call('HINCRBY', KEYS[2 + tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// The period's salt, set to the candidate if there is none and the period (plus grace)
/// has not ended. KEYS: salt key. ARGV: candidate, expiry (Unix ms), now (Unix ms).
/// The key lives at least the grace past Redis's own clock, so a replica whose clock is
/// behind cannot make a salt that vanishes at once.
const SALT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
local at = tonumber(ARGV[2])
if tonumber(ARGV[3]) >= at then return false end
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000 + 600000
if at < floor then at = floor end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', string.format('%d', at))
return ARGV[1]
";

/// One numbered batch of increments, kept until Redis confirms it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Batch {
    n: u64,
    cells: Vec<(Date, String, u64)>,
}

/// `usage-unsent-<replica>.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Unsent {
    replica: String,
    batches: Vec<Batch>,
    /// (period, field, salted hashes in hex).
    persons: Vec<(String, String, Vec<String>)>,
}

/// A leftovers file from an earlier run, sent before anything else.
#[derive(Debug)]
struct Leftover {
    path: PathBuf,
    unsent: Unsent,
}

/// The buffer: what this replica has counted and Redis has not confirmed.
#[derive(Debug, Default)]
struct State {
    next_batch: u64,
    /// Increments not yet in a batch.
    pending: BTreeMap<(Date, String), u64>,
    /// The batch sent but not confirmed; re-sent as it is.
    inflight: Option<Batch>,
    /// The cells of `inflight`, so more of them is still taken when the buffer is full.
    inflight_keys: FxHashSet<(Date, String)>,
    /// Persons whose period salt is not known yet: (day, cell field, all-bands field).
    tokens: FxHashMap<(Date, String, String), FxHashSet<PersonToken>>,
    token_count: usize,
    /// Salted hashes not yet added.
    hashes: BTreeMap<(PeriodKey, String), FxHashSet<u64>>,
    hash_count: usize,
    salts: FxHashMap<PeriodKey, [u8; 16]>,
    leftovers: Vec<Leftover>,
    /// The last batch Redis confirmed, for [`Shared::resend_last`].
    last_applied: Option<Batch>,
}

impl State {
    fn cells(&self) -> usize {
        self.pending.len() + self.inflight.as_ref().map_or(0, |b| b.cells.len())
    }
    /// Person entries: a token stands for four once hashed (two periods, two cells).
    fn persons(&self) -> usize {
        self.token_count * 4 + self.hash_count
    }
}

/// The Redis side of a shared [`super::Usage`].
pub(crate) struct Shared {
    conn: RedisConn,
    replica: String,
    data_dir: Option<PathBuf>,
    opts: SharedOptions,
    apply: redis::Script,
    salt: redis::Script,
    /// Persons noted by the hot path since the last flush, by day and cell.
    persons_in: Mutex<FxHashMap<(Date, CellKey), FxHashSet<PersonToken>>>,
    state: tokio::sync::Mutex<State>,
    buffered: AtomicU64,
    dropped_cells: AtomicU64,
    dropped_persons: AtomicU64,
    /// Whether the last flush failed, so the log says so once, not every second.
    failing: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("replica", &self.replica)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> UsageError {
    UsageError::Unavailable {
        message: e.to_string(),
    }
}

fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('|', "%7C")
}
fn unescape(s: &str) -> String {
    s.replace("%7C", "|").replace("%25", "%")
}

/// A cell as Redis names it: `<metric, reason, affiliation, band as 8 hex digits>|<institution>|<service>`
/// (`%` and `|` in ids escaped), the same on every replica whatever its local indexes.
pub fn field(names: &Names, key: u64) -> Option<String> {
    let u = counters::unpack(key);
    let inst = names.institutions.get(usize::from(u.inst))?;
    let svc = names.services.get(usize::from(u.svc))?;
    Some(format!(
        "{:08x}|{}|{}",
        key & 0xFFFF_FFFF,
        escape(inst),
        escape(svc)
    ))
}

/// The packed key of a field under `names` (interning what is new).
fn packed(names: &mut Names, field: &str) -> Option<u64> {
    let mut parts = field.splitn(3, '|');
    let low = u64::from_str_radix(parts.next()?, 16).ok()?;
    let inst = unescape(parts.next()?);
    let svc = unescape(parts.next()?);
    let (i, s) = names.intern(&inst, &svc)?;
    Some((u64::from(i) << 48) | (u64::from(s) << 32) | (low & 0xFFFF_FFFF))
}

fn day_key(d: Date) -> String {
    format!("{PREFIX}usage:day:{d}")
}
fn period_name(p: PeriodKey) -> String {
    match p {
        PeriodKey::Day(d) => format!("day:{d}"),
        PeriodKey::Month(d) => format!("month:{:04}-{:02}", d.year(), d.month()),
    }
}
fn parse_period(s: &str) -> Option<PeriodKey> {
    if let Some(d) = s.strip_prefix("day:") {
        return d.parse().ok().map(PeriodKey::Day);
    }
    let m = s.strip_prefix("month:")?;
    format!("{m}-01").parse().ok().map(PeriodKey::Month)
}
fn users_key(p: PeriodKey) -> String {
    format!("{PREFIX}usage:users:{}", period_name(p))
}
fn sketch_key(p: PeriodKey, field: &str) -> String {
    format!("{PREFIX}usage:users:{}:{field}", period_name(p))
}
fn day_score(d: Date) -> i64 {
    i64::from(d.year()) * 10_000 + i64::from(d.month()) * 100 + i64::from(d.day())
}
fn unsent_path(dir: &Path, replica: &str) -> PathBuf {
    dir.join(format!("usage-unsent-{replica}.json"))
}

/// When a period's salt goes: 10 minutes after the period closes in Europe/Oslo.
fn salt_expiry(p: PeriodKey) -> Timestamp {
    let next = match p {
        PeriodKey::Day(d) => d.tomorrow().ok(),
        PeriodKey::Month(m) => m.last_of_month().tomorrow().ok(),
    };
    let tz = policy::oslo();
    next.and_then(|d| {
        tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .ok()
    })
    .and_then(|t| t.checked_add(SALT_GRACE).ok())
    .unwrap_or(Timestamp::MAX)
}

fn keyed(salt: &[u8; 16], token: &PersonToken) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_key(salt);
    h.write(token.bytes());
    h.finish()
}

impl Shared {
    /// Reads the leftovers of earlier runs under `data_dir` (sent by the first flush).
    pub fn new(
        conn: RedisConn,
        data_dir: Option<&Path>,
        opts: SharedOptions,
    ) -> Result<Self, UsageError> {
        let mut replica = [0u8; 8];
        getrandom::fill(&mut replica).map_err(|e| UsageError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("no randomness for the replica id: {e}")),
        })?;
        let replica = data_encoding::HEXLOWER.encode(&replica);
        let mut leftovers = Vec::new();
        if let Some(dir) = data_dir
            && dir.exists()
        {
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| UsageError::Io { path, source }
            };
            for entry in std::fs::read_dir(dir).map_err(io(dir))? {
                let entry = entry.map_err(io(dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !(name.starts_with("usage-unsent-") && name.ends_with(".json")) {
                    continue;
                }
                let path = entry.path();
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let unsent: Unsent =
                    serde_json::from_slice(&bytes).map_err(|e| UsageError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                tracing::info!(file = %path.display(), "usage: counts a previous run could not send to Redis will be sent now");
                leftovers.push(Leftover { path, unsent });
            }
        }
        Ok(Shared {
            conn,
            replica,
            data_dir: data_dir.map(Path::to_path_buf),
            opts,
            apply: redis::Script::new(APPLY),
            salt: redis::Script::new(SALT),
            persons_in: Mutex::default(),
            state: tokio::sync::Mutex::new(State {
                next_batch: 1,
                leftovers,
                ..State::default()
            }),
            buffered: AtomicU64::new(0),
            dropped_cells: AtomicU64::new(0),
            dropped_persons: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn stats(&self) -> SharedStats {
        SharedStats {
            buffered_cells: self.buffered.load(Ordering::Relaxed),
            dropped_cells: self.dropped_cells.load(Ordering::Relaxed),
            dropped_persons: self.dropped_persons.load(Ordering::Relaxed),
        }
    }

    /// The hot path's part: note a person for the next flush.
    pub fn note_person(&self, day: Date, cell: CellKey, person: PersonToken) {
        lock(&self.persons_in)
            .entry((day, cell))
            .or_default()
            .insert(person);
    }

    /// Moves what the hot path counted into the buffer, within its bounds.
    fn intake(&self, st: &mut State, drained: Vec<((Date, u64), u64)>, names: &Names) {
        let mut dropped = 0u64;
        for ((day, key), v) in drained {
            let Some(f) = field(names, key) else { continue };
            let at_bound = st.cells() >= self.opts.buffer_cells;
            let k = (day, f);
            match st.pending.get_mut(&k) {
                Some(x) => *x = x.saturating_add(v),
                // A cell of the unconfirmed batch is kept: the buffer then holds it twice,
                // so it may pass the bound by at most one batch.
                None if at_bound && !st.inflight_keys.contains(&k) => dropped += 1,
                None => {
                    st.pending.insert(k, v);
                }
            }
        }
        if dropped > 0 {
            self.dropped_cells.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                cells = dropped,
                bound = self.opts.buffer_cells,
                "usage: Redis has been away too long, the buffer is full and new counts are dropped"
            );
        }
        let persons = std::mem::take(&mut *lock(&self.persons_in));
        let mut dropped = 0u64;
        for ((day, cell), tokens) in persons {
            let key = cell.with(Metric::UniqueUsers, NO_REASON);
            let all = cell.all_bands().with(Metric::UniqueUsers, NO_REASON);
            let (Some(f), Some(fa)) = (field(names, key), field(names, all)) else {
                continue;
            };
            // Each token is four entries once hashed: two periods, two cells.
            let mut room = self.opts.buffer_persons.saturating_sub(st.persons()) / 4;
            let set = st.tokens.entry((day, f, fa)).or_default();
            let mut added = 0;
            for t in tokens {
                if set.contains(&t) {
                    continue;
                }
                if room == 0 {
                    dropped += 1;
                    continue;
                }
                set.insert(t);
                room -= 1;
                added += 1;
            }
            st.token_count += added;
        }
        st.tokens.retain(|_, s| !s.is_empty());
        if dropped > 0 {
            self.dropped_persons.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                persons = dropped,
                bound = self.opts.buffer_persons,
                "usage: Redis has been away too long, the buffer is full and new persons are not counted"
            );
        }
        self.buffered.store(st.cells() as u64, Ordering::Relaxed);
    }

    /// Drains the hot path into the buffer and sends the buffer to Redis. `Err` when Redis
    /// did not take all of it (the rest stays buffered).
    pub async fn flush(
        &self,
        live: &Live,
        names: &std::sync::RwLock<Names>,
        now: Timestamp,
    ) -> Result<(), UsageError> {
        let mut st = self.state.lock().await;
        // Drained only with the buffer in hand: a flush dropped while it waits (a
        // query whose client went away, the flusher aborted at a stop) loses nothing.
        {
            let names = super::read(names);
            self.intake(&mut st, live.drain(), &names);
        }
        let result = self.send(&mut st, now).await;
        self.buffered.store(st.cells() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("usage: Redis answers again; the buffered counts are sent");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, cells = st.cells(), "usage: cannot send counts to Redis; buffering them until it answers");
                }
            }
        }
        result
    }

    async fn send(&self, st: &mut State, now: Timestamp) -> Result<(), UsageError> {
        // Earlier runs' leftovers first, each under its own replica id.
        while let Some(left) = st.leftovers.first() {
            for b in &left.unsent.batches {
                self.apply_batch(&left.unsent.replica, b).await?;
            }
            let mut hashes: BTreeMap<(PeriodKey, String), FxHashSet<u64>> = BTreeMap::new();
            for (p, f, hs) in &left.unsent.persons {
                let Some(p) = parse_period(p) else { continue };
                let set = hashes.entry((p, f.clone())).or_default();
                set.extend(hs.iter().filter_map(|h| u64::from_str_radix(h, 16).ok()));
            }
            self.add_hashes(&hashes).await?;
            let path = left.path.clone();
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(file = %path.display(), error = %e, "usage: sent to Redis, but cannot delete the leftovers file (it would be sent again, and ignored)");
            }
            st.leftovers.remove(0);
        }
        // Salts, then hash the persons waiting for them.
        self.hash_tokens(st, now).await?;
        // Counts, in batches, one at a time, in order.
        loop {
            if st.inflight.is_none() {
                if st.pending.is_empty() {
                    break;
                }
                let mut cells = Vec::new();
                while cells.len() < BATCH_CELLS {
                    let Some(((d, f), v)) = st.pending.pop_first() else {
                        break;
                    };
                    cells.push((d, f, v));
                }
                st.inflight_keys = cells.iter().map(|(d, f, _)| (*d, f.clone())).collect();
                st.inflight = Some(Batch {
                    n: st.next_batch,
                    cells,
                });
                st.next_batch += 1;
            }
            if let Some(b) = &st.inflight {
                self.apply_batch(&self.replica, b).await?;
            }
            st.last_applied = st.inflight.take();
            st.inflight_keys.clear();
        }
        // Persons (adding a hash twice changes nothing, so no numbering needed).
        if !st.hashes.is_empty() {
            self.add_hashes(&st.hashes).await?;
            st.hashes.clear();
            st.hash_count = 0;
        }
        // Forget salts of periods long closed.
        st.salts.retain(|p, _| salt_expiry(*p) > now);
        Ok(())
    }

    async fn apply_batch(&self, replica: &str, b: &Batch) -> Result<(), UsageError> {
        let mut days: Vec<Date> = b.cells.iter().map(|c| c.0).collect();
        days.sort_unstable();
        days.dedup();
        let applied = format!("{PREFIX}usage:applied:{replica}");
        let _: i64 = self
            .conn
            .run("usage batch", |mut c| {
                let mut call = self.apply.key(&applied);
                call.key(format!("{PREFIX}usage:days"));
                for d in &days {
                    call.key(day_key(*d));
                }
                call.arg(b.n).arg(APPLIED_TTL_MS).arg(days.len());
                for d in &days {
                    call.arg(day_score(*d)).arg(d.to_string());
                }
                for (d, f, v) in &b.cells {
                    let idx = days.binary_search(d).map_or(1, |i| i + 1);
                    call.arg(idx)
                        .arg(f.as_str())
                        .arg(i64::try_from(*v).unwrap_or(i64::MAX));
                }
                async move { call.invoke_async(&mut c).await }
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn hash_tokens(&self, st: &mut State, now: Timestamp) -> Result<(), UsageError> {
        if st.tokens.is_empty() {
            return Ok(());
        }
        let mut periods: Vec<PeriodKey> = Vec::new();
        for (d, _, _) in st.tokens.keys() {
            periods.push(PeriodKey::Day(*d));
            periods.push(PeriodKey::Month(distinct::first_of_month(*d)));
        }
        periods.sort_unstable();
        periods.dedup();
        for p in periods {
            if st.salts.contains_key(&p) {
                continue;
            }
            let candidate = data_encoding::HEXLOWER.encode(&distinct::random16());
            let key = format!("{PREFIX}usage:salt:{}", period_name(p));
            let got: Option<String> = self
                .conn
                .run("usage salt", |mut c| {
                    let mut call = self.salt.key(&key);
                    call.arg(&candidate)
                        .arg(unix_ms(salt_expiry(p)))
                        .arg(unix_ms(now));
                    async move { call.invoke_async(&mut c).await }
                })
                .await
                .map_err(unavailable)?;
            let salt = got
                .and_then(|s| data_encoding::HEXLOWER.decode(s.as_bytes()).ok())
                .and_then(|b| <[u8; 16]>::try_from(b).ok());
            // None: the period closed (its salt is gone) before this replica could send,
            // and its persons cannot be counted without counting someone twice.
            if let Some(s) = salt {
                st.salts.insert(p, s);
            }
        }
        self.hash_known(st);
        Ok(())
    }

    /// Hashes the waiting persons under the salts this replica has; those of a period
    /// whose salt it has not are dropped (and counted).
    fn hash_known(&self, st: &mut State) {
        let tokens = std::mem::take(&mut st.tokens);
        let mut dropped = 0u64;
        for ((day, f, fa), set) in tokens {
            let month = PeriodKey::Month(distinct::first_of_month(day));
            let periods = [PeriodKey::Day(day), month];
            if periods.iter().any(|p| !st.salts.contains_key(p)) {
                dropped += set.len() as u64;
            }
            for p in periods {
                let Some(salt) = st.salts.get(&p).copied() else {
                    continue;
                };
                for key in [&f, &fa] {
                    let hs = st.hashes.entry((p, key.clone())).or_default();
                    for t in &set {
                        if hs.insert(keyed(&salt, t)) {
                            st.hash_count += 1;
                        }
                    }
                }
            }
        }
        st.token_count = 0;
        if dropped > 0 {
            self.dropped_persons.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    async fn add_hashes(
        &self,
        hashes: &BTreeMap<(PeriodKey, String), FxHashSet<u64>>,
    ) -> Result<(), UsageError> {
        let mut pipe = redis::pipe();
        let mut n = 0;
        let mut pending = false;
        for ((p, f), set) in hashes {
            let key = sketch_key(*p, f);
            let hs: Vec<[u8; 8]> = set.iter().map(|h| h.to_le_bytes()).collect();
            for chunk in hs.chunks(BATCH_HASHES) {
                let cmd = pipe.cmd("PFADD").arg(&key);
                for h in chunk {
                    cmd.arg(&h[..]);
                }
                cmd.ignore();
                n += chunk.len();
            }
            pipe.cmd("SADD").arg(users_key(*p)).arg(f).ignore();
            pending = true;
            if n >= BATCH_HASHES {
                self.run_pipe(&pipe).await?;
                pipe = redis::pipe();
                n = 0;
                pending = false;
            }
        }
        if pending {
            self.run_pipe(&pipe).await?;
        }
        Ok(())
    }

    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<(), UsageError> {
        self.conn
            .run("usage persons", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
            .map_err(unavailable)
    }

    /// Sends the last confirmed batch again, under its number, as after a lost answer;
    /// whether there was one. Redis must ignore it (tests check that it does).
    pub async fn resend_last(&self) -> Result<bool, UsageError> {
        let st = self.state.lock().await;
        match &st.last_applied {
            Some(b) => self.apply_batch(&self.replica, b).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// On a clean stop: send what is left, and if Redis does not take it, write it to
    /// `<data_dir>/usage-unsent-<replica>.json` for the next start.
    pub async fn close(
        &self,
        live: &Live,
        names: &std::sync::RwLock<Names>,
        now: Timestamp,
    ) -> Result<(), UsageError> {
        let Err(e) = self.flush(live, names, now).await else {
            return Ok(());
        };
        let mut st = self.state.lock().await;
        let Some(dir) = &self.data_dir else {
            return Err(e);
        };
        let mut unsent = Unsent {
            replica: self.replica.clone(),
            ..Unsent::default()
        };
        if let Some(b) = st.inflight.take() {
            unsent.batches.push(b);
        }
        st.inflight_keys.clear();
        while !st.pending.is_empty() {
            let mut cells = Vec::new();
            while cells.len() < BATCH_CELLS {
                let Some(((d, f), v)) = st.pending.pop_first() else {
                    break;
                };
                cells.push((d, f, v));
            }
            unsent.batches.push(Batch {
                n: st.next_batch,
                cells,
            });
            st.next_batch += 1;
        }
        // Persons go down only as salted hashes, and only under a salt this replica got.
        let before = self.dropped_persons.load(Ordering::Relaxed);
        self.hash_known(&mut st);
        let lost = self.dropped_persons.load(Ordering::Relaxed) - before;
        if lost > 0 {
            tracing::warn!(
                entries = lost,
                "usage: persons not counted: Redis is away and never gave this period's salt"
            );
        }
        for ((p, f), set) in std::mem::take(&mut st.hashes) {
            let hs = set.iter().map(|h| format!("{h:016x}")).collect();
            unsent.persons.push((period_name(p), f, hs));
        }
        st.hash_count = 0;
        self.buffered.store(0, Ordering::Relaxed);
        if unsent.batches.is_empty() && unsent.persons.is_empty() {
            return Ok(());
        }
        let path = unsent_path(dir, &self.replica);
        let bytes = serde_json::to_vec(&unsent).map_err(|e| UsageError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::create_dir_all(dir).map_err(|source| UsageError::Io {
            path: dir.clone(),
            source,
        })?;
        super::persist::write_atomic(&path, &bytes)?;
        tracing::warn!(file = %path.display(), error = %e, "usage: Redis is away; the counts it has not taken are kept for the next start");
        Ok(())
    }

    /// Reads the tables a query needs from Redis into an archive under fresh names.
    pub async fn read(&self, q: &super::Query) -> Result<(Names, Archive), UsageError> {
        let mut names = Names::default();
        let mut archive = Archive::default();
        let mut days = Vec::new();
        let mut d = q.from;
        while d <= q.to {
            days.push(d);
            d = match d.tomorrow() {
                Ok(n) => n,
                Err(_) => break,
            };
        }
        let users = q
            .metrics
            .as_ref()
            .is_none_or(|m| m.iter().any(|(m, _)| *m == Metric::UniqueUsers));
        // One pipeline a week of days, so each stays well within the command timeout
        // even for a national installation's day tables.
        for chunk in days.chunks(7) {
            let mut pipe = redis::pipe();
            for d in chunk {
                pipe.cmd("HGETALL").arg(day_key(*d));
            }
            let tables: Vec<Vec<(String, u64)>> = self
                .conn
                .run("usage read", |mut c| {
                    let pipe = &pipe;
                    async move { pipe.query_async(&mut c).await }
                })
                .await
                .map_err(unavailable)?;
            for (d, entries) in chunk.iter().zip(tables) {
                if entries.is_empty() {
                    continue;
                }
                let mut t: Vec<(u64, u64)> = entries
                    .iter()
                    .filter_map(|(f, v)| Some((packed(&mut names, f)?, *v)))
                    .collect();
                t.sort_unstable_by_key(|e| e.0);
                archive.days.insert(*d, Table(t));
            }
        }
        if users {
            let mut periods: Vec<PeriodKey> = days.iter().map(|d| PeriodKey::Day(*d)).collect();
            let mut m = q.from.first_of_month();
            while m <= q.to {
                periods.push(PeriodKey::Month(m));
                m = match m.last_of_month().tomorrow() {
                    Ok(n) => n,
                    Err(_) => break,
                };
            }
            for chunk in periods.chunks(31) {
                let mut pipe = redis::pipe();
                for p in chunk {
                    pipe.cmd("SMEMBERS").arg(users_key(*p));
                }
                let fields: Vec<Vec<String>> = self
                    .conn
                    .run("usage read persons", |mut c| {
                        let pipe = &pipe;
                        async move { pipe.query_async(&mut c).await }
                    })
                    .await
                    .map_err(unavailable)?;
                let mut pipe = redis::pipe();
                let mut wanted = Vec::new();
                for (p, fs) in chunk.iter().zip(fields) {
                    for f in fs {
                        pipe.cmd("PFCOUNT").arg(sketch_key(*p, &f));
                        wanted.push((*p, f));
                    }
                }
                if wanted.is_empty() {
                    continue;
                }
                let counts: Vec<u64> = self
                    .conn
                    .run("usage count persons", |mut c| {
                        let pipe = &pipe;
                        async move { pipe.query_async(&mut c).await }
                    })
                    .await
                    .map_err(unavailable)?;
                for ((p, f), n) in wanted.into_iter().zip(counts) {
                    let Some(k) = packed(&mut names, &f) else {
                        continue;
                    };
                    let table = match p {
                        PeriodKey::Day(d) => archive.days.entry(d).or_default(),
                        PeriodKey::Month(m) => archive.months.entry(m).or_default(),
                    };
                    table.set(k, n);
                }
            }
        }
        Ok((names, archive))
    }

    /// The first and last day with counts in Redis.
    pub async fn span(&self) -> Result<Option<(Date, Date)>, UsageError> {
        let key = format!("{PREFIX}usage:days");
        let (first, last): (Vec<String>, Vec<String>) = self
            .conn
            .run("usage days", |mut c| {
                let key = &key;
                async move {
                    redis::pipe()
                        .cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(0)
                        .cmd("ZRANGE")
                        .arg(key)
                        .arg(-1)
                        .arg(-1)
                        .query_async(&mut c)
                        .await
                }
            })
            .await
            .map_err(unavailable)?;
        let parse = |v: &[String]| v.first().and_then(|s| s.parse::<Date>().ok());
        Ok(parse(&first).zip(parse(&last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::AgeBand;
    use policy::subject::Affiliation;

    #[test]
    fn fields_name_cells_the_same_on_every_replica() {
        let mut a = Names::default();
        a.intern("other", "x");
        let (i, s) = a.intern("NO|1%7C", "svc|%").expect("room");
        let key = CellKey::new(i, s, Affiliation::Staff, AgeBand::B67Plus).with(Metric::Denials, 3);
        let f = field(&a, key).expect("known names");
        assert_eq!(f.split('|').count(), 3, "{f}");
        // Another replica, other indexes: the same cell.
        let mut b = Names::default();
        let back = packed(&mut b, &f).expect("parses");
        assert_eq!(field(&b, back), Some(f));
        let u = counters::unpack(back);
        assert_eq!(&*b.institutions[usize::from(u.inst)], "NO|1%7C");
        assert_eq!(&*b.services[usize::from(u.svc)], "svc|%");
        assert_eq!((u.metric, u.reason), (Metric::Denials as u8, 3));
    }

    #[test]
    fn salts_go_ten_minutes_after_the_period_closes_in_oslo() {
        let d: Date = "2026-03-28".parse().expect("date");
        // Oslo is UTC+1 before the switch to summer time on 29 March.
        let day: Timestamp = "2026-03-28T23:10:00Z".parse().expect("ts");
        assert_eq!(salt_expiry(PeriodKey::Day(d)), day);
        let month: Timestamp = "2026-03-31T22:10:00Z".parse().expect("ts");
        assert_eq!(salt_expiry(PeriodKey::Month(d.first_of_month())), month);
        for p in [PeriodKey::Day(d), PeriodKey::Month(d.first_of_month())] {
            assert_eq!(parse_period(&period_name(p)), Some(p));
        }
    }
}
