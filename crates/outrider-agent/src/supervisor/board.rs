//! The status board: what every sidecar is doing now, shared by the actors (writers), the
//! stats sampler and the sync layer (reader), with a counter that bumps on reportable changes.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use outrider_model::SidecarStatus;
use tokio::sync::watch;

/// Per-sidecar statuses plus a change counter.
pub(super) struct StatusBoard {
    statuses: Mutex<BTreeMap<String, SidecarStatus>>,
    changes: watch::Sender<u64>,
}

/// The fields whose change is worth reporting upstream at once (not CPU and memory, which
/// move all the time and are sent with the next periodic report).
fn reportable(s: &SidecarStatus) -> impl PartialEq + '_ {
    (s.state, &s.version, s.pid, &s.error, s.restarts, s.exits)
}

impl StatusBoard {
    pub(super) fn new() -> Self {
        Self { statuses: Mutex::new(BTreeMap::new()), changes: watch::Sender::new(0) }
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

    /// Forgets `name` (it was stopped and removed).
    pub(super) fn remove(&self, name: &str) {
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
