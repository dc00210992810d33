//! The status board: what every sidecar is doing now, shared by the actors (writers), the
//! stats sampler and the sync layer (reader), with a counter that bumps on reportable changes.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use outrider_model::SidecarStatus;
use tokio::sync::watch;

use crate::runtime::ScrapeCounters;

/// Per-sidecar statuses plus a change counter.
pub(super) struct StatusBoard {
    statuses: Mutex<BTreeMap<String, SidecarStatus>>,
    counters: Mutex<BTreeMap<String, ScrapeCounters>>,
    changes: watch::Sender<u64>,
}

/// The outcome of one scrape of a sidecar's metrics.
#[derive(Debug, Default)]
pub(super) struct ScrapeReport {
    /// The derived values (none when the scrape failed).
    pub metrics: BTreeMap<String, f64>,
    /// The scrape failed.
    pub failed: bool,
    /// The breaches in effect, as the error to show.
    pub breach: Option<String>,
    /// The error the scraper showed before, cleared once no breach is in effect.
    pub shown: Option<String>,
    /// Series whose breach started with this scrape.
    pub new_breaches: Vec<String>,
}

/// The fields whose change is worth reporting upstream at once (not CPU and memory, which
/// move all the time and are sent with the next periodic report).
fn reportable(s: &SidecarStatus) -> impl PartialEq + '_ {
    (s.state, &s.version, s.pid, &s.error, s.restarts, s.exits)
}

impl StatusBoard {
    pub(super) fn new() -> Self {
        Self {
            statuses: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            changes: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, SidecarStatus>> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every status, sorted by sidecar name.
    pub(super) fn snapshot(&self) -> Vec<SidecarStatus> {
        self.lock().values().cloned().collect()
    }

    /// A receiver of the change counter.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Edits the status of `name` (created if missing) and bumps the counter if a reportable
    /// field changed.
    pub(super) fn update(&self, name: &str, edit: impl FnOnce(&mut SidecarStatus)) {
        let changed = {
            let mut map = self.lock();
            let created = !map.contains_key(name);
            let status = map
                .entry(name.to_owned())
                .or_insert_with(|| SidecarStatus { name: name.to_owned(), ..Default::default() });
            let before = status.clone();
            edit(status);
            if status.pid != before.pid {
                // Scraped metrics belong to the process that was scraped.
                status.metrics.clear();
            }
            created || reportable(&before) != reportable(status)
        };
        if changed {
            self.bump();
        }
    }

    /// Records resource use of `name` if it still runs `pid`. Does not bump the counter.
    pub(super) fn update_stats(&self, name: &str, pid: u32, cpu_percent: f64, rss_bytes: u64) {
        if let Some(s) = self.lock().get_mut(name)
            && s.pid == Some(pid)
        {
            s.cpu_percent = cpu_percent;
            s.rss_bytes = rss_bytes;
        }
    }

    /// Records a scrape of `name` if it still runs `pid`: its metrics replace the previous
    /// ones; a breach shows as the error (the scraper's earlier error is cleared once no
    /// breach is in effect); counters of failures and breaches go up. Bumps the counter
    /// only if the error changed.
    pub(super) fn record_scrape(&self, name: &str, pid: u32, report: ScrapeReport) {
        let changed = {
            let mut map = self.lock();
            let Some(s) = map.get_mut(name).filter(|s| s.pid == Some(pid)) else { return };
            let before = s.error.clone();
            s.metrics = report.metrics;
            match report.breach {
                Some(b) => s.error = Some(b),
                None if report.shown.is_some() && s.error == report.shown => s.error = None,
                None => {}
            }
            before != s.error
        };
        {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            let c = counters.entry(name.to_owned()).or_default();
            c.scrapes = c.scrapes.saturating_add(1);
            c.failures = c.failures.saturating_add(u64::from(report.failed));
            for series in report.new_breaches {
                let n = c.breaches.entry(series).or_default();
                *n = n.saturating_add(1);
            }
        }
        if changed {
            self.bump();
        }
    }

    /// The scrape counters of every sidecar, sorted by name.
    pub(super) fn scrape_counters(&self) -> Vec<ScrapeCounters> {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters.iter().map(|(name, c)| ScrapeCounters { sidecar: name.clone(), ..c.clone() }).collect()
    }

    /// Forgets `name` (it was stopped and removed).
    pub(super) fn remove(&self, name: &str) {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        if self.lock().remove(name).is_some() {
            self.bump();
        }
    }

    /// Sidecars that have a process now, with its pid.
    pub(super) fn pids(&self) -> Vec<(String, u32)> {
        self.lock().values().filter_map(|s| Some((s.name.clone(), s.pid?))).collect()
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_model::SidecarState;

    #[test]
    fn bumps_only_on_reportable_changes() {
        let board = StatusBoard::new();
        let rx = board.subscribe();
        board.update("mesh", |s| s.state = SidecarState::Starting);
        assert_eq!(*rx.borrow(), 1, "creation is a change");
        board.update("mesh", |s| s.pid = Some(42));
        assert_eq!(*rx.borrow(), 2);
        board.update("mesh", |s| s.pid = Some(42));
        assert_eq!(*rx.borrow(), 2, "same value, no bump");
        board.update_stats("mesh", 42, 12.5, 4096);
        assert_eq!(*rx.borrow(), 2, "stats never bump");
        board.update_stats("mesh", 7, 99.0, 1);
        let s = &board.snapshot()[0];
        assert_eq!((s.cpu_percent, s.rss_bytes), (12.5, 4096), "stats of another pid are ignored");
        assert_eq!(board.pids(), vec![("mesh".to_owned(), 42)]);
        board.remove("mesh");
        assert_eq!(*rx.borrow(), 3);
        assert!(board.snapshot().is_empty());
        board.remove("mesh");
        assert_eq!(*rx.borrow(), 3);
    }
}
