//! The failed-login throttle in Redis, for several replicas: the same numbers and rules as
//! the in-process [`super::Throttle`] (see its docs), each step one Lua script over the
//! card's and the address's entries, so a guesser gains nothing by spreading tries over
//! replicas.
//!
//! An entry is a hash under `portvakt:throttle:<keyed hash>`: `f` the failures in the
//! window (Unix ms, oldest first, space-separated, at most `refuse_after`), `r` the end of
//! a refusal, `p` tries in progress and `ps` when the last one started. Its Redis expiry is
//! the moment it can no longer affect a decision, so Redis drops it by itself. Keys are
//! keyed hashes (HMAC under the session key) of the normalized card number and of the
//! address (IPv4, or the IPv6 /64): no card number or address is in Redis.
//!
//! The instant is a parameter (`*_at`), so tests never sleep; the gateway passes its clock.

use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;

use super::rules::{Limits, PENDING_TTL, ThrottleError, ThrottleSettings};
use policy::subject::normalize_card;
use store::redis::{KeyHasher, PREFIX, RedisConn, unix_ms};
use store::{Clock, StoreError};

/// One script for the four steps. KEYS: card entry, address entry. ARGV: op (`check`,
/// `failed`, `succeeded`, `abandoned`), now (ms), pending TTL (ms), then six limits for
/// the card and six for the address (free failures, first delay ms, max delay ms, refuse
/// after, window ms, refusal ms). `check` returns {wait ms, 0 | 1 slowed | 2 refused}.
const SCRIPT: &str = r"
local op = ARGV[1]
local now = tonumber(ARGV[2])
local pttl = tonumber(ARGV[3])
local function limits(i)
  local b = 3 + (i - 1) * 6
  return {free = tonumber(ARGV[b + 1]), first = tonumber(ARGV[b + 2]),
    max = tonumber(ARGV[b + 3]), refuse = tonumber(ARGV[b + 4]),
    window = tonumber(ARGV[b + 5]), refusal = tonumber(ARGV[b + 6])}
end
local function load(k, l)
  local h = redis.call('HMGET', k, 'f', 'r', 'p', 'ps')
  local e = {f = {}, r = tonumber(h[2]), p = tonumber(h[3]) or 0, ps = tonumber(h[4]) or now}
  if h[1] then
    for t in string.gmatch(h[1], '%d+') do table.insert(e.f, tonumber(t)) end
  end
  if e.r and e.r <= now then
    e.r = nil
    e.f = {}
  end
  while #e.f > 0 and e.f[1] + l.window <= now do table.remove(e.f, 1) end
  if e.p > 0 and e.ps + pttl <= now then e.p = 0 end
  return e
end
local function save(k, l, e)
  local keep = now
  if e.r then keep = math.max(keep, e.r) end
  if #e.f > 0 then keep = math.max(keep, e.f[#e.f] + l.window) end
  if e.p > 0 then keep = math.max(keep, e.ps + pttl) end
  redis.call('DEL', k)
  if keep <= now then return end
  local parts = {}
  for i, t in ipairs(e.f) do parts[i] = string.format('%d', t) end
  redis.call('HSET', k, 'f', table.concat(parts, ' '), 'p', e.p, 'ps', string.format('%d', e.ps))
  if e.r then redis.call('HSET', k, 'r', string.format('%d', e.r)) end
  redis.call('PEXPIREAT', k, string.format('%d', keep))
end
local function delay(l, n)
  if n <= l.free then return 0 end
  return math.min(l.first * 2 ^ math.min(n - l.free - 1, 31), l.max)
end
local function admits(l, e)
  if e.r then return e.r - now, 2 end
  local n = #e.f
  if n + e.p < l.free then return 0, 0 end
  if e.p > 0 then return l.first, 1 end
  if n == 0 then return 0, 0 end
  local wait = e.f[n] + delay(l, n) - now
  if wait <= 0 then return 0, 0 end
  return wait, 1
end
local function release(e)
  if e.p > 0 then e.p = e.p - 1 end
end
local ls = {limits(1), limits(2)}
local es = {load(KEYS[1], ls[1]), load(KEYS[2], ls[2])}
if op == 'check' then
  local wait, kind = 0, 0
  for i = 1, 2 do
    local w, k = admits(ls[i], es[i])
    if k > 0 and (kind == 0 or w > wait) then wait, kind = w, k end
  end
  if kind > 0 then return {wait, kind} end
  for i = 1, 2 do
    es[i].p = es[i].p + 1
    es[i].ps = now
    save(KEYS[i], ls[i], es[i])
  end
  return {0, 0}
elseif op == 'failed' then
  for i = 1, 2 do
    release(es[i])
    table.insert(es[i].f, now)
    if #es[i].f >= ls[i].refuse then
      es[i].r = now + ls[i].refusal
      es[i].f = {}
    end
    save(KEYS[i], ls[i], es[i])
  end
elseif op == 'succeeded' then
  redis.call('DEL', KEYS[1])
  release(es[2])
  save(KEYS[2], ls[2], es[2])
elseif op == 'abandoned' then
  for i = 1, 2 do
    release(es[i])
    save(KEYS[i], ls[i], es[i])
  end
end
return {0, 0}
";

/// The login throttle shared through Redis.
#[derive(Debug)]
pub struct SharedThrottle {
    conn: RedisConn,
    hasher: KeyHasher,
    settings: ThrottleSettings,
    script: redis::Script,
    clock: Arc<dyn Clock>,
}

fn limit_args(l: &Limits) -> [i64; 6] {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    [
        i64::from(l.free_failures),
        ms(l.first_delay),
        ms(l.max_delay),
        i64::from(l.refuse_after),
        ms(l.window),
        ms(l.refusal),
    ]
}

impl SharedThrottle {
    /// `secret` keys the hashes in key names; all replicas must share it (the session key).
    pub fn new(
        conn: RedisConn,
        secret: &[u8; 32],
        settings: ThrottleSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            conn,
            hasher: KeyHasher::new(secret, b"throttle"),
            settings,
            script: redis::Script::new(SCRIPT),
            clock,
        }
    }

    fn keys(&self, card: &str, ip: IpAddr) -> [String; 2] {
        let card = self
            .hasher
            .hash(&[b"card", normalize_card(card).as_bytes()]);
        let address = match ip.to_canonical() {
            IpAddr::V4(v4) => self.hasher.hash(&[b"v4", &v4.octets()]),
            IpAddr::V6(v6) => self.hasher.hash(&[b"v6", &v6.octets()[..8]]),
        };
        [
            format!("{PREFIX}throttle:{card}"),
            format!("{PREFIX}throttle:{address}"),
        ]
    }

    async fn call(
        &self,
        op: &'static str,
        card: &str,
        ip: IpAddr,
        now: Timestamp,
    ) -> Result<(i64, i64), StoreError> {
        let [card_key, address_key] = self.keys(card, ip);
        let pending = i64::try_from(PENDING_TTL.as_millis()).unwrap_or(i64::MAX);
        self.conn
            .run("login throttle", |mut c| {
                let mut call = self.script.key(&card_key);
                call.key(&address_key)
                    .arg(op)
                    .arg(unix_ms(now))
                    .arg(pending)
                    .arg(&limit_args(&self.settings.card)[..])
                    .arg(&limit_args(&self.settings.address)[..]);
                async move { call.invoke_async(&mut c).await }
            })
            .await
    }

    /// [`super::Throttle::check`] at `now`: the outer error when Redis does not answer.
    pub async fn check_at(
        &self,
        card: &str,
        ip: IpAddr,
        now: Timestamp,
    ) -> Result<Result<(), ThrottleError>, StoreError> {
        let (wait, kind) = self.call("check", card, ip, now).await?;
        let retry_after = std::time::Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        Ok(match kind {
            0 => Ok(()),
            2 => Err(ThrottleError::Refused { retry_after }),
            _ => Err(ThrottleError::Slowed { retry_after }),
        })
    }

    pub async fn failed_at(
        &self,
        card: &str,
        ip: IpAddr,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.call("failed", card, ip, now).await.map(|_| ())
    }

    pub async fn succeeded_at(
        &self,
        card: &str,
        ip: IpAddr,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.call("succeeded", card, ip, now).await.map(|_| ())
    }

    pub async fn abandoned_at(
        &self,
        card: &str,
        ip: IpAddr,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.call("abandoned", card, ip, now).await.map(|_| ())
    }

    pub(super) fn now(&self) -> Timestamp {
        self.clock.now()
    }
}
