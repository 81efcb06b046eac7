//! The in-process store: sessions and tickets in hash maps behind one mutex.
//!
//! For a single replica (the default, and `portvakt demo`). Entries are keyed by the SHA-256
//! of their id ([`SessionId::lookup_key`]), never the id itself. Expired entries go three
//! ways, so memory stays bounded by the live entries without relying on any one of them:
//! lazily, when a lookup finds one; in a full sweep whenever the maps have doubled since the
//! last one (amortized O(1) per insert); and by [`MemoryStore::spawn_sweeper`] on a timer,
//! so an idle gateway lets go of memory too. The mutex is never held across an `.await`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use rustc_hash::FxHashMap;

use super::{Clock, LiveSession, Store, StoreError, StoreFuture, deadline};
use crate::session::{SessionData, SessionId, Ticket, TicketKind};

/// Below this many entries no full sweep is triggered by inserts: sweeping a small map buys
/// nothing, and the timer sweeps it anyway.
const MIN_SWEEP_AT: usize = 1024;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

struct Inner {
    // FxHash, not SipHash: every key in here was made by the gateway (SHA-256 of a random
    // id), so a client cannot pick keys that collide; a client's key is only looked up.
    sessions: FxHashMap<[u8; 32], SessionEntry>,
    tickets: FxHashMap<(TicketKind, [u8; 32]), TicketEntry>,
    /// Entry count at which the next insert sweeps everything first.
    sweep_at: usize,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            sessions: FxHashMap::default(),
            tickets: FxHashMap::default(),
            sweep_at: MIN_SWEEP_AT,
        }
    }
}

struct SessionEntry {
    data: Arc<SessionData>,
    ttl_idle: Duration,
    idle_until: Timestamp,
    absolute_until: Timestamp,
}

impl SessionEntry {
    fn live_at(&self, now: Timestamp) -> bool {
        now < self.idle_until && now < self.absolute_until
    }
}

struct TicketEntry {
    value: Vec<u8>,
    until: Timestamp,
}

impl Inner {
    fn len(&self) -> usize {
        self.sessions.len() + self.tickets.len()
    }

    fn sweep(&mut self, now: Timestamp) -> usize {
        let before = self.len();
        self.sessions.retain(|_, e| e.live_at(now));
        self.tickets.retain(|_, e| now < e.until);
        self.sweep_at = (self.len() * 2).max(MIN_SWEEP_AT);
        before - self.len()
    }

    fn before_insert(&mut self, now: Timestamp) {
        if self.len() >= self.sweep_at {
            self.sweep(now);
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent (single inserts and removes),
        // so a panic elsewhere while holding the lock leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every entry expired at `now`; returns how many went.
    pub fn sweep(&self, now: Timestamp) -> usize {
        self.lock().sweep(now)
    }

    /// Live and not yet swept entries, sessions and tickets together.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sweeps every `every` on the Tokio runtime. The task holds only a weak reference and
    /// ends by itself once the store is dropped.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        clock: Arc<dyn Clock>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { break };
                store.sweep(clock.now());
            }
        })
    }

    fn create_now(
        &self,
        data: SessionData,
        ttl_idle: Duration,
        ttl_absolute: Duration,
        now: Timestamp,
    ) -> Result<SessionId, StoreError> {
        let absolute_until = deadline(now, ttl_absolute);
        let entry = SessionEntry {
            data: Arc::new(data),
            ttl_idle,
            idle_until: deadline(now, ttl_idle).min(absolute_until),
            absolute_until,
        };
        let mut inner = self.lock();
        inner.before_insert(now);
        // 256 random bits do not collide; the loop is there so that a broken random
        // source shows up as two ids, never as one patron in another's session.
        loop {
            let id = SessionId::generate()?;
            if let std::collections::hash_map::Entry::Vacant(slot) =
                inner.sessions.entry(id.lookup_key())
            {
                slot.insert(entry);
                return Ok(id);
            }
        }
    }

    fn get_now(&self, id: &SessionId, now: Timestamp) -> Option<LiveSession> {
        let key = id.lookup_key();
        let mut inner = self.lock();
        let entry = inner.sessions.get_mut(&key)?;
        if !entry.live_at(now) {
            inner.sessions.remove(&key);
            return None;
        }
        // Never earlier than it was: a request stamped a moment late (another replica's
        // clock, a slow handler) must not shorten the session.
        entry.idle_until = deadline(now, entry.ttl_idle)
            .min(entry.absolute_until)
            .max(entry.idle_until);
        Some(LiveSession {
            data: Arc::clone(&entry.data),
            idle_until: entry.idle_until,
            absolute_until: entry.absolute_until,
        })
    }

    fn put_ticket_now(
        &self,
        kind: TicketKind,
        ticket: &Ticket,
        value: Vec<u8>,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.before_insert(now);
        let key = (kind, ticket.lookup_key());
        if inner.tickets.get(&key).is_some_and(|e| now < e.until) {
            return Err(StoreError::TicketExists { kind });
        }
        inner.tickets.insert(
            key,
            TicketEntry {
                value,
                until: deadline(now, ttl),
            },
        );
        Ok(())
    }

    fn take_ticket_now(
        &self,
        kind: TicketKind,
        ticket: &Ticket,
        now: Timestamp,
    ) -> Option<Vec<u8>> {
        // Removed whether live or expired: either way it is never good again.
        let entry = self.lock().tickets.remove(&(kind, ticket.lookup_key()))?;
        (now < entry.until).then_some(entry.value)
    }
}

/// Counts only: the maps hold people's sessions.
impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryStore")
            .field("sessions", &inner.sessions.len())
            .field("tickets", &inner.tickets.len())
            .finish()
    }
}

impl Store for MemoryStore {
    fn create_session(
        &self,
        data: SessionData,
        ttl_idle: Duration,
        ttl_absolute: Duration,
        now: Timestamp,
    ) -> StoreFuture<'_, SessionId> {
        Box::pin(std::future::ready(self.create_now(
            data,
            ttl_idle,
            ttl_absolute,
            now,
        )))
    }

    fn touch_session<'a>(
        &'a self,
        id: &'a SessionId,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<LiveSession>> {
        Box::pin(std::future::ready(Ok(self.get_now(id, now))))
    }

    fn delete_session<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        self.lock().sessions.remove(&id.lookup_key());
        Box::pin(std::future::ready(Ok(())))
    }

    fn put_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        value: Vec<u8>,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(
            self.put_ticket_now(kind, ticket, value, ttl, now),
        ))
    }

    fn take_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(Ok(
            self.take_ticket_now(kind, ticket, now)
        )))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use crate::session::LoginMethod;
    use policy::ids::{InstitutionId, SubjectKey};
    use policy::subject::{Affiliation, Age, Subject};

    const MIN: Duration = Duration::from_secs(60);

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn data() -> SessionData {
        let subject = Subject {
            key: SubjectKey::new("card:NO-2390700:12345"),
            affiliation: Affiliation::Patron,
            institutions: vec![InstitutionId::from("NO-2390700")],
            age: Age::BirthYear(2001),
        };
        SessionData::new(&subject, LoginMethod::Card, t0()).unwrap()
    }

    fn store() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    #[tokio::test]
    async fn idle_sessions_expire_and_use_keeps_them_alive() {
        let store = store();
        let clock = ManualClock::new(t0());
        let id = store
            .create_session(data(), 30 * MIN, 12 * 60 * MIN, clock.now())
            .await
            .unwrap();

        // Used every 29 minutes for two hours: still there.
        for _ in 0..4 {
            clock.advance(29 * MIN);
            assert!(store.get_session(&id, clock.now()).await.unwrap().is_some());
        }
        // Then left alone for exactly the idle time: gone, and gone for good.
        clock.advance(30 * MIN);
        assert_eq!(store.get_session(&id, clock.now()).await.unwrap(), None);
        clock.set(t0());
        assert_eq!(store.get_session(&id, clock.now()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn absolute_expiry_ends_even_a_busy_session() {
        let store = store();
        let clock = ManualClock::new(t0());
        let id = store
            .create_session(data(), 30 * MIN, 60 * MIN, clock.now())
            .await
            .unwrap();
        for _ in 0..5 {
            clock.advance(10 * MIN);
            assert!(store.get_session(&id, clock.now()).await.unwrap().is_some());
        }
        // 59 minutes: one more touch, but it cannot carry the session past 60.
        clock.advance(9 * MIN);
        assert!(store.get_session(&id, clock.now()).await.unwrap().is_some());
        clock.advance(MIN);
        assert_eq!(store.get_session(&id, clock.now()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn sessions_round_trip_and_delete() {
        let store = store();
        let d = data();
        let id = store
            .create_session(d.clone(), 30 * MIN, 60 * MIN, t0())
            .await
            .unwrap();
        let other = store
            .create_session(d.clone(), 30 * MIN, 60 * MIN, t0())
            .await
            .unwrap();
        assert_ne!(id, other);
        assert_eq!(
            store.get_session(&id, t0()).await.unwrap(),
            Some(Arc::new(d.clone()))
        );
        store.delete_session(&id).await.unwrap();
        store.delete_session(&id).await.unwrap();
        assert_eq!(store.get_session(&id, t0()).await.unwrap(), None);
        assert_eq!(
            store.get_session(&other, t0()).await.unwrap(),
            Some(Arc::new(d))
        );
        // An id the store never issued finds nothing.
        let forged = SessionId::generate().unwrap();
        assert_eq!(store.get_session(&forged, t0()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn tickets_are_single_use_and_kept_apart_by_kind() {
        let store = store();
        let t = Ticket::generate().unwrap();
        store
            .put_ticket(TicketKind::ProxyEntry, &t, b"v".to_vec(), MIN, t0())
            .await
            .unwrap();
        // Another kind with the same value is another ticket.
        assert_eq!(
            store
                .take_ticket(TicketKind::OidcCode, &t, t0())
                .await
                .unwrap(),
            None
        );
        let again = store
            .put_ticket(TicketKind::ProxyEntry, &t, b"w".to_vec(), MIN, t0())
            .await;
        assert!(matches!(again, Err(StoreError::TicketExists { .. })));

        assert_eq!(
            store
                .take_ticket(TicketKind::ProxyEntry, &t, t0())
                .await
                .unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(
            store
                .take_ticket(TicketKind::ProxyEntry, &t, t0())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn tickets_expire() {
        let store = store();
        let t = Ticket::generate().unwrap();
        store
            .put_ticket(TicketKind::ProxyEntry, &t, b"v".to_vec(), MIN, t0())
            .await
            .unwrap();
        let late = deadline(t0(), MIN);
        assert_eq!(
            store
                .take_ticket(TicketKind::ProxyEntry, &t, late)
                .await
                .unwrap(),
            None
        );
        // The expired take removed it, so rewinding the clock does not bring it back.
        assert_eq!(
            store
                .take_ticket(TicketKind::ProxyEntry, &t, t0())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn json_tickets_round_trip() {
        let store = store();
        let t = Ticket::generate().unwrap();
        let value = ("pressreader".to_owned(), 7u32);
        store
            .put_ticket_json(TicketKind::OidcCode, &t, &value, MIN, t0())
            .await
            .unwrap();
        let back: Option<(String, u32)> = store
            .take_ticket_json(TicketKind::OidcCode, &t, t0())
            .await
            .unwrap();
        assert_eq!(back, Some(value));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takes_get_one_value() {
        let store = store();
        let t = Arc::new(Ticket::generate().unwrap());
        store
            .put_ticket(TicketKind::OidcCode, &t, b"code".to_vec(), MIN, t0())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, t) = (store.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .take_ticket(TicketKind::OidcCode, &t, t0())
                    .await
                    .unwrap()
            }));
        }
        let mut got = 0;
        for task in tasks {
            got += usize::from(task.await.unwrap().is_some());
        }
        assert_eq!(got, 1);
    }

    #[tokio::test]
    async fn expired_entries_do_not_pile_up() {
        let store = MemoryStore::new();
        let mut now = t0();
        // Each round's sessions and tickets are expired by the next round: the sweeps on
        // insert keep the maps near one round's worth, not ten.
        for _ in 0..10 {
            for _ in 0..MIN_SWEEP_AT {
                store.create_session(data(), MIN, MIN, now).await.unwrap();
                let t = Ticket::generate().unwrap();
                store
                    .put_ticket(TicketKind::ProxyEntry, &t, Vec::new(), MIN, now)
                    .await
                    .unwrap();
            }
            now = deadline(now, MIN);
        }
        assert!(store.len() <= 4 * MIN_SWEEP_AT, "{} entries", store.len());
        // A sweep when all has expired leaves nothing.
        store.sweep(now);
        assert!(store.is_empty());
    }

    #[test]
    fn debug_shows_counts_only() {
        let store = MemoryStore::new();
        let dbg = format!("{store:?}");
        assert_eq!(dbg, "MemoryStore { sessions: 0, tickets: 0 }");
    }

    #[tokio::test]
    async fn the_sweeper_stops_when_the_store_is_dropped() {
        let store = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let task = store.spawn_sweeper(clock, Duration::from_millis(1));
        drop(store);
        // The next tick finds no store and the task returns; no sleep needed to know.
        task.await.unwrap();
    }
}
