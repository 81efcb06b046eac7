//! Usage counters: what the gateway counts for statisticians, how it keeps the counts
//! without any record about a person, and the two ways out (the native API and COUNTER
//! R5.1 SUSHI).
//!
//! Data flows one way. The request path calls [`Usage::record`] with an [`Event`]; the
//! event becomes increments of packed cell keys (day in Europe/Oslo, institution, service,
//! metric, denial reason, affiliation, age band) in one of a few sharded hash maps, which
//! is all the hot path touches (see `benches/usage.rs`: well under 200 ns an event).
//! [`Usage::flush`] drains the shards into the archive (one sorted table per day, one per
//! month for monthly distinct counts) and writes the tables that changed to `data_dir`,
//! each atomically (temp file, fsync, rename). A flusher task does that every
//! `flush_interval` and the lead calls `flush` once more on a clean stop, so a clean stop
//! loses nothing and a crash at most `flush_interval` of counts. The exports read only the
//! archive.
//!
//! # Distinct persons, without a per-person record
//!
//! `unique_users` counts distinct persons per day and per month. The caller turns a
//! subject key into a [`PersonToken`] with [`Usage::person`] (HMAC-SHA256 under the
//! `salt_key` given to [`Usage::open`], cut to 128 bits; `Debug` redacts it). Each period
//! (a day, a month) gets its own random 128-bit salt when it first sees a person; the token
//! is hashed with SipHash-1-3 under that salt, and the hash goes into a HyperLogLog sketch
//! per cell (HLL++'s sparse form while small, 2^12 registers after). The sketches and
//! their period salts are persisted beside the counts, so the count survives a restart,
//! and both are deleted when the period closes: what remains is the number. A sketch keeps
//! at most a bucket index and a leading-zero rank of each hash (31 bits), never the token,
//! and testing whether a known person is in it needs the `salt_key` (which is not under
//! `data_dir`) and the period salt (which is gone once the period closes).
//!
//! Error bound: up to 1 024 persons a cell, the sparse form spreads hashes over 2^25
//! buckets and estimates by linear counting, which is exact unless two persons share a
//! bucket (probability about n²/2^26: under 2 % at n = 1 024, under 4·10⁻⁵ at n = 50) and
//! then low by one; so a count never exceeds the truth there, and k-anonymity never shows
//! a group smaller than it is. Above that, the dense HyperLogLog has a relative standard
//! error of 1.04/√4096 ≈ 1.6 %.
//!
//! A person is counted where they log in (service `-`) and where an entry link lets them
//! in (`accesses`); proxied requests do not count persons, which keeps hashing off the
//! proxy's hot path. Breakdowns by affiliation or age band sum the per-band sketches (a
//! person in two bands in one period counts twice there); the plain institution × service
//! count has its own sketch and never double counts.
//!
//! # Shared between replicas (Redis)
//!
//! With `[store] backend = "redis"` ([`Usage::open_shared`]) the hot path is the same, but
//! the flusher sends the drained counts to Redis instead of `data_dir`: numbered batches,
//! each applied exactly once by a Lua script (`HINCRBY` into per-day hashes), so every
//! replica's counts add up in one place, and [`Usage::query_async`] reads them from there
//! after sending this replica's own. `unique_users` there is a Redis HyperLogLog per period
//! and cell, fed with SipHash-1-3 of the person token under a per-period salt that replicas
//! share through Redis (set once, `SET NX`) and that expires 10 minutes after the period
//! closes in Europe/Oslo: the sketch and its count remain, the salt that could link a person
//! to it does not. Error bound: Redis's HyperLogLog (2^14 registers, sparse while small)
//! has a relative standard error of 1.04/√16384 ≈ 0.81 %. Up to about 100 persons a cell
//! (measured against Redis 7.0) a count comes out exact or low, never above the truth (two
//! persons in one register count as one: probability about n²/2^15, some 1 % at n = 18,
//! 8 % at n = 50), so k-anonymity never shows a group smaller than it is; above that the
//! error goes either way. A person on two replicas is one hash in one sketch, so counts
//! once. While Redis is away the counts wait in a bounded
//! buffer and a clean stop writes them to `data_dir` (a crash then loses the buffer: what
//! this replica counted since Redis went away); `usage/shared.rs` gives the keys, the
//! bounds and the failure behaviour.
//!
//! # COUNTER processing
//!
//! Searches and item requests follow COUNTER's double-click rule: the same session clicking
//! the same search or item again within 30 s counts once (each click restarts the 30 s).
//! `unique_item_requests` counts a session and item once a day. Both are tracked in one
//! map from SipHash of (service, session id, item), under a random in-memory key that
//! changes every day, to the last click's time; the map is bounded ([`CLICK_CAPACITY`])
//! and dropped with its key at midnight. This state is not persisted: after a restart a
//! click can count once more.

mod api;
mod config;
mod counters;
mod distinct;
mod persist;
mod query;
mod shared;
mod state;
mod sushi;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use jiff::civil::Date;
use sha2::Sha256;

use policy::subject::Affiliation;
use policy::{AgeBand, DenyReason};
use store::Clock;

pub use api::{render_csv, render_json, router};
pub use config::{ConfigProblem, FileStatistician, Statistician, Statisticians};
pub use counters::Metric;
pub use query::{Period, Query, Row, Rows};
pub use shared::{BATCH_CELLS, BUFFER_CELLS, BUFFER_PERSONS, SharedOptions, SharedStats};

use counters::{Archive, CellKey, Live, Names};
use distinct::{Clicks, Distinct};

/// (Service, session, item) entries kept a day for the double-click rule and per-session
/// uniqueness. At about 24 bytes an entry this bounds the click state near 50 MiB; past
/// it, a click that cannot be tracked counts.
pub const CLICK_CAPACITY: usize = 2_000_000;

/// Everything that can go wrong with usage counting and its exports.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read or write usage data in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("usage data in {path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("the usage salt key must be at least 32 bytes")]
    WeakKey,
    /// The shared counts in Redis cannot be read or written just now; the native API
    /// answers 503 and SUSHI exception 1000, never a partial report.
    #[error("the shared usage counts in Redis are not available: {message}")]
    Unavailable { message: String },
    /// A request the native API or SUSHI refuses; the handlers turn it into 400/401/403.
    #[error("{message}")]
    Request { status: u16, message: String },
}

impl UsageError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::Request {
            status: 400,
            message: message.into(),
        }
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::Request {
            status: 403,
            message: message.into(),
        }
    }
}

/// A person as usage counting sees them: a keyed hash of the subject key, never the key
/// itself. Make one with [`Usage::person`] at login and keep it with the session.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PersonToken([u8; 16]);

impl std::fmt::Debug for PersonToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonToken(<redacted>)")
    }
}

impl PersonToken {
    pub(crate) fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// Where an event is counted. `service` is a service id, or `-` for logins and for
/// anything not about one service (an unknown service in a denial must be passed as `-`,
/// so labels stay bounded).
#[derive(Clone, Copy, Debug)]
pub struct Counted<'a> {
    /// The institution credited: the permit's, the one logged in at, or the home one.
    pub institution: &'a str,
    pub service: &'a str,
    pub affiliation: Affiliation,
    pub age_band: AgeBand,
    /// Who, for `unique_users`. Only logins and accesses count persons.
    pub person: Option<PersonToken>,
}

/// What kind of proxied request it was, from the service's `search_paths` / `item_paths`.
#[derive(Clone, Copy, Debug)]
pub enum RequestKind<'a> {
    Plain,
    /// `key` identifies the search (path and query) for the double-click rule.
    Search {
        session: &'a str,
        key: &'a str,
    },
    /// `item` identifies the item (the request path).
    Item {
        session: &'a str,
        item: &'a str,
    },
}

/// One countable thing that happened.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A login succeeded; counted under service `-` whatever `service` says.
    Login(Counted<'a>),
    LoginFailure(Counted<'a>),
    /// An entry link was permitted.
    Access(Counted<'a>),
    Denial {
        who: Counted<'a>,
        reason: DenyReason,
    },
    /// A proxied request and its response bytes.
    Request {
        who: Counted<'a>,
        bytes: u64,
        kind: RequestKind<'a>,
    },
}

/// The counters of one gateway process. Cheap to share (`Arc`), safe from every thread.
pub struct Usage {
    clock: Arc<dyn Clock>,
    person_key: Hmac<Sha256>,
    names: RwLock<Names>,
    live: Live,
    distinct: Mutex<Distinct>,
    clicks: Clicks,
    archive: RwLock<Archive>,
    /// Serializes flushes, so two never write the same files at once.
    flushing: Mutex<()>,
    /// Tables changed in the archive but not yet written: a query moves counts into the
    /// archive too, and the next flush must still write them.
    unsaved: Mutex<counters::Changes>,
    data_dir: Option<PathBuf>,
    flush_interval: Duration,
    /// Today in Europe/Oslo and the instants it spans, so the hot path rarely needs the
    /// time zone database.
    today: RwLock<DayCache>,
    warned_overflow: AtomicBool,
    /// With the Redis backend: where the counts go and come from instead of the archive.
    shared: Option<shared::Shared>,
}

#[derive(Clone, Copy)]
struct DayCache {
    start: Timestamp,
    end: Timestamp,
    day: Date,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage")
            .field("data_dir", &self.data_dir)
            .field("flush_interval", &self.flush_interval)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay consistent under a panic elsewhere: every update is one map write.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

impl Usage {
    /// Opens the counters, reading back what `data_dir` holds (`None`: memory only, for
    /// tests and the demo). `salt_key` (at least 32 bytes, secret, stable across restarts
    /// and replicas) keys [`PersonToken`]s; it must not be stored under `data_dir`.
    pub fn open(
        data_dir: Option<&Path>,
        flush_interval: Duration,
        clock: Arc<dyn Clock>,
        salt_key: &[u8],
    ) -> Result<Arc<Usage>, UsageError> {
        if salt_key.len() < 32 {
            return Err(UsageError::WeakKey);
        }
        let (names, archive, distinct) = match data_dir {
            Some(dir) => persist::load(dir)?,
            None => Default::default(),
        };
        Self::build(
            data_dir,
            flush_interval,
            clock,
            salt_key,
            (names, archive, distinct),
            None,
        )
    }

    /// Opens counters shared with the other replicas through Redis (the store's
    /// connection). Nothing is read from or written to `data_dir` but this replica's
    /// leftovers from a stop while Redis was away (`usage-unsent-*.json`), sent by the first
    /// flush. No connection is made here.
    pub fn open_shared(
        data_dir: Option<&Path>,
        flush_interval: Duration,
        clock: Arc<dyn Clock>,
        salt_key: &[u8],
        redis: store::redis::RedisConn,
        options: SharedOptions,
    ) -> Result<Arc<Usage>, UsageError> {
        let shared = shared::Shared::new(redis, data_dir, options)?;
        Self::build(
            data_dir,
            flush_interval,
            clock,
            salt_key,
            Default::default(),
            Some(shared),
        )
    }

    fn build(
        data_dir: Option<&Path>,
        flush_interval: Duration,
        clock: Arc<dyn Clock>,
        salt_key: &[u8],
        (names, archive, distinct): (Names, Archive, Distinct),
        shared: Option<shared::Shared>,
    ) -> Result<Arc<Usage>, UsageError> {
        if salt_key.len() < 32 {
            return Err(UsageError::WeakKey);
        }
        let person_key =
            Hmac::<Sha256>::new_from_slice(salt_key).map_err(|_| UsageError::WeakKey)?;
        let now = clock.now();
        let today = DayCache::at(now);
        Ok(Arc::new(Usage {
            clock,
            person_key,
            names: RwLock::new(names),
            live: Live::new(),
            distinct: Mutex::new(distinct),
            clicks: Clicks::new(),
            archive: RwLock::new(archive),
            flushing: Mutex::new(()),
            unsaved: Mutex::new(counters::Changes::default()),
            data_dir: data_dir.map(Path::to_path_buf),
            flush_interval,
            today: RwLock::new(today),
            warned_overflow: AtomicBool::new(false),
            shared,
        }))
    }

    /// The token that stands for a person in usage counting.
    pub fn person(&self, subject: &policy::ids::SubjectKey) -> PersonToken {
        let mut mac = self.person_key.clone();
        mac.update(b"portvakt-usage-person\0");
        mac.update(subject.expose().as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        PersonToken(out)
    }

    /// Counts one event. Never blocks on I/O; cheap enough for every proxied request.
    pub fn record(&self, event: Event<'_>) {
        let now = self.clock.now();
        let day = self.day_of(now);
        let (who, service) = match &event {
            Event::Login(w) => (w, "-"),
            Event::LoginFailure(w) | Event::Access(w) => (w, w.service),
            Event::Denial { who, .. } | Event::Request { who, .. } => (who, who.service),
        };
        let Some((inst, svc)) = self.intern(who.institution, service) else {
            return;
        };
        let cell = CellKey::new(inst, svc, who.affiliation, who.age_band);
        let mut add: [(Metric, u8, u64); 4] = [(Metric::Requests, 0, 0); 4];
        let mut n = 0;
        let mut push = |m: Metric, reason: u8, v: u64| {
            if n < add.len() {
                add[n] = (m, reason, v);
                n += 1;
            }
        };
        match event {
            Event::Login(w) => {
                push(Metric::Logins, counters::NO_REASON, 1);
                self.count_person(day, cell, w.person);
            }
            Event::LoginFailure(_) => push(Metric::LoginFailures, counters::NO_REASON, 1),
            Event::Access(w) => {
                push(Metric::Accesses, counters::NO_REASON, 1);
                self.count_person(day, cell, w.person);
            }
            Event::Denial { reason, .. } => push(Metric::Denials, counters::reason_code(reason), 1),
            Event::Request { bytes, kind, .. } => {
                push(Metric::Requests, counters::NO_REASON, 1);
                if bytes > 0 {
                    push(Metric::Bytes, counters::NO_REASON, bytes);
                }
                match kind {
                    RequestKind::Plain => {}
                    RequestKind::Search { session, key } => {
                        let click = self.clicks.click(svc, session, key, day, now);
                        if click.counts {
                            push(Metric::Searches, counters::NO_REASON, 1);
                        }
                    }
                    RequestKind::Item { session, item } => {
                        let click = self.clicks.click(svc, session, item, day, now);
                        if click.counts {
                            push(Metric::ItemRequests, counters::NO_REASON, 1);
                        }
                        if click.first_today {
                            push(Metric::UniqueItemRequests, counters::NO_REASON, 1);
                        }
                    }
                }
            }
        }
        self.live.add(day, cell, &add[..n]);
    }

    fn count_person(&self, day: Date, cell: CellKey, person: Option<PersonToken>) {
        if let Some(p) = person {
            match &self.shared {
                Some(s) => s.note_person(day, cell, p),
                None => lock(&self.distinct).insert(day, cell, p),
            }
        }
    }

    fn intern(&self, institution: &str, service: &str) -> Option<(u16, u16)> {
        if let Some(ids) = read(&self.names).get(institution, service) {
            return Some(ids);
        }
        let got = write(&self.names).intern(institution, service);
        if got.is_none() && !self.warned_overflow.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "usage: more than 65 535 distinct institutions or services; further new ones are not counted"
            );
        }
        got
    }

    fn day_of(&self, now: Timestamp) -> Date {
        let cached = *read(&self.today);
        if cached.start <= now && now < cached.end {
            return cached.day;
        }
        let fresh = DayCache::at(now);
        // Only move forward: a late event from before midnight must not rewind the cache.
        let mut w = write(&self.today);
        if fresh.day > w.day {
            *w = fresh;
        }
        fresh.day
    }

    /// Moves everything counted so far into the archive, closes finished days and months,
    /// and writes what changed to `data_dir`. Safe to call at any time, from any thread.
    /// Shared counters do nothing here: they are flushed by [`Usage::flush_async`].
    pub fn flush(&self) -> Result<(), UsageError> {
        if self.shared.is_some() {
            return Ok(());
        }
        let _one = lock(&self.flushing);
        let today = self.day_of(self.clock.now());
        self.sync(today);
        let Some(dir) = &self.data_dir else {
            *lock(&self.unsaved) = counters::Changes::default();
            return Ok(());
        };
        let changes = std::mem::take(&mut *lock(&self.unsaved));
        let names = read(&self.names).clone_if_dirty();
        let distinct = lock(&self.distinct)
            .take_if_dirty()
            .map(persist::encode_distinct);
        let written = {
            let archive = read(&self.archive);
            persist::write(dir, names.as_ref(), &archive, &changes, distinct.as_ref())
        };
        match written {
            Ok(()) => {
                if names.is_some() {
                    write(&self.names).mark_clean();
                }
                Ok(())
            }
            Err(e) => {
                // Try these tables again next time.
                lock(&self.unsaved).absorb(changes);
                if distinct.is_some() {
                    lock(&self.distinct).mark_dirty();
                }
                Err(e)
            }
        }
    }

    /// Drains the live shards and the distinct sketches into the archive, and notes the
    /// tables that changed for the next flush. Call with `flushing` held.
    fn sync(&self, today: Date) {
        let drained = self.live.drain();
        let mut archive = write(&self.archive);
        let mut changes = archive.merge(drained);
        let mut distinct = lock(&self.distinct);
        distinct.settle(today, &mut archive, &mut changes);
        lock(&self.unsaved).absorb(changes);
    }

    /// Flushes every `flush_interval` until the returned handle is aborted (or the
    /// runtime stops). Call [`Usage::close`] once on a clean stop.
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let usage = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(usage.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if usage.shared.is_some() {
                    // Failures are logged (once) by the shared side and retried next tick.
                    let _ = usage.flush_async().await;
                    continue;
                }
                let u = Arc::clone(&usage);
                // File writes block; keep them off the runtime's worker threads.
                match tokio::task::spawn_blocking(move || u.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("usage flush failed: {e}"),
                    Err(e) => tracing::error!("usage flush task failed: {e}"),
                }
            }
        })
    }

    /// Runs a query over the archive (after moving in what is still in the shards).
    /// Shared counters answer only through [`Usage::query_async`].
    pub fn query(&self, q: &Query) -> Result<Rows, UsageError> {
        if self.shared.is_some() {
            return Err(UsageError::Unavailable {
                message: "shared counts are read with query_async".into(),
            });
        }
        let today = self.day_of(self.clock.now());
        {
            let _one = lock(&self.flushing);
            self.sync(today);
        }
        let names = read(&self.names);
        let archive = read(&self.archive);
        query::run(q, &names, &archive)
    }

    /// The first and last day with any counts, for SUSHI's report list.
    pub fn days_with_data(&self) -> Option<(Date, Date)> {
        read(&self.archive).span()
    }

    /// Sends what this replica counted to Redis (shared counters; the embedded ones flush
    /// to `data_dir` off the runtime's threads). `Err` when Redis did not take all of it:
    /// the rest stays buffered, within the bounds, for the next flush.
    pub async fn flush_async(self: &Arc<Self>) -> Result<(), UsageError> {
        match &self.shared {
            Some(s) => {
                let now = self.clock.now();
                s.flush(&self.live, &self.names, now).await
            }
            None => {
                let u = Arc::clone(self);
                tokio::task::spawn_blocking(move || u.flush())
                    .await
                    .map_err(|e| UsageError::Io {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })?
            }
        }
    }

    /// The last flush on a clean stop. Shared counters that Redis does not take are written
    /// to `<data_dir>/usage-unsent-<replica>.json` and sent by the next start.
    pub async fn close(self: &Arc<Self>) -> Result<(), UsageError> {
        match &self.shared {
            Some(s) => {
                let now = self.clock.now();
                s.close(&self.live, &self.names, now).await
            }
            None => self.flush_async().await,
        }
    }

    /// Runs a query: over the archive (embedded), or over Redis after sending this
    /// replica's own counts (shared; other replicas' appear within their
    /// `flush_interval`). With Redis away it fails with [`UsageError::Unavailable`].
    pub async fn query_async(self: &Arc<Self>, q: Query) -> Result<Rows, UsageError> {
        match &self.shared {
            Some(s) => {
                self.flush_async().await?;
                let (names, archive) = s.read(&q).await?;
                query::run(&q, &names, &archive)
            }
            None => {
                let u = Arc::clone(self);
                tokio::task::spawn_blocking(move || u.query(&q))
                    .await
                    .map_err(|e| UsageError::Io {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })?
            }
        }
    }

    /// [`Usage::days_with_data`], from Redis when shared.
    pub async fn days_with_data_async(&self) -> Result<Option<(Date, Date)>, UsageError> {
        match &self.shared {
            Some(s) => s.span().await,
            None => Ok(self.days_with_data()),
        }
    }

    /// The buffer of shared counters (`None` when embedded), for `/metrics`.
    pub fn shared_stats(&self) -> Option<SharedStats> {
        self.shared.as_ref().map(shared::Shared::stats)
    }

    /// Whether the counts are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// This replica's id in Redis (`None` when embedded).
    pub fn replica(&self) -> Option<&str> {
        self.shared.as_ref().map(shared::Shared::replica)
    }

    /// For tests: sends the last batch Redis confirmed again, as a replica does when the
    /// answer was lost; Redis must ignore it. Whether there was one to send.
    #[doc(hidden)]
    pub async fn resend_last_batch(&self) -> Result<bool, UsageError> {
        match &self.shared {
            Some(s) => s.resend_last().await,
            None => Ok(false),
        }
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

impl DayCache {
    fn at(now: Timestamp) -> Self {
        let day = policy::oslo_today(now);
        let tz = policy::oslo();
        let midnight = |d: Date| tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()));
        // Should the zone database fail, an empty span sends every call back here.
        let start = midnight(day).unwrap_or(now);
        let end = day
            .tomorrow()
            .ok()
            .and_then(|d| midnight(d).ok())
            .unwrap_or(now);
        DayCache { start, end, day }
    }
}

#[cfg(test)]
mod tests;
