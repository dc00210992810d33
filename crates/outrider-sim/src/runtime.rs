//! A [`Runtime`] that runs no process: it "applies" a desired set after a short simulated
//! delay and reports synthetic processes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use outrider_agent::Runtime;
use outrider_model::{DesiredSidecar, SidecarState, SidecarStatus};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::watch;

/// How a [`SimRuntime`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRuntimeOptions {
    /// Time an upgrade (or a start, or a stop) takes.
    pub apply_delay: Duration,
    /// Each apply takes `apply_delay` plus or minus up to this much, at random.
    pub jitter: Duration,
}

impl Default for SimRuntimeOptions {
    /// 50 ms ± 20 ms.
    fn default() -> Self {
        Self { apply_delay: Duration::from_millis(50), jitter: Duration::from_millis(20) }
    }
}

/// One simulated sidecar process.
#[derive(Debug, Clone)]
struct SimSidecar {
    version: String,
    state: SidecarState,
    pid: Option<u32>,
    /// Typical CPU use in percent of one core; reports vary around it.
    cpu_percent: f64,
    /// Typical resident memory; reports vary around it.
    rss_bytes: u64,
}

#[derive(Debug)]
struct State {
    /// Bumped by every apply that changes the target; a delayed convergence only lands if
    /// no newer apply came in the meantime.
    epoch: u64,
    /// Desired version per sidecar.
    target: BTreeMap<String, String>,
    sidecars: BTreeMap<String, SimSidecar>,
    next_pid: u32,
    rng: StdRng,
}

impl State {
    /// Moves every sidecar to its target: new processes run the target version, sidecars no
    /// longer desired disappear.
    fn converge(&mut self) {
        let target = std::mem::take(&mut self.target);
        self.sidecars.retain(|name, _| target.contains_key(name));
        for (name, version) in &target {
            if self.sidecars.get(name).is_some_and(|s| s.state == SidecarState::Running && &s.version == version) {
                continue;
            }
            let pid = self.next_pid;
            self.next_pid = self.next_pid.wrapping_add(1).max(2);
            let sidecar = SimSidecar {
                version: version.clone(),
                state: SidecarState::Running,
                pid: Some(pid),
                cpu_percent: self.rng.random_range(0.5..3.0),
                rss_bytes: self.rng.random_range(20u64 << 20..60u64 << 20),
            };
            self.sidecars.insert(name.clone(), sidecar);
        }
        self.target = target;
    }

    /// The delay of one apply: the configured delay plus or minus the jitter.
    fn delay(&mut self, options: &SimRuntimeOptions) -> Duration {
        if options.jitter.is_zero() {
            return options.apply_delay;
        }
        let spread = self.rng.random_range(Duration::ZERO..=options.jitter * 2);
        (options.apply_delay + spread).saturating_sub(options.jitter)
    }
}

/// A simulated runtime: [`Runtime::apply`] marks changed sidecars `upgrading` (or
/// `starting`, for new ones) at once and, after [`SimRuntimeOptions::apply_delay`], reports
/// each desired sidecar `running` at its desired version with a fresh fake pid and small
/// synthetic CPU and memory figures; sidecars no longer desired disappear. Every visible
/// change bumps [`Runtime::changes`]. Must be used inside a Tokio runtime (the delay is a
/// Tokio timer).
#[derive(Debug)]
pub struct SimRuntime {
    state: Arc<Mutex<State>>,
    changes: Arc<watch::Sender<u64>>,
    options: SimRuntimeOptions,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimRuntime {
    /// A runtime with nothing running. `seed` makes its pids and figures reproducible.
    pub fn new(options: SimRuntimeOptions, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let next_pid = rng.random_range(1_000..60_000);
        let state = State { epoch: 0, target: BTreeMap::new(), sidecars: BTreeMap::new(), next_pid, rng };
        Self { state: Arc::new(Mutex::new(state)), changes: Arc::new(watch::channel(0).0), options }
    }

    /// The version each sidecar runs now (sidecars still starting are left out).
    pub fn running(&self) -> BTreeMap<String, String> {
        lock(&self.state)
            .sidecars
            .iter()
            .filter(|(_, s)| s.state == SidecarState::Running)
            .map(|(name, s)| (name.clone(), s.version.clone()))
            .collect()
    }
}

impl Runtime for SimRuntime {
    fn apply(&self, desired: &[DesiredSidecar]) {
        let target: BTreeMap<String, String> = desired.iter().map(|d| (d.name.clone(), d.version.clone())).collect();
        let mut g = lock(&self.state);
        if g.target == target {
            return;
        }
        g.epoch += 1;
        let epoch = g.epoch;
        for (name, version) in &target {
            match g.sidecars.get_mut(name) {
                // Not started yet: start the new target instead.
                Some(s) if s.pid.is_none() => s.version.clone_from(version),
                Some(s) if &s.version != version => s.state = SidecarState::Upgrading,
                // Desired again at the version it runs (an upgrade or a stop called off).
                Some(s) => s.state = SidecarState::Running,
                None => {
                    let starting = SimSidecar {
                        version: version.clone(),
                        state: SidecarState::Starting,
                        pid: None,
                        cpu_percent: 0.0,
                        rss_bytes: 0,
                    };
                    g.sidecars.insert(name.clone(), starting);
                }
            }
        }
        for (name, s) in g.sidecars.iter_mut() {
            if !target.contains_key(name) {
                s.state = SidecarState::Draining;
            }
        }
        g.target = target;
        let delay = g.delay(&self.options);
        drop(g);
        self.changes.send_modify(|n| *n += 1);
        let (state, changes) = (self.state.clone(), self.changes.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut g = lock(&state);
            if g.epoch != epoch {
                return;
            }
            g.converge();
            drop(g);
            changes.send_modify(|n| *n += 1);
        });
    }

    fn status(&self) -> Vec<SidecarStatus> {
        let mut g = lock(&self.state);
        let g = &mut *g;
        g.sidecars
            .iter()
            .map(|(name, s)| {
                // Figures wander ±10 % from report to report.
                let wobble = if s.pid.is_some() { g.rng.random_range(0.9..1.1) } else { 1.0 };
                SidecarStatus {
                    name: name.clone(),
                    version: s.version.clone(),
                    state: s.state,
                    pid: s.pid,
                    cpu_percent: s.cpu_percent * wobble,
                    // Tens of MiB times a factor near 1: far from any precision limit.
                    rss_bytes: (s.rss_bytes as f64 * wobble) as u64,
                    ..SidecarStatus::default()
                }
            })
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use outrider_model::{Artifact, HumanDuration, UpgradeMode};

    use super::*;

    fn desired(name: &str, version: &str) -> DesiredSidecar {
        DesiredSidecar {
            name: name.into(),
            version: version.into(),
            mode: UpgradeMode::Restart,
            artifact: Artifact { url: "file:///bin/true".into(), sha256: "0".repeat(64) },
            command: vec!["${artifact}".into()],
            env: BTreeMap::new(),
            startup_probe: None,
            liveness_probe: None,
            drain_time: HumanDuration::from_secs(1),
        }
    }

    fn states(rt: &SimRuntime) -> Vec<(String, String, SidecarState)> {
        rt.status().into_iter().map(|s| (s.name, s.version, s.state)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn applies_after_the_delay_and_removes_what_is_no_longer_desired() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let rt = SimRuntime::new(options, 1);
        let mut changes = rt.changes();

        rt.apply(&[desired("mesh", "1.0.0"), desired("log", "2.0.0")]);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(states(&rt).iter().all(|s| s.2 == SidecarState::Starting));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let running = rt.status();
        assert_eq!(running.len(), 2);
        assert!(running.iter().all(|s| s.state == SidecarState::Running && s.pid.is_some() && s.rss_bytes > 0));

        // The same set again changes nothing.
        rt.apply(&[desired("mesh", "1.0.0"), desired("log", "2.0.0")]);
        assert!(!changes.has_changed().unwrap());

        rt.apply(&[desired("mesh", "1.1.0")]);
        assert_eq!(
            states(&rt),
            vec![
                ("log".into(), "2.0.0".into(), SidecarState::Draining),
                ("mesh".into(), "1.0.0".into(), SidecarState::Upgrading)
            ]
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(rt.running(), BTreeMap::from([("mesh".to_owned(), "1.1.0".to_owned())]));
        let new_pid = rt.status()[0].pid;
        assert_ne!(new_pid, running.iter().find(|s| s.name == "mesh").unwrap().pid);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_apply_supersedes_a_pending_one() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let rt = SimRuntime::new(options, 2);
        rt.apply(&[desired("mesh", "1.0.0")]);
        tokio::time::sleep(Duration::from_millis(30)).await;
        rt.apply(&[desired("mesh", "1.1.0")]);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(rt.running().is_empty(), "the first apply landed after being superseded");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(rt.running(), BTreeMap::from([("mesh".to_owned(), "1.1.0".to_owned())]));
    }
}
