//! `rate_per_user`: per-person, per-service request rates, in this process or shared by
//! every replica through Redis.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota};
use policy::Rate;

/// One limiter per service and rate; a person is a key within it.
type Limiters = HashMap<(String, Rate), Arc<DefaultKeyedRateLimiter<u64>>>;

/// Per-service keyed rate limiters, rebuilt when a service's rate changes. With the Redis
/// store the limit is cluster-wide ([`store::redis::SharedRate`]); while Redis does
/// not answer, each replica falls back to its own in-process limiter, so a patron is never
/// stopped by an outage of ours, and the cluster allows at most the rate times the number
/// of replicas until Redis is back.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<Limiters>,
    hasher: std::collections::hash_map::RandomState,
    shared: Option<store::redis::SharedRate>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

impl RateLimits {
    /// In-process limits, or shared through Redis when `redis` is given (keyed by hashes
    /// under `secret`, which every replica must share).
    pub fn new(secret: &[u8; 32], redis: Option<store::redis::RedisConn>) -> Self {
        Self {
            shared: redis.map(|conn| store::redis::SharedRate::new(conn, secret)),
            ..Self::default()
        }
    }

    /// Whether one more request of this person to this service is within its rate at
    /// `now` (the shared limiter's time; the in-process one keeps its own clock).
    pub async fn check(
        &self,
        service: &str,
        rate: Rate,
        subject_key: &str,
        now: jiff::Timestamp,
    ) -> bool {
        if let Some(shared) = &self.shared {
            match shared
                .check(service, rate.count, rate.per, subject_key, now)
                .await
            {
                Ok(allowed) => return allowed,
                Err(e) => {
                    tracing::debug!(error = %e, "shared rate limit unavailable; limiting on this replica");
                }
            }
        }
        self.check_local(service, rate, subject_key)
    }

    /// The in-process limit. The person is a keyed hash of the subject key, so no
    /// identifier is kept.
    fn check_local(&self, service: &str, rate: Rate, subject_key: &str) -> bool {
        let limiter = {
            let Ok(mut map) = self.limiters.lock() else {
                return true;
            };
            if map.len() > 1024 {
                map.clear();
            }
            map.entry((service.to_owned(), rate))
                .or_insert_with(|| Arc::new(governor::RateLimiter::keyed(quota(rate))))
                .clone()
        };
        let mut h = self.hasher.build_hasher();
        subject_key.hash(&mut h);
        service.hash(&mut h);
        let allowed = limiter.check_key(&h.finish()).is_ok();
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        allowed
    }
}

/// `count` per `per`, as a steady rate with a burst of `count`.
fn quota(rate: Rate) -> Quota {
    let count = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
    let period = rate.per / rate.count.max(1);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(count))
        .allow_burst(count)
}
