//! The store in Redis, for several replicas behind one load balancer: sessions, single-use
//! tickets, and (through [`RedisConn`]) the login throttle and the per-person rate limits.
//!
//! One [`RedisConn`] per process: the `redis` crate's connection manager, one multiplexed
//! connection that reconnects by itself after Redis restarts or the network drops (a failed
//! command starts the reconnect; the next one waits for it). Every command is bounded by
//! [`OP_TIMEOUT`], so a Redis that hangs costs a request at most that long, and every
//! failure is counted in [`StoreCounters`] (`portvakt_store_errors_total`).
//!
//! # Keys
//!
//! All under `portvakt:`, and never a person or a replayable id in a key name:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `portvakt:session:<sha256 of id, hex>` | hash | `d` the [`SessionData`] as JSON, `i` idle TTL (ms), `a` absolute deadline, `u` idle deadline (Unix ms) |
//! | `portvakt:ticket:<kind>:<sha256, hex>` | hash | `v` the value, `u` its deadline (Unix ms) |
//! | `portvakt:throttle:<hmac, hex>` | hash | failed-login counters of a card or an address (see `auth/throttle/shared.rs`) |
//! | `portvakt:rate:<hmac, hex>` | string | a person's GCRA state for one service (see [`SharedRate`]) |
//!
//! The session holds what the memory store holds, no more.
//!
//! # Time
//!
//! The caller's `now` decides, as with the memory store: each script compares deadlines
//! with the `now` it is given, so tests move time without sleeping and one behaviour suite
//! runs against both stores. Redis enforces the same deadlines by itself too: every key gets
//! `PEXPIREAT` at its deadline in Unix milliseconds (the idle one for a session, moved
//! forward on each use and never past the absolute one), so nothing outlives its deadline
//! in Redis even if no replica ever reads it again. Replicas' clocks must agree to well
//! within a second (NTP), as the deadlines they write are wall-clock instants.
//!
//! Each operation that reads and writes is one Lua script, so it is atomic across
//! replicas: of two concurrent takes of one ticket, exactly one gets the value.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::Sha256;

use super::{LiveSession, Store, StoreCounters, StoreError, StoreFuture, deadline};
use crate::session::{SessionData, SessionId, Ticket, TicketKind};

/// Every key starts with this.
pub const PREFIX: &str = "portvakt:";
/// The longest one command may take, reconnect included, before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Deadlines are capped here (in the year 2286): 13 digits, so they pass through Lua's
/// numbers and number formatting exactly.
const MAX_MS: i64 = 9_999_999_999_999;

/// The shared connection to Redis: cheap to clone, one per process.
#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    counters: Arc<StoreCounters>,
}

/// The URL may carry a password: never printed.
impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("errors", &self.counters.errors())
            .finish_non_exhaustive()
    }
}

/// A `redis_url` that cannot be used; reported at start, in one line.
#[derive(Debug, thiserror::Error)]
#[error(
    "[store] redis_url is not a usable Redis URL ({reason}); expected redis://HOST:PORT/DB or rediss://…"
)]
pub struct BadUrl {
    reason: String,
}

impl RedisConn {
    /// Checks the URL and sets up the connection without connecting: a Redis that is down
    /// at start leaves the gateway running and not ready (`/readyz` 503) until it answers.
    /// Needs a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, BadUrl> {
        let client = redis::Client::open(url).map_err(|e| BadUrl {
            // The crate's message names the problem, not the URL (which may hold a password).
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            // Few retries inside one reconnect: while Redis is down, commands fail fast
            // (and start the next reconnect) rather than queue behind a long backoff.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250));
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| BadUrl {
                reason: e.to_string(),
            })?;
        Ok(Self {
            manager,
            counters: Arc::default(),
        })
    }

    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// Runs one command or script with the timeout, counting a failure.
    pub async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(OP_TIMEOUT, f(self.manager.clone())).await;
        let message = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", OP_TIMEOUT.as_millis()),
        };
        self.counters.error();
        tracing::debug!(operation = what, error = %message, "redis operation failed");
        Err(StoreError::Unavailable {
            backend: "redis",
            message: format!("{what}: {message}"),
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }
}

/// Unix milliseconds, capped for Lua.
pub fn unix_ms(t: Timestamp) -> i64 {
    t.as_millisecond().clamp(0, MAX_MS)
}

fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(MAX_MS).min(MAX_MS)
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn session_key(id: &SessionId) -> String {
    format!("{PREFIX}session:{}", hex(&id.lookup_key()))
}

fn ticket_key(kind: TicketKind, ticket: &Ticket) -> String {
    format!(
        "{PREFIX}ticket:{}:{}",
        kind.as_str(),
        hex(&ticket.lookup_key())
    )
}

/// Creates a session unless the key exists (a broken random source, never bad luck).
/// KEYS: session. ARGV: data, idle TTL ms, absolute deadline, idle deadline.
const CREATE_SESSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'i', ARGV[2], 'a', ARGV[3], 'u', ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
";

/// The session if live at `now`, its idle deadline moved forward (never past the absolute
/// one, never back); an expired one is deleted. KEYS: session. ARGV: now.
/// Returns nil or {data, idle deadline, absolute deadline}.
const TOUCH_SESSION: &str = r"
local v = redis.call('HMGET', KEYS[1], 'd', 'i', 'a', 'u')
if not v[1] then return false end
local now = tonumber(ARGV[1])
local a = tonumber(v[3])
local u = tonumber(v[4])
if now >= a or now >= u then
  redis.call('DEL', KEYS[1])
  return false
end
local nu = math.max(u, math.min(now + tonumber(v[2]), a))
if nu ~= u then
  local text = string.format('%d', nu)
  redis.call('HSET', KEYS[1], 'u', text)
  redis.call('PEXPIREAT', KEYS[1], text)
end
return {v[1], nu, a}
";

/// Puts a ticket unless a live one has the key. KEYS: ticket. ARGV: value, now, deadline.
const PUT_TICKET: &str = r"
local u = redis.call('HGET', KEYS[1], 'u')
if u and tonumber(u) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'u', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
";

/// Takes a ticket: deleted whether live or not, its value returned only if live at `now`.
/// KEYS: ticket. ARGV: now.
const TAKE_TICKET: &str = r"
local v = redis.call('HMGET', KEYS[1], 'v', 'u')
if not v[1] then return false end
redis.call('DEL', KEYS[1])
if tonumber(ARGV[1]) < tonumber(v[2]) then return v[1] end
return false
";

/// Sessions and tickets in Redis. Use it behind [`super::cache::CachedStore`] in a
/// gateway, so proxied requests are served from the replica's memory most of the time.
pub struct RedisStore {
    conn: RedisConn,
    create: redis::Script,
    touch: redis::Script,
    put: redis::Script,
    take: redis::Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            create: redis::Script::new(CREATE_SESSION),
            touch: redis::Script::new(TOUCH_SESSION),
            put: redis::Script::new(PUT_TICKET),
            take: redis::Script::new(TAKE_TICKET),
        }
    }

    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn create(
        &self,
        data: SessionData,
        ttl_idle: Duration,
        ttl_absolute: Duration,
        now: Timestamp,
    ) -> Result<SessionId, StoreError> {
        let json = serde_json::to_vec(&data)?;
        let absolute = unix_ms(deadline(now, ttl_absolute));
        let idle = unix_ms(deadline(now, ttl_idle)).min(absolute);
        // 256 random bits do not collide; see MemoryStore::create_now for why it loops.
        loop {
            let id = SessionId::generate()?;
            let key = session_key(&id);
            let created: i64 = self
                .conn
                .run("create session", |mut c| {
                    let mut call = self.create.key(&key);
                    call.arg(&json[..])
                        .arg(duration_ms(ttl_idle))
                        .arg(absolute)
                        .arg(idle);
                    async move { call.invoke_async(&mut c).await }
                })
                .await?;
            if created == 1 {
                return Ok(id);
            }
        }
    }

    async fn touch(
        &self,
        id: &SessionId,
        now: Timestamp,
    ) -> Result<Option<LiveSession>, StoreError> {
        let key = session_key(id);
        let found: Option<(Vec<u8>, i64, i64)> = self
            .conn
            .run("read session", |mut c| {
                let mut call = self.touch.key(&key);
                call.arg(unix_ms(now));
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        let Some((json, idle, absolute)) = found else {
            return Ok(None);
        };
        Ok(Some(LiveSession {
            data: Arc::new(serde_json::from_slice(&json)?),
            idle_until: ms_to_timestamp(idle),
            absolute_until: ms_to_timestamp(absolute),
        }))
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        let key = session_key(id);
        self.conn
            .run("delete session", |mut c| async move {
                redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
            })
            .await
            .map(|_| ())
    }

    async fn put_ticket_at(
        &self,
        kind: TicketKind,
        ticket: &Ticket,
        value: Vec<u8>,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let key = ticket_key(kind, ticket);
        let put: i64 = self
            .conn
            .run("put ticket", |mut c| {
                let mut call = self.put.key(&key);
                call.arg(value)
                    .arg(unix_ms(now))
                    .arg(unix_ms(deadline(now, ttl)));
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        if put == 1 {
            Ok(())
        } else {
            Err(StoreError::TicketExists { kind })
        }
    }

    async fn take_ticket_at(
        &self,
        kind: TicketKind,
        ticket: &Ticket,
        now: Timestamp,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = ticket_key(kind, ticket);
        self.conn
            .run("take ticket", |mut c| {
                let mut call = self.take.key(&key);
                call.arg(unix_ms(now));
                async move { call.invoke_async(&mut c).await }
            })
            .await
    }
}

impl Store for RedisStore {
    fn create_session(
        &self,
        data: SessionData,
        ttl_idle: Duration,
        ttl_absolute: Duration,
        now: Timestamp,
    ) -> StoreFuture<'_, SessionId> {
        Box::pin(self.create(data, ttl_idle, ttl_absolute, now))
    }

    fn touch_session<'a>(
        &'a self,
        id: &'a SessionId,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<LiveSession>> {
        Box::pin(self.touch(id, now))
    }

    fn delete_session<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(self.delete(id))
    }

    fn put_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        value: Vec<u8>,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.put_ticket_at(kind, ticket, value, ttl, now))
    }

    fn take_ticket<'a>(
        &'a self,
        kind: TicketKind,
        ticket: &'a Ticket,
        now: Timestamp,
    ) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.take_ticket_at(kind, ticket, now))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.conn.ping())
    }

    fn counters(&self) -> Option<&StoreCounters> {
        Some(self.conn.counters())
    }

    fn redis(&self) -> Option<RedisConn> {
        Some(self.conn.clone())
    }
}

/// A keyed hash for Redis key names: the first 16 bytes of HMAC-SHA256 under a key derived
/// from the session key (shared by all replicas), hex. Card numbers, addresses and subject
/// keys go into Redis key names only through this.
#[derive(Clone)]
pub struct KeyHasher(Hmac<Sha256>);

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<secret>)")
    }
}

impl KeyHasher {
    /// `purpose` separates the uses of one secret (`b"throttle"`, `b"rate"`).
    pub fn new(secret: &[u8; 32], purpose: &[u8]) -> Self {
        // HMAC takes a key of any length, so neither step can fail; the fallbacks keep the
        // types honest without a panic.
        let mut derive = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
        derive.update(b"portvakt-redis-key\0");
        derive.update(purpose);
        let key = derive.finalize().into_bytes();
        Self(
            Hmac::<Sha256>::new_from_slice(&key)
                .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default())),
        )
    }

    /// The hash of the parts, each ended by a zero byte so parts cannot run together.
    pub fn hash(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
            mac.update(b"\0");
        }
        hex(&mac.finalize().into_bytes()[..16])
    }
}

/// GCRA (the generic cell rate algorithm, as `governor` uses in-process): one number per
/// person and service, the theoretical arrival time in Unix microseconds. A request is
/// allowed while it is at most `burst` emission intervals ahead of `now`.
/// KEYS: rate key. ARGV: now µs, emission interval µs, burst (count).
/// Returns 1 (allowed) or 0.
const GCRA: &str = r"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + t
if new - now > burst * t then return 0 end
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', string.format('%d', math.ceil((new - now) / 1000)))
return 1
";

/// `rate_per_user` for the whole cluster: every replica asks the same Redis key, so three
/// replicas together allow what one would.
#[derive(Debug)]
pub struct SharedRate {
    conn: RedisConn,
    hasher: KeyHasher,
    script: redis::Script,
}

impl SharedRate {
    pub fn new(conn: RedisConn, secret: &[u8; 32]) -> Self {
        Self {
            conn,
            hasher: KeyHasher::new(secret, b"rate"),
            script: redis::Script::new(GCRA),
        }
    }

    /// Whether one more request of `subject_key` to `service` is within `count` per `per`
    /// (a steady rate with a burst of `count`) at `now`.
    pub async fn check(
        &self,
        service: &str,
        count: u32,
        per: Duration,
        subject_key: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let count = count.max(1);
        let interval_us = i64::try_from((per / count).as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let key = format!(
            "{PREFIX}rate:{}",
            self.hasher
                .hash(&[service.as_bytes(), subject_key.as_bytes()])
        );
        let now_us = now.as_microsecond().max(0);
        let allowed: i64 = self
            .conn
            .run("rate limit", |mut c| {
                let mut call = self.script.key(&key);
                call.arg(now_us).arg(interval_us).arg(count);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(allowed == 1)
    }
}
