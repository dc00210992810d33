//! Outrider on this machine, for `outrider demo` and `outrider bench upgrade`: the binaries,
//! free loopback ports, a manager and agents as child processes in their own process groups
//! (killed if dropped), the demo sidecar as an artifact, and the clean-up of sidecar
//! processes the agents leave behind.

use std::{
    ffi::OsString,
    fs::File,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::{Pid, getpgid},
};
use outrider_client::Client;
use outrider_model::{Artifact, SidecarStatus};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::process::Command;

/// Time between SIGTERM and SIGKILL for the manager, the agents and leftover sidecars.
pub const PROCESS_GRACE: Duration = Duration::from_secs(5);
/// Time between two looks while waiting for processes to start or end.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The running `outrider` executable and the demo sidecar next to it.
pub fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot find the outrider binary itself")?;
    let sidecar_bin = exe.with_file_name("outrider-demo-sidecar");
    anyhow::ensure!(
        sidecar_bin.is_file(),
        "the demo sidecar {} is missing; build it with `cargo build --release` (it is built with outrider)",
        sidecar_bin.display()
    );
    Ok((exe, sidecar_bin))
}

/// `n` distinct free loopback ports: all are bound at once, then released.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a free port on 127.0.0.1")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

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
    pub fn spawn(name: &str, exe: &Path, args: Vec<OsString>, log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("cannot create the log file {}", log.display()))?;
        let err = out.try_clone().context("cannot duplicate a log file handle")?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Ctrl-C in the terminal must reach only us, which then stops everything in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name} ({})", exe.display()))?;
        Ok(Self { name: name.to_owned(), log, child })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails when the process has exited, pointing at its log.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the {} exited ({status}); see {}", self.name, self.log.display()),
            Err(e) => Err(e).with_context(|| format!("cannot check the {}", self.name)),
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
pub fn spawn_manager(exe: &Path, data_dir: &Path, port: u16, log: PathBuf) -> anyhow::Result<Child> {
    let args = vec![
        "server".into(),
        "--data-dir".into(),
        data_dir.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
    ];
    Child::spawn("manager", exe, args, log)
}

/// Waits until the manager at `url` answers `/readyz` and has written
/// `<data_dir>/admin.token`; returns a client with that token, and the token.
pub async fn wait_manager_ready(
    manager: &mut Child,
    url: &str,
    data_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<(Client, Option<String>)> {
    let probe = Client::new(url, None)?;
    let deadline = Instant::now() + timeout;
    let token_file = data_dir.join("admin.token");
    loop {
        manager.ensure_alive()?;
        if probe.readyz().await.is_ok() && token_file.is_file() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the manager was not ready within {timeout:?}; see {}", manager.log.display());
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

/// The answer of an agent's `/status` (the part read here).
#[derive(Debug, Deserialize)]
pub struct AgentStatus {
    /// Every sidecar the agent runs.
    #[serde(default)]
    pub sidecars: Vec<SidecarStatus>,
}

/// `GET` of an agent's `/status`.
pub async fn agent_status(http: &reqwest::Client, url: &str) -> anyhow::Result<AgentStatus> {
    Ok(http.get(url).send().await?.error_for_status()?.json::<AgentStatus>().await?)
}

/// The answer of the demo sidecar's `GET /`.
#[derive(Debug, Deserialize)]
pub struct Hello {
    /// The version it runs (`OUTRIDER_VERSION`).
    pub version: String,
    /// Its process id.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One `GET /` of a demo sidecar.
pub async fn fetch_hello(http: &reqwest::Client, url: &str) -> anyhow::Result<Hello> {
    Ok(http.get(url).send().await?.error_for_status()?.json::<Hello>().await?)
}

/// The artifact of a local executable: its `file://` URL and SHA-256.
pub async fn file_artifact(path: &Path) -> anyhow::Result<Artifact> {
    let url = reqwest::Url::from_file_path(path).map_err(|()| anyhow!("{} is not an absolute path", path.display()))?;
    Ok(Artifact { url: url.to_string(), sha256: sha256_of(path).await? })
}

/// Lower-case hex SHA-256 of a file.
async fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .context("hashing task failed")?
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

/// Kills (SIGTERM, then SIGKILL) every process that runs an executable from `root`: sidecars
/// the agents did not stop. Candidates come from the agents' records (`sidecars/*.json`) and
/// from `/proc`. Returns how many there were.
pub async fn kill_leftover_sidecars(root: &Path, agent_dirs: &[PathBuf]) -> usize {
    let mut pids = recorded_pids(agent_dirs);
    pids.extend(processes_running_from(root));
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&pid| runs_from(pid, root));
    if pids.is_empty() {
        return 0;
    }
    signal_all(&pids, Signal::SIGTERM);
    let deadline = Instant::now() + PROCESS_GRACE;
    while Instant::now() < deadline && pids.iter().any(|&p| runs_from(p, root)) {
        tokio::time::sleep(POLL_EVERY).await;
    }
    let stubborn: Vec<i32> = pids.iter().copied().filter(|&p| runs_from(p, root)).collect();
    signal_all(&stubborn, Signal::SIGKILL);
    pids.len()
}

/// SIGKILLs at once every process that runs an executable from `root` (for `Drop`, where
/// nothing can be awaited). Returns how many there were.
pub fn kill_now_running_from(root: &Path) -> usize {
    let pids = processes_running_from(root);
    signal_all(&pids, Signal::SIGKILL);
    pids.len()
}

/// Sends `signal` to each process and, when it leads its own group, to the group.
fn signal_all(pids: &[i32], signal: Signal) {
    for &pid in pids {
        let pid = Pid::from_raw(pid);
        if getpgid(Some(pid)).is_ok_and(|g| g == pid) {
            let _ = killpg(pid, signal);
        }
        let _ = kill(pid, signal);
    }
}

/// The pids in the agents' sidecar records.
fn recorded_pids(agent_dirs: &[PathBuf]) -> Vec<i32> {
    #[derive(Deserialize)]
    struct Record {
        pid: i32,
    }
    let files = agent_dirs.iter().filter_map(|d| std::fs::read_dir(d.join("sidecars")).ok()).flatten().flatten();
    files
        .filter_map(|f| std::fs::read(f.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
        .map(|r| r.pid)
        .collect()
}

/// Every process whose executable lies under `root`.
pub fn processes_running_from(root: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| runs_from(pid, root))
        .collect()
}

/// Whether process `pid` is alive (not a zombie) and runs an executable from under `root`.
pub fn runs_from(pid: i32, root: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let exe_inside = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(root));
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true);
    exe_inside && !zombie
}
