//! One sidecar process: spawning it detached from the agent's fate, waiting for its end,
//! signalling its process group, and stopping it with a drain time.
//!
//! Safety rule: a process that is not our child (adopted from an earlier agent) is only
//! signalled after checking that its pid still belongs to the same process (same start
//! time), so a reused pid is never hit.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::{self, Write},
    os::fd::{OwnedFd, RawFd},
    path::Path,
    process::Stdio,
    time::Duration,
};

use command_fds::{CommandFdExt, FdMapping};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use tokio::process::{Child, Command};

/// A sidecar process the supervisor watches.
pub(super) enum Process {
    /// Spawned by this agent: reaped through tokio.
    Child {
        /// The child handle (dropping it neither kills nor orphans the process).
        child: Child,
        /// Its pid, which is also its process group id.
        pid: u32,
        /// Set once the child has been reaped.
        exit: Option<String>,
    },
    /// Started by an earlier agent process and re-adopted: not our child, so its end is
    /// noticed by polling `/proc`.
    Adopted {
        /// Its pid.
        pid: u32,
        /// Its start time in clock ticks, to recognise it.
        start_time: u64,
        /// Whether it leads its own process group (it does if an agent started it).
        group_leader: bool,
        /// How often to look at `/proc`.
        poll: Duration,
    },
}

/// What to start.
pub(super) struct SpawnSpec<'a> {
    /// Program and arguments, expanded.
    pub argv: &'a [String],
    /// The version's environment, expanded.
    pub env: &'a BTreeMap<String, String>,
    /// The `OUTRIDER_*` variables, applied last.
    pub outrider_env: [(&'static str, &'a str); 4],
    /// Variables of the upgrade machinery (`LISTEN_FDS`, `NOTIFY_SOCKET`, …), applied last.
    pub lifecycle_env: Vec<(&'static str, String)>,
    /// Descriptors the child gets at the given numbers (agent-owned sockets at 3, 4, …).
    pub fds: Vec<(RawFd, OwnedFd)>,
    /// File that receives stdout and stderr (appended).
    pub log_path: &'a Path,
    /// A line written to the log before the process starts.
    pub banner: String,
}

/// Builds the command for `spec`: own process group (signals sent to the agent's group do
/// not reach it), stdin from /dev/null, stdout and stderr appended to the log file (a file,
/// not a pipe, so the sidecar survives the agent), the agent's environment without
/// `OUTRIDER_TOKEN` plus the version's and the `OUTRIDER_*` variables, and not killed when the
/// handle is dropped.
pub(super) fn command(spec: SpawnSpec<'_>) -> io::Result<Command> {
    let (program, args) =
        spec.argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut log = OpenOptions::new().create(true).append(true).open(spec.log_path)?;
    writeln!(log, "{}", spec.banner)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove(crate::secrets::TOKEN_ENV)
        .envs(spec.env)
        .envs(spec.outrider_env)
        .envs(spec.lifecycle_env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    if !spec.fds.is_empty() {
        let mappings = spec.fds.into_iter().map(|(child_fd, parent_fd)| FdMapping { parent_fd, child_fd }).collect();
        cmd.fd_mappings(mappings).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    Ok(cmd)
}

/// Starts `spec`; returns the process and its start time in clock ticks (0 if unreadable,
/// which only makes it impossible to re-adopt).
///
/// `ETXTBSY` is retried a few times: while another thread of the agent forks a child, that
/// child briefly inherits any file descriptor open at that moment, including the write end
/// of an artifact being fetched, and exec of that artifact fails until the fork has exec'd.
pub(super) async fn spawn(spec: SpawnSpec<'_>) -> io::Result<(Process, u64)> {
    let program = spec.argv.first().cloned();
    let mut cmd = command(spec)?;
    let mut delay = Duration::from_millis(5);
    let child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) && delay < Duration::from_millis(500) => {
                tracing::debug!(?program, "executable busy; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => break result?,
        }
    };
    let pid = child.id().ok_or_else(|| io::Error::other("spawned child has no pid"))?;
    // The child cannot be reaped before we wait for it, so its stat is readable even if it
    // has exited already.
    let start_time = outrider_procfs::stat(pid).map(|s| s.start_time).unwrap_or(0);
    Ok((Process::Child { child, pid, exit: None }, start_time))
}

fn nix_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().filter(|p| *p > 0).map(Pid::from_raw)
}

impl Process {
    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        match self {
            Self::Child { pid, .. } | Self::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits until the process has ended and says how. Cancel-safe: can be raced against
    /// other events and called again.
    pub(super) async fn wait(&mut self) -> String {
        match self {
            Self::Child { child, pid, exit } => {
                if let Some(how) = exit {
                    return how.clone();
                }
                let how = match child.wait().await {
                    Ok(status) => format!("process {pid} ended ({status})"),
                    Err(e) => {
                        // Should not happen; fall back to watching /proc so that a process
                        // that still runs is never taken for dead.
                        tracing::warn!(pid = *pid, error = %e, "waiting for sidecar failed; polling /proc");
                        while outrider_procfs::stat(*pid).is_ok_and(|s| !s.is_exited()) {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        format!("process {pid} ended (status unknown)")
                    }
                };
                *exit = Some(how.clone());
                how
            }
            Self::Adopted { pid, start_time, poll, .. } => {
                while outrider_procfs::is_same_live_process(*pid, *start_time) {
                    tokio::time::sleep(*poll).await;
                }
                format!("process {pid} ended (adopted: exit status unknown)")
            }
        }
    }

    /// Sends `signal` to the process group (to the process alone if an adopted process does
    /// not lead its group). Does nothing once the process is known to be gone, or if an
    /// adopted pid no longer belongs to the recorded process.
    pub(super) fn signal(&self, signal: Signal) {
        self.send(signal, true);
    }

    /// Sends `signal` to the process alone, not its group (a signal-reload sidecar's new
    /// generation is its child, in its group). Same checks as [`Self::signal`].
    pub(super) fn signal_alone(&self, signal: Signal) {
        self.send(signal, false);
    }

    fn send(&self, signal: Signal, to_group: bool) {
        let leads_group = match self {
            Self::Child { child, exit, .. } => {
                if exit.is_some() || child.id().is_none() {
                    return;
                }
                true
            }
            Self::Adopted { pid, start_time, group_leader, .. } => {
                // A zombie still holds its pid, so "same start time" is enough to be sure.
                if !outrider_procfs::stat(*pid).is_ok_and(|s| s.start_time == *start_time) {
                    return;
                }
                *group_leader
            }
        };
        let target = nix_pid(self.pid());
        let result =
            if to_group && leads_group { target.map(|p| killpg(p, signal)) } else { target.map(|p| kill(p, signal)) };
        if let Some(Err(e)) = result
            && e != Errno::ESRCH
        {
            tracing::warn!(pid = self.pid(), %signal, error = %e, "could not signal sidecar");
        }
    }

    /// Stops the process alone with `stop`, up to `drain` for it to end, then SIGKILL to it
    /// alone. Whatever else is in its group is left running.
    pub(super) async fn terminate_alone(&mut self, stop: Signal, drain: Duration) -> String {
        self.stop(stop, drain, false).await
    }

    /// `stop`, up to `drain` for the end, then SIGKILL; to the group or the process alone.
    async fn stop(&mut self, stop: Signal, drain: Duration, to_group: bool) -> String {
        self.send(stop, to_group);
        match tokio::time::timeout(drain, self.wait()).await {
            Ok(how) => how,
            Err(_) => {
                tracing::warn!(pid = self.pid(), ?drain, "sidecar still running after its drain time; sending SIGKILL");
                self.send(Signal::SIGKILL, to_group);
                format!("{}; SIGKILL after drain time {drain:?}", self.wait().await)
            }
        }
    }

    /// After the leader of a spawned process group was reaped: kills whatever it left
    /// behind in its group (a shell's background jobs, say). The group id cannot have been
    /// reused while members remain, and the kernel hands out pids cyclically, so this only
    /// reaches our own leftovers. Adopted processes are left alone (their group cannot be
    /// verified once the leader is gone).
    pub(super) fn kill_leftovers(&self) {
        if let Self::Child { pid, exit: Some(_), .. } = self
            && let Some(p) = nix_pid(*pid)
        {
            let _ = killpg(p, Signal::SIGKILL);
        }
    }

    /// Stops the process: SIGTERM to its group, up to `drain` for it to end, then SIGKILL.
    /// Returns how it ended.
    pub(super) async fn terminate(&mut self, drain: Duration) -> String {
        let how = self.stop(Signal::SIGTERM, drain, true).await;
        self.kill_leftovers();
        how
    }

    /// Kills the process group at once and waits for the end.
    pub(super) async fn kill(&mut self) -> String {
        self.signal(Signal::SIGKILL);
        let how = self.wait().await;
        self.kill_leftovers();
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(argv: &'a [String], env: &'a BTreeMap<String, String>, log: &'a Path) -> SpawnSpec<'a> {
        SpawnSpec {
            argv,
            env,
            outrider_env: [
                ("OUTRIDER_INSTANCE", "i-1"),
                ("OUTRIDER_SERVICE", "svc"),
                ("OUTRIDER_SIDECAR", "mesh"),
                ("OUTRIDER_VERSION", "1.0.0"),
            ],
            lifecycle_env: Vec::new(),
            fds: Vec::new(),
            log_path: log,
            banner: "--- starting".into(),
        }
    }

    #[test]
    fn command_drops_the_token_and_adds_outrider_variables() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "true".to_owned()];
        let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let log = dir.path().join("x.log");
        let cmd = command(spec(&argv, &env, &log)).unwrap();
        let envs: BTreeMap<_, _> = cmd
            .as_std()
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        assert_eq!(envs.get("OUTRIDER_TOKEN"), Some(&None), "token removed");
        assert_eq!(envs.get("A"), Some(&Some("1".into())));
        assert_eq!(envs.get("OUTRIDER_SIDECAR"), Some(&Some("mesh".into())));
        assert_eq!(envs.get("OUTRIDER_VERSION"), Some(&Some("1.0.0".into())));
        assert!(std::fs::read_to_string(&log).unwrap().starts_with("--- starting"));
        assert!(command(spec(&[], &env, &log)).is_err());
    }

    #[tokio::test]
    async fn a_command_can_be_spawned_again_after_a_failed_attempt() {
        // The ETXTBSY retry re-spawns the same command, log handles included.
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "echo run".to_owned()];
        let env = BTreeMap::new();
        let log = dir.path().join("x.log");
        let mut cmd = command(spec(&argv, &env, &log)).unwrap();
        for _ in 0..2 {
            assert!(cmd.spawn().unwrap().wait().await.unwrap().success());
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap().matches("run").count(), 2);
    }

    #[tokio::test]
    async fn spawn_logs_to_file_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "echo out; echo err >&2; exit 3".to_owned()];
        let env = BTreeMap::new();
        let log = dir.path().join("x.log");
        let (mut p, start_time) = spawn(spec(&argv, &env, &log)).await.unwrap();
        assert!(start_time > 0);
        let how = p.wait().await;
        assert!(how.contains('3'), "{how}");
        assert_eq!(p.wait().await, how, "waiting again is fine");
        p.signal(Signal::SIGKILL); // no-op once reaped
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), "trap '' TERM; while :; do sleep 0.05; done".to_owned()];
        let env = BTreeMap::new();
        let log = dir.path().join("x.log");
        let (mut p, _) = spawn(spec(&argv, &env, &log)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let how = p.terminate(Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300), "{how}");
        assert!(how.contains("SIGKILL"), "{how}");
    }
}
