//! A [`Runtime`] that runs no process: it "applies" a desired set after a short simulated
//! delay and reports synthetic processes with the figures and metrics of a real sidecar, and
//! the faults of the [`Defect`]s it was given.

use std::{
    collections::BTreeMap,
    ops::Range,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use outrider_agent::Runtime;
use outrider_model::{DesiredSidecar, SidecarState, SidecarStatus};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{sync::watch, time::Instant};

use crate::{Defect, Effect, Profile};

/// Typical resident memory of a sidecar (drawn once per process).
const HEALTHY_RSS: Range<u64> = 20 << 20..60 << 20;
/// Time between exits of a crashing sidecar (±20 %), until it is in a crash loop.
const CRASH_INTERVAL: Duration = Duration::from_millis(500);
/// Exits after which a crashing sidecar is in `crash_loop`.
const CRASH_LOOP_AFTER: u32 = 3;
/// Longest back-off between restarts in a crash loop.
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// After a deploy of its service the business process warms up: the sidecar's latency, CPU
/// and errors start at ×2, ×1.5 and ×3 and settle linearly over this long.
const COLD_START: Duration = Duration::from_secs(180);
/// A deploy brings a new business release, which moves the instance's latency, CPU and
/// errors by up to this share (drawn at each deploy).
const RELEASE_SHIFT: f64 = 0.1;

/// What the business process beside the sidecars does to their figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Business {
    /// Share of the cold start still to go (1 right after a deploy, 0 once warm).
    cold: f64,
    /// Factor of the current business release on latency, CPU and errors.
    release: f64,
}

impl Business {
    const STEADY: Self = Self { cold: 0.0, release: 1.0 };
}

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
    /// Tells successive processes of one sidecar apart (a crash timer follows one).
    serial: u64,
    /// Typical CPU use in percent of one core; reports vary around it.
    cpu_percent: f64,
    /// Typical resident memory; reports vary around it.
    rss_bytes: u64,
    /// Unexpected exits (and as many restarts) of this process.
    exits: u32,
    /// The faults of its version.
    faults: Faults,
    /// When it started.
    started: Instant,
    /// Requests a second it serves.
    requests_per_sec: f64,
    /// Requests served so far.
    requests: f64,
    /// Failed requests so far.
    errors: f64,
    /// When `requests` and `errors` were last brought up to date.
    sampled: Instant,
}

impl SimSidecar {
    /// A sidecar that was asked for but has not started yet.
    fn starting(version: &str) -> Self {
        let now = Instant::now();
        Self {
            version: version.to_owned(),
            state: SidecarState::Starting,
            pid: None,
            serial: 0,
            cpu_percent: 0.0,
            rss_bytes: 0,
            exits: 0,
            faults: Faults::NONE,
            started: now,
            requests_per_sec: 0.0,
            requests: 0.0,
            errors: 0.0,
            sampled: now,
        }
    }

    fn crash_looping(&self) -> bool {
        self.exits >= CRASH_LOOP_AFTER
    }

    /// The state it settles in once nothing is asked of it.
    fn settled_state(&self) -> SidecarState {
        if self.crash_looping() { SidecarState::CrashLoop } else { SidecarState::Running }
    }

    /// Its status at `now` under `profile`: figures follow the load of the day with spikes
    /// and wander from report to report, counters grow with the time since the last report,
    /// and the faults of its version show.
    fn report(
        &mut self,
        name: &str,
        now: Instant,
        profile: &Profile,
        business: Business,
        rng: &mut StdRng,
    ) -> SidecarStatus {
        let mut status = SidecarStatus {
            name: name.to_owned(),
            version: self.version.clone(),
            state: self.state,
            pid: self.pid,
            restarts: self.exits,
            exits: self.exits,
            ..SidecarStatus::default()
        };
        if self.pid.is_none() {
            return status;
        }
        let load = profile.load(now);
        let spike = profile.spike(rng);
        let mut wobble = |spread: f64| rng.random_range(1.0 - spread..1.0 + spread);
        let faults = self.faults;
        let (cold, release) = (business.cold, business.release);
        let cpu = self.cpu_percent * load * spike * release * (1.0 + cold / 2.0) * wobble(0.1);
        status.cpu_percent = (cpu + faults.cpu_points).min(100.0);
        let leaked = faults.leak_bytes_per_sec * (now - self.started).as_secs_f64();
        // Tens of MiB plus at most some GiB: far from any precision limit.
        status.rss_bytes = (self.rss_bytes as f64 * wobble(0.02) + leaked) as u64;
        // Errors and latency rise with load, but less than in proportion.
        let busy = 1.0 + (load - 1.0) / 2.0;
        let healthy_errors = profile.error_ratio * busy * spike * release * (1.0 + 2.0 * cold) * wobble(0.5);
        let error_ratio = (healthy_errors + faults.error_ratio).min(1.0);
        let served = self.requests_per_sec * load * (now - self.sampled).as_secs_f64();
        self.requests += served;
        self.errors += served * error_ratio;
        self.sampled = now;
        status.metrics = BTreeMap::from([
            ("requests_total".to_owned(), self.requests.floor()),
            ("errors_total".to_owned(), self.errors.floor()),
            ("error_ratio".to_owned(), error_ratio),
            (
                "latency_p99_ms".to_owned(),
                profile.p99_ms * busy * spike * release * (1.0 + cold) * faults.latency_factor * wobble(0.1),
            ),
        ]);
        status
    }
}

/// What the [`Effect`]s of a process's version do to it, summed over its defects.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Faults {
    crash: bool,
    /// Added share of failed requests.
    error_ratio: f64,
    /// Factor on latency.
    latency_factor: f64,
    /// Added CPU percentage points.
    cpu_points: f64,
    leak_bytes_per_sec: f64,
}

impl Faults {
    const NONE: Self =
        Self { crash: false, error_ratio: 0.0, latency_factor: 1.0, cpu_points: 0.0, leak_bytes_per_sec: 0.0 };

    fn of(effects: impl IntoIterator<Item = Effect>) -> Self {
        effects.into_iter().fold(Self::NONE, |f, effect| match effect {
            Effect::Crash => Self { crash: true, ..f },
            Effect::Errors(ratio) => Self { error_ratio: f.error_ratio + ratio, ..f },
            Effect::Latency(factor) => Self { latency_factor: f.latency_factor * factor, ..f },
            Effect::Cpu(points) => Self { cpu_points: f.cpu_points + points, ..f },
            Effect::Memory(mib) => Self { leak_bytes_per_sec: f.leak_bytes_per_sec + mib * 1024.0 * 1024.0, ..f },
        })
    }
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
    /// The serial of the last process started.
    last_serial: u64,
    /// Defects of the instance: the versions that misbehave here.
    defects: Vec<Defect>,
    /// How its healthy sidecars behave.
    profile: Profile,
    rng: StdRng,
    /// The statuses of the last report.
    reported: Vec<SidecarStatus>,
    /// When its service was last deployed here, if it was.
    deployed: Option<Instant>,
    /// The factor of the business release deployed last.
    release: f64,
}

impl State {
    /// Moves every sidecar to its target: new processes run the target version, sidecars no
    /// longer desired disappear. Returns the new processes that crash (name and serial).
    fn converge(&mut self) -> Vec<(String, u64)> {
        let target = std::mem::take(&mut self.target);
        self.sidecars.retain(|name, _| target.contains_key(name));
        let mut crashing = Vec::new();
        for (name, version) in &target {
            let settled = |s: &SimSidecar| s.state == s.settled_state() && (s.pid.is_some() || s.crash_looping());
            if self.sidecars.get(name).is_some_and(|s| &s.version == version && settled(s)) {
                continue;
            }
            let sidecar = self.process(name, version);
            if sidecar.faults.crash {
                crashing.push((name.clone(), sidecar.serial));
            }
            self.sidecars.insert(name.clone(), sidecar);
        }
        self.target = target;
        crashing
    }

    /// A new running process of `name` at `version`, with the effects of the defects it hits.
    fn process(&mut self, name: &str, version: &str) -> SimSidecar {
        // The same effect from two defects counts once.
        let mut effects: Vec<Effect> = Vec::new();
        for d in self.defects.iter().filter(|d| d.hits(name, version)) {
            if !effects.contains(&d.effect) {
                effects.push(d.effect);
            }
        }
        self.last_serial += 1;
        let now = Instant::now();
        SimSidecar {
            version: version.to_owned(),
            state: SidecarState::Running,
            pid: Some(self.take_pid()),
            serial: self.last_serial,
            cpu_percent: self.profile.cpu_percent * self.rng.random_range(0.75..1.25),
            rss_bytes: self.rng.random_range(HEALTHY_RSS),
            exits: 0,
            faults: Faults::of(effects),
            started: now,
            requests_per_sec: self.profile.requests_per_sec * self.rng.random_range(0.7..1.3),
            requests: 0.0,
            errors: 0.0,
            sampled: now,
        }
    }

    fn take_pid(&mut self) -> u32 {
        let pid = self.next_pid;
        self.next_pid = self.next_pid.wrapping_add(1).max(2);
        pid
    }

    /// Process `serial` of `name` exits and is restarted (after `CRASH_LOOP_AFTER` exits it is
    /// in a crash loop, with no process between backed-off restarts). Returns the time until
    /// its next exit, or `None` when that process is gone (replaced or no longer desired).
    fn crash(&mut self, name: &str, serial: u64) -> Option<Duration> {
        let pid = self.take_pid();
        let jitter = self.rng.random_range(0.8..1.2);
        let s = self.sidecars.get_mut(name).filter(|s| s.serial == serial)?;
        s.exits = s.exits.saturating_add(1);
        if !s.crash_looping() {
            s.pid = Some(pid);
            return Some(CRASH_INTERVAL.mul_f64(jitter));
        }
        s.pid = None;
        if s.state == SidecarState::Running {
            s.state = SidecarState::CrashLoop;
        }
        let doublings = (s.exits - CRASH_LOOP_AFTER).min(8) + 1;
        Some((CRASH_INTERVAL * 2u32.pow(doublings)).min(CRASH_BACKOFF_MAX).mul_f64(jitter))
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

/// Makes process `serial` of `name` exit again and again (see [`State::crash`]), reporting
/// each exit, until that process is gone or the runtime is dropped.
async fn keep_crashing(state: Weak<Mutex<State>>, changes: Arc<watch::Sender<u64>>, name: String, serial: u64) {
    let mut wait = CRASH_INTERVAL;
    loop {
        tokio::time::sleep(wait).await;
        let Some(state) = state.upgrade() else { return };
        let Some(next) = lock(&state).crash(&name, serial) else { return };
        changes.send_modify(|n| *n += 1);
        wait = next;
    }
}

/// A simulated runtime: [`Runtime::apply`] marks changed sidecars `upgrading` (or
/// `starting`, for new ones) at once and, after [`SimRuntimeOptions::apply_delay`], reports
/// each desired sidecar `running` at its desired version with a fresh fake pid; sidecars no
/// longer desired disappear. Every visible change bumps [`Runtime::changes`]. Must be used
/// inside a Tokio runtime (the delays are Tokio timers).
///
/// Running sidecars report CPU, resident memory (tens of MiB) and the metrics
/// `requests_total` and `errors_total` (counters growing with time), `error_ratio` and
/// `latency_p99_ms`, refreshed at every report, around the levels of the runtime's
/// [`Profile`] (by default [`Profile::flat`]: about 5 % CPU, 0.001 errors, 20 ms) with its
/// daily load and spikes and a little seeded noise. A process at a version one of its
/// [`Defect`]s hits shows the defect's [`Effect`]: `crash` makes it exit about every 500 ms
/// (each exit is reported; after 3 it is in `crash_loop`, restarted with back-off up to
/// 8 s), `errors:R` adds R to `error_ratio`, `latency:F` multiplies `latency_p99_ms` by F,
/// `cpu:P` adds P points of CPU (at most 100 %), and `memory:M` adds M MiB of resident
/// memory a second.
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
    /// A runtime with nothing running and no defect. `seed` makes its pids and figures
    /// reproducible.
    pub fn new(options: SimRuntimeOptions, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let next_pid = rng.random_range(1_000..60_000);
        let state = State {
            epoch: 0,
            target: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            next_pid,
            last_serial: 0,
            defects: Vec::new(),
            profile: Profile::flat(),
            rng,
            reported: Vec::new(),
            deployed: None,
            release: 1.0,
        };
        Self { state: Arc::new(Mutex::new(state)), changes: Arc::new(watch::channel(0).0), options }
    }

    /// The same runtime, whose processes show the effects of `defects` when they run a version
    /// one of them hits. The caller picks the defects that select this instance
    /// ([`Defect::selects`]); processes started before keep their behaviour.
    pub fn with_defects(self, defects: Vec<Defect>) -> Self {
        lock(&self.state).defects = defects;
        self
    }

    /// The same runtime, whose healthy sidecars behave as `profile` says (processes started
    /// before keep the request rate and CPU level they drew).
    pub fn with_profile(self, profile: Profile) -> Self {
        lock(&self.state).profile = profile;
        self
    }

    /// Its service was deployed on the instance: the business process restarts cold (for
    /// three minutes the sidecars' latency, CPU and errors are higher, settling linearly) and
    /// is a new release, whose levels differ by up to ±10 %. The sidecars keep running.
    pub fn deployed(&self) {
        let mut g = lock(&self.state);
        g.deployed = Some(Instant::now());
        g.release = g.rng.random_range(1.0 - RELEASE_SHIFT..1.0 + RELEASE_SHIFT);
    }

    /// The version each sidecar runs now (sidecars still starting or crash-looping are left
    /// out).
    pub fn running(&self) -> BTreeMap<String, String> {
        lock(&self.state)
            .sidecars
            .iter()
            .filter(|(_, s)| s.state == SidecarState::Running)
            .map(|(name, s)| (name.clone(), s.version.clone()))
            .collect()
    }

    /// The statuses of the last report ([`Runtime::status`]), as they were sent: the same
    /// figures, not new ones (each report draws its own noise and advances the counters).
    /// Empty before the first report.
    pub fn last_report(&self) -> Vec<SidecarStatus> {
        lock(&self.state).reported.clone()
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
                Some(s) if s.pid.is_none() && !s.crash_looping() => {
                    s.version.clone_from(version);
                    s.state = SidecarState::Starting;
                }
                Some(s) if &s.version != version => s.state = SidecarState::Upgrading,
                // Desired again at the version it runs (an upgrade or a stop called off).
                Some(s) => s.state = s.settled_state(),
                None => {
                    g.sidecars.insert(name.clone(), SimSidecar::starting(version));
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
            let crashing = g.converge();
            drop(g);
            changes.send_modify(|n| *n += 1);
            for (name, serial) in crashing {
                tokio::spawn(keep_crashing(Arc::downgrade(&state), changes.clone(), name, serial));
            }
        });
    }

    fn status(&self) -> Vec<SidecarStatus> {
        let mut g = lock(&self.state);
        let State { sidecars, profile, rng, reported, deployed, release, .. } = &mut *g;
        let now = Instant::now();
        let business = deployed.map_or(Business::STEADY, |at| Business {
            cold: 1.0 - ((now - at).as_secs_f64() / COLD_START.as_secs_f64()).min(1.0),
            release: *release,
        });
        *reported = sidecars.iter_mut().map(|(name, s)| s.report(name, now, profile, business, rng)).collect();
        reported.clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use outrider_model::testing::desired_sidecar as desired;

    use super::*;

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

    fn defective(rt: SimRuntime, spec: &str) -> SimRuntime {
        rt.with_defects(vec![spec.parse().unwrap()])
    }

    fn one(rt: &SimRuntime) -> SidecarStatus {
        let mut all = rt.status();
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_matching_instance_crash_loops_on_the_defective_version_while_others_run() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let defect: crate::Defect = "version=1.3.0,trait=protocol:http,effect=crash".parse().unwrap();
        let http = crate::SimInstance::new("a-i0", "a", "boe", "prod", "canary");
        let grpc = crate::SimInstance::new("b-i0", "b", "boe", "prod", "canary");
        let traits = |p: &str| BTreeMap::from([("protocol".to_owned(), p.to_owned())]);
        let pick = |i: &crate::SimInstance, t| [defect.clone()].into_iter().filter(|d| d.selects(i, &t)).collect();
        let matching = SimRuntime::new(options, 1).with_defects(pick(&http, traits("http")));
        let other = SimRuntime::new(options, 2).with_defects(pick(&grpc, traits("grpc")));
        let both = [&matching, &other];

        // The version before is healthy everywhere.
        for rt in both {
            rt.apply(&[desired("mesh", "1.2.0")]);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        for rt in both {
            let s = one(rt);
            assert_eq!((s.state, s.exits, s.version.as_str()), (SidecarState::Running, 0, "1.2.0"));
        }

        let mut changes = matching.changes();
        for rt in both {
            rt.apply(&[desired("mesh", "1.3.0")]);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let started = one(&matching);
        assert_eq!((started.state, started.exits), (SidecarState::Running, 0));
        changes.mark_unchanged();

        // The first exit: restarted with a new pid, and reported at once.
        tokio::time::sleep(Duration::from_millis(650)).await;
        assert!(changes.has_changed().unwrap(), "an exit was not reported");
        let s = one(&matching);
        assert_eq!((s.state, s.exits, s.restarts), (SidecarState::Running, 1, 1));
        assert!(s.pid.is_some() && s.pid != started.pid);

        // Then a crash loop, and exits keep growing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = one(&matching);
        assert_eq!(s.state, SidecarState::CrashLoop);
        assert!(s.exits >= 3 && s.restarts == s.exits && s.pid.is_none(), "{s:?}");
        assert!(matching.running().is_empty());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(one(&matching).exits > s.exits);

        // The instance that does not match runs the same version without trouble.
        let s = one(&other);
        assert_eq!((s.state, s.exits, s.version.as_str()), (SidecarState::Running, 0, "1.3.0"));

        // Back to the version before: healthy again, and it stays so.
        matching.apply(&[desired("mesh", "1.2.0")]);
        assert_eq!(one(&matching).state, SidecarState::Upgrading);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let s = one(&matching);
        assert_eq!((s.state, s.exits, s.version.as_str()), (SidecarState::Running, 0, "1.2.0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_survives_an_apply_that_leaves_it_alone() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let rt = defective(SimRuntime::new(options, 3), "version=1.3.0,effect=crash,sidecar=mesh");
        rt.apply(&[desired("mesh", "1.3.0")]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = one(&rt);
        assert_eq!(before.state, SidecarState::CrashLoop);
        // Another sidecar comes: the crash-looping one keeps its state and its count.
        rt.apply(&[desired("mesh", "1.3.0"), desired("logs", "1.3.0")]);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let all = rt.status();
        let mesh = all.iter().find(|s| s.name == "mesh").unwrap();
        assert_eq!(mesh.state, SidecarState::CrashLoop);
        assert!(mesh.exits >= before.exits);
        // The defect names the sidecar: the other one at the same version is fine.
        let logs = all.iter().find(|s| s.name == "logs").unwrap();
        assert_eq!((logs.state, logs.exits), (SidecarState::Running, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_are_reported_and_show_the_effects() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let healthy = SimRuntime::new(options, 10);
        let errors = defective(SimRuntime::new(options, 11), "version=1.3.0,effect=errors");
        let latency = defective(SimRuntime::new(options, 12), "version=1.3.0,effect=latency");
        let cpu = defective(SimRuntime::new(options, 13), "version=1.3.0,effect=cpu");
        let memory = defective(SimRuntime::new(options, 14), "version=1.3.0,effect=memory");
        let all = [&healthy, &errors, &latency, &cpu, &memory];
        for rt in all {
            rt.apply(&[desired("mesh", "1.3.0")]);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let first: Vec<SidecarStatus> = all.iter().map(|rt| one(rt)).collect();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let second: Vec<SidecarStatus> = all.iter().map(|rt| one(rt)).collect();
        let metric = |s: &SidecarStatus, m: &str| *s.metrics.get(m).unwrap_or_else(|| panic!("no {m} in {s:?}"));

        for (a, b) in first.iter().zip(&second) {
            assert!(metric(b, "requests_total") > metric(a, "requests_total") + 100.0, "{a:?} then {b:?}");
            assert!(metric(b, "errors_total") >= metric(a, "errors_total"));
            assert_eq!(b.state, SidecarState::Running);
        }
        let [h, e, l, c, m] = &second[..] else { unreachable!() };
        let rate = metric(h, "error_ratio");
        assert!((0.0001..0.002).contains(&rate), "healthy error rate {rate}");
        let rate = metric(e, "error_ratio");
        assert!((0.25..0.35).contains(&rate), "defective error rate {rate}");
        let share = metric(e, "errors_total") / metric(e, "requests_total");
        assert!((0.25..0.35).contains(&share), "errors_total / requests_total = {share}");
        let p99 = metric(h, "latency_p99_ms");
        assert!((15.0..25.0).contains(&p99), "healthy p99 {p99}");
        let p99 = metric(l, "latency_p99_ms");
        assert!((150.0..250.0).contains(&p99), "defective p99 {p99}");
        assert!(h.cpu_percent < 10.0 && c.cpu_percent > 80.0, "cpu {} vs {}", h.cpu_percent, c.cpu_percent);
        // About 100 MiB more after 10 s; the healthy one stays where it was.
        let grown = second[4].rss_bytes as f64 - first[4].rss_bytes as f64;
        assert!((80.0..120.0).contains(&(grown / f64::from(1 << 20))), "grew {grown} bytes");
        assert!(m.rss_bytes > 100 << 20);
        assert!(h.rss_bytes.abs_diff(first[0].rss_bytes) < 5 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn effects_show_at_their_sizes() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let specs = ["errors:0.02", "latency:1.5", "cpu:40", "memory:2"];
        let all: Vec<SimRuntime> = specs
            .iter()
            .enumerate()
            .map(|(i, e)| defective(SimRuntime::new(options, 20 + i as u64), &format!("version=1.3.0,effect={e}")))
            .collect();
        for rt in &all {
            rt.apply(&[desired("mesh", "1.3.0")]);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let first: Vec<SidecarStatus> = all.iter().map(one).collect();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let [e, l, c, m] = &all.iter().map(one).collect::<Vec<_>>()[..] else { unreachable!() };
        let rate = e.metrics["error_ratio"];
        assert!((0.0202..0.0216).contains(&rate), "error rate {rate}: 0.02 on top of about 0.001");
        let p99 = l.metrics["latency_p99_ms"];
        assert!((26.0..34.0).contains(&p99), "p99 {p99}: 1.5 × about 20 ms");
        assert!((43.0..48.0).contains(&c.cpu_percent), "cpu {}: 40 points on top of about 5", c.cpu_percent);
        let grown = (m.rss_bytes as f64 - first[3].rss_bytes as f64) / f64::from(1 << 20);
        assert!((18.0..22.0).contains(&grown), "grew {grown} MiB in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deploy_of_the_service_starts_cold_then_settles_at_the_new_release() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let rt = SimRuntime::new(options, 30);
        rt.apply(&[desired("mesh", "1.0.0")]);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let median = |rt: &SimRuntime, f: &dyn Fn(&SidecarStatus) -> f64| {
            let mut v: Vec<f64> = (0..21).map(|_| f(&one(rt))).collect();
            v.sort_by(f64::total_cmp);
            v[10]
        };
        let p99 = |s: &SidecarStatus| s.metrics["latency_p99_ms"];
        let before = median(&rt, &p99);
        let pid = one(&rt).pid;
        rt.deployed();
        let cold = median(&rt, &p99);
        assert!(cold > before * 1.6 && cold < before * 2.5, "right after the deploy {cold} vs {before}");
        assert!(median(&rt, &|s| s.cpu_percent) > 0.0);
        tokio::time::sleep(Duration::from_secs(90)).await;
        let warming = median(&rt, &p99);
        assert!(warming > before * 1.25 && warming < cold, "half-way {warming} vs {before} and {cold}");
        tokio::time::sleep(Duration::from_secs(120)).await;
        let warm = median(&rt, &p99);
        assert!((warm / before - 1.0).abs() < 0.2, "settled {warm} vs {before}");
        assert_eq!(one(&rt).pid, pid, "the sidecar kept running");
    }

    #[tokio::test(start_paused = true)]
    async fn a_profile_sets_levels_daily_load_and_spikes_and_is_reproducible() {
        let options = SimRuntimeOptions { apply_delay: Duration::from_millis(50), jitter: Duration::ZERO };
        let midnight = Instant::now();
        let profile = Profile { spike_chance: 0.05, ..Profile::of_service("payment.api", midnight) };
        let run = |seed| async move {
            let rt = SimRuntime::new(options, seed).with_profile(profile);
            rt.apply(&[desired("mesh", "1.0.0")]);
            let mut reports = Vec::new();
            // Every ten minutes for a day.
            for _ in 0..144 {
                tokio::time::sleep(Duration::from_secs(600)).await;
                reports.push(one(&rt));
            }
            reports
        };
        let reports = run(5).await;
        let cpu = |from: usize, to: usize| {
            let mut v: Vec<f64> = reports[from..to].iter().map(|s| s.cpu_percent).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        // Median CPU around midnight (first and last hours) against around noon.
        let (night, noon) = (cpu(0, 6).max(cpu(138, 144)), cpu(66, 78));
        assert!(noon > night * 1.5, "noon {noon} vs night {night}");
        let p99: Vec<f64> = reports.iter().map(|s| s.metrics["latency_p99_ms"]).collect();
        let typical = profile.p99_ms;
        assert!(p99.iter().any(|&v| v > typical * 1.5 * 1.2), "no spike in {p99:?}");
        assert!(p99.iter().filter(|&&v| v > typical * 1.6).count() < 30, "too many spikes in {p99:?}");
        let rates: Vec<f64> = reports.iter().map(|s| s.metrics["error_ratio"]).collect();
        assert!(rates.iter().all(|&r| r > 0.0 && r < profile.error_ratio * 7.0), "{rates:?}");
        // The same seed gives the same day (the next one: the phase differs in the last bits).
        let again: Vec<f64> = run(5).await.iter().map(|s| s.metrics["latency_p99_ms"]).collect();
        assert!(again.iter().zip(&p99).all(|(a, b)| (a - b).abs() < 1e-9 * b), "{again:?} vs {p99:?}");
    }
}
