//! The healthy figures of simulated sidecars: per-service base levels, load that follows the
//! day, and short random spikes, so that a judge sees the noise of a real fleet.

use std::{
    f64::consts::{PI, TAU},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

/// How the healthy sidecars of one service behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Requests a second per instance at average load (each process draws within ±30 %).
    pub requests_per_sec: f64,
    /// Share of failed requests at average load (reports vary ±50 %).
    pub error_ratio: f64,
    /// 99th-percentile latency in milliseconds at average load (reports vary ±10 %).
    pub p99_ms: f64,
    /// CPU use in percent of a core at average load (each process draws within ±25 %,
    /// reports vary ±10 %).
    pub cpu_percent: f64,
    /// Load over the day is 1 ± this (lowest at midnight, highest at noon); 0: flat.
    pub daily_swing: f64,
    /// The length of a day.
    pub day: Duration,
    /// The chance that a report falls in a spike (latency, CPU and errors ×1.5 to ×3).
    pub spike_chance: f64,
    /// Midnight of the day curve. Share it across a fleet: load is the same everywhere.
    pub midnight: Instant,
}

impl Profile {
    /// A flat profile: 110 requests a second, 0.1 % errors, 20 ms p99 and 5 % CPU at any
    /// time, no spike.
    pub fn flat() -> Self {
        Self {
            requests_per_sec: 110.0,
            error_ratio: 0.001,
            p99_ms: 20.0,
            cpu_percent: 5.0,
            daily_swing: 0.0,
            day: Duration::from_secs(24 * 3600),
            spike_chance: 0.0,
            midnight: Instant::now(),
        }
    }

    /// The profile of `service`: base levels drawn from its name (the same in every run:
    /// 20–200 requests a second, 0.03–0.3 % errors, 8–60 ms p99, 2–10 % CPU), a daily swing
    /// of ±30–50 % around `midnight` over 24 hours, and a spike in 2 % of reports.
    pub fn of_service(service: &str, midnight: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(fnv1a(service.as_bytes()));
        Self {
            requests_per_sec: rng.random_range(20.0..200.0),
            // Log-uniform: as many services near 0.03 % as near 0.3 %.
            error_ratio: 10f64.powf(rng.random_range(-3.5..-2.5)),
            p99_ms: rng.random_range(8.0..60.0),
            cpu_percent: rng.random_range(2.0..10.0),
            daily_swing: rng.random_range(0.3..0.5),
            day: Duration::from_secs(24 * 3600),
            spike_chance: 0.02,
            midnight,
        }
    }

    /// The load factor at `now`: 1 on average over the day (`midnight` may be later than
    /// `now`: the curve runs backwards from it as well).
    pub fn load(&self, now: Instant) -> f64 {
        let since = if now >= self.midnight {
            (now - self.midnight).as_secs_f64()
        } else {
            -(self.midnight - now).as_secs_f64()
        };
        let phase = since / self.day.as_secs_f64().max(1e-9);
        1.0 + self.daily_swing * (TAU * phase - PI / 2.0).sin()
    }

    /// Midnight of a fleet that is `time_of_day` into its day at `now` (a midnight later than
    /// `now` when needed, so that no instant before the clock's start is formed).
    pub fn midnight_for(now: Instant, time_of_day: Duration, day: Duration) -> Instant {
        let into = Duration::from_secs_f64(time_of_day.as_secs_f64() % day.as_secs_f64().max(1e-9));
        if into.is_zero() { now } else { now + (day - into) }
    }

    /// The factor of a report: ×1.5 to ×3 in a spike, else 1.
    pub(crate) fn spike(&self, rng: &mut StdRng) -> f64 {
        if self.spike_chance > 0.0 && rng.random_bool(self.spike_chance.min(1.0)) {
            rng.random_range(1.5..3.0)
        } else {
            1.0
        }
    }
}

/// FNV-1a: a hash that is the same in every run and on every platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn services_have_their_own_stable_levels_and_load_follows_the_day() {
        let midnight = Instant::now();
        let a = Profile::of_service("payment.api", midnight);
        assert_eq!(a, Profile::of_service("payment.api", midnight), "levels are drawn from the name");
        let b = Profile::of_service("search.web", midnight);
        assert_ne!(a.p99_ms, b.p99_ms);
        for p in [a, b] {
            assert!((20.0..200.0).contains(&p.requests_per_sec) && (8.0..60.0).contains(&p.p99_ms));
            assert!((0.0003..0.0032).contains(&p.error_ratio) && (2.0..10.0).contains(&p.cpu_percent));
        }

        let hour = Duration::from_secs(3600);
        let low = a.load(midnight);
        let high = a.load(midnight + 12 * hour);
        assert!((low - (1.0 - a.daily_swing)).abs() < 1e-9 && (high - (1.0 + a.daily_swing)).abs() < 1e-9);
        assert!((a.load(midnight + 6 * hour) - 1.0).abs() < 1e-9);
        assert!((a.load(midnight + 36 * hour) - high).abs() < 1e-9, "the next day repeats");
        assert_eq!(Profile::flat().load(midnight + 12 * hour), 1.0);

        // A fleet started at 18:00 of its day: now is 18:00, noon comes in 18 hours.
        let day = Duration::from_secs(24 * 3600);
        let evening = Profile { midnight: Profile::midnight_for(midnight, 18 * hour, day), ..a };
        assert!((evening.load(midnight) - 1.0).abs() < 1e-9, "18:00 is average load");
        assert!((evening.load(midnight + 6 * hour) - low).abs() < 1e-9, "midnight six hours later");
        assert!((evening.load(midnight + 18 * hour) - high).abs() < 1e-9, "noon the next day");
        assert_eq!(Profile::midnight_for(midnight, Duration::ZERO, day), midnight);
    }

    #[test]
    fn spikes_are_rare_and_seeded() {
        let p = Profile { spike_chance: 0.02, ..Profile::flat() };
        let spikes = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10_000).map(|_| p.spike(&mut rng)).filter(|&s| s > 1.0).count()
        };
        let n = spikes(7);
        assert!((120..280).contains(&n), "{n} spikes in 10 000 reports");
        assert_eq!(n, spikes(7));
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| Profile::flat().spike(&mut rng) == 1.0));
    }
}
