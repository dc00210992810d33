//! Finding and killing the sidecar processes the agents leave behind: every process whose
//! executable lies under a directory (the agents run sidecars from their artifact caches).

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::{Pid, getpgid},
};
use serde::Deserialize;

use super::process::{POLL_EVERY, PROCESS_GRACE};

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

/// SIGKILLs at once every process that runs an executable from `root`, and those of `pids`
/// that do (for `Drop`, where nothing can be awaited). Returns how many there were.
pub fn kill_now_running_from(root: &Path, pids: &[i32]) -> usize {
    let mut all = processes_running_from(root);
    all.extend(pids.iter().copied().filter(|&pid| runs_from(pid, root)));
    all.sort_unstable();
    all.dedup();
    signal_all(&all, Signal::SIGKILL);
    all.len()
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
pub(super) fn recorded_pids(agent_dirs: &[PathBuf]) -> Vec<i32> {
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
    let pids = outrider_procfs::pids().unwrap_or_default();
    pids.into_iter().filter_map(|pid| i32::try_from(pid).ok()).filter(|&pid| runs_from(pid, root)).collect()
}

/// Whether process `pid` is alive (not a zombie) and runs an executable from under `root`.
pub fn runs_from(pid: i32, root: &Path) -> bool {
    let Ok(pid) = u32::try_from(pid) else { return false };
    pid > 0 && outrider_procfs::exe(pid).is_ok_and(|exe| exe.starts_with(root)) && alive(pid)
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    outrider_procfs::is_alive(pid)
}

/// `kill -9 <pid>`; panics if it cannot be sent (for tests).
pub fn kill9(pid: u32) {
    let raw = i32::try_from(pid).expect("pid fits i32");
    kill(Pid::from_raw(raw), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}
