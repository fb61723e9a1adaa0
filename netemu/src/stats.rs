//! Statistics shared by the emulator's validity counters and the `msglat` probe: loss
//! confidence intervals, a lateness histogram, latency percentiles and RFC 3550 jitter.

use crate::model::LossModel;
use serde::Serialize;

/// z for a two-sided 99.9% interval: the benchmark checks many link directions per run, so a
/// 95% interval would flag a few honest ones in every run.
pub const Z_999: f64 = 3.29;

/// Wilson score interval for `successes` out of `n` (n may be an effective, fractional size).
pub fn wilson_interval(successes: f64, n: f64, z: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Achieved loss of one link direction against what its model should produce.
#[derive(Clone, Debug, Serialize)]
pub struct LossEstimate {
    pub trials: u64,
    pub lost: u64,
    pub achieved: f64,
    pub expected: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Whether `expected` lies inside the interval around `achieved`.
    pub within: bool,
}

impl LossEstimate {
    /// Wilson interval with the sample size shrunk by the chain's correlation, so bursty loss
    /// is judged by its real variance rather than a binomial one.
    pub fn new(trials: u64, lost: u64, model: &LossModel, z: f64) -> Self {
        let rho = model.state_correlation();
        let effective_n = trials as f64 * (1.0 - rho) / (1.0 + rho);
        let achieved = if trials == 0 {
            0.0
        } else {
            lost as f64 / trials as f64
        };
        let (ci_low, ci_high) = wilson_interval(achieved * effective_n, effective_n, z);
        let expected = model.expected_rate();
        LossEstimate {
            trials,
            lost,
            achieved,
            expected,
            ci_low,
            ci_high,
            within: trials == 0 || (ci_low <= expected && expected <= ci_high),
        }
    }
}

/// How late packets were written compared with their due time: 10 µs buckets up to 20 ms,
/// then one overflow bucket. Cheap enough to update for every packet.
#[derive(Clone)]
pub struct LatenessHistogram {
    buckets: Vec<u64>,
    count: u64,
    max_ns: u64,
}

const LATENESS_BUCKET_NS: u64 = 10_000;
const LATENESS_BUCKETS: usize = 2_000;

impl Default for LatenessHistogram {
    fn default() -> Self {
        LatenessHistogram {
            buckets: vec![0; LATENESS_BUCKETS + 1],
            count: 0,
            max_ns: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct LatenessSummary {
    pub count: u64,
    /// Upper edge of the bucket holding the percentile, in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatenessHistogram {
    pub fn record(&mut self, late_ns: u64) {
        let index = usize::try_from(late_ns / LATENESS_BUCKET_NS)
            .unwrap_or(LATENESS_BUCKETS)
            .min(LATENESS_BUCKETS);
        self.buckets[index] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(late_ns);
    }

    pub fn merge(&mut self, other: &LatenessHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = 0);
        self.count = 0;
        self.max_ns = 0;
    }

    fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                if i == LATENESS_BUCKETS {
                    return self.max_ns;
                }
                return ((i as u64 + 1) * LATENESS_BUCKET_NS).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// Non-empty buckets as (upper edge in µs, count), the overflow bucket at its maximum, so
    /// that runs can be pooled exactly.
    pub fn buckets_us(&self) -> Vec<(u64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| {
                let edge_ns = if i == LATENESS_BUCKETS {
                    self.max_ns
                } else {
                    (i as u64 + 1) * LATENESS_BUCKET_NS
                };
                (edge_ns.div_ceil(1_000), n)
            })
            .collect()
    }

    pub fn summary(&self) -> LatenessSummary {
        LatenessSummary {
            count: self.count,
            p50_ms: self.quantile_ns(0.5) as f64 / 1e6,
            p99_ms: self.quantile_ns(0.99) as f64 / 1e6,
            max_ms: self.max_ns as f64 / 1e6,
        }
    }
}

/// Nearest-rank percentile of an ascending slice; `None` when empty.
pub fn percentile_sorted(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// RFC 3550 §6.4.1 interarrival jitter, fed in arrival order with (send, receive) times.
#[derive(Clone, Copy, Debug, Default)]
pub struct InterarrivalJitter {
    previous_transit: Option<i64>,
    jitter: f64,
}

impl InterarrivalJitter {
    pub fn observe(&mut self, send_ns: i64, receive_ns: i64) {
        let transit = receive_ns - send_ns;
        if let Some(previous) = self.previous_transit {
            let d = (transit - previous).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.previous_transit = Some(transit);
    }

    pub fn value_ns(&self) -> f64 {
        self.jitter
    }
}

/// Summary of one-way latencies in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub stdev_ms: f64,
}

impl LatencySummary {
    pub fn from_nanos(latencies: &[i64]) -> Self {
        let mut sorted = latencies.to_vec();
        sorted.sort_unstable();
        let ms = |q: f64| percentile_sorted(&sorted, q).map_or(0.0, |v| v as f64 / 1e6);
        let n = sorted.len();
        let mean = if n == 0 {
            0.0
        } else {
            sorted.iter().map(|&v| v as f64).sum::<f64>() / n as f64
        };
        let variance = if n < 2 {
            0.0
        } else {
            sorted
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / (n - 1) as f64
        };
        LatencySummary {
            count: n,
            min_ms: sorted.first().map_or(0.0, |&v| v as f64 / 1e6),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: sorted.last().map_or(0.0, |&v| v as f64 / 1e6),
            mean_ms: mean / 1e6,
            stdev_ms: variance.sqrt() / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_contains_the_estimate_and_narrows_with_n() {
        let (lo, hi) = wilson_interval(10.0, 1000.0, 1.96);
        assert!(lo < 0.01 && 0.01 < hi);
        let (lo2, hi2) = wilson_interval(100.0, 10_000.0, 1.96);
        assert!(hi2 - lo2 < hi - lo);
        // Zero successes still give a non-degenerate upper bound.
        let (lo0, hi0) = wilson_interval(0.0, 100.0, 1.96);
        assert_eq!(lo0, 0.0);
        assert!(hi0 > 0.0 && hi0 < 0.05);
    }

    #[test]
    fn loss_estimate_flags_a_wrong_rate() {
        let model = LossModel::Bernoulli { p: 0.01 };
        assert!(LossEstimate::new(100_000, 1_000, &model, Z_999).within);
        assert!(!LossEstimate::new(100_000, 2_000, &model, Z_999).within);
        assert!(!LossEstimate::new(100_000, 0, &model, Z_999).within);
    }

    #[test]
    fn correlated_loss_gets_a_wider_interval() {
        let independent = LossModel::Bernoulli { p: 0.01 };
        let bursty = LossModel::from_loss_and_burst(0.01, 0.6);
        let a = LossEstimate::new(50_000, 500, &independent, Z_999);
        let b = LossEstimate::new(50_000, 500, &bursty, Z_999);
        assert!(b.ci_high - b.ci_low > 1.5 * (a.ci_high - a.ci_low));
    }

    #[test]
    fn lateness_histogram_percentiles() {
        let mut h = LatenessHistogram::default();
        for i in 0..100u64 {
            h.record(i * 1_000); // 0..99 µs
        }
        h.record(50_000_000); // one 50 ms outlier in the overflow bucket
        let s = h.summary();
        assert_eq!(s.count, 101);
        assert!(s.p50_ms > 0.04 && s.p50_ms <= 0.06, "{s:?}");
        assert!(s.p99_ms <= 0.1, "{s:?}");
        assert_eq!(s.max_ms, 50.0);
        let buckets = h.buckets_us();
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 101);
        assert_eq!(buckets.first(), Some(&(10, 10)));
        assert_eq!(buckets.last(), Some(&(50_000, 1)));
        let mut merged = LatenessHistogram::default();
        merged.merge(&h);
        assert_eq!(merged.summary(), s);
        merged.clear();
        assert_eq!(merged.summary().count, 0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 0.5), Some(50));
        assert_eq!(percentile_sorted(&v, 0.99), Some(99));
        assert_eq!(percentile_sorted(&v, 1.0), Some(100));
        assert_eq!(percentile_sorted(&[], 0.5), None);
    }

    #[test]
    fn rfc3550_jitter_of_constant_transit_is_zero_and_grows_with_variation() {
        let mut j = InterarrivalJitter::default();
        for i in 0..100 {
            j.observe(i * 20, i * 20 + 5);
        }
        assert_eq!(j.value_ns(), 0.0);
        let mut j = InterarrivalJitter::default();
        for i in 0..1000i64 {
            let transit = if i % 2 == 0 { 10 } else { 26 };
            j.observe(i * 100, i * 100 + transit);
        }
        // |D| = 16 always: J converges to 16.
        assert!((j.value_ns() - 16.0).abs() < 0.01, "{}", j.value_ns());
    }

    #[test]
    fn latency_summary_in_milliseconds() {
        let v: Vec<i64> = (1..=1000).map(|i| i * 1_000_000).collect();
        let s = LatencySummary::from_nanos(&v);
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.p50_ms, 500.0);
        assert_eq!(s.p99_ms, 990.0);
        assert_eq!(s.max_ms, 1000.0);
        assert!((s.mean_ms - 500.5).abs() < 1e-9);
    }
}
