//! Simulated agents in child processes of a benchmark (`outrider bench agents`, hidden), so
//! that a figure measures the manager, not the one client runtime that would otherwise hold
//! every agent. The parent speaks to each child in JSON lines: a [`Command`] on its stdin, a
//! [`Reply`] on its stdout. Arrival times travel as wall-clock nanoseconds read through one
//! monotonic anchor per process, so the parent compares them with its own instants.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use futures::future::try_join_all;
use outrider_model::HumanDuration;
use outrider_sim::{SimFleet, SimFleetOptions, SimInstance, SimRuntimeOptions};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

/// Flags of `outrider bench agents`: one child's share of a benchmark's agents.
#[derive(clap::Args, Debug)]
pub struct AgentsArgs {
    /// The managers the agents sync with, `URL,URL,…`.
    #[arg(long, value_name = "URLS")]
    pub sync: String,
    /// Tenant.
    #[arg(long)]
    pub tenant: String,
    /// The service every agent is an instance of (instance ids: `<service>-<index>`).
    #[arg(long)]
    pub service: String,
    /// Index of this child's first agent.
    #[arg(long, default_value_t = 0)]
    pub first: u32,
    /// Agents in this child.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub agents_per_connection: u16,
    /// Simulated time an agent takes to apply a change (± 40 %).
    #[arg(long, default_value = "50ms")]
    pub apply_delay: HumanDuration,
    /// A CA (PEM) for `https://` managers.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// What the parent asks a child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Command {
    /// How many agents are connected, synced, and hold `version`.
    Count { sidecar: String, version: String },
    /// Watch for `version` of `sidecar`: answer [`Reply::Watching`] once every watcher is in
    /// place, then [`Reply::Arrived`] once every agent holds it or `timeout_ms` passed.
    Watch { sidecar: String, version: String, timeout_ms: u64 },
}

/// What a child answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Count(Counts),
    Watching,
    /// Wall-clock nanoseconds of each arrival; `missing`: agents that did not get it in time.
    Arrived {
        at_unix_ns: Vec<u64>,
        missing: usize,
    },
    Failed {
        error: String,
    },
}

/// Agents of one or several children, by what their sync loops show.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// With an open sync stream.
    pub connected: usize,
    /// With an open stream on which a desired state arrived.
    pub synced: usize,
    /// Whose desired state holds the version asked about.
    pub holding: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.connected += o.connected;
        self.synced += o.synced;
        self.holding += o.holding;
    }
}

/// One monotonic instant paired with the wall clock, to turn instants into numbers another
/// process can compare.
#[derive(Debug, Clone, Copy)]
pub struct WallAnchor {
    at: Instant,
    unix: Duration,
}

impl WallAnchor {
    /// Now.
    pub fn now() -> Self {
        Self { at: Instant::now(), unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() }
    }

    /// `t` as wall-clock nanoseconds since the epoch.
    pub fn unix_ns(&self, t: Instant) -> u64 {
        let unix = if t >= self.at { self.unix + (t - self.at) } else { self.unix.saturating_sub(self.at - t) };
        u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Wall-clock nanoseconds `ns` as an instant of this process.
    pub fn instant(&self, ns: u64) -> Instant {
        let unix = Duration::from_nanos(ns);
        if unix >= self.unix {
            self.at + (unix - self.unix)
        } else {
            self.at.checked_sub(self.unix - unix).unwrap_or(self.at)
        }
    }
}

/// Instance ids of a benchmark's agents.
pub fn instance(service: &str, index: u32) -> SimInstance {
    SimInstance::new(format!("{service}-{index:06}"), service, "cn-north", "prod", "full")
}

/// Runs one child: starts its agents, answers commands until stdin closes, then stops them.
pub async fn run_child(args: AgentsArgs) -> anyhow::Result<String> {
    let token = std::env::var("OUTRIDER_TOKEN").context("OUTRIDER_TOKEN holds the agents' token")?;
    let ca = match &args.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let instances: Vec<SimInstance> =
        (args.first..args.first.saturating_add(args.count)).map(|i| instance(&args.service, i)).collect();
    let options = SimFleetOptions {
        agents_per_connection: usize::from(args.agents_per_connection),
        runtime: SimRuntimeOptions { apply_delay: args.apply_delay.0, jitter: args.apply_delay.0 * 2 / 5 },
        ca,
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&args.sync, &token, &args.tenant, &instances, &options)?;
    let anchor = WallAnchor::now();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = stdin.next_line().await? {
        let reply = match serde_json::from_str::<Command>(&line) {
            Err(e) => Reply::Failed { error: format!("bad command {line:?}: {e}") },
            Ok(Command::Count { sidecar, version }) => Reply::Count(Counts {
                connected: fleet.connected(),
                synced: fleet.synced(),
                holding: fleet.holding(&sidecar, &version),
            }),
            Ok(Command::Watch { sidecar, version, timeout_ms }) => {
                let arrivals = fleet.watch_arrivals(&sidecar, &version).await;
                send(&mut stdout, &Reply::Watching).await?;
                let (at, missing) = arrivals.wait_partial(Duration::from_millis(timeout_ms)).await;
                Reply::Arrived { at_unix_ns: at.into_iter().map(|t| anchor.unix_ns(t)).collect(), missing }
            }
        };
        send(&mut stdout, &reply).await?;
    }
    fleet.shutdown().await;
    Ok(String::new())
}

async fn send(out: &mut tokio::io::Stdout, reply: &Reply) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

/// One child process and its pipes.
struct Host {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Host {
    async fn ask(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await.context("an agent process is gone")?;
        self.stdin.flush().await.context("an agent process is gone")?;
        Ok(())
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        let pid = self.child.id().unwrap_or_default();
        let line = self.stdout.next_line().await?.with_context(|| format!("agent process {pid} ended"))?;
        let reply: Reply = serde_json::from_str(&line).with_context(|| format!("agent process {pid} said {line:?}"))?;
        match reply {
            Reply::Failed { error } => anyhow::bail!("agent process {pid}: {error}"),
            r => Ok(r),
        }
    }
}

/// What every child of [`AgentHosts::spawn`] shares.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// The managers' URLs, `URL,URL,…`.
    pub sync: String,
    /// The agents' token.
    pub token: String,
    /// Tenant.
    pub tenant: String,
    /// Service of every agent.
    pub service: String,
    /// Agents in all.
    pub agents: u32,
    /// Agents per HTTP/2 connection.
    pub agents_per_connection: u16,
    /// Simulated apply time.
    pub apply_delay: Duration,
    /// CA file for `https://` managers.
    pub ca_file: Option<PathBuf>,
}

/// Child processes that hold a benchmark's agents, each a contiguous share of them. Killed
/// when dropped.
pub struct AgentHosts {
    hosts: Vec<Host>,
    /// HTTP/2 connections over all children.
    pub connections: usize,
}

impl AgentHosts {
    /// Starts `processes` children of the `outrider` executable sharing `spec.agents`.
    pub fn spawn(spec: &HostSpec, processes: u32) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the outrider executable")?;
        let processes = processes.clamp(1, spec.agents);
        let per_connection = u32::from(spec.agents_per_connection);
        let mut hosts = Vec::new();
        let mut connections = 0;
        for p in 0..processes {
            let first = spec.agents / processes * p + p.min(spec.agents % processes);
            let count = spec.agents / processes + u32::from(p < spec.agents % processes);
            connections += count.div_ceil(per_connection) as usize;
            let mut command = tokio::process::Command::new(&exe);
            command
                .args(["bench", "agents", "--sync", &spec.sync, "--tenant", &spec.tenant, "--service", &spec.service])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--agents-per-connection", &spec.agents_per_connection.to_string()])
                .args(["--apply-delay", &format!("{}ms", spec.apply_delay.as_millis())])
                .env("OUTRIDER_TOKEN", &spec.token)
                // The agents' reconnect warnings would drown the figures.
                .env("OUTRIDER_LOG", "error")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some(ca) = &spec.ca_file {
                command.arg("--ca-file").arg(ca);
            }
            let mut child = command.spawn().context("cannot start an agent process")?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("an agent process has no pipes");
            };
            hosts.push(Host { child, stdin, stdout: BufReader::new(stdout).lines() });
        }
        Ok(Self { hosts, connections })
    }

    /// Child processes.
    pub fn processes(&self) -> usize {
        self.hosts.len()
    }

    /// The counts over every child.
    pub async fn count(&mut self, sidecar: &str, version: &str) -> anyhow::Result<Counts> {
        let command = Command::Count { sidecar: sidecar.to_owned(), version: version.to_owned() };
        let replies = try_join_all(self.hosts.iter_mut().map(|h| async {
            h.ask(&command).await?;
            match h.reply().await? {
                Reply::Count(c) => Ok(c),
                other => anyhow::bail!("expected counts, got {other:?}"),
            }
        }))
        .await?;
        let mut total = Counts::default();
        for c in replies {
            total += c;
        }
        Ok(total)
    }

    /// Starts watching every agent for `version`; returns once every watcher is in place.
    pub async fn watch(&mut self, sidecar: &str, version: &str, timeout: Duration) -> anyhow::Result<()> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let command = Command::Watch { sidecar: sidecar.to_owned(), version: version.to_owned(), timeout_ms };
        try_join_all(self.hosts.iter_mut().map(|h| async {
            h.ask(&command).await?;
            match h.reply().await? {
                Reply::Watching => Ok(()),
                other => anyhow::bail!("expected watching, got {other:?}"),
            }
        }))
        .await?;
        Ok(())
    }

    /// The instants (of this process) every agent got the watched version; fails naming how
    /// many did not.
    pub async fn arrivals(&mut self, anchor: &WallAnchor) -> anyhow::Result<Vec<Instant>> {
        let replies = try_join_all(self.hosts.iter_mut().map(|h| async {
            match h.reply().await? {
                Reply::Arrived { at_unix_ns, missing } => Ok((at_unix_ns, missing)),
                other => anyhow::bail!("expected arrivals, got {other:?}"),
            }
        }))
        .await?;
        let missing: usize = replies.iter().map(|r| r.1).sum();
        let total: usize = replies.iter().map(|r| r.0.len()).sum::<usize>() + missing;
        anyhow::ensure!(missing == 0, "{missing} of {total} agents did not get the change in time");
        Ok(replies.into_iter().flat_map(|r| r.0).map(|ns| anchor.instant(ns)).collect())
    }

    /// Stops every child: closes its stdin (it stops its agents and exits), then waits.
    pub async fn shutdown(self) {
        for Host { mut child, stdin, .. } in self.hosts {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_survives_the_trip_through_the_wall_clock() {
        let anchor = WallAnchor::now();
        let later = anchor.at + Duration::from_millis(1234);
        let back = anchor.instant(anchor.unix_ns(later));
        let off = if back > later { back - later } else { later - back };
        assert!(off < Duration::from_micros(1), "{off:?}");
        // Another process's anchor, taken later, maps the same wall time to the same moment.
        let other = WallAnchor { at: anchor.at + Duration::from_secs(1), unix: anchor.unix + Duration::from_secs(1) };
        assert_eq!(other.instant(anchor.unix_ns(later)), later);
    }

    #[test]
    fn commands_and_replies_are_single_json_lines() {
        let c = Command::Watch { sidecar: "s".into(), version: "1.0.1".into(), timeout_ms: 5 };
        let line = serde_json::to_string(&c).unwrap();
        assert!(!line.contains('\n'));
        assert!(matches!(serde_json::from_str::<Command>(&line).unwrap(), Command::Watch { timeout_ms: 5, .. }));
        let r: Reply = serde_json::from_str(r#"{"arrived":{"at_unix_ns":[1,2],"missing":0}}"#).unwrap();
        assert!(matches!(r, Reply::Arrived { missing: 0, .. }));
    }
}
