//! Exponential backoff with a cap, and jitter, for restarts and reconnects.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: attempt `n` waits `base * factor^n`, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay of attempt 0.
    pub base: Duration,
    /// Upper bound of every delay.
    pub max: Duration,
    /// Growth per attempt; a factor below 2 keeps the delay at `base`.
    pub factor: u32,
}

impl Default for Backoff {
    /// 250 ms, doubling, capped at 30 s.
    fn default() -> Self {
        Self { base: Duration::from_millis(250), max: Duration::from_secs(30), factor: 2 }
    }
}

impl Backoff {
    /// A backoff starting at `base`, multiplied by `factor` per attempt, capped at `max`.
    pub const fn new(base: Duration, max: Duration, factor: u32) -> Self {
        Self { base, max, factor }
    }

    /// The delay before attempt `attempt` (0-based): `base * factor^attempt`, capped at `max`.
    /// Never overflows, whatever the attempt number.
    pub fn delay(&self, attempt: u32) -> Duration {
        if self.base.is_zero() || self.factor < 2 {
            return self.base.min(self.max);
        }
        // In nanoseconds, u128: any product that overflows is far above any `max`.
        let multiplier = u128::from(self.factor).checked_pow(attempt);
        let nanos = multiplier.and_then(|m| self.base.as_nanos().checked_mul(m));
        match nanos {
            Some(n) if n < self.max.as_nanos() => duration_from_nanos(n),
            _ => self.max,
        }
    }

    /// "Equal jitter": a random delay between `delay / 2` and `delay`. Spreads retries of many
    /// clients apart while keeping at least half the wait; with a factor of 2 the jittered
    /// delays still never shrink from one attempt to the next.
    pub fn jittered<R: Rng + ?Sized>(delay: Duration, rng: &mut R) -> Duration {
        let half = delay / 2;
        let spread = delay - half;
        let extra = rng.random_range(0..=spread.as_nanos());
        half + duration_from_nanos(extra)
    }
}

/// A duration of `nanos` nanoseconds (callers guarantee it fits a `Duration`).
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_then_caps() {
        let b = Backoff::new(100 * MS, 1000 * MS, 2);
        let delays: Vec<_> = (0..6).map(|a| b.delay(a)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
        let b = Backoff::new(Duration::from_nanos(1), Duration::MAX, 10);
        assert_eq!(b.delay(5), Duration::from_nanos(100_000));
        assert_eq!(b.delay(1000), Duration::MAX);
        let b = Backoff::new(Duration::MAX, Duration::MAX, 3);
        assert_eq!(b.delay(7), Duration::MAX);
    }

    #[test]
    fn degenerate_settings_stay_constant() {
        assert_eq!(Backoff::new(100 * MS, 1000 * MS, 1).delay(50), 100 * MS);
        assert_eq!(Backoff::new(100 * MS, 1000 * MS, 0).delay(50), 100 * MS);
        assert_eq!(Backoff::new(Duration::ZERO, 1000 * MS, 2).delay(u32::MAX), Duration::ZERO);
        assert_eq!(Backoff::new(5000 * MS, 1000 * MS, 2).delay(0), 1000 * MS, "base above max is capped");
    }

    #[test]
    fn default_matches_documented_values() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), 250 * MS);
        assert_eq!(b.delay(1), 500 * MS);
        assert_eq!(b.delay(7), 30_000 * MS);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let mut rng = StdRng::seed_from_u64(7);
        let d = 1000 * MS;
        let samples: Vec<_> = (0..1000).map(|_| Backoff::jittered(d, &mut rng)).collect();
        assert!(samples.iter().all(|s| *s >= d / 2 && *s <= d));
        assert!(samples.iter().any(|s| *s < 600 * MS) && samples.iter().any(|s| *s > 900 * MS), "spread out");
        assert_eq!(Backoff::jittered(Duration::ZERO, &mut rng), Duration::ZERO);
        assert!(Backoff::jittered(Duration::MAX, &mut rng) >= Duration::MAX / 2);
    }
}
