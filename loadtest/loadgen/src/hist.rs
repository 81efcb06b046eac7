//! A log-linear latency histogram in the manner of HdrHistogram: values (nanoseconds) below
//! 128 have a bucket each; above that, every power of two is cut into 64 equal buckets, so
//! a reported percentile is at most 1/64 (1.6 %) above the true value. Each connection keeps
//! its own histogram; they are merged at the end, so recording takes no lock.

/// Values below this have a bucket each.
const LINEAR: u64 = 128;
/// Buckets per power of two above `LINEAR`.
const SUB: u64 = 64;
/// Enough buckets for any `u64`.
const BUCKETS: usize = (LINEAR + (64 - 7) * SUB) as usize;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = u64::from(63 - v.leading_zeros()); // ≥ 7
    let shift = msb - 6; // v >> shift lies in [64, 128)
    (LINEAR + (shift - 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// The highest value that falls into bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let shift = (i - LINEAR) / SUB + 1;
    let m = (i - LINEAR) % SUB + SUB;
    ((m + 1) << shift).saturating_sub(1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at or below which `q` (0..=1) of the recorded values lie (the bucket's
    /// highest value, never above the largest recorded value).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut prev_upper = None;
        for i in 0..BUCKETS - 1 {
            let hi = upper(i);
            if let Some(p) = prev_upper {
                assert!(hi > p, "bucket {i}");
                assert_eq!(index(p + 1), i, "first value of bucket {i}");
            }
            assert_eq!(index(hi), i, "last value of bucket {i}");
            prev_upper = Some(hi);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_small() {
        for v in [127_u64, 128, 1_000, 65_537, 1_234_567, 60_000_000_000] {
            let hi = upper(index(v));
            assert!(hi >= v);
            assert!((hi - v) as f64 <= v as f64 / 64.0, "{v} → {hi}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000_u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((500_000..=508_000).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((990_000..=1_000_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
        let mut g = Histogram::default();
        g.record(5);
        g.merge(&h);
        assert_eq!(g.count(), 1001);
        assert_eq!(g.quantile(0.0), 5);
    }
}
