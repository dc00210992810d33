//! How deliveries are retried.

use std::time::Duration;

/// How a manager delivers webhooks (the defaults suit production; tests shorten them).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// How long one request may take.
    pub timeout: Duration,
    /// The wait after the first failed attempt; it doubles after each further one.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// Attempts per delivery, the first included.
    pub attempts: u32,
    /// Deliveries waiting per webhook; more are dropped (and recorded as such).
    pub queue: usize,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            attempts: 6,
            queue: 256,
        }
    }
}

impl Delivery {
    /// The wait after failed attempt number `attempt` (1 for the first): `backoff`,
    /// doubled for each attempt after the first, at most `max_backoff`.
    pub fn wait_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let d = Delivery::default();
        let waits: Vec<u64> = (1..=8).map(|a| d.wait_after(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(d.wait_after(u32::MAX), d.max_backoff);
        let short = Delivery { backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(150), ..d };
        assert_eq!(short.wait_after(0), Duration::from_millis(50));
        assert_eq!(short.wait_after(3), Duration::from_millis(150));
    }
}
