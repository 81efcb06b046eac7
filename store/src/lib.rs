//! The shared state of the gateway: sessions and single-use tickets, behind one [`Store`].
//!
//! Whatever one replica writes here, every other replica must see: a patron logs in on one
//! replica and their next request lands on another. The default is [`memory::MemoryStore`]
//! (one process); [`redis::RedisStore`] shares the same trait between replicas (behind each
//! replica's [`cache::CachedStore`]), so every value is serializable and every expiry is a
//! deadline the store itself enforces.
//!
//! Time is passed in (`now`) rather than read inside the store, so idle and absolute expiry
//! are tested with a [`ManualClock`] and no sleeping; the caller reads `now` from its
//! [`Clock`] once per request and uses it for the store and the decision alike.

pub mod cache;
pub mod memory;
pub mod redis;
pub mod session;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::session::{SessionData, SessionError, SessionId, Ticket, TicketKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Tickets are random 256-bit values, so this is a bug in the caller (a ticket put
    /// twice), never bad luck.
    #[error("a live {} ticket with this value already exists", kind.as_str())]
    TicketExists { kind: TicketKind },
    #[error("cannot encode or decode a stored value: {0}")]
    Encoding(#[from] serde_json::Error),
    /// The backend could not be reached, did not answer in time, or answered with an error.
    #[error("the {backend} store is not answering: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
}

/// What the store methods return: boxed, so `Store` is usable as `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Sessions and tickets shared between replicas.
///
/// Sessions have two deadlines: idle (pushed forward by every `get_session`) and absolute
/// (fixed at creation). A session is gone at the earlier of the two; `now` equal to a
/// deadline is already past it.
pub trait Store: Send + Sync + fmt::Debug {
    /// Keeps `data` under a new random id. Idle expiry `now + ttl_idle`, absolute expiry
    /// `now + ttl_absolute`. The caller must delete the session the browser came with, if
    /// any (see `session.rs` on fixation).
    fn create_session(
        &self,
        data: SessionData,
        ttl_idle: Duration,
        ttl_absolute: Duration,
        now: Timestamp,
    ) -> StoreFuture<'_, SessionId>;

    /// The session if it is live at `now`, with its deadlines after its idle deadline was
    /// moved to `now + ttl_idle` (never past the absolute one, never earlier than it was).
    /// An expired session is removed.
    fn touch_session<'a>(
        &'a self,
        id: &'a SessionId,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<LiveSession>>;

    /// [`Store::touch_session`], the data only.
    fn get_session<'a>(
        &'a self,
        id: &'a SessionId,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<Arc<SessionData>>> {
        Box::pin(async move { Ok(self.touch_session(id, now).await?.map(|l| l.data)) })
    }

    /// Ends the session; deleting a missing one is not an error (logout twice is fine).
    fn delete_session<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()>;

    /// Keeps `value` under `(kind, ticket)` until `now + ttl`. Refuses to replace a live
    /// ticket ([`StoreError::TicketExists`]).
    fn put_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        value: Vec<u8>,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreFuture<'a, ()>;

    /// The ticket's value if it is live at `now`, removed in the same step: of two
    /// concurrent takes of one ticket, at most one gets the value.
    fn take_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Whether the store answers, for `/readyz`.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// The store's trouble counters, for `/metrics`; `None` for a store that cannot fail.
    fn counters(&self) -> Option<&StoreCounters> {
        None
    }

    /// The Redis connection when the store is Redis, so the login throttle and the
    /// per-person rate limits are shared between replicas through it as well.
    fn redis(&self) -> Option<redis::RedisConn> {
        None
    }
}

/// A live session as the store holds it: the data and when it ends at the latest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSession {
    /// Shared, not copied: a proxied request reads the session of every page view, and
    /// the memory store and the session cache hand out the same data each time.
    pub data: Arc<SessionData>,
    /// The idle deadline after this use.
    pub idle_until: Timestamp,
    /// The absolute deadline, fixed at login.
    pub absolute_until: Timestamp,
}

impl LiveSession {
    /// The earlier of the two deadlines.
    pub fn until(&self) -> Timestamp {
        self.idle_until.min(self.absolute_until)
    }
}

/// Counts of what went wrong with a shared store since start (label-free: no person, no
/// key). Shared by everything that talks to the same backend.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Operations that failed: unreachable, timed out, or an error answer.
    pub errors: AtomicU64,
    /// Requests served from a replica's session cache because the store did not answer.
    pub stale_sessions: AtomicU64,
}

impl StoreCounters {
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stale(&self) {
        self.stale_sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn stale_sessions(&self) -> u64 {
        self.stale_sessions.load(Ordering::Relaxed)
    }
}

impl dyn Store {
    /// [`Store::put_ticket`] with a value serialized as JSON.
    pub async fn put_ticket_json<T: Serialize + ?Sized>(
        &self,
        kind: TicketKind,
        ticket: &Ticket,
        value: &T,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        self.put_ticket(kind, ticket, bytes, ttl, now).await
    }

    /// [`Store::take_ticket`] with a value deserialized from JSON.
    pub async fn take_ticket_json<T: DeserializeOwned>(
        &self,
        kind: TicketKind,
        ticket: &Ticket,
        now: Timestamp,
    ) -> Result<Option<T>, StoreError> {
        match self.take_ticket(kind, ticket, now).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }
}

/// `now + ttl`, saturating: a TTL too large for a timestamp means "never", not a panic.
pub fn deadline(now: Timestamp, ttl: Duration) -> Timestamp {
    SignedDuration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Where the gateway reads the time. Injected so tests decide what "now" is.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to: for tests and demos of expiry.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(at: Timestamp) -> Self {
        Self(Mutex::new(at))
    }

    pub fn set(&self, at: Timestamp) {
        // A poisoned lock still holds a valid timestamp: nothing can be half-written.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now = deadline(*now, by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
