//! The process supervisor: converges the sidecar processes on this host towards a desired
//! set, and re-adopts the ones an earlier agent process left running.
//!
//! Design:
//! - one tokio task (an *actor*) per sidecar, fed by a `watch` channel holding the desired
//!   sidecar (`None` = stop and remove it). Actors are level-triggered: each pass compares
//!   what is wanted with what runs and takes one step (start, upgrade, supervise, stop), so
//!   repeated or coalesced updates are harmless;
//! - a status board shared by the actors, read by [`Runtime::status`];
//! - a stats task sampling CPU and memory from `/proc`.
//!
//! An actor lives as long as the supervisor, also after its sidecar was removed (it then
//! idles with nothing running), so a removal followed by a re-add never races two actors.
//!
//! Upgrade modes: the supervisor converges to whatever version it is given, in the mode it
//! names (`actor/hot.rs`, `actor/warm.rs`, restart in `actor/mod.rs`); `on-deploy` is the
//! sync layer's business (it decides when to pass the new version) and is carried out like
//! `restart` here. A new version that crash-loops in its first minutes falls back to the
//! one it replaced (`actor/probation.rs`).
//!
//! Sidecars outlive the agent: they run in their own process groups, write to log files, and
//! are never killed when the supervisor is dropped. Each running sidecar has a record in
//! `<data-dir>/sidecars/<name>.json` (pid and process start time) so the next agent process
//! re-adopts it instead of starting a second copy.
//!
//! Data dir layout: `sidecars/<name>.json`, `artifacts/<sha256>`, `logs/<name>.log`.

mod actor;
mod board;
mod notify;
mod process;
mod record;
mod resolve;
mod scraper;
mod sockets;
mod stats;

use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use outrider_model::{DesiredSidecar, InstanceLabels, SidecarStatus};
use thiserror::Error;
use tokio::{sync::watch, task::JoinHandle};

use crate::{Runtime, artifact::ArtifactCache, backoff::Backoff};
use actor::ActorHandle;
use board::StatusBoard;
use process::Process;
use record::{Record, RecordStore};

/// Everything the supervisor needs, with tunables that tests may shorten.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// This instance's id (`${instance}`, `OUTRIDER_INSTANCE`).
    pub instance: String,
    /// This instance's service (`${service}`, `OUTRIDER_SERVICE`).
    pub service: String,
    /// This instance's labels (`${label.KEY}`).
    pub labels: InstanceLabels,
    /// Client for `http://` artifacts.
    pub http: reqwest::Client,
    /// Delay before restarting after consecutive failures (default 250 ms doubling to 30 s).
    pub backoff: Backoff,
    /// A process that ran this long resets the consecutive-failure count (default 10 s).
    pub stable_after: Duration,
    /// Consecutive failures from which a sidecar is reported as `crash_loop` (default 3).
    /// As many failures of a new version within `upgrade_probation` of its upgrade make the
    /// agent go back to the version it replaced.
    pub crash_loop_threshold: u32,
    /// How long after an upgrade a crash-looping new version falls back to the version it
    /// replaced (default 3 min).
    pub upgrade_probation: Duration,
    /// Period of CPU and memory sampling (default 2 s).
    pub stats_interval: Duration,
    /// How often the exit of an adopted (not our child) process is checked (default 250 ms).
    pub adopted_poll_interval: Duration,
    /// Largest artifact accepted (default 1 GiB).
    pub max_artifact_bytes: u64,
}

impl SupervisorConfig {
    /// A configuration with default tunables.
    pub fn new(
        data_dir: PathBuf,
        instance: impl Into<String>,
        service: impl Into<String>,
        labels: InstanceLabels,
        http: reqwest::Client,
    ) -> Self {
        Self {
            data_dir,
            instance: instance.into(),
            service: service.into(),
            labels,
            http,
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(10),
            crash_loop_threshold: 3,
            upgrade_probation: Duration::from_secs(180),
            stats_interval: Duration::from_secs(2),
            adopted_poll_interval: Duration::from_millis(250),
            max_artifact_bytes: crate::artifact::DEFAULT_MAX_BYTES,
        }
    }

    /// `<data-dir>/sidecars`: the records of running sidecars.
    pub fn sidecars_dir(&self) -> PathBuf {
        self.data_dir.join("sidecars")
    }

    /// `<data-dir>/artifacts`: the artifact cache.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    /// `<data-dir>/logs`: one `<name>.log` per sidecar (stdout and stderr).
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// `<data-dir>/run`: notify and handover sockets, pid and version files, stable links.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
}

/// Why the supervisor could not start.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// A directory under the data dir cannot be created.
    #[error("cannot create {}: {error}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

/// State shared by the supervisor, its actors and its stats task.
struct Shared {
    config: SupervisorConfig,
    board: Arc<StatusBoard>,
    cache: ArtifactCache,
    records: RecordStore,
}

/// Runs the sidecars of this instance as local processes. See the [module docs](self).
pub struct Supervisor {
    shared: Arc<Shared>,
    actors: Mutex<BTreeMap<String, ActorHandle>>,
    stats: JoinHandle<()>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("data_dir", &self.shared.config.data_dir).finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Prepares the data dir, re-adopts the sidecars an earlier agent process left running
    /// (verified by pid and process start time; anything else is not touched and its record
    /// is dropped), and starts supervising. Adopted sidecars keep running as they are until
    /// [`Runtime::apply`] says otherwise. Must be called within a tokio runtime.
    pub fn start(config: SupervisorConfig) -> Result<Arc<Self>, SupervisorError> {
        for path in [config.sidecars_dir(), config.artifacts_dir(), config.logs_dir(), config.run_dir()] {
            std::fs::create_dir_all(&path).map_err(|error| SupervisorError::DataDir { path, error })?;
        }
        let cache =
            ArtifactCache::new(config.artifacts_dir(), config.http.clone()).with_max_bytes(config.max_artifact_bytes);
        if let Err(e) = cache.remove_stale_temp_files() {
            tracing::warn!(error = %e, "could not clean the artifact cache");
        }
        let shared = Arc::new(Shared {
            records: RecordStore::new(config.sidecars_dir()),
            board: Arc::new(StatusBoard::new()),
            cache,
            config,
        });
        let mut actors = BTreeMap::new();
        for record in shared.records.load_all() {
            if let Some(handle) = adopt(&shared, record) {
                actors.insert(handle.name().to_owned(), handle);
            }
        }
        let stats = tokio::spawn(stats::sample_forever(shared.board.clone(), shared.config.stats_interval));
        Ok(Arc::new(Self { shared, actors: Mutex::new(actors), stats }))
    }

    fn actors(&self) -> MutexGuard<'_, BTreeMap<String, ActorHandle>> {
        self.actors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every sidecar (SIGTERM, drain time, SIGKILL), deletes their records, and returns
    /// once all are down. Only for an explicit request: an agent that merely exits leaves
    /// its sidecars running. A later [`Runtime::apply`] starts them again.
    pub async fn stop_all(&self) {
        let waits: Vec<_> = self.actors().values().map(|a| a.stopped(a.set(None))).collect();
        for wait in waits {
            wait.await;
        }
    }
}

/// Re-adopts the process of `record` if it is still the very process that was recorded.
///
/// An agent that died in the middle of a hot upgrade left two processes: the old one, and
/// the new one not yet known to be ready. The old one is kept and the new one killed (the
/// upgrade starts over); if the old one is gone, the new one is adopted in its place.
fn adopt(shared: &Arc<Shared>, mut record: Record) -> Option<ActorHandle> {
    let name = record.name.clone();
    if let Some(successor) = record.successor.take() {
        let main_alive = outrider_procfs::is_same_live_process(record.pid, record.start_time_ticks);
        let successor_alive = outrider_procfs::is_same_live_process(successor.pid, successor.start_time_ticks);
        if successor_alive && main_alive {
            tracing::warn!(sidecar = %name, pid = successor.pid, version = %successor.desired.version,
                "an earlier agent died during a hot upgrade; killing the unconfirmed new process");
            kill_verified(successor.pid, successor.start_time_ticks, shared.config.adopted_poll_interval);
        } else if successor_alive {
            tracing::warn!(sidecar = %name, pid = successor.pid, version = %successor.desired.version,
                "an earlier agent died during a hot upgrade and the old process is gone; adopting the new one");
            record.pid = successor.pid;
            record.start_time_ticks = successor.start_time_ticks;
            record.version = successor.desired.version.clone();
            record.desired = successor.desired;
        }
    }
    if outrider_model::validate_name("name", &name).is_err() || record.desired.name != name {
        tracing::warn!(sidecar = %name, "sidecar record with an invalid name; dropping it");
        shared.records.remove_now(&name);
        return None;
    }
    let stat = outrider_procfs::stat(record.pid);
    let same = matches!(&stat, Ok(s) if record.start_time_ticks != 0
        && s.start_time == record.start_time_ticks && !s.is_exited());
    if !same {
        // Gone, a zombie, or the pid now belongs to another process: never signal it.
        tracing::info!(sidecar = %name, pid = record.pid, "recorded sidecar process is gone; it will be started when desired");
        shared.records.remove_now(&name);
        return None;
    }
    let group_leader = stat.is_ok_and(|s| s.leads_group());
    tracing::info!(sidecar = %name, version = %record.version, pid = record.pid, "re-adopted running sidecar");
    Some(actor::spawn_adopted(shared.clone(), record, group_leader))
}

/// SIGKILLs `pid` (its group too if it leads one) if it is still the process that started
/// at `start_time`.
fn kill_verified(pid: u32, start_time: u64, poll: std::time::Duration) {
    let group_leader = outrider_procfs::stat(pid).is_ok_and(|s| s.leads_group());
    Process::Adopted { pid, start_time, group_leader, poll }.signal(nix::sys::signal::Signal::SIGKILL);
}

impl Runtime for Supervisor {
    fn apply(&self, desired: &[DesiredSidecar]) {
        let mut wanted: BTreeMap<&str, &DesiredSidecar> = BTreeMap::new();
        for d in desired {
            if let Err(e) = outrider_model::validate_name("name", &d.name) {
                tracing::error!(sidecar = %d.name, error = %e, "desired sidecar with an invalid name; ignoring it");
                continue;
            }
            if wanted.insert(&d.name, d).is_some() {
                tracing::warn!(sidecar = %d.name, "sidecar listed twice in the desired set; the last entry wins");
            }
        }
        let mut actors = self.actors();
        for (name, d) in &wanted {
            match actors.get(*name) {
                Some(actor) => {
                    actor.set(Some((*d).clone()));
                }
                None => {
                    let actor = actor::spawn(self.shared.clone(), (*d).clone());
                    actors.insert((*name).to_owned(), actor);
                }
            }
        }
        for (name, actor) in actors.iter() {
            if !wanted.contains_key(name.as_str()) {
                actor.set(None);
            }
        }
    }

    fn status(&self) -> Vec<SidecarStatus> {
        self.shared.board.snapshot()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.board.subscribe()
    }

    fn scrape_counters(&self) -> Vec<crate::ScrapeCounters> {
        self.shared.board.scrape_counters()
    }
}

impl Drop for Supervisor {
    /// Ends supervision without touching the processes: they keep running and the next
    /// supervisor on this data dir re-adopts them.
    fn drop(&mut self) {
        self.stats.abort();
        let actors = self.actors.get_mut().unwrap_or_else(PoisonError::into_inner);
        for actor in actors.values() {
            actor.abort();
        }
    }
}
