//! A replica's session cache in front of a shared store, so that a proxied request does not
//! wait for Redis each time, with two bounds:
//!
//! - **Fresh for [`FRESH`] (5 s).** A session read from the store within the last 5 s is
//!   served from memory; after that the store is asked again. So a logout on another
//!   replica (which deletes the session in the store) is honoured here within 5 s, and a
//!   logout on this replica evicts the entry at once. The idle deadline in the store is
//!   moved forward only when the store is asked, so it may lag by up to 5 s; with a 2-hour
//!   idle timeout that is nothing.
//! - **Stale if the store fails, for [`STALE_IF_ERROR`] (5 min).** When the store does not
//!   answer, a session read from it within the last 5 minutes is still served, and counted
//!   (`portvakt_store_stale_sessions_total`), so patrons already inside a service keep
//!   working through a short Redis outage. Nothing else is served from the cache: logins,
//!   tickets and logouts need the store and fail with a clear page while it is down. A
//!   logout made elsewhere during an outage cannot reach the store at all; it fails and says
//!   so, rather than pretend. The one gap: a logout made on another replica in the last
//!   seconds before Redis went away, which this replica had no chance to see, is not known
//!   here during the outage, so this replica may serve that session for up to the stale
//!   bound. That is the price of riding out an outage ([`CachedStore::with_bounds`] with
//!   `stale_if_error` equal to `fresh` would not pay it; the gateway uses 5 s and 5 min).
//!
//! Neither bound lets a session outlive its own deadlines: an entry is served only before
//! the idle and absolute deadlines the store last reported. The emergency brake is not
//! cached at all: the cache holds who the patron is, and the decision is taken with the
//! current policy on every request.
//!
//! Freshness is judged by the `now` the caller passes (so tests move time without
//! sleeping); an entry from the future (the clock stepped back) is not fresh.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rustc_hash::FxHashMap;

use super::{LiveSession, Store, StoreCounters, StoreFuture, redis::RedisConn};
use crate::session::{SessionData, SessionId, Ticket, TicketKind};

/// How long a session read from the store is served from memory.
pub const FRESH: Duration = Duration::from_secs(5);
/// How long a session read from the store may be served while the store does not answer.
pub const STALE_IF_ERROR: Duration = Duration::from_secs(5 * 60);
/// Most sessions cached on one replica; past it, entries too old even for stale use go
/// first, then everything (it is only a cache).
pub const MAX_ENTRIES: usize = 100_000;

struct Entry {
    live: LiveSession,
    read_at: Timestamp,
}

impl Entry {
    /// Read from the store no more than `age` before `now`, and not after it.
    fn younger_than(&self, age: Duration, now: Timestamp) -> bool {
        let age = SignedDuration::try_from(age).unwrap_or(SignedDuration::MAX);
        self.read_at <= now && now.duration_since(self.read_at) < age
    }

    fn servable(&self, age: Duration, now: Timestamp) -> bool {
        self.younger_than(age, now) && now < self.live.until()
    }
}

/// A [`Store`] with a per-replica session cache in front (see the module docs).
pub struct CachedStore {
    inner: Arc<dyn Store>,
    // FxHash, not SipHash: every key in here was made by the gateway (SHA-256 of a random
    // id), so a client cannot pick keys that collide; a client's key is only looked up.
    sessions: Mutex<FxHashMap<[u8; 32], Entry>>,
    fresh: Duration,
    stale_if_error: Duration,
    max_entries: usize,
}

impl fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("cached", &self.lock().len())
            .finish()
    }
}

impl CachedStore {
    /// With the documented bounds.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self::with_bounds(inner, FRESH, STALE_IF_ERROR, MAX_ENTRIES)
    }

    pub fn with_bounds(
        inner: Arc<dyn Store>,
        fresh: Duration,
        stale_if_error: Duration,
        max_entries: usize,
    ) -> Self {
        Self {
            inner,
            sessions: Mutex::new(FxHashMap::default()),
            fresh,
            stale_if_error: stale_if_error.max(fresh),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FxHashMap<[u8; 32], Entry>> {
        // Single inserts and removes: a panic elsewhere leaves the map whole.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sessions held now; for tests.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn remember(&self, key: [u8; 32], live: LiveSession, now: Timestamp) {
        let mut map = self.lock();
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            let stale = self.stale_if_error;
            map.retain(|_, e| e.servable(stale, now));
            if map.len() >= self.max_entries {
                map.clear();
            }
        }
        map.insert(key, Entry { live, read_at: now });
    }

    async fn touch(
        &self,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<Option<LiveSession>, super::StoreError> {
        let key = id.lookup_key();
        if let Some(e) = self.lock().get(&key)
            && e.servable(self.fresh, now)
        {
            return Ok(Some(e.live.clone()));
        }
        match self.inner.touch_session(id, now).await {
            Ok(Some(live)) => {
                self.remember(key, live.clone(), now);
                Ok(Some(live))
            }
            Ok(None) => {
                self.lock().remove(&key);
                Ok(None)
            }
            Err(e) => {
                let stale = self
                    .lock()
                    .get(&key)
                    .filter(|e| e.servable(self.stale_if_error, now))
                    .map(|e| e.live.clone());
                match stale {
                    Some(live) => {
                        if let Some(c) = self.inner.counters() {
                            c.stale();
                        }
                        tracing::debug!(error = %e, "store not answering: session served from this replica's cache");
                        Ok(Some(live))
                    }
                    None => Err(e),
                }
            }
        }
    }
}

impl Store for CachedStore {
    fn create_session(
        &self,
        data: SessionData,
        ttl_idle: Duration,
        ttl_absolute: Duration,
        now: Timestamp,
    ) -> StoreFuture<'_, SessionId> {
        self.inner.create_session(data, ttl_idle, ttl_absolute, now)
    }

    fn touch_session<'a>(
        &'a self,
        id: &'a SessionId,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<LiveSession>> {
        Box::pin(self.touch(id, now))
    }

    fn delete_session<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        // Gone here at once, whether or not the store takes the delete.
        self.lock().remove(&id.lookup_key());
        self.inner.delete_session(id)
    }

    fn put_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        value: Vec<u8>,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreFuture<'a, ()> {
        self.inner.put_ticket(kind, ticket, value, ttl, now)
    }

    fn take_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.inner.take_ticket(kind, ticket, now)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }

    fn counters(&self) -> Option<&StoreCounters> {
        self.inner.counters()
    }

    fn redis(&self) -> Option<RedisConn> {
        self.inner.redis()
    }
}
