//! `outrider bench upgrade`: figures for "hot upgrade with zero failed requests".
//!
//! Self-contained: starts `outrider server` and one `outrider agent` on free loopback ports
//! under a temporary directory, with the demo sidecar (`outrider-demo-sidecar`, next to this
//! binary) as the artifact of two versions, 1.0.0 and 1.0.1. Then, one part after another:
//!
//! - **scenarios** (`--scenarios`): one sidecar definition each on service `bench`. While
//!   `wrk` loads the sidecar's port, the binding moves back and forth between the versions
//!   `--upgrades` times; each upgrade is timed from the API write acknowledged to the agent's
//!   `/status` showing the new version `running` in a new process. The next upgrade waits
//!   until the old process is gone (the agent takes no new target while an old generation
//!   drains); that drain is reported on its own. wrk stops with SIGINT (it prints its report
//!   then) and its report gives the requests, socket errors, non-2xx answers and latencies
//!   under the upgrades.
//! - **crash recovery**: `kill -9` of the sidecar `--crashes` times, timed to the first
//!   `GET /` answered by a new process.
//! - **agent footprint**: the agent's resident memory, CPU and open fds with three idle
//!   sidecars, before and after `--footprint-upgrades` upgrades.
//!
//! Every part stops its sidecars (binding disabled) before the next one starts. Whatever
//! happens, every process started is stopped: the manager, the agent and wrk are killed when
//! dropped, and sidecars still running from the temporary directory are killed at the end.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use outrider_client::{Client, OutputFormat};
use outrider_model::{
    Artifact, Binding, HumanDuration, NewVersion, Priority, Service, Sidecar, SidecarState, SidecarStatus, UpgradeMode,
};
use outrider_sim::stats::LatencySummary;
use serde::Serialize;
use serde_json::json;

use crate::harness::{self as local, AgentFlags, Child, Ended};

/// Tenant everything is created in.
const TENANT: &str = outrider_model::DEFAULT_TENANT;
/// Service the agent's instance belongs to.
const SERVICE: &str = "bench";
/// The agent's instance.
const INSTANCE: &str = "bench-1";
/// The version every sidecar starts with.
const OLD: &str = "1.0.0";
/// The version the first upgrade moves to (the next one moves back).
const NEW: &str = "1.0.1";
/// Drain time of every sidecar (SIGTERM to SIGKILL).
const DRAIN: &str = "5s";
/// Period of the startup probe: a bound on how long the agent takes to see a new process ready.
const PROBE_PERIOD: &str = "20ms";

/// How long the manager may take to answer `/readyz`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent may take to answer `/status`.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a sidecar may take to run once bound (artifact fetch included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one upgrade (or the restart after a crash) may take before it counts as failed.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an old process may take to exit after its successor runs (the drain time and more).
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Failed upgrades in a row after which a series gives up.
const MAX_FAILURES_IN_A_ROW: u32 = 3;
/// How long the agent may take to stop a sidecar once its binding is disabled (drain included).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time between two looks at the agent's `/status` while an upgrade runs.
const STATUS_EVERY: Duration = Duration::from_millis(5);
/// Time between two requests of the crash prober.
const CRASH_PROBE_EVERY: Duration = Duration::from_millis(2);
/// Time one request of the crash prober (or a check of a sidecar) may take.
const SIDECAR_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Time one request to the agent may take.
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Load before the first upgrade and after the last one.
const LOAD_MARGIN: Duration = Duration::from_millis(500);
/// Time for wrk to print its report after SIGINT.
const WRK_GRACE: Duration = Duration::from_secs(10);
/// Time for the agent to settle (reports sent, old generations gone) before an idle window.
const SETTLE: Duration = Duration::from_secs(2);
/// Sidecars of the footprint part.
const IDLE_SIDECARS: usize = 3;

/// An upgrade scenario: how its sidecar is defined and the binding's mode.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Agent-owned socket (`LISTEN_FDS`), readiness by `NOTIFY_SOCKET`, mode hot.
    Hot,
    /// The sidecar owns its socket and passes it to its successor (`SCM_RIGHTS`), mode hot.
    HotScmRights,
    /// The sidecar of `hot` in mode restart: the agent's socket stays open across the restart.
    Restart,
    /// The sidecar binds its port itself, mode restart: the port closes while it restarts.
    RestartOwnSocket,
    /// The sidecar of `hot` with a warm drain step, mode warm.
    Warm,
}

impl Scenario {
    const ALL: [Self; 5] = [Self::Hot, Self::HotScmRights, Self::Restart, Self::RestartOwnSocket, Self::Warm];

    fn name(self) -> &'static str {
        match self {
            Self::Hot => "hot",
            Self::HotScmRights => "hot-scm-rights",
            Self::Restart => "restart",
            Self::RestartOwnSocket => "restart-own-socket",
            Self::Warm => "warm",
        }
    }

    fn mode(self) -> UpgradeMode {
        match self {
            Self::Hot | Self::HotScmRights => UpgradeMode::Hot,
            Self::Restart | Self::RestartOwnSocket => UpgradeMode::Restart,
            Self::Warm => UpgradeMode::Warm,
        }
    }

    fn shape(self) -> Shape {
        match self {
            Self::Hot | Self::Restart => Shape::AgentSocket,
            Self::HotScmRights => Shape::ScmRights,
            Self::RestartOwnSocket => Shape::OwnSocket,
            Self::Warm => Shape::Warm,
        }
    }
}

/// How a sidecar of the benchmark is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Agent-owned socket, `listen-fds` handover, `notify_ready`; modes restart and hot.
    AgentSocket,
    /// No agent socket, `scm-rights` handover, `notify_ready`; modes restart and hot.
    ScmRights,
    /// No agent socket, no handover: mode restart only.
    OwnSocket,
    /// [`Shape::AgentSocket`] with `warm` (drain `true`, wait 100 ms); modes restart, hot, warm.
    Warm,
}

/// Flags of `outrider bench upgrade`.
#[derive(clap::Args, Debug)]
pub struct UpgradeArgs {
    /// Upgrades per scenario, back and forth between 1.0.0 and 1.0.1.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub upgrades: u32,
    /// Scenarios to run, comma-separated (default: all, in this order).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "NAME,…")]
    pub scenarios: Vec<Scenario>,
    /// `kill -9`s of the sidecar for the crash-recovery figures.
    #[arg(long, value_name = "K", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub crashes: u32,
    /// Time from a recovery to the next kill. The agent forgets the failures of a process once
    /// it has run 10 s; below that, its restart backoff grows from kill to kill.
    #[arg(long, default_value = "11s")]
    pub crash_interval: HumanDuration,
    /// Skip the crash-recovery part.
    #[arg(long)]
    pub skip_crash: bool,
    /// Idle window of the agent-footprint part (measured twice).
    #[arg(long, default_value = "10s")]
    pub idle: HumanDuration,
    /// Upgrades between the two idle windows of the footprint part.
    #[arg(long, value_name = "M", default_value_t = 1000)]
    pub footprint_upgrades: u32,
    /// Mode of those upgrades (`hot` exercises the most agent machinery: a notify socket,
    /// socket duplicates and a successor record per upgrade).
    #[arg(long, default_value = "hot", value_parser = parse_footprint_mode)]
    pub footprint_mode: UpgradeMode,
    /// Skip the agent-footprint part.
    #[arg(long)]
    pub skip_footprint: bool,
    /// The load generator (`wrk`; Debian package `wrk`).
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// wrk threads (`-t`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub wrk_threads: u16,
    /// wrk connections (`-c`, at least one per thread).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub wrk_connections: u16,
    /// Keep the temporary directory (manager and agent data, logs, wrk reports).
    #[arg(long)]
    pub keep: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl UpgradeArgs {
    /// The scenarios to run, in the order of [`Scenario::ALL`], each once.
    fn selected(&self) -> Vec<Scenario> {
        if self.scenarios.is_empty() {
            return Scenario::ALL.to_vec();
        }
        Scenario::ALL.into_iter().filter(|s| self.scenarios.contains(s)).collect()
    }
}

/// p50, p99 and max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(samples: &[Duration]) -> Option<Self> {
        LatencySummary::of(samples.to_vec()).map(|s| Self { p50: ms(s.p50), p99: ms(s.p99), max: ms(s.max) })
    }
}

/// What wrk reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct WrkReport {
    /// Requests completed (any status).
    requests: u64,
    /// How long the load ran.
    load_s: f64,
    /// Socket errors by kind. wrk connects without blocking, so a refused connection shows as
    /// a write error, and it reconnects at once: while a port is closed, these count its
    /// attempts (growing with how long the port stays closed), not requests lost.
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    /// Requests without an answer within wrk's timeout (2 s).
    timeout_errors: u64,
    /// Answers with a status outside 2xx and 3xx.
    non_2xx: u64,
    /// Latency of the completed requests.
    latency_ms: Percentiles,
}

impl WrkReport {
    /// Every request that did not get a 2xx or 3xx answer.
    fn failed_requests(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeout_errors + self.non_2xx
    }
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
struct ScenarioResult {
    name: &'static str,
    mode: UpgradeMode,
    upgrades_done: u32,
    upgrades_failed: u32,
    upgrade_ms: Option<Percentiles>,
    /// From the new version running to the old process gone (its drain).
    drain_ms: Option<Percentiles>,
    #[serde(flatten)]
    load: Option<WrkReport>,
    /// Socket errors and non-2xx answers together: the figure that must be 0.
    failed_requests: Option<u64>,
    /// Why the scenario stopped short, or what else went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The figures of the crash-recovery part.
#[derive(Debug, Clone, Serialize)]
struct CrashResult {
    /// `kill -9`s sent.
    crashes: u32,
    /// Crashes after which a new process answered.
    recovered: u32,
    /// From the kill to the first `GET /` answered by a new process.
    recovery_ms: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The agent's footprint in one idle window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Footprint {
    rss_bytes: u64,
    /// CPU time over the window, in percent of one core.
    cpu_percent: f64,
    fds: usize,
}

/// The figures of the agent-footprint part.
#[derive(Debug, Clone, Serialize)]
struct FootprintResult {
    sidecars: usize,
    idle_s: f64,
    upgrade_mode: UpgradeMode,
    upgrades_done: u32,
    upgrades_failed: u32,
    upgrade_ms: Option<Percentiles>,
    /// From the new version running to the old process gone (its drain).
    drain_ms: Option<Percentiles>,
    rss_before_bytes: Option<u64>,
    rss_after_bytes: Option<u64>,
    cpu_idle_percent: Option<f64>,
    cpu_idle_after_percent: Option<f64>,
    fds_before: Option<usize>,
    fds_after: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Everything `outrider bench upgrade` prints.
#[derive(Debug, Clone, Serialize)]
struct UpgradeBenchResult {
    /// Upgrades asked per scenario.
    upgrades: u32,
    /// The load generator's command line (the URL is each scenario's sidecar).
    wrk: String,
    scenarios: Vec<ScenarioResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crash_recovery: Option<CrashResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_footprint: Option<FootprintResult>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The port label (`--label KEY=PORT`) a sidecar listens on.
fn port_label(sidecar: &str) -> String {
    format!("port-{sidecar}")
}

/// A sidecar of the benchmark listening on `${label.<port_label>}`.
fn sidecar_definition(name: &str, port_label: &str, shape: Shape) -> anyhow::Result<Sidecar> {
    let addr = format!("127.0.0.1:${{label.{port_label}}}");
    let mut body = json!({
        "name": name,
        "owner": "outrider bench",
        "description": "The demo sidecar under `outrider bench upgrade`.",
        "upgrade_modes": ["restart"],
        "startup_probe": {"http": format!("http://{addr}/healthz"), "period": PROBE_PERIOD, "deadline": "10s"},
        "drain_time": DRAIN,
    });
    let hot_settings = |body: &mut serde_json::Value, handover: &str| {
        body["upgrade_modes"] = json!(["restart", "hot"]);
        body["handover"] = json!({"kind": handover});
        body["notify_ready"] = json!(true);
    };
    match shape {
        Shape::AgentSocket | Shape::Warm => {
            hot_settings(&mut body, "listen-fds");
            body["sockets"] = json!([{"name": "http", "listen": addr}]);
            if shape == Shape::Warm {
                body["upgrade_modes"] = json!(["restart", "hot", "warm"]);
                body["warm"] = json!({"drain": {"exec": ["true"]}, "wait": "100ms"});
            }
        }
        Shape::ScmRights => hot_settings(&mut body, "scm-rights"),
        Shape::OwnSocket => {}
    }
    serde_json::from_value(body).with_context(|| format!("the definition of sidecar {name} does not fit the model"))
}

/// Where an executable named on the command line is: as given when it holds a `/`, else the
/// first match on `PATH`.
fn find_executable(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Parses a wrk duration (`66.00us`, `4.84ms`, `2.00s`, `1.50m`, `1.00h`) into milliseconds.
fn wrk_time_ms(s: &str) -> Option<f64> {
    let units = [("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3), ("h", 3600e3)];
    let (value, scale) = units.iter().find_map(|(unit, scale)| Some((s.strip_suffix(unit)?, *scale)))?;
    value.parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| (v * scale * 1e3).round() / 1e3)
}

/// Parses the report wrk prints at its end (with `--latency`).
fn parse_wrk(text: &str) -> anyhow::Result<WrkReport> {
    let mut requests_line = None;
    let (mut p50, mut p99, mut max) = (None, None, None);
    let mut errors = [0u64; 4];
    let mut non_2xx = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, m, ..] => max = wrk_time_ms(m),
            ["50%", v] => p50 = wrk_time_ms(v),
            ["99%", v] => p99 = wrk_time_ms(v),
            [n, "requests", "in", took, ..] => {
                let n = n.parse::<u64>().with_context(|| format!("bad request count in {line:?}"))?;
                let took = wrk_time_ms(took.trim_end_matches(',')).with_context(|| format!("bad time in {line:?}"))?;
                requests_line = Some((n, took));
            }
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 32, write 52555, timeout 0`
            for (i, part) in rest.split(',').enumerate().take(4) {
                let n = part.split_whitespace().nth(1).and_then(|n| n.parse().ok());
                errors[i] = n.with_context(|| format!("bad socket errors line {line:?}"))?;
            }
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().with_context(|| format!("bad line {line:?}"))?;
        }
    }
    let (requests, took_ms) = requests_line.context("no `N requests in T` line")?;
    let [connect_errors, read_errors, write_errors, timeout_errors] = errors;
    Ok(WrkReport {
        requests,
        load_s: took_ms.round() / 1e3,
        connect_errors,
        read_errors,
        write_errors,
        timeout_errors,
        non_2xx,
        latency_ms: Percentiles {
            p50: p50.context("no 50% latency (was wrk run with --latency?)")?,
            p99: p99.context("no 99% latency (was wrk run with --latency?)")?,
            max: max.context("no latency line")?,
        },
    })
}

/// How waiting for a sidecar to run ended.
enum Waited {
    /// Running the version in this process, seen at this moment.
    Running(u32, Instant),
    /// Not within the time allowed; what was seen last.
    TimedOut(String),
}

/// `1.0.1 starting (pid 1234)`, or `not reported`.
fn describe(status: Option<&SidecarStatus>) -> String {
    status.map_or_else(
        || "not reported".to_owned(),
        |s| {
            let pid = s.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            let error = s.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            format!("{} {}{pid}{error}", s.version, s.state)
        },
    )
}

/// Upgrades timed so far in a series.
#[derive(Debug, Default)]
struct Series {
    /// From the API's acknowledgement to the new version running.
    samples: Vec<Duration>,
    /// From the new version running to the old process gone.
    drains: Vec<Duration>,
    failed: u32,
}

impl Series {
    fn done(&self) -> u32 {
        u32::try_from(self.samples.len()).unwrap_or(u32::MAX)
    }
}

/// The loopback ports of the benchmark.
#[derive(Debug, Clone)]
struct Ports {
    manager: u16,
    agent: u16,
    /// Sidecar port by label.
    sidecars: BTreeMap<String, u16>,
}

/// The manager, the agent and what the benchmark knows about them.
struct Bench {
    exe: PathBuf,
    sidecar_bin: PathBuf,
    wrk: PathBuf,
    wrk_threads: u16,
    wrk_connections: u16,
    dir: Option<tempfile::TempDir>,
    /// The temporary directory, canonical (leftover sidecars are found by it).
    root: PathBuf,
    ports: Ports,
    manager: Option<Child>,
    agent: Option<Child>,
    client: Option<Client>,
    artifact: Option<Artifact>,
    /// For the agent's `/status`: keeps its connection.
    agent_http: reqwest::Client,
    /// For the sidecars: a new connection per request, a short timeout.
    sidecar_http: reqwest::Client,
}

impl Drop for Bench {
    /// Whatever happened: the agent first (it would restart what is killed next), then every
    /// sidecar left. The manager, the agent and wrk are killed when their handles drop.
    fn drop(&mut self) {
        if let Some(agent) = &mut self.agent {
            agent.kill_now();
        }
        local::kill_now_running_from(&self.root, &[]);
    }
}

/// Runs `outrider bench upgrade`.
pub(super) async fn run(args: UpgradeArgs) -> anyhow::Result<String> {
    let mut bench = Bench::prepare(&args)?;
    eprintln!(
        "work dir {} (manager on port {}, agent on port {})",
        bench.root.display(),
        bench.ports.manager,
        bench.ports.agent
    );
    let outcome = tokio::select! {
        r = bench.run(&args) => r,
        i = local::interrupt() => Err(i.into()),
    };
    let interrupted = outcome.as_ref().is_err_and(|e| e.is::<local::Interrupted>());
    if let Err(e) = &outcome {
        eprintln!("stopping: {e:#}");
    }
    tokio::select! {
        () = bench.shutdown() => {}
        _ = local::interrupt() => eprintln!("interrupted again: killing everything"),
    }
    // After a failure the logs are what explains it: keep them.
    bench.finish_dir(args.keep || (outcome.is_err() && !interrupted))?;
    let result = outcome?;
    Ok(match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => render(&result),
    })
}

impl Bench {
    /// Finds the binaries, creates the temporary directory and chooses the ports.
    fn prepare(args: &UpgradeArgs) -> anyhow::Result<Self> {
        let local::Binaries { outrider: exe, demo_sidecar: sidecar_bin } = local::Binaries::current()?;
        let wrk = match find_executable(&args.wrk) {
            Some(wrk) => wrk,
            None if args.selected().is_empty() => args.wrk.clone(),
            None => {
                bail!("cannot find the load generator {}: install it (Debian: apt-get install wrk)", args.wrk.display())
            }
        };
        anyhow::ensure!(
            args.wrk_connections >= args.wrk_threads,
            "--wrk-connections ({}) must be at least --wrk-threads ({})",
            args.wrk_connections,
            args.wrk_threads
        );
        let mut labels: Vec<String> = Scenario::ALL.iter().map(|s| port_label(&scenario_sidecar(*s))).collect();
        labels.push(port_label(CRASH_SIDECAR));
        labels.extend((1..=IDLE_SIDECARS).map(|i| port_label(&idle_sidecar(i))));
        let ports = local::free_ports(2 + labels.len())?;
        let ports = Ports {
            manager: ports[0],
            agent: ports[1],
            sidecars: labels.into_iter().zip(ports[2..].to_vec()).collect(),
        };
        let dir = tempfile::Builder::new()
            .prefix("outrider-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let root = dir.path().canonicalize().context("cannot resolve the temporary directory")?;
        std::fs::create_dir_all(root.join("logs")).with_context(|| format!("cannot create {}/logs", root.display()))?;
        let agent_http =
            reqwest::Client::builder().timeout(AGENT_REQUEST_TIMEOUT).build().context("cannot build an HTTP client")?;
        let sidecar_http = reqwest::Client::builder()
            .timeout(SIDECAR_REQUEST_TIMEOUT)
            // Every request opens a new connection: a probe measures the listener, not a pool.
            .pool_max_idle_per_host(0)
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Self {
            exe,
            sidecar_bin,
            wrk,
            wrk_threads: args.wrk_threads,
            wrk_connections: args.wrk_connections,
            dir: Some(dir),
            root,
            ports,
            manager: None,
            agent: None,
            client: None,
            artifact: None,
            agent_http,
            sidecar_http,
        })
    }

    /// Every part the flags select, in order.
    async fn run(&mut self, args: &UpgradeArgs) -> anyhow::Result<UpgradeBenchResult> {
        self.start().await?;
        let mut scenarios = Vec::new();
        for scenario in args.selected() {
            scenarios.push(self.scenario(scenario, args.upgrades).await?);
        }
        let crash_recovery =
            if args.skip_crash { None } else { Some(self.crash_recovery(args.crashes, args.crash_interval.0).await?) };
        let agent_footprint = if args.skip_footprint { None } else { Some(self.footprint(args).await?) };
        Ok(UpgradeBenchResult {
            upgrades: args.upgrades,
            wrk: format!(
                "{} {} --latency --timeout 2s http://127.0.0.1:PORT/, stopped with SIGINT after the upgrades",
                self.wrk.display(),
                self.wrk_flags(wrk_bound(args.upgrades))
            ),
            scenarios,
            crash_recovery,
            agent_footprint,
        })
    }

    /// The typed client of the manager (once it runs).
    fn client(&self) -> anyhow::Result<&Client> {
        self.client.as_ref().ok_or_else(|| anyhow!("the manager is not running"))
    }

    /// Checks that the manager and the agent still run.
    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        for child in [&mut self.manager, &mut self.agent].into_iter().flatten() {
            child.ensure_alive()?;
        }
        Ok(())
    }

    /// The agent's process id.
    fn agent_pid(&self) -> anyhow::Result<u32> {
        self.agent.as_ref().and_then(Child::pid).context("the agent is not running")
    }

    /// Starts the manager, creates the service, starts the agent.
    async fn start(&mut self) -> anyhow::Result<()> {
        let data_dir = self.root.join("manager");
        let url = format!("http://127.0.0.1:{}", self.ports.manager);
        let log = self.root.join("logs/manager.log");
        let manager = self.manager.insert(local::spawn_manager(&self.exe, &data_dir, self.ports.manager, log)?);
        let (client, _) = local::wait_manager_ready(manager, &url, &data_dir, SERVER_READY_TIMEOUT).await?;
        let service = Service {
            name: SERVICE.into(),
            priority: Priority::P2,
            traits: BTreeMap::from([("protocol".into(), "http".into())]),
            protected: false,
            protected_periods: Vec::new(),
        };
        client.create_service(TENANT, &service).await.context("cannot create the service")?;
        self.client = Some(client);
        self.artifact = Some(local::file_artifact(&self.sidecar_bin).await?);

        let token_file = data_dir.join("admin.token");
        let agent_dir = self.root.join("agent");
        let flags = AgentFlags {
            manager: &url,
            token_file: &token_file,
            data_dir: &agent_dir,
            service: SERVICE,
            instance: INSTANCE,
            region: "boe",
            env: "prod",
            stage: "canary",
            labels: self.ports.sidecars.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            listen: self.ports.agent,
        };
        let log = self.root.join("logs/agent.log");
        self.agent = Some(Child::spawn("agent", &self.exe, flags.args(), log)?);
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        while local::agent_status(&self.agent_http, &self.status_url()).await.is_err() {
            self.ensure_alive()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent did not answer /status within {AGENT_READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("manager and agent ready (logs in {})", self.root.join("logs").display());
        Ok(())
    }

    fn status_url(&self) -> String {
        format!("http://127.0.0.1:{}/status", self.ports.agent)
    }

    fn sidecar_url(&self, sidecar: &str) -> anyhow::Result<String> {
        let port = self.ports.sidecars.get(&port_label(sidecar)).with_context(|| format!("no port for {sidecar}"))?;
        Ok(format!("http://127.0.0.1:{port}/"))
    }

    // ---- catalog -----------------------------------------------------------------------

    /// Creates a sidecar of `shape` listening on its port label, with versions [`OLD`] and
    /// [`NEW`] of the demo sidecar.
    async fn define(&self, name: &str, shape: Shape) -> anyhow::Result<()> {
        let label = port_label(name);
        let definition = sidecar_definition(name, &label, shape)?;
        let client = self.client()?;
        client.create_sidecar(TENANT, &definition).await.with_context(|| format!("cannot create sidecar {name}"))?;
        let artifact = self.artifact.clone().context("no artifact")?;
        for version in [OLD, NEW] {
            let body = NewVersion {
                version: version.into(),
                artifact: artifact.clone(),
                command: vec!["${artifact}".into()],
                env: BTreeMap::from([("PORT".into(), format!("${{label.{label}}}"))]),
                notes: format!("outrider bench: the demo sidecar as {version}"),
            };
            client
                .create_version(TENANT, name, &body)
                .await
                .with_context(|| format!("cannot create version {version} of {name}"))?;
            client
                .admit_version(TENANT, name, version, &serde_json::json!({"bench": "upgrade"}))
                .await
                .with_context(|| format!("cannot admit version {version} of {name}"))?;
        }
        Ok(())
    }

    /// Writes the binding of `sidecar` to the service; returns when the API acknowledged it.
    async fn bind(&self, sidecar: &str, version: &str, mode: UpgradeMode, enabled: bool) -> anyhow::Result<()> {
        let binding = Binding { sidecar: sidecar.into(), enabled, version: version.into(), mode };
        self.client()?
            .set_binding(TENANT, SERVICE, &binding)
            .await
            .with_context(|| format!("cannot bind {sidecar}@{version} ({mode}, enabled {enabled})"))?;
        Ok(())
    }

    /// Disables the binding of `sidecar` and waits until the agent no longer runs it.
    async fn retire(&mut self, sidecar: &str) -> anyhow::Result<()> {
        self.bind(sidecar, OLD, UpgradeMode::Restart, false).await?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            self.ensure_alive()?;
            if self.status_of(sidecar).await?.is_none() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the agent did not stop {sidecar} within {STOP_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Retires `sidecars`, adding what failed to `error`.
    async fn retire_all(&mut self, sidecars: &[String], error: &mut Option<String>) -> anyhow::Result<()> {
        for sidecar in sidecars {
            if let Err(e) = self.retire(sidecar).await {
                self.ensure_alive()?;
                eprintln!("  could not stop {sidecar}: {e:#}");
                let text = format!("stopping {sidecar}: {e:#}");
                *error = Some(error.take().map_or(text.clone(), |before| format!("{before}; {text}")));
            }
        }
        Ok(())
    }

    // ---- the agent's view ---------------------------------------------------------------

    /// The agent's status of `sidecar` (`None` when it runs no such sidecar).
    async fn status_of(&self, sidecar: &str) -> anyhow::Result<Option<SidecarStatus>> {
        let status = local::agent_status(&self.agent_http, &self.status_url()).await.context("agent /status")?;
        Ok(status.sidecars.into_iter().find(|s| s.name == sidecar))
    }

    /// Looks at the agent's `/status` every [`STATUS_EVERY`] until `sidecar` runs `version` in
    /// a process other than `not_pid`, or `timeout` passes.
    async fn wait_running(
        &mut self,
        sidecar: &str,
        version: &str,
        not_pid: Option<u32>,
        timeout: Duration,
    ) -> anyhow::Result<Waited> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::from("nothing seen");
        for n in 0u64.. {
            tick.tick().await;
            // A failed look (the agent busy past the request timeout) is retried, not fatal.
            match self.status_of(sidecar).await {
                Ok(Some(s)) if s.state == SidecarState::Running && s.version == version => match s.pid {
                    Some(pid) if Some(pid) != not_pid => return Ok(Waited::Running(pid, Instant::now())),
                    _ => last = describe(Some(&s)),
                },
                Ok(s) => last = describe(s.as_ref()),
                Err(e) => last = format!("{e:#}"),
            }
            if n % 100 == 0 {
                self.ensure_alive()?;
            }
            if started.elapsed() >= timeout {
                break;
            }
        }
        Ok(Waited::TimedOut(last))
    }

    /// Waits until process `pid` (a sidecar of this benchmark) is gone; returns when, or
    /// `None` after [`DRAIN_WAIT`].
    async fn wait_gone(&self, pid: u32) -> Option<Instant> {
        let pid = i32::try_from(pid).ok()?;
        let started = Instant::now();
        let mut tick = tokio::time::interval(STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < DRAIN_WAIT {
            tick.tick().await;
            if !local::runs_from(pid, &self.root) {
                return Some(Instant::now());
            }
        }
        None
    }

    /// Binds `sidecar` at [`OLD`] in `mode` and waits until it runs; returns its pid.
    async fn start_sidecar(&mut self, sidecar: &str, mode: UpgradeMode) -> anyhow::Result<u32> {
        self.bind(sidecar, OLD, mode, true).await?;
        match self.wait_running(sidecar, OLD, None, START_TIMEOUT).await? {
            Waited::Running(pid, _) => Ok(pid),
            Waited::TimedOut(last) => bail!("{sidecar} did not run {OLD} within {START_TIMEOUT:?} (last seen: {last})"),
        }
    }

    /// Upgrades `sidecar` `n` times back and forth between [`NEW`] and [`OLD`], timing each
    /// from the API's acknowledgement to the agent running the version in a new process.
    /// Gives up after [`MAX_FAILURES_IN_A_ROW`] failed upgrades in a row.
    async fn upgrades(
        &mut self,
        sidecar: &str,
        mode: UpgradeMode,
        n: u32,
        mut pid: u32,
        series: &mut Series,
    ) -> anyhow::Result<()> {
        let mut in_a_row = 0;
        let every = (n / 10).max(1);
        for k in 1..=n {
            let target = if k % 2 == 1 { NEW } else { OLD };
            self.bind(sidecar, target, mode, true).await?;
            let acked = Instant::now();
            match self.wait_running(sidecar, target, Some(pid), UPGRADE_TIMEOUT).await? {
                Waited::Running(new_pid, at) => {
                    series.samples.push(at - acked);
                    // The agent takes the next target once the old process is gone (a hot
                    // upgrade's old generation drains first): wait for it, so that the next
                    // upgrade's time is its own.
                    match self.wait_gone(pid).await {
                        Some(gone) => series.drains.push(gone.saturating_duration_since(at)),
                        None => eprintln!("  the old process {pid} of {sidecar} still runs {DRAIN_WAIT:?} later"),
                    }
                    pid = new_pid;
                    in_a_row = 0;
                }
                Waited::TimedOut(last) => {
                    series.failed += 1;
                    in_a_row += 1;
                    eprintln!(
                        "  upgrade {k} of {sidecar} to {target} failed: not running within {UPGRADE_TIMEOUT:?} (last seen: {last})"
                    );
                    if in_a_row >= MAX_FAILURES_IN_A_ROW {
                        bail!("{in_a_row} upgrades in a row failed (last seen: {last}); gave up after {k} of {n}");
                    }
                    // Go on from whatever runs now.
                    pid = self.status_of(sidecar).await.ok().flatten().and_then(|s| s.pid).unwrap_or(pid);
                }
            }
            if k % every == 0 || k == n {
                let summary = LatencySummary::of(series.samples.clone())
                    .map(|s| format!("p50 {} ms, max {} ms", ms(s.p50), ms(s.max)))
                    .unwrap_or_default();
                eprintln!("  {sidecar}: {k}/{n} upgrades ({} failed) {summary}", series.failed);
            }
        }
        Ok(())
    }

    // ---- load --------------------------------------------------------------------------

    /// `-t2 -c16 -d<secs>s`.
    fn wrk_flags(&self, duration: Duration) -> String {
        format!("-t{} -c{} -d{}s", self.wrk_threads, self.wrk_connections, duration.as_secs().max(1))
    }

    /// Starts wrk on `url` for at most `bound` (it is stopped with SIGINT before).
    fn start_wrk(&self, name: &str, url: &str, bound: Duration) -> anyhow::Result<Child> {
        let mut args: Vec<OsString> = self.wrk_flags(bound).split(' ').map(OsString::from).collect();
        args.extend(["--latency", "--timeout", "2s", url].map(OsString::from));
        let log = self.root.join(format!("logs/wrk-{name}.log"));
        Ok(Child::spawn(&format!("wrk ({name})"), &self.wrk, args, log)?)
    }

    /// Stops wrk with SIGINT and reads its report.
    async fn stop_wrk(mut wrk: Child) -> anyhow::Result<WrkReport> {
        let ended = wrk.end(Signal::SIGINT, WRK_GRACE).await;
        let text = std::fs::read_to_string(&wrk.log).with_context(|| format!("cannot read {}", wrk.log.display()))?;
        match ended {
            Ended::Terminated => {}
            Ended::Before => bail!("wrk ended before it was stopped; see {}", wrk.log.display()),
            Ended::Killed => bail!("wrk did not stop within {WRK_GRACE:?} of SIGINT; see {}", wrk.log.display()),
        }
        parse_wrk(&text).with_context(|| format!("cannot read wrk's report in {}", wrk.log.display()))
    }

    // ---- the parts ---------------------------------------------------------------------

    /// One scenario: define, start, load, upgrade, stop. A failure of the scenario itself is
    /// reported in its result; the manager or the agent dying ends the benchmark.
    async fn scenario(&mut self, scenario: Scenario, upgrades: u32) -> anyhow::Result<ScenarioResult> {
        let sidecar = scenario_sidecar(scenario);
        let mode = scenario.mode();
        eprintln!("scenario {}: sidecar {sidecar}, mode {mode}, {upgrades} upgrades under load", scenario.name());
        let mut series = Series::default();
        let mut load = None;
        let outcome = self.scenario_steps(scenario, upgrades, &mut series, &mut load).await;
        let mut error = match outcome {
            Ok(()) => None,
            Err(e) => {
                self.ensure_alive()?;
                eprintln!("  scenario {} stopped: {e:#}", scenario.name());
                Some(format!("{e:#}"))
            }
        };
        self.retire_all(&[sidecar], &mut error).await?;
        let result = ScenarioResult {
            name: scenario.name(),
            mode,
            upgrades_done: series.done(),
            upgrades_failed: series.failed,
            upgrade_ms: Percentiles::of(&series.samples),
            drain_ms: Percentiles::of(&series.drains),
            failed_requests: load.as_ref().map(WrkReport::failed_requests),
            load,
            error,
        };
        eprintln!("  {}", scenario_line(&result));
        Ok(result)
    }

    /// The steps of [`Bench::scenario`]; what they measured goes to `series` and `load`.
    async fn scenario_steps(
        &mut self,
        scenario: Scenario,
        upgrades: u32,
        series: &mut Series,
        load: &mut Option<WrkReport>,
    ) -> anyhow::Result<()> {
        let sidecar = scenario_sidecar(scenario);
        self.define(&sidecar, scenario.shape()).await?;
        let pid = self.start_sidecar(&sidecar, scenario.mode()).await?;
        let url = self.sidecar_url(&sidecar)?;
        let hello = self.hello(&url).await.with_context(|| format!("{sidecar} does not answer {url}"))?;
        let bound = wrk_bound(upgrades);
        eprintln!(
            "  {sidecar} {} running (pid {pid}), answers {url}; load: wrk {}",
            hello.version,
            self.wrk_flags(bound)
        );
        let wrk = self.start_wrk(scenario.name(), &url, bound)?;
        tokio::time::sleep(LOAD_MARGIN).await;
        let upgraded = self.upgrades(&sidecar, scenario.mode(), upgrades, pid, series).await;
        tokio::time::sleep(LOAD_MARGIN).await;
        // The load's figures count even when the upgrades gave up.
        *load = Some(Self::stop_wrk(wrk).await?);
        upgraded
    }

    /// `GET /` of a sidecar, tried a few times.
    async fn hello(&self, url: &str) -> anyhow::Result<local::Hello> {
        let mut last = None;
        for _ in 0..5 {
            match local::fetch_hello(&self.sidecar_http, url).await {
                Ok(h) => return Ok(h),
                Err(e) => last = Some(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    /// `kill -9` of the sidecar `crashes` times, timing each to the first `GET /` answered by
    /// a new process.
    async fn crash_recovery(&mut self, crashes: u32, interval: Duration) -> anyhow::Result<CrashResult> {
        eprintln!(
            "crash recovery: sidecar {CRASH_SIDECAR} (as scenario hot), {crashes} × kill -9, one every ~{interval:?}"
        );
        let mut samples = Vec::new();
        let mut sent = 0;
        let outcome = self.crash_steps(crashes, interval, &mut samples, &mut sent).await;
        let mut error = match outcome {
            Ok(()) => None,
            Err(e) => {
                self.ensure_alive()?;
                eprintln!("  crash recovery stopped: {e:#}");
                Some(format!("{e:#}"))
            }
        };
        self.retire_all(&[CRASH_SIDECAR.to_owned()], &mut error).await?;
        Ok(CrashResult {
            crashes: sent,
            recovered: u32::try_from(samples.len()).unwrap_or(u32::MAX),
            recovery_ms: Percentiles::of(&samples),
            error,
        })
    }

    /// The steps of [`Bench::crash_recovery`].
    async fn crash_steps(
        &mut self,
        crashes: u32,
        interval: Duration,
        samples: &mut Vec<Duration>,
        sent: &mut u32,
    ) -> anyhow::Result<()> {
        self.define(CRASH_SIDECAR, Shape::AgentSocket).await?;
        let mut pid = self.start_sidecar(CRASH_SIDECAR, UpgradeMode::Hot).await?;
        let mut since = Instant::now();
        let url = self.sidecar_url(CRASH_SIDECAR)?;
        let every = (crashes / 10).max(1);
        for k in 1..=crashes {
            tokio::time::sleep_until((since + interval).into()).await;
            let raw = i32::try_from(pid).context("pid out of range")?;
            anyhow::ensure!(local::runs_from(raw, &self.root), "pid {pid} is not a sidecar of this benchmark");
            let killed = Instant::now();
            kill(Pid::from_raw(raw), Signal::SIGKILL).with_context(|| format!("kill -9 {pid}"))?;
            *sent += 1;
            match self.first_answer_from_another(&url, pid, UPGRADE_TIMEOUT).await {
                Some(at) => samples.push(at - killed),
                None => eprintln!("  crash {k}: no new process answered within {UPGRADE_TIMEOUT:?}"),
            }
            // The next kill is for the process the agent reports.
            match self.wait_running(CRASH_SIDECAR, OLD, Some(pid), UPGRADE_TIMEOUT).await? {
                Waited::Running(new_pid, at) => (pid, since) = (new_pid, at),
                Waited::TimedOut(last) => {
                    bail!("the agent did not restart {CRASH_SIDECAR} after crash {k} (last seen: {last})")
                }
            }
            if k % every == 0 || k == crashes {
                let last = samples.last().map(|d| format!(", last {} ms", ms(*d))).unwrap_or_default();
                eprintln!("  {k}/{crashes} crashes, {} recovered{last}", samples.len());
            }
        }
        Ok(())
    }

    /// Asks `url` every [`CRASH_PROBE_EVERY`] until a process other than `old` answers;
    /// returns when.
    async fn first_answer_from_another(&self, url: &str, old: u32, timeout: Duration) -> Option<Instant> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(CRASH_PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < timeout {
            tick.tick().await;
            if let Ok(hello) = local::fetch_hello(&self.sidecar_http, url).await
                && hello.pid.is_some_and(|p| p != old)
            {
                return Some(Instant::now());
            }
        }
        None
    }

    /// The agent with three idle sidecars, before and after `--footprint-upgrades` upgrades
    /// of one of them.
    async fn footprint(&mut self, args: &UpgradeArgs) -> anyhow::Result<FootprintResult> {
        let mode = args.footprint_mode;
        let sidecars: Vec<String> = (1..=IDLE_SIDECARS).map(idle_sidecar).collect();
        eprintln!(
            "agent footprint: {} sidecars idle for {:?}, then {} {mode} upgrades of {}, then idle again",
            sidecars.len(),
            args.idle.0,
            args.footprint_upgrades,
            sidecars[0]
        );
        let mut series = Series::default();
        let mut windows = (None, None);
        let outcome = self.footprint_steps(args, mode, &sidecars, &mut series, &mut windows).await;
        let mut error = match outcome {
            Ok(()) => None,
            Err(e) => {
                self.ensure_alive()?;
                eprintln!("  agent footprint stopped: {e:#}");
                Some(format!("{e:#}"))
            }
        };
        self.retire_all(&sidecars, &mut error).await?;
        let (before, after): (Option<Footprint>, Option<Footprint>) = windows;
        Ok(FootprintResult {
            sidecars: sidecars.len(),
            idle_s: args.idle.0.as_secs_f64(),
            upgrade_mode: mode,
            upgrades_done: series.done(),
            upgrades_failed: series.failed,
            upgrade_ms: Percentiles::of(&series.samples),
            drain_ms: Percentiles::of(&series.drains),
            rss_before_bytes: before.map(|f| f.rss_bytes),
            rss_after_bytes: after.map(|f| f.rss_bytes),
            cpu_idle_percent: before.map(|f| f.cpu_percent),
            cpu_idle_after_percent: after.map(|f| f.cpu_percent),
            fds_before: before.map(|f| f.fds),
            fds_after: after.map(|f| f.fds),
            error,
        })
    }

    /// The steps of [`Bench::footprint`].
    async fn footprint_steps(
        &mut self,
        args: &UpgradeArgs,
        mode: UpgradeMode,
        sidecars: &[String],
        series: &mut Series,
        windows: &mut (Option<Footprint>, Option<Footprint>),
    ) -> anyhow::Result<()> {
        let mut pids = Vec::new();
        for sidecar in sidecars {
            self.define(sidecar, Shape::AgentSocket).await?;
            pids.push(self.start_sidecar(sidecar, mode).await?);
        }
        tokio::time::sleep(SETTLE).await;
        let before = self.idle_window(args.idle.0).await?;
        eprintln!("  before: {}", describe_footprint(&before));
        windows.0 = Some(before);
        if args.footprint_upgrades > 0 {
            self.upgrades(&sidecars[0], mode, args.footprint_upgrades, pids[0], series).await?;
        }
        // Every sidecar must run again (the last upgrade's predecessor gone) before the window.
        let last = if args.footprint_upgrades % 2 == 1 { NEW } else { OLD };
        for (sidecar, version) in sidecars.iter().zip(std::iter::once(last).chain(std::iter::repeat(OLD))) {
            if let Waited::TimedOut(seen) = self.wait_running(sidecar, version, None, START_TIMEOUT).await? {
                bail!("{sidecar} is not running {version} after the upgrades (last seen: {seen})");
            }
        }
        tokio::time::sleep(SETTLE).await;
        let after = self.idle_window(args.idle.0).await?;
        eprintln!("  after:  {}", describe_footprint(&after));
        windows.1 = Some(after);
        Ok(())
    }

    /// The agent's CPU over `window` of doing nothing but supervising, then its resident
    /// memory and open fds.
    async fn idle_window(&mut self, window: Duration) -> anyhow::Result<Footprint> {
        let pid = self.agent_pid()?;
        let cpu_ticks = || outrider_procfs::stat(pid).map(|s| s.cpu_ticks());
        let (ticks, started) = (cpu_ticks()?, Instant::now());
        tokio::time::sleep(window).await;
        let (used, took) = (cpu_ticks()?.saturating_sub(ticks), started.elapsed());
        self.ensure_alive()?;
        // Ticks are far below 2^53: exact as f64.
        let cpu_percent =
            used as f64 / outrider_procfs::clock_ticks_per_second() as f64 / took.as_secs_f64().max(1e-3) * 100.0;
        Ok(Footprint {
            rss_bytes: outrider_procfs::status_bytes(pid, "VmRSS")?,
            cpu_percent: (cpu_percent * 100.0).round() / 100.0,
            fds: outrider_procfs::fd_count(pid)?,
        })
    }

    // ---- cleanup -----------------------------------------------------------------------

    /// Stops everything: the agent, the sidecars it leaves running, the manager. Never fails.
    async fn shutdown(&mut self) {
        // The agent leaves its sidecars running when it stops (they are re-adopted on its next
        // start): they are stopped after it.
        if let Some(agent) = &mut self.agent
            && agent.stop(local::PROCESS_GRACE).await == Ended::Killed
        {
            eprintln!("had to kill the agent");
        }
        let left = local::kill_leftover_sidecars(&self.root, &[self.root.join("agent")]).await;
        if left > 0 {
            eprintln!("stopped {left} sidecar process(es) left running");
        }
        // Idle connections to the manager would hold its graceful shutdown: close them first.
        self.client = None;
        if let Some(manager) = &mut self.manager
            && manager.stop(local::PROCESS_GRACE).await == Ended::Killed
        {
            eprintln!("had to kill the manager");
        }
        if let left @ [_, ..] = local::processes_running_from(&self.root).as_slice() {
            eprintln!("warning: sidecar process(es) {left:?} still running");
        }
    }

    /// Removes the temporary directory, or keeps it and says where it is.
    fn finish_dir(&mut self, keep: bool) -> anyhow::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        if keep {
            let path = dir.keep();
            eprintln!("kept {} (logs in logs/, sidecar logs in agent/logs/)", path.display());
            return Ok(());
        }
        let path = dir.path().to_owned();
        dir.close().with_context(|| format!("cannot remove {}", path.display()))
    }
}

/// wrk's `-d` for `upgrades` upgrades: never reached, since every upgrade failing takes at
/// most this long; wrk is stopped with SIGINT once the upgrades are done.
fn wrk_bound(upgrades: u32) -> Duration {
    (UPGRADE_TIMEOUT + DRAIN_WAIT + Duration::from_secs(5)) * upgrades + Duration::from_secs(60)
}

/// The sidecar of the crash-recovery part.
const CRASH_SIDECAR: &str = "crash";

/// The sidecar of a scenario.
fn scenario_sidecar(scenario: Scenario) -> String {
    format!("up-{}", scenario.name())
}

/// The `i`-th sidecar of the footprint part (from 1).
fn idle_sidecar(i: usize) -> String {
    format!("idle-{i}")
}

/// `--footprint-mode`: `hot` or `restart` (the modes every footprint sidecar supports).
fn parse_footprint_mode(s: &str) -> Result<UpgradeMode, String> {
    match s.parse::<UpgradeMode>()? {
        m @ (UpgradeMode::Hot | UpgradeMode::Restart) => Ok(m),
        other => Err(format!("{other} upgrades are not measured here: use hot or restart")),
    }
}

/// `RSS 12.3 MiB, CPU 0.4 %, 41 fds`.
fn describe_footprint(f: &Footprint) -> String {
    format!("RSS {:.1} MiB, CPU {} % of a core, {} open fds", mib(f.rss_bytes), f.cpu_percent, f.fds)
}

fn mib(bytes: u64) -> f64 {
    // Far below 2^53: exact as f64.
    bytes as f64 / (1024.0 * 1024.0)
}

/// `12.1 / 40.2 / 55.0`, or `-`.
fn triple(p: Option<Percentiles>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{} / {} / {}", p.p50, p.p99, p.max))
}

/// One line per scenario for the progress output.
fn scenario_line(r: &ScenarioResult) -> String {
    let load = r.load.as_ref().map_or_else(
        || "no load figures".to_owned(),
        |l| {
            format!(
                "{} requests, {} failed (connect {}, read {}, write {}, timeout {}, non-2xx {}), latency ms p50/p99/max {}",
                l.requests,
                l.failed_requests(),
                l.connect_errors,
                l.read_errors,
                l.write_errors,
                l.timeout_errors,
                l.non_2xx,
                triple(Some(l.latency_ms))
            )
        },
    );
    format!(
        "{}: {} upgrades done, {} failed, upgrade ms p50/p99/max {} (old process drained in {}); {load}",
        r.name,
        r.upgrades_done,
        r.upgrades_failed,
        triple(r.upgrade_ms),
        triple(r.drain_ms)
    )
}

/// The result as tables and lines for people.
fn render(r: &UpgradeBenchResult) -> String {
    use comfy_table::{ContentArrangement, Table, presets};
    let mut out = Vec::new();
    if !r.scenarios.is_empty() {
        let mut t = Table::new();
        t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
        t.set_header(vec![
            "SCENARIO",
            "MODE",
            "UPGRADES",
            "FAILED",
            "UPGRADE MS p50/p99/max",
            "DRAIN MS p50/p99/max",
            "REQUESTS",
            "CONNECT",
            "READ",
            "WRITE",
            "TIMEOUT",
            "NON-2XX",
            "LATENCY MS p50/p99/max",
        ]);
        for s in &r.scenarios {
            let load = |f: fn(&WrkReport) -> u64| s.load.as_ref().map_or_else(|| "-".to_owned(), |l| f(l).to_string());
            t.add_row(vec![
                s.name.to_owned(),
                s.mode.to_string(),
                s.upgrades_done.to_string(),
                s.upgrades_failed.to_string(),
                triple(s.upgrade_ms),
                triple(s.drain_ms),
                load(|l| l.requests),
                load(|l| l.connect_errors),
                load(|l| l.read_errors),
                load(|l| l.write_errors),
                load(|l| l.timeout_errors),
                load(|l| l.non_2xx),
                triple(s.load.as_ref().map(|l| l.latency_ms)),
            ]);
        }
        for column in t.column_iter_mut() {
            column.set_padding((0, 2));
        }
        out.push(format!("upgrades under load ({} per scenario; {}):", r.upgrades, r.wrk));
        out.push(t.trim_fmt());
        for s in r.scenarios.iter().filter(|s| s.error.is_some()) {
            out.push(format!("  {}: {}", s.name, s.error.as_deref().unwrap_or_default()));
        }
    }
    if let Some(c) = &r.crash_recovery {
        out.push(format!(
            "crash recovery: {} × kill -9, {} recovered; ms to the first answer of a new process p50/p99/max {}",
            c.crashes,
            c.recovered,
            triple(c.recovery_ms)
        ));
        if let Some(e) = &c.error {
            out.push(format!("  {e}"));
        }
    }
    if let Some(f) = &r.agent_footprint {
        let rss = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", mib(b)));
        let cpu = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |c| format!("{c} %"));
        let fds = |n: Option<usize>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        out.push(format!(
            "agent footprint ({} sidecars, {} s idle windows): RSS {} -> {}, idle CPU {} -> {} of a core, open fds {} -> {} \
             around {} {} upgrades ({} failed, ms p50/p99/max {}, old process drained in {})",
            f.sidecars,
            f.idle_s,
            rss(f.rss_before_bytes),
            rss(f.rss_after_bytes),
            cpu(f.cpu_idle_percent),
            cpu(f.cpu_idle_after_percent),
            fds(f.fds_before),
            fds(f.fds_after),
            f.upgrades_done,
            f.upgrade_mode,
            f.upgrades_failed,
            triple(f.upgrade_ms),
            triple(f.drain_ms)
        ));
        if let Some(e) = &f.error {
            out.push(format!("  {e}"));
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1.0 stopped with SIGINT after 2 s against a healthy demo sidecar.
    const CLEAN: &str = "Running 30s test @ http://127.0.0.1:18931/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   546.97us    1.11ms  11.60ms   87.46%
    Req/Sec    61.22k     6.90k   71.93k    80.00%
  Latency Distribution
     50%   66.00us
     75%  210.00us
     90%    2.10ms
     99%    4.84ms
  243664 requests in 2.00s, 41.60MB read
Requests/sec: 121625.66
Transfer/sec:     20.76MB
";

    /// wrk 4.1.0 while the sidecar was killed and replaced by one answering 30 % errors.
    const ERRORS: &str = "Running 30s test @ http://127.0.0.1:18932/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   372.16us  804.13us   9.96ms   89.67%
    Req/Sec    56.87k    13.29k   95.77k    92.68%
  Latency Distribution
     50%   84.00us
     75%  146.00us
     90%    1.23ms
     99%    3.85ms
  241660 requests in 2.61s, 41.18MB read
  Socket errors: connect 0, read 32, write 52555, timeout 0
  Non-2xx or 3xx responses: 37629
Requests/sec:  92754.90
Transfer/sec:     15.81MB
";

    #[test]
    fn parses_a_clean_wrk_report() {
        let r = parse_wrk(CLEAN).unwrap();
        assert_eq!(r.requests, 243_664);
        assert_eq!(r.load_s, 2.0);
        assert_eq!((r.connect_errors, r.read_errors, r.write_errors, r.timeout_errors, r.non_2xx), (0, 0, 0, 0, 0));
        assert_eq!(r.latency_ms, Percentiles { p50: 0.066, p99: 4.84, max: 11.6 });
        assert_eq!(r.failed_requests(), 0);
    }

    #[test]
    fn parses_socket_errors_and_non_2xx() {
        let r = parse_wrk(ERRORS).unwrap();
        assert_eq!(r.requests, 241_660);
        assert_eq!(r.load_s, 2.61);
        assert_eq!((r.connect_errors, r.read_errors, r.write_errors, r.timeout_errors), (0, 32, 52_555, 0));
        assert_eq!(r.non_2xx, 37_629);
        assert_eq!(r.failed_requests(), 32 + 52_555 + 37_629);
        assert_eq!(r.latency_ms, Percentiles { p50: 0.084, p99: 3.85, max: 9.96 });
    }

    #[test]
    fn wrk_times_in_every_unit() {
        assert_eq!(wrk_time_ms("66.00us"), Some(0.066));
        assert_eq!(wrk_time_ms("4.84ms"), Some(4.84));
        assert_eq!(wrk_time_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_time_ms("1.50m"), Some(90_000.0));
        assert_eq!(wrk_time_ms("1.00h"), Some(3_600_000.0));
        assert_eq!(wrk_time_ms("-nan%"), None);
        assert!(parse_wrk("Running 30s test @ http://x/\n").is_err());
    }

    #[test]
    fn every_scenario_defines_a_valid_sidecar() {
        for s in Scenario::ALL {
            let name = scenario_sidecar(s);
            let sidecar = sidecar_definition(&name, &port_label(&name), s.shape()).unwrap();
            sidecar.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(sidecar.upgrade_modes.contains(&s.mode()), "{name} does not support {}", s.mode());
        }
    }
}
