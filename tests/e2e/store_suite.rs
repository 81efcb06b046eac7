//! One behaviour suite for every store: the memory store, the Redis store, and the Redis
//! store behind a replica's session cache, each against the same expectations. Redis is a
//! real `redis-server` started here on a free port. Time is the `now` passed in (the Redis
//! scripts compare deadlines with it, as the memory store does), so expiry is tested
//! without sleeping; the suite starts at the real time, so the deadlines Redis itself
//! enforces (PEXPIREAT) lie ahead and never interfere.
//!
//! After the suite: what is particular to Redis (its own expiry, what its keys and values
//! hold), several replicas (logout seen within the cache's 5 s), the shared login throttle
//! and rate limit, and a Redis that stops and comes back.

#![cfg(test)]

use crate::support::redis as redis_server;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use gateway::auth::throttle::shared::SharedThrottle;
use gateway::auth::throttle::{Throttle, ThrottleError, ThrottleSettings};
use jiff::Timestamp;
use policy::ids::{InstitutionId, SubjectKey};
use policy::subject::{Affiliation, Age, Subject};
use redis_server::RedisServer;
use store::cache::CachedStore;
use store::memory::MemoryStore;
use store::redis::{RedisConn, RedisStore, SharedRate};
use store::session::{LoginMethod, SessionData, SessionId, Ticket, TicketKind};
use store::{Clock, ManualClock, Store, StoreError, deadline};

const MIN: Duration = Duration::from_secs(60);
const CARD: &str = "10017001";

/// One server for the suite's tests (they use random keys); the failure tests start their own.
fn shared_server() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(RedisServer::start)
}

fn t0() -> Timestamp {
    // Whole seconds, so deadlines are whole milliseconds in either store.
    Timestamp::from_second(Timestamp::now().as_second()).unwrap()
}

fn data() -> SessionData {
    let subject = Subject {
        key: SubjectKey::new(format!("card:NO-2390700:{CARD}")),
        affiliation: Affiliation::Patron,
        institutions: vec![InstitutionId::from("NO-2390700")],
        age: Age::BirthYear(2001),
    };
    SessionData::new(&subject, LoginMethod::Card, t0()).unwrap()
}

/// A backend: each call is one more replica's view of the same shared state.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
    CachedRedis,
}

/// Replicas of one backend.
struct Replicas {
    backend: Backend,
    memory: Arc<dyn Store>,
    url: String,
}

impl Replicas {
    fn new(backend: Backend, server: &RedisServer) -> Self {
        Self {
            backend,
            memory: Arc::new(MemoryStore::new()),
            url: server.url(),
        }
    }

    fn replica(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Memory => self.memory.clone(),
            Backend::Redis => Arc::new(RedisStore::new(RedisConn::open(&self.url).unwrap())),
            Backend::CachedRedis => Arc::new(CachedStore::new(Arc::new(RedisStore::new(
                RedisConn::open(&self.url).unwrap(),
            )))),
        }
    }
}

async fn idle_sessions_expire_and_use_keeps_them_alive(r: Replicas) {
    let store = r.replica();
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

async fn absolute_expiry_ends_even_a_busy_session(r: Replicas) {
    let store = r.replica();
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
    let live = store
        .touch_session(&id, clock.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.absolute_until, deadline(t0(), 60 * MIN));
    assert_eq!(live.idle_until, live.absolute_until);
    clock.advance(MIN);
    assert_eq!(store.get_session(&id, clock.now()).await.unwrap(), None);
}

async fn deadlines_are_reported_and_idle_never_moves_back(r: Replicas) {
    let store = r.replica();
    let id = store
        .create_session(data(), 30 * MIN, 8 * 60 * MIN, t0())
        .await
        .unwrap();
    let at = deadline(t0(), 10 * MIN);
    let live = store.touch_session(&id, at).await.unwrap().unwrap();
    assert_eq!(live.idle_until, deadline(at, 30 * MIN));
    assert_eq!(live.absolute_until, deadline(t0(), 8 * 60 * MIN));
    // A use stamped earlier (another replica's clock a moment behind) does not shorten it.
    let other = r.replica();
    let live = other
        .touch_session(&id, deadline(t0(), 9 * MIN))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.idle_until, deadline(at, 30 * MIN));
}

async fn sessions_round_trip_and_delete(r: Replicas) {
    let store = r.replica();
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
    // Another replica sees it too.
    assert_eq!(
        r.replica().get_session(&id, t0()).await.unwrap(),
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

async fn tickets_are_single_use_and_kept_apart_by_kind(r: Replicas) {
    let store = r.replica();
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
    // Taken on another replica: once.
    let other = r.replica();
    assert_eq!(
        other
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

async fn tickets_expire_and_an_expired_one_may_be_replaced(r: Replicas) {
    let store = r.replica();
    let t = Ticket::generate().unwrap();
    store
        .put_ticket(TicketKind::ProxyEntry, &t, b"v".to_vec(), MIN, t0())
        .await
        .unwrap();
    let late = deadline(t0(), MIN);
    store
        .put_ticket(TicketKind::ProxyEntry, &t, b"w".to_vec(), MIN, late)
        .await
        .unwrap();
    let later = deadline(late, MIN);
    assert_eq!(
        store
            .take_ticket(TicketKind::ProxyEntry, &t, later)
            .await
            .unwrap(),
        None
    );
    // The expired take removed it, so rewinding the clock does not bring it back.
    assert_eq!(
        store
            .take_ticket(TicketKind::ProxyEntry, &t, late)
            .await
            .unwrap(),
        None
    );
}

async fn json_tickets_round_trip(r: Replicas) {
    let store = r.replica();
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

async fn concurrent_takes_on_replicas_get_one_value(r: Replicas) {
    let store = r.replica();
    for _ in 0..20 {
        let t = Arc::new(Ticket::generate().unwrap());
        store
            .put_ticket(TicketKind::OidcCode, &t, b"code".to_vec(), MIN, t0())
            .await
            .unwrap();
        // Two replicas, each taking from its own task at once.
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (replica, t) = (r.replica(), t.clone());
            tasks.push(tokio::spawn(async move {
                replica
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
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Replicas::new(super::Backend::Memory, super::shared_server())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Replicas::new(super::Backend::Redis, super::shared_server())).await;
                }
            )*
        }
        mod cached_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Replicas::new(super::Backend::CachedRedis, super::shared_server())).await;
                }
            )*
        }
    };
}

suite!(
    idle_sessions_expire_and_use_keeps_them_alive,
    absolute_expiry_ends_even_a_busy_session,
    deadlines_are_reported_and_idle_never_moves_back,
    sessions_round_trip_and_delete,
    tickets_are_single_use_and_kept_apart_by_kind,
    tickets_expire_and_an_expired_one_may_be_replaced,
    json_tickets_round_trip,
    concurrent_takes_on_replicas_get_one_value,
);

fn redis_store(server: &RedisServer) -> Arc<dyn Store> {
    Arc::new(RedisStore::new(RedisConn::open(&server.url()).unwrap()))
}

fn session_key(id: &SessionId) -> String {
    let hex: String = id.lookup_key().iter().map(|b| format!("{b:02x}")).collect();
    format!("portvakt:session:{hex}")
}

fn integer(reply: &str) -> i64 {
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("not an integer reply: {reply:?}"))
}

#[tokio::test]
async fn redis_enforces_the_deadlines_itself() {
    let server = shared_server();
    let store = redis_store(server);
    let id = store
        .create_session(data(), 30 * MIN, 60 * MIN, t0())
        .await
        .unwrap();
    let key = session_key(&id);
    let ms = |t: Timestamp| t.as_millisecond();
    // The key expires at the idle deadline, in Redis's own clock.
    assert_eq!(
        integer(&server.command(&format!("PEXPIRETIME {key}"))),
        ms(deadline(t0(), 30 * MIN))
    );
    // A use moves it forward, but never past the absolute deadline.
    store
        .get_session(&id, deadline(t0(), 20 * MIN))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        integer(&server.command(&format!("PEXPIRETIME {key}"))),
        ms(deadline(t0(), 50 * MIN))
    );
    store
        .get_session(&id, deadline(t0(), 45 * MIN))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        integer(&server.command(&format!("PEXPIRETIME {key}"))),
        ms(deadline(t0(), 60 * MIN))
    );

    // With real time, Redis drops what nobody reads again: a 200 ms session is gone
    // without any replica touching it (generous bound: 10 s).
    let id = store
        .create_session(data(), Duration::from_millis(200), MIN, Timestamp::now())
        .await
        .unwrap();
    let key = session_key(&id);
    let t = Ticket::generate().unwrap();
    store
        .put_ticket(
            TicketKind::ProxyEntry,
            &t,
            b"x".to_vec(),
            Duration::from_millis(200),
            Timestamp::now(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let left = server
            .keys()
            .into_iter()
            .filter(|k| *k == key || k.starts_with("portvakt:ticket:proxy_entry:"));
        if left.count() == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Redis kept expired keys"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_holds_no_id_and_no_more_than_the_memory_store() {
    let server = RedisServer::start();
    let store = redis_store(&server);
    let d = data();
    let id = store
        .create_session(d.clone(), 30 * MIN, 60 * MIN, t0())
        .await
        .unwrap();
    let t = Ticket::generate().unwrap();
    store
        .put_ticket_json(
            TicketKind::ProxyEntry,
            &t,
            &("session", id.expose()),
            MIN,
            t0(),
        )
        .await
        .unwrap();
    let keys = server.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("portvakt:"), "{k}");
        assert!(!k.contains(&id.expose()) && !k.contains(&t.expose()), "{k}");
        assert!(!k.contains(CARD), "{k}");
    }
    // The session's value is the SessionData as the memory store keeps it, and deadlines.
    let dump = server.command(&format!("HGETALL {}", session_key(&id)));
    assert!(!dump.contains(&id.expose()), "no id in the value");
    let fields: Vec<&str> = dump
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .collect();
    let mut names: Vec<&str> = fields.iter().step_by(2).copied().collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "d", "i", "u"]);
    let at = fields.iter().position(|f| *f == "d").unwrap();
    let stored: SessionData = serde_json::from_str(fields[at + 1]).unwrap();
    assert_eq!(stored, d);
}

#[tokio::test]
async fn a_logout_on_one_replica_is_seen_on_another_within_five_seconds() {
    let server = shared_server();
    let a = CachedStore::new(redis_store(server));
    let b = CachedStore::new(redis_store(server));
    let now = t0();
    let id = a
        .create_session(data(), 30 * MIN, 60 * MIN, now)
        .await
        .unwrap();
    assert!(a.get_session(&id, now).await.unwrap().is_some());
    assert!(b.get_session(&id, now).await.unwrap().is_some());
    // Logged out through A: gone on A at once.
    a.delete_session(&id).await.unwrap();
    assert_eq!(a.get_session(&id, now).await.unwrap(), None);
    // B may serve it from its cache for under 5 s, never longer.
    let soon = deadline(now, Duration::from_millis(4900));
    let _maybe = b.get_session(&id, soon).await.unwrap();
    let five = deadline(now, Duration::from_secs(5));
    assert_eq!(b.get_session(&id, five).await.unwrap(), None);
    // A cache entry from "the future" (the clock stepped back) is not trusted either.
    let id = a
        .create_session(data(), 30 * MIN, 60 * MIN, now)
        .await
        .unwrap();
    assert!(b.get_session(&id, now).await.unwrap().is_some());
    a.delete_session(&id).await.unwrap();
    let earlier = Timestamp::from_second(now.as_second() - 1).unwrap();
    assert_eq!(b.get_session(&id, earlier).await.unwrap(), None);
}

#[tokio::test]
async fn a_stopped_redis_fails_clearly_serves_cached_sessions_a_while_and_comes_back() {
    let mut server = RedisServer::start();
    let store = CachedStore::new(redis_store(&server));
    let now = t0();
    let id = store
        .create_session(data(), 2 * 60 * MIN, 8 * 60 * MIN, now)
        .await
        .unwrap();
    assert!(store.get_session(&id, now).await.unwrap().is_some());
    store.ping().await.unwrap();

    server.stop();
    assert!(store.ping().await.is_err());
    // New sessions and tickets fail; nothing passes silently.
    let created = store.create_session(data(), MIN, MIN, now).await;
    assert!(
        matches!(
            created,
            Err(StoreError::Unavailable {
                backend: "redis",
                ..
            })
        ),
        "{created:?}"
    );
    let t = Ticket::generate().unwrap();
    assert!(
        store
            .put_ticket(TicketKind::ProxyEntry, &t, vec![], MIN, now)
            .await
            .is_err()
    );
    assert!(
        store
            .take_ticket(TicketKind::ProxyEntry, &t, now)
            .await
            .is_err()
    );
    // A session read within the last 5 minutes is still served (stale, and counted)...
    let counters = store.counters().unwrap();
    let errors = counters.errors();
    assert!(errors >= 3, "{errors}");
    let later = deadline(now, 4 * MIN);
    assert!(store.get_session(&id, later).await.unwrap().is_some());
    assert_eq!(counters.stale_sessions(), 1);
    assert!(counters.errors() > errors);
    // ...but not one the cache has never seen, and not past the stale bound.
    let unknown = SessionId::generate().unwrap();
    assert!(store.get_session(&unknown, later).await.is_err());
    assert!(
        store
            .get_session(&id, deadline(now, 5 * MIN))
            .await
            .is_err()
    );

    // Back on the same port: the connection comes back by itself (within a generous 20 s).
    server.resume();
    let started = Instant::now();
    while store.ping().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This Redis kept nothing (no persistence in the test), so the session is gone now
    // that Redis can say so; new ones work again.
    assert_eq!(store.get_session(&id, later).await.unwrap(), None);
    let id = store.create_session(data(), MIN, MIN, later).await.unwrap();
    assert!(store.get_session(&id, later).await.unwrap().is_some());
}

/// The login throttle's rules through one interface, in-process or shared, at instants
/// given in milliseconds from the start.
trait Throttles {
    async fn check(&self, card: &str, at: u64) -> Result<(), ThrottleError>;
    async fn failed(&self, card: &str, at: u64);
    async fn succeeded(&self, card: &str, at: u64);
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

struct Local(Throttle, Instant);

impl Throttles for Local {
    async fn check(&self, card: &str, at: u64) -> Result<(), ThrottleError> {
        self.0.check(card, IP, self.1 + Duration::from_millis(at))
    }
    async fn failed(&self, card: &str, at: u64) {
        self.0.failed(card, IP, self.1 + Duration::from_millis(at));
    }
    async fn succeeded(&self, card: &str, at: u64) {
        self.0
            .succeeded(card, IP, self.1 + Duration::from_millis(at));
    }
}

/// Several replicas' shared throttles, used in turn: each call goes to the next.
struct Shared(
    Vec<SharedThrottle>,
    std::sync::atomic::AtomicUsize,
    Timestamp,
);

impl Shared {
    fn new(server: &RedisServer, replicas: usize) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let all = (0..replicas)
            .map(|_| {
                SharedThrottle::new(
                    RedisConn::open(&server.url()).unwrap(),
                    &[7; 32],
                    ThrottleSettings::default(),
                    clock.clone(),
                )
            })
            .collect();
        Self(all, Default::default(), t0())
    }
    fn next(&self) -> &SharedThrottle {
        let i = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.0[i % self.0.len()]
    }
    fn at(&self, ms: u64) -> Timestamp {
        deadline(self.2, Duration::from_millis(ms))
    }
}

impl Throttles for Shared {
    async fn check(&self, card: &str, at: u64) -> Result<(), ThrottleError> {
        self.next().check_at(card, IP, self.at(at)).await.unwrap()
    }
    async fn failed(&self, card: &str, at: u64) {
        self.next().failed_at(card, IP, self.at(at)).await.unwrap();
    }
    async fn succeeded(&self, card: &str, at: u64) {
        self.next()
            .succeeded_at(card, IP, self.at(at))
            .await
            .unwrap();
    }
}

async fn fail(t: &impl Throttles, card: &str, at: u64) {
    t.check(card, at).await.unwrap();
    t.failed(card, at).await;
}

async fn throttle_rules(t: impl Throttles) {
    let card = "1234";
    // Three failures free, the fourth try too; then 1 s, 2 s, 4 s…
    for _ in 0..4 {
        fail(&t, card, 0).await;
    }
    assert_eq!(
        t.check(card, 0).await,
        Err(ThrottleError::Slowed {
            retry_after: Duration::from_secs(1)
        })
    );
    assert_eq!(
        t.check(card, 400).await.unwrap_err().retry_after(),
        Duration::from_millis(600)
    );
    let mut now = 1000;
    for expected in [2, 4, 8, 16, 32] {
        fail(&t, card, now).await;
        assert_eq!(
            t.check(card, now).await.unwrap_err().retry_after(),
            Duration::from_secs(expected)
        );
        now += expected * 1000;
    }
    // The tenth failure starts a 15-minute refusal, even for the right PIN.
    fail(&t, card, now).await;
    assert_eq!(
        t.check(card, now).await,
        Err(ThrottleError::Refused {
            retry_after: Duration::from_secs(15 * 60)
        })
    );
    let after = now + 15 * 60 * 1000;
    assert!(t.check(card, after - 1).await.is_err());
    // Once a try is in progress past the free failures, a parallel one waits.
    let other = "5678";
    for _ in 0..3 {
        fail(&t, other, after).await;
    }
    t.check(other, after).await.unwrap();
    assert!(t.check(other, after).await.is_err());
    // A success clears the card.
    t.succeeded(other, after).await;
    for _ in 0..3 {
        fail(&t, other, after).await;
    }
}

#[tokio::test]
async fn the_in_process_throttle_follows_the_rules() {
    throttle_rules(Local(
        Throttle::new([7; 32], ThrottleSettings::default()),
        Instant::now(),
    ))
    .await;
}

#[tokio::test]
async fn the_shared_throttle_follows_the_same_rules_across_three_replicas() {
    throttle_rules(Shared::new(shared_server(), 3)).await;
}

#[tokio::test]
async fn the_shared_throttle_keeps_no_card_or_address_in_redis_and_fails_closed() {
    let mut server = RedisServer::start();
    let t = Shared::new(&server, 1);
    fail(&t, CARD, 0).await;
    let keys = server.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        assert!(k.starts_with("portvakt:throttle:"), "{k}");
        assert!(!k.contains(CARD), "{k}");
        let dump = server.command(&format!("HGETALL {k}"));
        assert!(!dump.contains(CARD) && !dump.contains("192.0.2"), "{dump}");
    }
    server.stop();
    assert!(t.next().check_at(CARD, IP, t.at(0)).await.is_err());
}

/// Three replicas' limiters on one Redis, at a steady 30 attempts a second in all, for
/// 2 minutes of (passed-in) time: what gets through is the configured 60/min with its
/// burst of 60, across all three together.
#[tokio::test]
async fn rate_per_user_holds_across_three_replicas() {
    let server = shared_server();
    let replicas: Vec<SharedRate> = (0..3)
        .map(|_| SharedRate::new(RedisConn::open(&server.url()).unwrap(), &[9; 32]))
        .collect();
    let start = t0();
    let mut allowed = 0u32;
    let mut i = 0;
    let mut ms = 0u64;
    while ms < 120_000 {
        let now = deadline(start, Duration::from_millis(ms));
        if replicas[i % 3]
            .check("avis", 60, MIN, "card:NO-2390700:1", now)
            .await
            .unwrap()
        {
            allowed += 1;
        }
        i += 1;
        ms += 33;
    }
    // Exactly: a burst of 60, then one a second for 120 s.
    let expected = 60.0 + 120.0;
    let got = f64::from(allowed);
    assert!(
        (got - expected).abs() <= expected * 0.1,
        "{allowed} allowed, expected about {expected}"
    );
    // Another person, another service: their own budgets.
    let now = deadline(start, Duration::from_millis(ms));
    assert!(
        replicas[0]
            .check("avis", 60, MIN, "card:NO-2390700:2", now)
            .await
            .unwrap()
    );
    assert!(
        replicas[1]
            .check("filmbib", 60, MIN, "card:NO-2390700:1", now)
            .await
            .unwrap()
    );

    // All at once from three replicas in parallel: exactly the burst gets through.
    let shared: Arc<Vec<SharedRate>> = Arc::new(replicas);
    let at = deadline(start, 10 * 60 * MIN);
    let mut tasks = Vec::new();
    for r in 0..3 {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            for _ in 0..50 {
                if shared[r]
                    .check("burst", 30, MIN, "card:NO-2390700:3", at)
                    .await
                    .unwrap()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 30);
    // No subject key in Redis key names.
    assert!(server.keys().iter().all(|k| !k.contains("card:")));
}
