//! The per-sidecar actor: one task that owns a sidecar's process and converges it towards
//! the desired sidecar it is fed, one level-triggered step at a time.
//!
//! Every wait of the actor also watches its channel, so a new target is acted on at once
//! (a process being stopped is the exception: the stop completes first).
//!
//! Failure policy:
//! - the artifact of a new version is fetched and its placeholders expanded *before* the old
//!   process is touched; if that fails, the old process keeps running, the error is reported,
//!   and the preparation is retried with backoff;
//! - an unexpected exit (or a liveness kill) is followed by a restart after
//!   `backoff.delay(consecutive failures - 1)`; a process that ran `stable_after` resets the
//!   count; from `crash_loop_threshold` consecutive failures on, the sidecar is reported as
//!   `crash_loop` until a process proves stable;
//! - a sidecar that cannot start (artifact refused, bad placeholder, spawn error, startup
//!   probe not passed in time) is `failed` and retried with the same backoff.
//!
//! - a new version that fails `crash_loop_threshold` times within `upgrade_probation` of its
//!   upgrade (any mode) is given up: the version it replaced runs again, the upgrade is
//!   reported failed (`failed_upgrade`), and the same target is not tried again until it
//!   changes (see [`probation`]);
//! - while nothing runs and the next attempt waits for its backoff (crash loop, failed
//!   start), the agent-owned sockets are closed, so that clients are refused instead of
//!   waiting in a queue nobody serves; the next start binds them again.
//!
//! The reported `error` is the last failure; it stays visible (also across a restart) until
//! a process of the desired version has been ready for `stable_after`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use outrider_model::{DesiredSidecar, HumanDuration, SidecarState};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep_until},
};

mod error;
mod hot;
mod probation;
mod warm;

use error::{StartError, UpgradeError};
use probation::{Fallback, Probation};

use outrider_model::UpgradeMode;

use crate::probe::ProbeError;

use super::{
    Shared,
    notify::NotifySocket,
    process::{self, Process, SpawnSpec},
    record::{Record, Successor},
    resolve::{Identity, Resolved, ResolvedProbe, expand_setting, resolve},
    scraper::Scraper,
    sockets::SocketSet,
};

/// What the actor is told to converge to. `seq` grows with every change, so that
/// [`ActorHandle::stopped`] can tell a stop it asked for from an earlier one.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    seq: u64,
    desired: Option<DesiredSidecar>,
}

/// The supervisor's end of an actor.
pub(super) struct ActorHandle {
    name: String,
    tx: watch::Sender<Target>,
    /// The `seq` of the latest `None` target the actor has fully carried out.
    settled: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl ActorHandle {
    /// The sidecar's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Sets the target (`None`: stop and remove). Wakes the actor only if it changed.
    /// Returns the target's sequence number, for [`Self::stopped`].
    pub(super) fn set(&self, desired: Option<DesiredSidecar>) -> u64 {
        let mut seq = 0;
        self.tx.send_if_modified(|t| {
            let changed = t.desired != desired;
            if changed {
                t.desired = desired;
                t.seq += 1;
            }
            seq = t.seq;
            changed
        });
        seq
    }

    /// Resolves once the actor has carried out a `None` target at least as recent as `seq`
    /// (its process is down and its record deleted), or has ended.
    pub(super) fn stopped(&self, seq: u64) -> impl Future<Output = ()> + Send + 'static {
        let mut settled = self.settled.clone();
        async move {
            let _ = settled.wait_for(|s| *s >= seq).await;
        }
    }

    /// Ends the task at once, leaving the process running.
    pub(super) fn abort(&self) {
        self.task.abort();
    }
}

/// Starts an actor for a newly desired sidecar.
pub(super) fn spawn(shared: Arc<Shared>, desired: DesiredSidecar) -> ActorHandle {
    let name = desired.name.clone();
    Actor::launch(shared, name, desired, None, SocketSet::default(), 0, 0)
}

/// Starts an actor that watches an already running process (re-adopted from an earlier agent
/// process). Until told otherwise, it keeps it running as recorded.
pub(super) fn spawn_adopted(shared: Arc<Shared>, record: Record, group_leader: bool) -> ActorHandle {
    let artifact_path = shared.cache.path_for(&record.desired.artifact.sha256);
    let (liveness, sockets) = match resolve(&identity(&shared), &record.desired, &artifact_path) {
        Ok(r) => (r.liveness, recover_sockets(&record, &r.sockets)),
        Err(e) => {
            tracing::warn!(sidecar = %record.name, error = %e, "cannot expand the adopted sidecar's probes; no liveness checks");
            (None, SocketSet::default())
        }
    };
    let now = Instant::now();
    let process = Process::Adopted {
        pid: record.pid,
        start_time: record.start_time_ticks,
        group_leader,
        poll: shared.config.adopted_poll_interval,
    };
    let current = Current {
        process,
        start_time: record.start_time_ticks,
        desired: record.desired.clone(),
        artifact_path,
        spawned_at: now,
        ready: true,
        stable: true,
        startup: None,
        next_probe_at: now + liveness.as_ref().map_or(Duration::ZERO, |l| l.period),
        liveness,
        liveness_failures: 0,
        notify: None,
        ready_deadline: now,
        scraper: None,
        scrape_started: false,
    };
    shared.board.update(&record.name, |s| {
        s.version.clone_from(&record.version);
        s.state = SidecarState::Running;
        s.pid = Some(record.pid);
        s.restarts = record.restarts;
        s.exits = record.exits;
        s.error = None;
    });
    Actor::launch(shared, record.name, record.desired, Some(current), sockets, record.restarts, record.exits)
}

/// Takes the agent-owned sockets back from an adopted process (see [`super::sockets`]).
fn recover_sockets(record: &Record, wanted: &[(String, String)]) -> SocketSet {
    if wanted.is_empty() {
        return SocketSet::default();
    }
    match SocketSet::recover(record.pid, wanted) {
        Ok(set) => {
            tracing::info!(sidecar = %record.name, pid = record.pid, "took the agent-owned sockets back from the running sidecar");
            set
        }
        Err(e) => {
            tracing::warn!(sidecar = %record.name, pid = record.pid, error = %e,
                "cannot take the agent-owned sockets back; the next upgrade of this sidecar stops the old process first");
            SocketSet::default()
        }
    }
}

fn identity(shared: &Shared) -> Identity<'_> {
    Identity { instance: &shared.config.instance, service: &shared.config.service, labels: &shared.config.labels }
}

/// Whether going from `running` to `wanted` needs a new process (a new version, or another
/// executable, command line or environment). Probe and drain-time changes do not.
fn needs_restart(running: &DesiredSidecar, wanted: &DesiredSidecar) -> bool {
    running.version != wanted.version
        || running.artifact.sha256 != wanted.artifact.sha256
        || running.command != wanted.command
        || running.env != wanted.env
}

/// Whether the actor goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The supervisor is gone.
    Exit,
}

fn on_changed(r: Result<(), watch::error::RecvError>) -> Flow {
    if r.is_ok() { Flow::Continue } else { Flow::Exit }
}

/// The process the actor runs now.
struct Current {
    process: Process,
    /// Its start time in clock ticks (for the record).
    start_time: u64,
    /// What it was started from.
    desired: DesiredSidecar,
    artifact_path: PathBuf,
    spawned_at: Instant,
    /// Startup probe passed (or none).
    ready: bool,
    /// Has run `stable_after`.
    stable: bool,
    startup: Option<ResolvedProbe>,
    liveness: Option<ResolvedProbe>,
    next_probe_at: Instant,
    liveness_failures: u32,
    /// This generation's `NOTIFY_SOCKET` while its `READY=1` is awaited.
    notify: Option<NotifySocket>,
    /// Until when it may take to become ready.
    ready_deadline: Instant,
    /// Scrapes its metrics once it is ready (the `scrape` setting).
    scraper: Option<Scraper>,
    /// The scraper was started, or cannot be.
    scrape_started: bool,
}

/// How waiting for a new process to become ready ended.
enum Readiness {
    Ready,
    Exited(String),
    /// Not ready in time, or the readiness channel broke: the error says which.
    Failed(StartError),
}

impl Current {
    /// A process of `d` just started from `p`, not ready yet unless it has nothing to wait for.
    fn starting(
        process: Process,
        start_time: u64,
        d: &DesiredSidecar,
        p: Prepared,
        notify: Option<NotifySocket>,
        ready_deadline: Instant,
    ) -> Self {
        let now = Instant::now();
        let ready = p.resolved.startup.is_none() && notify.is_none();
        let liveness_period = p.resolved.liveness.as_ref().map_or(Duration::ZERO, |l| l.period);
        Self {
            process,
            start_time,
            desired: d.clone(),
            artifact_path: p.artifact_path,
            spawned_at: now,
            ready,
            stable: false,
            startup: p.resolved.startup,
            liveness: p.resolved.liveness,
            next_probe_at: if ready { now + liveness_period } else { now },
            liveness_failures: 0,
            notify,
            ready_deadline,
            scraper: None,
            scrape_started: false,
        }
    }

    /// Waits until the process is ready: `READY=1` on its notify socket (if it has one), then
    /// its startup probe (if any), both before `ready_deadline`. Cancel-safe: progress is
    /// kept in `self`, so a later call goes on where this one stopped.
    async fn readiness(&mut self) -> Readiness {
        let Self { process, notify, startup, next_probe_at, ready_deadline, .. } = self;
        let deadline = *ready_deadline;
        if let Some(n) = notify.as_ref() {
            let left = HumanDuration(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                how = process.wait() => return Readiness::Exited(how),
                r = n.ready() => match r {
                    Ok(()) => *notify = None,
                    Err(e) => return Readiness::Failed(StartError::NotifyRead(e)),
                },
                () = sleep_until(deadline) => return Readiness::Failed(StartError::NotNotified { left }),
            }
        }
        let Some(probe) = startup.as_ref() else { return Readiness::Ready };
        loop {
            let result = tokio::select! {
                how = process.wait() => return Readiness::Exited(how),
                r = run_probe(Some(probe), *next_probe_at) => r,
            };
            let now = Instant::now();
            match result {
                Ok(()) => return Readiness::Ready,
                Err(error) if now >= deadline => {
                    return Readiness::Failed(StartError::StartupProbe {
                        deadline: HumanDuration(probe.deadline),
                        error,
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "startup probe not passed yet");
                    *next_probe_at = (now + probe.period).min(deadline);
                }
            }
        }
    }
}

/// Time a process with `READY=1` notification but no startup probe has to become ready.
const DEFAULT_READY_DEADLINE: Duration = Duration::from_secs(30);

/// A version ready to be spawned: artifact in hand, placeholders expanded.
struct Prepared {
    artifact_path: PathBuf,
    resolved: Resolved,
}

impl Prepared {
    /// Until when a process started at `start` has to become ready: its startup probe's
    /// deadline, or [`DEFAULT_READY_DEADLINE`].
    fn ready_deadline(&self, start: Instant) -> Instant {
        start + self.resolved.startup.as_ref().map_or(DEFAULT_READY_DEADLINE, |s| s.deadline)
    }
}

/// Fetches the artifact of `d` and expands its placeholders. `${artifact}` is the cached
/// file, or for a signal-reload sidecar the stable link that is switched to it.
async fn prepare(shared: &Shared, d: &DesiredSidecar) -> Result<Prepared, StartError> {
    let artifact_path = shared.cache.fetch(&d.artifact).await?;
    let who = identity(shared);
    let exe = hot::SignalFiles::of(&shared.config, &who, d).map_or_else(|| artifact_path.clone(), |f| f.link);
    let resolved = resolve(&who, d, &exe)?;
    Ok(Prepared { artifact_path, resolved })
}

/// One attempt of `probe` at `at`; never resolves without a probe.
async fn run_probe(probe: Option<&ResolvedProbe>, at: Instant) -> Result<(), ProbeError> {
    let Some(p) = probe else { return std::future::pending().await };
    sleep_until(at).await;
    crate::probe::run(p.check(), p.timeout).await
}

/// The next restart a scraper asks for; never resolves without one.
async fn scrape_restart(scraper: Option<&mut Scraper>) -> String {
    match scraper {
        Some(s) => s.restart_requested().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What woke a supervising actor.
enum Event {
    Exited(String),
    Probe(Result<(), ProbeError>),
    Stable,
    /// A series with `restart: true` breached its bounds.
    Breach(String),
}

struct Actor {
    name: String,
    shared: Arc<Shared>,
    rx: watch::Receiver<Target>,
    settled: watch::Sender<u64>,
    current: Option<Current>,
    /// The target last acted on, to notice a new one.
    last_target: Option<DesiredSidecar>,
    /// Consecutive failures to keep the desired version running: unexpected exits, failed
    /// startups, refused artifacts while nothing runs. Reset by a stable process or a new
    /// target.
    failures: u32,
    /// Consecutive failures to prepare an upgrade while the old version runs.
    upgrade_failures: u32,
    /// No new attempt (start, or upgrade preparation) before this.
    retry_at: Option<Instant>,
    /// The next spawn replaces a process that failed: it counts as a restart.
    restart_pending: bool,
    restarts: u32,
    exits: u32,
    /// The agent-owned sockets of this sidecar.
    sockets: SocketSet,
    /// The version the last upgrade replaced, while the new one is in its first minutes.
    probation: Option<Probation>,
    /// The target given up after its crash loop, and what runs instead.
    fallback: Option<Fallback>,
}

impl Actor {
    fn launch(
        shared: Arc<Shared>,
        name: String,
        desired: DesiredSidecar,
        current: Option<Current>,
        sockets: SocketSet,
        restarts: u32,
        exits: u32,
    ) -> ActorHandle {
        let (tx, rx) = watch::channel(Target { seq: 0, desired: Some(desired) });
        let (settled_tx, settled) = watch::channel(0);
        let actor = Self {
            name: name.clone(),
            shared,
            rx,
            settled: settled_tx,
            current,
            last_target: None,
            failures: 0,
            upgrade_failures: 0,
            retry_at: None,
            restart_pending: false,
            restarts,
            exits,
            sockets,
            probation: None,
            fallback: None,
        };
        let task = tokio::spawn(actor.run());
        ActorHandle { name, tx, settled, task }
    }

    async fn run(mut self) {
        loop {
            let target = self.rx.borrow_and_update().clone();
            let flow = match target.desired {
                None => self.converge_to_nothing(target.seq).await,
                Some(d) => {
                    self.note_target(&d);
                    self.converge_to(d).await
                }
            };
            if flow == Flow::Exit {
                return;
            }
        }
    }

    fn update(&self, edit: impl FnOnce(&mut outrider_model::SidecarStatus)) {
        self.shared.board.update(&self.name, edit);
    }

    fn in_crash_loop(&self) -> bool {
        self.failures >= self.shared.config.crash_loop_threshold.max(1)
    }

    /// The state to show for a process that runs.
    fn running_state(&self, ready: bool) -> SidecarState {
        match (self.in_crash_loop(), ready) {
            (true, _) => SidecarState::CrashLoop,
            (false, true) => SidecarState::Running,
            (false, false) => SidecarState::Starting,
        }
    }

    /// A different target than before wipes the failure history: a fixed version is tried
    /// at once, not after the backoff its predecessor earned.
    fn note_target(&mut self, d: &DesiredSidecar) {
        if self.last_target.as_ref().is_some_and(|prev| needs_restart(prev, d)) {
            self.failures = 0;
            self.upgrade_failures = 0;
            self.retry_at = None;
            self.probation = None;
            self.fallback = None;
        }
        self.last_target = Some(d.clone());
    }

    /// Counts a failure and schedules the next attempt; returns the delay.
    fn note_failure(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.shared.config.backoff.delay(self.failures - 1);
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    async fn converge_to(&mut self, d: DesiredSidecar) -> Flow {
        // A target given up after its crash loop: the version it replaced runs instead.
        let d = self.fallback.as_ref().map_or(d, |f| f.previous.clone());
        let Some(cur) = &self.current else { return self.start(d).await };
        if needs_restart(&cur.desired, &d) {
            return self.upgrade(d).await;
        }
        if cur.desired != d {
            self.refresh(d);
        }
        self.supervise(None).await
    }

    /// Takes over probe and drain-time changes of the running version.
    fn refresh(&mut self, d: DesiredSidecar) {
        let shared = self.shared.clone();
        let Some(cur) = self.current.as_mut() else { return };
        if cur.desired.lifecycle.startup_probe != d.lifecycle.startup_probe
            || cur.desired.lifecycle.liveness_probe != d.lifecycle.liveness_probe
        {
            match resolve(&identity(&shared), &d, &cur.artifact_path) {
                Ok(r) => {
                    if !cur.ready {
                        cur.startup = r.startup;
                    }
                    cur.liveness = r.liveness;
                    cur.liveness_failures = 0;
                }
                Err(e) => {
                    tracing::warn!(sidecar = %self.name, error = %e, "cannot expand the new probes; keeping the old ones")
                }
            }
        }
        if cur.desired.lifecycle.scrape != d.lifecycle.scrape {
            // Scraped again with the new setting from the next supervision on.
            cur.scraper = None;
            cur.scrape_started = false;
        }
        cur.desired = d;
    }

    /// Nothing runs: start `d` (once any backoff has passed).
    async fn start(&mut self, d: DesiredSidecar) -> Flow {
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            if !self.sockets.is_empty() {
                // Nothing serves until the next attempt: refuse clients rather than queue them.
                tracing::info!(sidecar = %self.name, retry_in = ?at.saturating_duration_since(Instant::now()),
                    "nothing runs until the next attempt; closing the agent-owned sockets");
                self.sockets.close();
            }
            tokio::select! {
                () = sleep_until(at) => {}
                r = self.rx.changed() => return on_changed(r),
            }
        }
        self.retry_at = None;
        let state = if self.in_crash_loop() { SidecarState::CrashLoop } else { SidecarState::Starting };
        self.update(|s| {
            s.version.clone_from(&d.version);
            s.state = state;
            s.pid = None;
        });
        let shared = self.shared.clone();
        let prepared = tokio::select! {
            p = prepare(&shared, &d) => p,
            r = self.rx.changed() => return on_changed(r),
        };
        match prepared {
            Ok(p) => self.spawn_process(d, p).await,
            Err(e) => {
                self.fail(&d, e);
                Flow::Continue
            }
        }
    }

    /// Reports that `d` cannot run and schedules a retry.
    fn fail(&mut self, d: &DesiredSidecar, error: impl std::error::Error) {
        let delay = self.note_failure();
        let msg = error.to_string();
        tracing::warn!(sidecar = %self.name, version = %d.version, error = %msg, retry_in = ?delay, "sidecar cannot run");
        self.update(|s| {
            s.version.clone_from(&d.version);
            s.state = SidecarState::Failed;
            s.pid = None;
            s.error = Some(msg.clone());
        });
        self.on_probation_failure(&d.version, &msg);
    }

    /// Counts a failure of `version` against the probation of the last upgrade; once the new
    /// version has failed too often in its first minutes, gives it up for the version it
    /// replaced, to be started at once.
    fn on_probation_failure(&mut self, version: &str, last: &str) {
        let now = Instant::now();
        let threshold = self.shared.config.crash_loop_threshold;
        let Some(p) = self.probation.as_mut() else { return };
        if p.over(now) {
            self.probation = None;
            return;
        }
        let Some(failures) = p.failed(version, now, threshold) else { return };
        let (Some(p), Some(target)) = (self.probation.take(), self.last_target.clone()) else { return };
        let error = UpgradeError::CrashLoopFellBack {
            version: version.to_owned(),
            old: p.previous.version.clone(),
            failures,
            window: HumanDuration(self.shared.config.upgrade_probation),
            last: last.to_owned(),
        };
        let msg = error.to_string();
        tracing::warn!(sidecar = %self.name, version, back_on = %p.previous.version, error = %msg,
            "the new version crash-loops in its first minutes; going back to the version it replaced");
        self.fallback = Some(Fallback { target, previous: p.previous });
        self.failures = 0;
        self.retry_at = None;
        let failed = version.to_owned();
        self.update(|s| {
            s.state = SidecarState::Starting;
            s.error = Some(msg);
            s.failed_upgrade = Some(failed);
        });
    }

    /// Puts the version just upgraded to on probation, remembering `previous`.
    fn start_probation(&mut self, previous: &DesiredSidecar, version: &str) {
        let window = self.shared.config.upgrade_probation;
        self.probation = Some(Probation::new(previous.clone(), version, Instant::now(), window));
    }

    async fn spawn_process(&mut self, d: DesiredSidecar, p: Prepared) -> Flow {
        match self.launch_generation(&d, p).await {
            Ok(cur) => self.install(cur).await,
            Err(e) => self.fail(&d, e),
        }
        Flow::Continue
    }

    /// Starts a process of `d`: its agent-owned sockets at fds 3…, a fresh `NOTIFY_SOCKET`
    /// when it notifies readiness, the handover and pid-file variables of its handover kind.
    /// The process is returned, not yet installed as the current one.
    async fn launch_generation(&mut self, d: &DesiredSidecar, p: Prepared) -> Result<Current, StartError> {
        let shared = self.shared.clone();
        let config = &shared.config;
        self.sockets.bind(&p.resolved.sockets)?;
        let notify = if d.lifecycle.notify_ready {
            Some(NotifySocket::bind(&config.run_dir(), &self.name).map_err(StartError::NotifySocket)?)
        } else {
            None
        };
        let mut lifecycle_env = self.sockets.env();
        if let Some(n) = &notify {
            lifecycle_env.push(("NOTIFY_SOCKET", n.path().display().to_string()));
        }
        let who = identity(&shared);
        lifecycle_env.extend(hot::handover_env(config, &who, d));
        if let Some(files) = hot::SignalFiles::of(config, &who, d) {
            files.install(&p.artifact_path, &d.version).map_err(StartError::ExecutableLink)?;
        }
        let mut fds = Vec::new();
        for (child_fd, listener) in self.sockets.fd_table() {
            let dup = std::os::fd::AsFd::as_fd(listener).try_clone_to_owned().map_err(StartError::DuplicateSocket)?;
            fds.push((child_fd, dup));
        }
        let log_path = config.logs_dir().join(format!("{}.log", self.name));
        let now_text =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let spec = SpawnSpec {
            argv: &p.resolved.argv,
            env: &p.resolved.env,
            outrider_env: [
                ("OUTRIDER_INSTANCE", &config.instance),
                ("OUTRIDER_SERVICE", &config.service),
                ("OUTRIDER_SIDECAR", &self.name),
                ("OUTRIDER_VERSION", &d.version),
            ],
            lifecycle_env,
            fds,
            log_path: &log_path,
            banner: format!("--- outrider {now_text}: starting {} version {}", self.name, d.version),
        };
        let (process, start_time) = process::spawn(spec)
            .await
            .map_err(|error| StartError::Spawn { program: p.resolved.argv[0].clone(), error })?;
        tracing::info!(sidecar = %self.name, version = %d.version, pid = process.pid(), "sidecar started");
        let ready_deadline = p.ready_deadline(Instant::now());
        Ok(Current::starting(process, start_time, d, p, notify, ready_deadline))
    }

    /// Makes `cur` the current process: records it for re-adoption and reports it.
    async fn install(&mut self, cur: Current) {
        if std::mem::take(&mut self.restart_pending) {
            self.restarts = self.restarts.saturating_add(1);
        }
        self.save_record(&cur, None).await;
        let pid = cur.process.pid();
        let state = self.running_state(cur.ready);
        let (restarts, exits) = (self.restarts, self.exits);
        let version = cur.desired.version.clone();
        let failed_upgrade = self.fallback.as_ref().map(|f| f.target.version.clone());
        self.update(|s| {
            s.version = version;
            s.state = state;
            s.pid = Some(pid);
            s.restarts = restarts;
            s.exits = exits;
            s.failed_upgrade = failed_upgrade;
        });
        self.current = Some(cur);
    }

    /// Persists the record of `cur` (and of a new generation starting beside it).
    async fn save_record(&self, cur: &Current, successor: Option<&Current>) {
        let record = Record {
            name: self.name.clone(),
            version: cur.desired.version.clone(),
            pid: cur.process.pid(),
            start_time_ticks: cur.start_time,
            restarts: self.restarts,
            exits: self.exits,
            desired: cur.desired.clone(),
            successor: successor.map(|n| Successor {
                pid: n.process.pid(),
                start_time_ticks: n.start_time,
                desired: n.desired.clone(),
            }),
        };
        if let Err(e) = self.shared.records.save(&record).await {
            tracing::warn!(sidecar = %self.name, error = %e, "cannot persist the sidecar record; a restarted agent will not re-adopt it");
        }
    }

    /// A process runs but `d` wants another one. All upgrade modes restart for now: get the
    /// new version ready, then stop the old process and start the new one.
    async fn upgrade(&mut self, d: DesiredSidecar) -> Flow {
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return self.supervise(Some(at)).await;
        }
        self.retry_at = None;
        let shared = self.shared.clone();
        let Some(cur) = self.current.as_mut() else { return Flow::Continue };
        let outcome = tokio::select! {
            p = prepare(&shared, &d) => Ok(p),
            r = self.rx.changed() => return on_changed(r),
            how = cur.process.wait() => Err(how),
        };
        let prepared = match outcome {
            Err(how) => {
                self.on_exit(how).await;
                return Flow::Continue;
            }
            Ok(Err(e)) => {
                self.upgrade_failed(&d, UpgradeError::Prepare(e));
                return Flow::Continue;
            }
            Ok(Ok(p)) => p,
        };
        match d.mode {
            UpgradeMode::Hot => self.hot_upgrade(d, prepared).await,
            UpgradeMode::Warm => self.warm_upgrade(d, prepared).await,
            UpgradeMode::Restart | UpgradeMode::OnDeploy => self.restart_upgrade(d, prepared).await,
        }
    }

    /// The upgrade to `d` did not happen and the running version keeps running: report it
    /// and retry after a backoff.
    fn upgrade_failed(&mut self, d: &DesiredSidecar, error: UpgradeError) {
        let msg = error.to_string();
        self.upgrade_failures = self.upgrade_failures.saturating_add(1);
        let delay = self.shared.config.backoff.delay(self.upgrade_failures - 1);
        self.retry_at = Some(Instant::now() + delay);
        tracing::warn!(sidecar = %self.name, version = %d.version, error = %msg, retry_in = ?delay,
            "cannot upgrade sidecar; the running version keeps running");
        let running = self.current.as_ref().map(|c| (c.desired.version.clone(), c.process.pid(), c.ready));
        let state = self.running_state(running.as_ref().is_none_or(|r| r.2));
        let target = d.version.clone();
        self.update(|s| {
            if let Some((version, pid, _)) = running {
                s.version = version;
                s.pid = Some(pid);
                s.state = state;
            }
            s.error = Some(msg);
            s.failed_upgrade = Some(target);
        });
    }

    /// Restart mode: stop the old process (SIGTERM, drain time, SIGKILL), then start `d`.
    async fn restart_upgrade(&mut self, d: DesiredSidecar, prepared: Prepared) -> Flow {
        let Some(mut old) = self.current.take() else { return Flow::Continue };
        tracing::info!(sidecar = %self.name, from = %old.desired.version, to = %d.version, mode = %d.mode, pid = old.process.pid(),
            "upgrading sidecar (stop, then start)");
        self.update(|s| s.state = SidecarState::Upgrading);
        let how = old.process.terminate(old.desired.lifecycle.drain_time.0).await;
        tracing::info!(sidecar = %self.name, version = %old.desired.version, %how, "old version stopped");
        self.remove_record().await;
        self.failures = 0;
        self.upgrade_failures = 0;
        self.restart_pending = false;
        self.start_probation(&old.desired, &d.version);
        self.spawn_process(d, prepared).await
    }

    /// Watches the running process until something needs a decision: a new target, its
    /// exit, a failed startup or liveness check, or `wake_at`.
    async fn supervise(&mut self, wake_at: Option<Instant>) -> Flow {
        let stable_after = self.shared.config.stable_after;
        loop {
            let Some(cur) = self.current.as_mut() else { return Flow::Continue };
            if !cur.ready {
                let readiness = tokio::select! {
                    biased;
                    r = self.rx.changed() => return on_changed(r),
                    r = cur.readiness() => r,
                    () = sleep_until_opt(wake_at), if wake_at.is_some() => return Flow::Continue,
                };
                if let Some(flow) = self.on_readiness(readiness).await {
                    return flow;
                }
                continue;
            }
            if !cur.scrape_started {
                self.start_scraper();
            }
            let Some(cur) = self.current.as_mut() else { return Flow::Continue };
            let probe = cur.liveness.as_ref();
            let probe_at = cur.next_probe_at;
            let stable_at = (cur.ready && !cur.stable).then(|| cur.spawned_at + stable_after);
            let scraping = cur.scraper.is_some();
            let event = tokio::select! {
                biased;
                r = self.rx.changed() => return on_changed(r),
                how = cur.process.wait() => Event::Exited(how),
                res = run_probe(probe, probe_at), if probe.is_some() => Event::Probe(res),
                why = scrape_restart(cur.scraper.as_mut()), if scraping => Event::Breach(why),
                () = sleep_until_opt(stable_at), if stable_at.is_some() => Event::Stable,
                () = sleep_until_opt(wake_at), if wake_at.is_some() => return Flow::Continue,
            };
            match event {
                Event::Exited(how) => {
                    self.on_exit(how).await;
                    return Flow::Continue;
                }
                Event::Probe(res) => {
                    if let Some(flow) = self.on_probe(res).await {
                        return flow;
                    }
                }
                Event::Stable => self.on_stable(),
                Event::Breach(why) => {
                    if let Some(cur) = self.current.as_mut() {
                        tracing::warn!(sidecar = %self.name, version = %cur.desired.version, error = %why,
                            "the sidecar breached a bound set to restart it; killing it");
                        cur.process.kill().await;
                    }
                    self.on_exit(format!("{why}; killed (restart: true)")).await;
                    return Flow::Continue;
                }
            }
        }
    }

    /// Starts scraping the ready current process if its sidecar has a `scrape` setting.
    fn start_scraper(&mut self) {
        let shared = self.shared.clone();
        let Some(cur) = self.current.as_mut() else { return };
        cur.scrape_started = true;
        let Some(setting) = cur.desired.lifecycle.scrape.clone() else { return };
        match expand_setting(&identity(&shared), "scrape.url", &setting.url) {
            Ok(url) => {
                let board = shared.board.clone();
                cur.scraper = Some(Scraper::start(board, self.name.clone(), cur.process.pid(), url, setting));
            }
            Err(e) => tracing::warn!(sidecar = %self.name, error = %e, "the sidecar's metrics are not scraped"),
        }
    }

    /// The process is ready and has run `stable_after`: its predecessors' failures are
    /// forgiven and the last error, kept visible until now, is cleared (unless an upgrade is
    /// pending: its error stays until the upgrade succeeds).
    fn on_stable(&mut self) {
        let Some(cur) = self.current.as_mut() else { return };
        cur.stable = true;
        self.failures = 0;
        let upgrade_pending = self.upgrade_failures > 0 || self.fallback.is_some();
        let state = self.running_state(true);
        self.update(|s| {
            s.state = state;
            if !upgrade_pending {
                s.error = None;
            }
        });
    }

    /// Acts on the end of the current process's wait for readiness; `Some` when the process
    /// is gone and the caller must return.
    async fn on_readiness(&mut self, readiness: Readiness) -> Option<Flow> {
        match readiness {
            Readiness::Ready => {
                let cur = self.current.as_mut()?;
                cur.ready = true;
                cur.next_probe_at = Instant::now() + cur.liveness.as_ref().map_or(Duration::ZERO, |l| l.period);
                tracing::info!(sidecar = %self.name, version = %cur.desired.version, "sidecar is ready");
                let state = self.running_state(true);
                self.update(|s| s.state = state);
                None
            }
            Readiness::Exited(how) => {
                self.on_exit(how).await;
                Some(Flow::Continue)
            }
            Readiness::Failed(e) => {
                let mut cur = self.current.take()?;
                let how = cur.process.kill().await;
                tracing::warn!(sidecar = %self.name, version = %cur.desired.version, %how, error = %e, "sidecar did not become ready; killed");
                self.remove_record().await;
                self.restart_pending = true;
                self.fail(&cur.desired, e);
                Some(Flow::Continue)
            }
        }
    }

    /// Acts on one probe result; `Some` when the process is gone and the caller must return.
    async fn on_probe(&mut self, res: Result<(), ProbeError>) -> Option<Flow> {
        let now = Instant::now();
        let cur = self.current.as_mut()?;
        let liveness = cur.liveness.as_ref()?;
        cur.next_probe_at = now + liveness.period;
        match res {
            Ok(()) => cur.liveness_failures = 0,
            Err(e) => {
                cur.liveness_failures += 1;
                let failures = cur.liveness_failures;
                tracing::warn!(sidecar = %self.name, error = %e, failures, "liveness probe failed");
                if failures >= liveness.failure_threshold {
                    cur.process.kill().await;
                    self.on_exit(format!("liveness probe failed {failures} times in a row ({e}); killed")).await;
                    return Some(Flow::Continue);
                }
            }
        }
        None
    }

    /// The process ended without being asked to: schedule a restart with backoff.
    async fn on_exit(&mut self, how: String) {
        let Some(cur) = self.current.take() else { return };
        cur.process.kill_leftovers();
        if cur.stable || (cur.ready && cur.spawned_at.elapsed() >= self.shared.config.stable_after) {
            self.failures = 0;
        }
        self.exits = self.exits.saturating_add(1);
        self.restart_pending = true;
        let delay = self.note_failure();
        self.remove_record().await;
        let crash_loop = self.in_crash_loop();
        tracing::warn!(sidecar = %self.name, version = %cur.desired.version, pid = cur.process.pid(), %how,
            retry_in = ?delay, crash_loop, "sidecar exited unexpectedly");
        let exits = self.exits;
        self.update(|s| {
            s.state = if crash_loop { SidecarState::CrashLoop } else { SidecarState::Starting };
            s.pid = None;
            s.exits = exits;
            s.error = Some(how.clone());
        });
        self.on_probation_failure(&cur.desired.version, &how);
    }

    async fn remove_record(&self) {
        if let Err(e) = self.shared.records.remove(&self.name).await {
            tracing::warn!(sidecar = %self.name, error = %e, "cannot delete the sidecar record");
        }
    }

    /// Not desired (any more): stop the process, forget the sidecar, wait for news.
    async fn converge_to_nothing(&mut self, seq: u64) -> Flow {
        if let Some(mut cur) = self.current.take() {
            self.update(|s| s.state = SidecarState::Draining);
            tracing::info!(sidecar = %self.name, version = %cur.desired.version, pid = cur.process.pid(), "stopping sidecar");
            let how = cur.process.terminate(cur.desired.lifecycle.drain_time.0).await;
            self.remove_record().await;
            tracing::info!(sidecar = %self.name, %how, "sidecar stopped");
        }
        self.shared.board.remove(&self.name);
        self.sockets.close();
        self.failures = 0;
        self.upgrade_failures = 0;
        self.retry_at = None;
        self.restart_pending = false;
        self.restarts = 0;
        self.exits = 0;
        self.last_target = None;
        self.probation = None;
        self.fallback = None;
        self.settled.send_replace(seq);
        on_changed(self.rx.changed().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(version: &str) -> DesiredSidecar {
        outrider_model::testing::desired_sidecar("mesh", version)
    }

    #[test]
    fn only_identity_changes_need_a_new_process() {
        let a = desired("1.0.0");
        let mut b = a.clone();
        b.lifecycle.drain_time = HumanDuration::from_secs(5);
        b.mode = UpgradeMode::Hot;
        b.lifecycle.liveness_probe = Some(outrider_model::Probe::http("http://x"));
        b.artifact.url = "http://mirror/sh".into();
        assert!(!needs_restart(&a, &b));
        for change in [
            |d: &mut DesiredSidecar| d.version = "2.0.0".into(),
            |d: &mut DesiredSidecar| d.artifact.sha256 = "b".repeat(64),
            |d: &mut DesiredSidecar| d.command.push("-x".into()),
            |d: &mut DesiredSidecar| drop(d.env.insert("A".into(), "1".into())),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert!(needs_restart(&a, &c));
        }
    }
}
