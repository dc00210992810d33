//! The first minutes of a version after an upgrade (any mode): the version it replaced is
//! kept in mind, and a new version that fails `crash_loop_threshold` times within the
//! window (exits, liveness kills, failed startups; counted over the window, not only in a
//! row, so a version that crashes after half a minute of work is caught too) is given up:
//! the actor runs the replaced version again and reports the failed upgrade
//! (`failed_upgrade`, which the manager's judge reads). Pure bookkeeping; the actor acts.

use outrider_model::DesiredSidecar;
use tokio::time::Instant;

/// A version on probation after an upgrade.
#[derive(Debug, Clone)]
pub(super) struct Probation {
    /// What ran before the upgrade.
    pub previous: DesiredSidecar,
    /// The version on probation.
    pub version: String,
    /// End of the window.
    pub until: Instant,
    /// Failures of `version` within the window so far.
    pub failures: u32,
}

impl Probation {
    /// `version` just replaced `previous` at `now`; on probation for `window`.
    pub(super) fn new(previous: DesiredSidecar, version: &str, now: Instant, window: std::time::Duration) -> Self {
        Self { previous, version: version.to_owned(), until: now + window, failures: 0 }
    }

    /// Counts a failure of `version` at `now`. `Some` once it has failed `threshold` times
    /// within the window: the caller falls back. `None` also for another version, or after
    /// the window (the caller then forgets the probation, see [`Self::over`]).
    pub(super) fn failed(&mut self, version: &str, now: Instant, threshold: u32) -> Option<u32> {
        if version != self.version || self.over(now) {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        (self.failures >= threshold.max(1)).then_some(self.failures)
    }

    /// Whether the window has passed.
    pub(super) fn over(&self, now: Instant) -> bool {
        now >= self.until
    }
}

/// The actor gave up on `target` after its crash loop and runs `previous` until the target
/// changes.
#[derive(Debug, Clone)]
pub(super) struct Fallback {
    /// The version that failed (as desired).
    pub target: DesiredSidecar,
    /// What runs instead.
    pub previous: DesiredSidecar,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn probation(now: Instant) -> Probation {
        let previous = outrider_model::testing::desired_sidecar("mesh", "1.0.0");
        Probation::new(previous, "1.1.0", now, Duration::from_secs(180))
    }

    #[test]
    fn falls_back_on_the_threshold_th_failure_within_the_window_only() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut p = probation(start);
        assert_eq!(p.failed("1.1.0", at(0), 3), None);
        // Another version's failure does not count.
        assert_eq!(p.failed("1.0.0", at(60), 3), None);
        assert_eq!(p.failed("1.1.0", at(60), 3), None);
        assert_eq!(p.failed("1.1.0", at(120), 3), Some(3), "not only failures in a row");

        let mut late = probation(start);
        late.failed("1.1.0", at(0), 3);
        late.failed("1.1.0", at(1), 3);
        assert!(!late.over(at(179)));
        assert!(late.over(at(180)));
        assert_eq!(late.failed("1.1.0", at(180), 3), None, "a crash after the window is an ordinary one");
        assert_eq!(late.failures, 2);
    }
}
