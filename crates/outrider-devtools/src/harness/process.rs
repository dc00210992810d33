//! Child processes in their own process groups: the manager, agents, load generators.

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use outrider_client::Client;

use super::HarnessError;

/// Time between SIGTERM and SIGKILL for the manager, the agents and leftover sidecars.
pub const PROCESS_GRACE: Duration = Duration::from_secs(5);
/// Time between two looks while waiting for processes to start or end.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(100);

/// A child process (the manager, an agent, a load generator), in its own process group and
/// killed if dropped.
pub struct Child {
    /// What it is, for messages (`manager`, `agent i-1`).
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: tokio::process::Child,
}

/// How a child ended when asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It had already exited.
    Before,
    /// It exited after the signal.
    Terminated,
    /// It had to be killed.
    Killed,
}

impl Child {
    /// Runs `exe args…` with stdout and stderr written to `log`.
    pub fn spawn(name: &str, exe: &Path, args: Vec<OsString>, log: PathBuf) -> Result<Self, HarnessError> {
        let mut command = std::process::Command::new(exe);
        command.args(args);
        Self::spawn_command(name, command, log)
    }

    /// Runs `command` (its program, arguments and environment) with stdin closed and stdout
    /// and stderr written to `log`.
    pub fn spawn_command(name: &str, command: std::process::Command, log: PathBuf) -> Result<Self, HarnessError> {
        let out =
            File::create(&log).map_err(HarnessError::io(format!("cannot create the log file {}", log.display())))?;
        let err = out.try_clone().map_err(HarnessError::io("cannot duplicate a log file handle"))?;
        let exe = command.get_program().to_owned();
        let child = tokio::process::Command::from(command)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Ctrl-C in the terminal must reach only us, which then stops everything in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(HarnessError::io(format!("cannot start the {name} ({})", exe.to_string_lossy())))?;
        Ok(Self { name: name.to_owned(), log, child })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails when the process has exited, pointing at its log.
    pub fn ensure_alive(&mut self) -> Result<(), HarnessError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Exited { name: self.name.clone(), status, log: self.log.clone() }),
            Err(e) => Err(HarnessError::io(format!("cannot check the {}", self.name))(e)),
        }
    }

    /// SIGTERM to the whole group, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Ended {
        self.end(Signal::SIGTERM, grace).await
    }

    /// `signal` to the whole group, then SIGKILL after `grace`.
    pub async fn end(&mut self, signal: Signal, grace: Duration) -> Ended {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return Ended::Before;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
            return Ended::Terminated;
        }
        self.kill().await;
        Ended::Killed
    }

    /// SIGKILL at once, and reap.
    pub async fn kill(&mut self) {
        self.kill_now();
        let _ = tokio::time::timeout(PROCESS_GRACE, self.child.wait()).await;
    }

    /// SIGKILL at once, and reap, blocking the thread until it is gone (at most
    /// [`PROCESS_GRACE`]): for `Drop` and for callers that cannot await.
    pub fn kill_blocking(&mut self) {
        self.kill_now();
        let deadline = Instant::now() + PROCESS_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILL to the whole group at once, without reaping (for `Drop`, where nothing can be
    /// awaited; the runtime reaps it later).
    pub fn kill_now(&mut self) {
        // No id once reaped: a pid that may have been reused is never signalled.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }
}

/// Starts `outrider server` with `data_dir` on `127.0.0.1:port`, output to `log`.
pub fn spawn_manager(exe: &Path, data_dir: &Path, port: u16, log: PathBuf) -> Result<Child, HarnessError> {
    Child::spawn("manager", exe, manager_args(data_dir, port), log)
}

/// The command line of `outrider server` after the executable.
pub(super) fn manager_args(data_dir: &Path, port: u16) -> Vec<OsString> {
    vec!["server".into(), "--data-dir".into(), data_dir.into(), "--listen".into(), format!("127.0.0.1:{port}").into()]
}

/// Whether the manager at `url` says on its `/metrics` that it leads (several managers on
/// one etcd); an unreachable manager does not.
pub async fn manager_leads(http: &reqwest::Client, url: &str) -> bool {
    let Ok(resp) = http.get(format!("{url}/metrics")).send().await else { return false };
    resp.text().await.is_ok_and(|t| t.lines().any(|l| l.trim() == "outrider_leader 1"))
}

/// Waits until the manager at `url` answers `/readyz` and has written
/// `<data_dir>/admin.token`; returns a client with that token, and the token.
pub async fn wait_manager_ready(
    manager: &mut Child,
    url: &str,
    data_dir: &Path,
    timeout: Duration,
) -> Result<(Client, Option<String>), HarnessError> {
    let probe = Client::new(url, None)?;
    let deadline = Instant::now() + timeout;
    let token_file = data_dir.join("admin.token");
    loop {
        manager.ensure_alive()?;
        if probe.readyz().await.is_ok() && token_file.is_file() {
            break;
        }
        if Instant::now() > deadline {
            return Err(HarnessError::NotReady { timeout, log: manager.log.clone() });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let token = Client::token_from(Some(&token_file), None)?;
    Ok((Client::new(url, token.clone())?, token))
}

/// The flags of one `outrider agent` process (PRODUCT.md §4).
#[derive(Debug, Clone)]
pub struct AgentFlags<'a> {
    /// `--manager`.
    pub manager: &'a str,
    /// `--token-file`.
    pub token_file: &'a Path,
    /// `--data-dir`.
    pub data_dir: &'a Path,
    /// `--service`.
    pub service: &'a str,
    /// `--instance`.
    pub instance: &'a str,
    /// `--region`.
    pub region: &'a str,
    /// `--env`.
    pub env: &'a str,
    /// `--stage`.
    pub stage: &'a str,
    /// `--label key=value`, one each.
    pub labels: Vec<(String, String)>,
    /// `--listen 127.0.0.1:PORT`: the agent's own endpoint (`/status`).
    pub listen: u16,
}

impl AgentFlags<'_> {
    /// The command line after the executable: `agent --manager …`.
    pub fn args(&self) -> Vec<OsString> {
        let mut flags: Vec<(&str, OsString)> = vec![
            ("--manager", self.manager.into()),
            ("--token-file", self.token_file.into()),
            ("--data-dir", self.data_dir.into()),
            ("--service", self.service.into()),
            ("--instance", self.instance.into()),
            ("--region", self.region.into()),
            ("--env", self.env.into()),
            ("--stage", self.stage.into()),
        ];
        flags.extend(self.labels.iter().map(|(k, v)| ("--label", format!("{k}={v}").into())));
        flags.push(("--listen", format!("127.0.0.1:{}", self.listen).into()));
        let mut args = vec![OsString::from("agent")];
        args.extend(flags.into_iter().flat_map(|(flag, value)| [flag.into(), value]));
        args
    }
}

/// Stopped by a signal (Ctrl-C, SIGTERM, SIGHUP).
#[derive(Debug)]
pub struct Interrupted(&'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted ({})", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Completes with the first SIGINT, SIGTERM or SIGHUP. Any of them would otherwise end the
/// process without stopping its children.
pub async fn interrupt() -> Interrupted {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        // No handler could be installed: the default actions stay, so this never completes.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Interrupted("SIGINT"),
        _ = term.recv() => Interrupted("SIGTERM"),
        _ = hup.recv() => Interrupted("SIGHUP"),
    }
}
