//! The boundary between the sync layer and whatever runs the sidecars.

use std::collections::BTreeMap;

use outrider_model::{DesiredSidecar, SidecarStatus};
use tokio::sync::watch;

/// Counters of the scrapes of one sidecar's metrics (its `scrape` setting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeCounters {
    /// Sidecar name.
    pub sidecar: String,
    /// Scrapes attempted.
    pub scrapes: u64,
    /// Scrapes that failed (no answer, not 2xx, too large, malformed).
    pub failures: u64,
    /// Breaches of a series' bounds, by series name.
    pub breaches: BTreeMap<String, u64>,
}

/// Something that converges sidecars towards a desired set and reports how they are doing:
/// the process [`Supervisor`](crate::supervisor::Supervisor) on a real host, a simulated
/// runtime in `outrider sim`.
pub trait Runtime: Send + Sync + 'static {
    /// Hands over the complete desired set (sidecars not listed are to be stopped). Returns at
    /// once; convergence happens in the background and shows in [`Runtime::status`].
    fn apply(&self, desired: &[DesiredSidecar]);
    /// The current status of every sidecar the runtime knows.
    fn status(&self) -> Vec<SidecarStatus>;
    /// Bumps whenever a status changes in a way worth reporting (state, version, pid, error).
    fn changes(&self) -> watch::Receiver<u64>;
    /// The scrape counters of every sidecar that has a `scrape` setting (none by default).
    fn scrape_counters(&self) -> Vec<ScrapeCounters> {
        Vec::new()
    }
}
