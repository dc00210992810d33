//! Hot upgrades: the new generation starts beside the old one, takes the listening sockets
//! over (inherited agent-owned sockets, `SCM_RIGHTS` from the old generation, or the
//! sidecar's own signal reload), and only once it is ready *and has stayed up `min_ready`
//! since* (its readiness being `READY=1` and/or the startup probe, or its spawn when it has
//! neither) does the old one drain and exit. If the new generation never becomes ready, or
//! exits within `min_ready`, it is killed and the old one keeps serving (automatic
//! fallback); the upgrade is reported failed and retried after a backoff.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use nix::sys::signal::Signal;
use outrider_model::{DesiredSidecar, Handover, HumanDuration, SidecarState};
use tokio::time::Instant;

use super::{
    Actor, Current, Flow, Prepared, Readiness,
    error::{StartError, UpgradeError},
    identity, on_changed,
};
use crate::supervisor::{
    SupervisorConfig,
    process::Process,
    resolve::{Identity, expand_setting},
};

/// How often the pid file of a signal-reload sidecar is read while its new generation starts.
const PID_FILE_POLL: Duration = Duration::from_millis(20);

/// The files of a signal-reload sidecar in the run dir.
pub(super) struct SignalFiles {
    /// Stable path of the executable (`${artifact}`): a symlink to the cached artifact.
    pub link: PathBuf,
    /// Where the sidecar writes its pid (`OUTRIDER_PID_FILE`).
    pub pid_file: PathBuf,
    /// Holds the version the next generation runs (`OUTRIDER_VERSION_FILE`).
    pub version_file: PathBuf,
}

impl SignalFiles {
    /// The files of `name`; `None` unless `d` uses the signal handover.
    pub(super) fn of(config: &SupervisorConfig, who: &Identity<'_>, d: &DesiredSidecar) -> Option<Self> {
        let Handover::Signal { pid_file, .. } = &d.lifecycle.handover else { return None };
        let run = config.run_dir();
        let pid_file = pid_file
            .as_deref()
            .and_then(|p| match expand_setting(who, "handover.pid_file", p) {
                Ok(p) => Some(PathBuf::from(p)),
                Err(e) => {
                    tracing::warn!(sidecar = %d.name, error = %e, "using the default pid file");
                    None
                }
            })
            .unwrap_or_else(|| run.join(format!("{}.pid", d.name)));
        Some(Self {
            link: run.join(format!("{}.current", d.name)),
            pid_file,
            version_file: run.join(format!("{}.version", d.name)),
        })
    }

    /// Points the stable link at `artifact` and records `version`, both atomically.
    pub(super) fn install(&self, artifact: &Path, version: &str) -> std::io::Result<()> {
        let tmp = self.link.with_extension("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(artifact, &tmp)?;
        std::fs::rename(&tmp, &self.link)?;
        crate::atomic_file::write_atomic(&self.version_file, version.as_bytes())
    }

    /// The pid the pid file holds, if it holds one.
    fn read_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }
}

/// Variables of the handover kind of `d` for a new generation of sidecar `name`.
pub(super) fn handover_env(
    config: &SupervisorConfig,
    who: &Identity<'_>,
    d: &DesiredSidecar,
) -> Vec<(&'static str, String)> {
    match &d.lifecycle.handover {
        Handover::ListenFds => Vec::new(),
        Handover::ScmRights => vec![(
            "OUTRIDER_HANDOVER_SOCKET",
            config.run_dir().join(format!("{}.handover.sock", d.name)).display().to_string(),
        )],
        Handover::Signal { .. } => SignalFiles::of(config, who, d)
            .map(|f| {
                vec![
                    ("OUTRIDER_PID_FILE", f.pid_file.display().to_string()),
                    ("OUTRIDER_VERSION_FILE", f.version_file.display().to_string()),
                ]
            })
            .unwrap_or_default(),
    }
}

/// What ended the wait for the new generation.
enum Step {
    Changed(Result<(), tokio::sync::watch::error::RecvError>),
    OldExited(String),
    New(Readiness),
    /// It exited while it had to stay up for `min_ready` since its readiness.
    NewExited(String),
    /// It stayed up for `min_ready`.
    Held,
}

/// The next step of a new generation: its readiness, or once it is ready (`held_until` set),
/// its exit or the end of `min_ready`.
async fn next_step(new: &mut Current, held_until: Option<Instant>) -> Step {
    match held_until {
        None => Step::New(new.readiness().await),
        Some(until) => tokio::select! {
            how = new.process.wait() => Step::NewExited(how),
            () = tokio::time::sleep_until(until) => Step::Held,
        },
    }
}

impl Actor {
    /// Hot mode: see the [module docs](self).
    pub(super) async fn hot_upgrade(&mut self, d: DesiredSidecar, p: Prepared) -> Flow {
        if matches!(d.lifecycle.handover, Handover::Signal { .. }) {
            return self.signal_upgrade(d, p).await;
        }
        if !p.resolved.sockets.is_empty() && !self.sockets.matches(&p.resolved.sockets) {
            let why = if self.sockets.is_empty() {
                "the agent does not hold the sidecar's sockets (it could not take them back after its restart)"
            } else {
                "the socket addresses changed"
            };
            tracing::warn!(sidecar = %self.name, version = %d.version, why, "cannot hand the sockets over; upgrading by restart instead");
            return self.restart_upgrade(d, p).await;
        }
        let Some(old_version) = self.current.as_ref().map(|c| c.desired.version.clone()) else {
            return Flow::Continue;
        };
        tracing::info!(sidecar = %self.name, from = %old_version, to = %d.version, handover = ?d.lifecycle.handover,
            "hot upgrade: starting the new version beside the old one");
        self.update(|s| s.state = SidecarState::Upgrading);
        let new = match self.launch_generation(&d, p).await {
            Ok(new) => new,
            Err(error) => {
                self.upgrade_failed(&d, UpgradeError::HotStart { version: d.version.clone(), old: old_version, error });
                return Flow::Continue;
            }
        };
        self.finish_hot(d, &old_version, new, None).await
    }

    /// Waits for `new` to become ready beside the current process and to stay up for
    /// `min_ready`, then retires the old process with `stop` (`None`: SIGTERM to its process
    /// group) or falls back to it.
    async fn finish_hot(
        &mut self,
        d: DesiredSidecar,
        old_version: &str,
        mut new: Current,
        stop: Option<Signal>,
    ) -> Flow {
        if let Some(cur) = &self.current {
            self.save_record(cur, Some(&new)).await;
        }
        let min_ready = d.lifecycle.min_ready.0;
        // When the new generation got ready; it then has to stay up until `+ min_ready`.
        let mut ready_at: Option<Instant> = None;
        let failure = loop {
            let Some(old) = self.current.as_mut() else { return Flow::Continue };
            let step = tokio::select! {
                biased;
                r = self.rx.changed() => Step::Changed(r),
                how = old.process.wait() => Step::OldExited(how),
                step = next_step(&mut new, ready_at.map(|r| r + min_ready)) => step,
            };
            match step {
                Step::Changed(r) => {
                    // A new target: drop this attempt; the next pass starts from what runs.
                    self.abandon(&mut new, stop.is_some()).await;
                    tracing::info!(sidecar = %self.name, version = %d.version, "hot upgrade abandoned for a new target");
                    self.update(|s| s.state = SidecarState::Running);
                    return on_changed(r);
                }
                Step::OldExited(how) => {
                    tracing::warn!(sidecar = %self.name, version = %old_version, %how, "the old version exited during the hot upgrade");
                    if let Some(old) = self.current.take() {
                        old.process.kill_leftovers();
                        self.start_probation(&old.desired, &d.version);
                    }
                    self.exits = self.exits.saturating_add(1);
                    self.install(new).await;
                    return Flow::Continue;
                }
                Step::New(Readiness::Ready) if min_ready.is_zero() => break None,
                Step::New(Readiness::Ready) => {
                    tracing::info!(sidecar = %self.name, version = %d.version, pid = new.process.pid(), min_ready = %d.lifecycle.min_ready,
                        "hot upgrade: the new version is ready; it must stay up for min_ready before the old one drains");
                    ready_at = Some(Instant::now());
                }
                Step::New(Readiness::Exited(how)) => break Some(StartError::ExitedBeforeReady(how)),
                Step::New(Readiness::Failed(e)) => break Some(e),
                Step::NewExited(how) => {
                    let after = HumanDuration(ready_at.map_or(Duration::ZERO, |r| r.elapsed()));
                    break Some(StartError::ExitedDuringMinReady { after, min_ready: d.lifecycle.min_ready, how });
                }
                Step::Held => break None,
            }
        };
        if let Some(error) = failure {
            self.abandon(&mut new, stop.is_some()).await;
            let (version, old) = (d.version.clone(), old_version.to_owned());
            self.upgrade_failed(&d, UpgradeError::HotFailed { version, old, error });
            return Flow::Continue;
        }
        new.ready = true;
        new.next_probe_at = Instant::now() + new.liveness.as_ref().map_or(Duration::ZERO, |l| l.period);
        let Some(mut old) = self.current.take() else { return Flow::Continue };
        // From now on the new generation is the one scraped.
        old.scraper = None;
        tracing::info!(sidecar = %self.name, version = %d.version, pid = new.process.pid(), old_pid = old.process.pid(),
            "hot upgrade: the new version is ready; the old one drains");
        match stop {
            None => old.process.signal(Signal::SIGTERM),
            Some(s) => old.process.signal_alone(s),
        }
        self.failures = 0;
        self.upgrade_failures = 0;
        self.install(new).await;
        self.start_probation(&old.desired, &d.version);
        let drain = old.desired.lifecycle.drain_time.0;
        let how = match stop {
            None => old.process.terminate(drain).await,
            Some(s) => old.process.terminate_alone(s, drain).await,
        };
        tracing::info!(sidecar = %self.name, version = %old.desired.version, %how, "old version stopped");
        Flow::Continue
    }

    /// Kills a new generation that will not take over, and records the old one alone again.
    async fn abandon(&mut self, new: &mut Current, alone: bool) {
        let how = if alone {
            new.process.signal_alone(Signal::SIGKILL);
            new.process.wait().await
        } else {
            new.process.kill().await
        };
        tracing::info!(sidecar = %self.name, version = %new.desired.version, %how, "new generation stopped");
        if let Some(cur) = &self.current {
            self.save_record(cur, None).await;
        }
    }

    /// Hot mode for sidecars that upgrade themselves on a signal (nginx-style): swap the
    /// executable behind the stable link, signal the running process, wait for a new pid in
    /// the pid file, check it, then send the stop signal to the old process alone (the new
    /// one is its child, in its process group). A new version with another command line or
    /// environment is carried out as a restart, since the re-executed process keeps both.
    async fn signal_upgrade(&mut self, d: DesiredSidecar, p: Prepared) -> Flow {
        let Handover::Signal { signal, stop_signal, .. } = &d.lifecycle.handover else { return Flow::Continue };
        let (reload, stop) = match (Signal::from_str(signal), Signal::from_str(stop_signal)) {
            (Ok(r), Ok(s)) => (r, s),
            _ => {
                let error = UpgradeError::UnknownSignal { signal: signal.clone(), stop_signal: stop_signal.clone() };
                self.upgrade_failed(&d, error);
                return Flow::Continue;
            }
        };
        if self.current.as_ref().is_some_and(|c| c.desired.command != d.command || c.desired.env != d.env) {
            // The sidecar re-executes itself with its own command line and environment: a
            // change of either can only be applied by starting it afresh.
            tracing::warn!(sidecar = %self.name, version = %d.version,
                "the new version changes the command or the environment, which a signal reload cannot apply; upgrading by restart instead");
            return self.restart_upgrade(d, p).await;
        }
        let shared = self.shared.clone();
        let Some(files) = SignalFiles::of(&shared.config, &identity(&shared), &d) else { return Flow::Continue };
        let Some((old_version, old_pid, old_artifact)) =
            self.current.as_ref().map(|c| (c.desired.version.clone(), c.process.pid(), c.artifact_path.clone()))
        else {
            return Flow::Continue;
        };
        if let Err(e) = files.install(&p.artifact_path, &d.version) {
            self.upgrade_failed(&d, UpgradeError::SwitchLink(e));
            return Flow::Continue;
        }
        tracing::info!(sidecar = %self.name, from = %old_version, to = %d.version, pid = old_pid, %reload,
            "hot upgrade: asking the sidecar to re-execute itself");
        self.update(|s| s.state = SidecarState::Upgrading);
        let deadline = p.ready_deadline(Instant::now());
        if let Some(old) = &self.current {
            old.process.signal_alone(reload);
        }
        let found = self.wait_for_new_pid(&files, old_pid, deadline).await;
        let (pid, start_time) = match found {
            Ok(found) => found,
            Err(error) => {
                if let Err(e) = files.install(&old_artifact, &old_version) {
                    tracing::warn!(sidecar = %self.name, error = %e, "cannot restore the executable link");
                }
                let version = d.version.clone();
                self.upgrade_failed(&d, UpgradeError::HotFailed { version, old: old_version, error });
                return Flow::Continue;
            }
        };
        let group_leader = outrider_procfs::stat(pid).is_ok_and(|s| s.leads_group());
        let process = Process::Adopted { pid, start_time, group_leader, poll: shared.config.adopted_poll_interval };
        let new = Current::starting(process, start_time, &d, p, None, deadline);
        let flow = self.finish_hot(d, &old_version, new, Some(stop)).await;
        let upgraded = self.current.as_ref().is_some_and(|c| c.process.pid() == pid);
        if !upgraded
            && self.current.as_ref().is_some_and(|c| c.process.pid() == old_pid)
            && let Err(e) = files.install(&old_artifact, &old_version)
        {
            tracing::warn!(sidecar = %self.name, error = %e, "cannot restore the executable link");
        }
        flow
    }

    /// Polls the pid file until it names a live process other than `old_pid`.
    async fn wait_for_new_pid(
        &mut self,
        files: &SignalFiles,
        old_pid: u32,
        deadline: Instant,
    ) -> Result<(u32, u64), StartError> {
        loop {
            if let Some(pid) = files.read_pid().filter(|p| *p != old_pid)
                && let Ok(stat) = outrider_procfs::stat(pid)
                && !stat.is_exited()
            {
                return Ok((pid, stat.start_time));
            }
            if let Some(old) = self.current.as_mut() {
                let exited = tokio::select! {
                    how = old.process.wait() => Some(how),
                    () = tokio::time::sleep(PID_FILE_POLL) => None,
                };
                if let Some(how) = exited {
                    return Err(StartError::ExitedAfterReload(how));
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::NoNewPid(files.pid_file.clone()));
            }
        }
    }
}
