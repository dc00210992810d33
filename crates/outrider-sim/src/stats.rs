//! Latency summaries for benchmarks.

use std::time::Duration;

/// Percentiles of a set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl LatencySummary {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            samples: samples.len(),
            p50: percentile(&samples, 0.50)?,
            p99: percentile(&samples, 0.99)?,
            max: *samples.last()?,
        })
    }
}

/// The `q`-quantile (0 < q ≤ 1) of `sorted` by the nearest-rank method: the smallest sample
/// that at least `q` of all samples do not exceed. `None` when `sorted` is empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    // The rank is between 1 and len: the casts are exact for any realistic sample count.
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()).checked_sub(1)?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let s = LatencySummary::of(samples).unwrap();
        assert_eq!((s.samples, s.p50, s.p99, s.max), (100, ms(50), ms(99), ms(100)));
        let one = LatencySummary::of(vec![ms(7)]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (ms(7), ms(7), ms(7)));
        assert_eq!(percentile(&[ms(1), ms(2), ms(3)], 0.5), Some(ms(2)));
        assert!(LatencySummary::of(Vec::new()).is_none());
    }
}
