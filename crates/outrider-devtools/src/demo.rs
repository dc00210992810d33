//! `outrider demo`: the whole loop on one machine, in a few seconds.
//!
//! 1. starts `outrider server` on a temporary directory and a free loopback port;
//! 2. registers the demo sidecar (`outrider-demo-sidecar`, found next to this binary) with
//!    versions 1.0.0, 1.1.0 (healthy) and 1.2.0 (defective: `DEMO_FAULT=crash-after=5s`, or
//!    with `--defect errors` `DEMO_FAULT=error-rate=0.1`), all admitted, and binds service
//!    `checkout` to 1.0.0. The sidecar's `scrape` setting makes the agents derive
//!    `error_ratio` (errors/requests) and `latency_p99_ms` from its own `/metrics` every
//!    second;
//! 3. starts three `outrider agent` processes (instances `i-1`…`i-3`; `i-1` is the canary;
//!    `--report-interval 1s`, so that the judge gets a sample a second) and waits until each
//!    reports the sidecar running, then asks each sidecar `GET /`;
//! 4. creates a two-phase upgrade plan (`gray` on the canary instance, then `full`) to 1.1.0
//!    and follows it: every batch's states, the plan's states, every instance's move as the
//!    manager sees it, while loading each sidecar with a `GET /` every few milliseconds
//!    (`load.rs`); then prints the plan's counts, blast radius and events. Each batch is
//!    judged on metrics (the built-in ones: CPU, memory, error ratio, p99 latency), the
//!    canary against the instances not upgraded, the others against their own values
//!    before. With `--defect` the plan targets 1.2.0 instead: the sidecar crashes on the
//!    canary (or, `--defect errors`, fails a tenth of its requests), the plan blocks itself
//!    with an incident (for errors: the error ratio, its test, p-value and effect) before the
//!    `full` phase touches anything, and the demo rolls it back;
//! 5. disables the binding (the agents stop their sidecars cleanly), stops the agents and the
//!    manager, removes the temporary directory and prints a summary.
//!
//! The manager and the agents run in their own process groups, so a Ctrl-C in the terminal
//! reaches only the demo, which then stops everything in order (a second Ctrl-C kills at
//! once). Whatever happens, no process is left behind: the children are killed when the demo
//! ends, and any process that still runs an executable from the temporary directory (a
//! sidecar the agents did not stop) is killed too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use outrider_client::{Client, EventQuery, FollowOptions, InstanceFilter, PlanAction, PlanFollower, PlanUpdate};
use outrider_model::{
    AnalysisSpec, Artifact, Batch, BatchAnalysis, BatchState, Batching, Binding, Caps, Comparison, FeatureServices,
    Handover, HumanDuration, Incident, Instance, Lifecycle, ListenSocket, MetricPolicy, MetricRef, NewVersion,
    PhaseSpec, Plan, PlanSpec, PlanState, Priority, Probe, Quantile, Ratio, Scrape, Selector, Series, Service, Side,
    Sidecar, SidecarState, SidecarStatus, UpgradeMode,
};
use serde::Serialize;
use time::OffsetDateTime;

use self::load::{Load, LoadStats};
use crate::harness::{
    self as local, AgentFlags, Child, Ended, Hello, Interrupted, PROCESS_GRACE, fetch_hello, free_ports, interrupt,
    kill_leftover_sidecars, processes_running_from,
};

mod catalog;
mod describe;
mod load;

pub use self::catalog::demo_scrape;
use self::{
    catalog::{binding, demo_sidecar, demo_version, plan_spec},
    describe::{describe_analysis, describe_batch, describe_incident, holds, print_summary, spelled},
};

/// Tenant everything is created in.
const TENANT: &str = outrider_model::DEFAULT_TENANT;
/// Name of the sidecar.
const SIDECAR: &str = "demo";
/// Service the agents' instances belong to.
const SERVICE: &str = "checkout";
/// Version the instances start with.
const OLD: &str = "1.0.0";
/// The healthy release the plan moves them to.
const NEW: &str = "1.1.0";
/// The defective release (`--defect`): it crashes a second after it starts, or fails some
/// of its requests ([`Defect`]).
const BAD: &str = "1.2.0";
/// Drain time of the sidecar (SIGTERM to SIGKILL).
const DRAIN: Duration = Duration::from_secs(2);

/// The plan's phases: name, stage (`all`: every instance an earlier phase did not take),
/// batching, bake time, upgrade mode (`hot` on the canary: the new process starts beside
/// the old one on the agent-owned socket; `restart` for the rest, to show the difference).
/// The bakes are long enough for the judge's [`MIN_SAMPLES`] at one report a second: the
/// canary's first report on the new version has no error ratio yet (a ratio needs two scrapes
/// of the same process).
const PHASES: [(&str, &str, Batching, HumanDuration, UpgradeMode); 2] = [
    ("gray", "canary", Batching::Exponential { start: 1, factor: 2 }, HumanDuration::from_secs(6), UpgradeMode::Hot),
    ("full", "all", Batching::Linear { size: 1 }, HumanDuration::from_secs(5), UpgradeMode::Restart),
];
/// How often each agent reports (`--report-interval`): every report is a sample of the judge.
const REPORT_INTERVAL: &str = "1s";
/// How often the agents scrape the sidecars' `/metrics` (the shortest a scrape setting allows).
const SCRAPE_INTERVAL: HumanDuration = HumanDuration::from_secs(1);
/// Least samples per side of a comparison: a 6 s bake at a report a second gives the canary
/// about five (the default of 8 fits bakes of minutes).
const MIN_SAMPLES: usize = 4;
/// Bake extensions of an inconclusive batch before the plan blocks for a human.
const MAX_EXTENSIONS: u32 = 2;
/// The least rise of `latency_p99_ms` that counts (besides the built-in +25 %): the demo
/// sidecar answers in well under a millisecond, and a busy machine makes a fresh process's
/// first seconds a few milliseconds slower without anything being wrong.
const LATENCY_FLOOR_MS: f64 = 5.0;
/// Time a batch may take to report the target version before it fails.
const BATCH_TIMEOUT: HumanDuration = HumanDuration::from_secs(20);

/// How long the manager may take to answer `/readyz`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agents may take to fetch the artifact and start the sidecar.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the healthy plan may take to complete (its bakes alone take 5 s).
const PLAN_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the defective plan may take to block itself (a bake and its extensions).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the rollback may take to bring every changed instance back.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agents may take to stop their sidecars once the binding is disabled.
const STOP_SIDECARS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between two looks at the manager's instance list (or the agents' status).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The same while the plan runs, to catch the intermediate states and time the moves; also
/// how often the plan follower looks whether the plan changed.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);
/// The plan is fetched at least this often, even when its events say nothing.
const PLAN_POLL_EVERY: Duration = Duration::from_millis(200);
/// Time between two requests of the load on each sidecar while the plan runs (about 100 a
/// second each, what the sidecars' error ratios are computed from).
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// The load stops by itself after this long, whatever happens to the demo.
const LOAD_LIMIT: Duration = Duration::from_secs(180);
/// Time one HTTP request to a sidecar or an agent may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Flags of `outrider demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory (manager data, agent data, logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Use the 7 loopback ports from this one on (the manager, then the 3 agents, then the
    /// 3 sidecars) instead of free ports picked at random.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=65_529))]
    pub base_port: Option<u16>,
    /// Let the plan target a defective release 1.2.0: `crash` (the default of a bare
    /// `--defect`) crashes a second after it starts; `errors` answers a tenth of its requests
    /// with a 500 under the demo's HTTP load, which the agents' scrapes turn into an error
    /// ratio. The plan stops itself after its first batch with an incident, and the demo rolls
    /// it back.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "crash", value_name = "DEFECT")]
    pub defect: Option<Defect>,
}

/// What is wrong with the defective release (`--defect`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// It crashes 5 s after it starts (past the default 3 s `min_ready`, so it takes over
    /// first): the plan stops on the process signals.
    Crash,
    /// It fails a tenth of its requests: the plan stops on the error ratio.
    Errors,
}

impl Defect {
    /// The fault [`BAD`] sets (`DEMO_FAULT`).
    fn fault(self) -> &'static str {
        match self {
            Self::Crash => "crash-after=5s",
            Self::Errors => "error-rate=0.1",
        }
    }

    /// What the fault does, in words.
    fn what(self) -> &'static str {
        match self {
            Self::Crash => "it crashes 5 s after it starts, past the 3 s min_ready, so it takes over first",
            Self::Errors => "it answers 10 % of the requests to GET / with a 500",
        }
    }
}

/// One instance of the demo fleet.
#[derive(Debug, Clone, Copy)]
struct InstanceSpec {
    id: &'static str,
    region: &'static str,
    env: &'static str,
    stage: &'static str,
}

/// The three instances the demo runs.
const INSTANCES: [InstanceSpec; 3] = [
    InstanceSpec { id: "i-1", region: "boe", env: "prod", stage: "canary" },
    InstanceSpec { id: "i-2", region: "cn-north", env: "prod", stage: "full" },
    InstanceSpec { id: "i-3", region: "cn-north", env: "prod", stage: "full" },
];

/// The loopback ports the demo uses.
#[derive(Debug, Clone)]
struct Ports {
    manager: u16,
    /// The agents' own HTTP endpoints (`/status`), one per instance.
    agents: Vec<u16>,
    /// The sidecars' ports (`--label port=`), one per instance.
    sidecars: Vec<u16>,
}

impl Ports {
    /// Seven consecutive ports from `base` if given (each checked free), else seven free
    /// ports chosen by the system.
    fn choose(base: Option<u16>) -> anyhow::Result<Self> {
        let n = 1 + 2 * INSTANCES.len();
        let ports = match base {
            Some(base) => consecutive_free_ports(base, n)?,
            None => free_ports(n)?,
        };
        let k = INSTANCES.len();
        Ok(Self { manager: ports[0], agents: ports[1..=k].to_vec(), sidecars: ports[k + 1..].to_vec() })
    }
}

/// `base`, `base + 1`, … (`n` ports), each checked free.
fn consecutive_free_ports(base: u16, n: usize) -> anyhow::Result<Vec<u16>> {
    let ports: Vec<u16> = (0..n).map_while(|i| base.checked_add(u16::try_from(i).ok()?)).collect();
    anyhow::ensure!(ports.len() == n, "--base-port {base} leaves no room for {n} ports");
    for &port in &ports {
        TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} is not free on 127.0.0.1; choose another --base-port"))?;
    }
    Ok(ports)
}

/// Prints lines prefixed with the time since the demo started.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    /// Prints `[  1.2s] line`.
    fn say(&self, line: impl std::fmt::Display) {
        println!("[{:>5.1}s] {line}", self.0.elapsed().as_secs_f64());
    }
}

/// An agent process and what the demo knows about its instance.
struct Agent {
    spec: InstanceSpec,
    process: Child,
    data_dir: PathBuf,
    /// The agent's own endpoint (`/status`).
    status_url: String,
    /// The sidecar's `GET /`.
    sidecar_url: String,
}

/// The sidecar's state on one instance, as reported to the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    state: SidecarState,
    version: String,
    pid: Option<u32>,
    exits: u32,
    error: Option<String>,
}

impl Seen {
    fn of(status: &SidecarStatus) -> Self {
        Self {
            state: status.state,
            version: status.version.clone(),
            pid: status.pid,
            exits: status.exits,
            error: status.error.clone(),
        }
    }

    /// `1.0.0 running (pid 1234)`, `1.2.0 crash_loop, 2 exits`.
    fn describe(&self) -> String {
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let exits = match self.exits {
            0 => String::new(),
            1 => ", 1 exit".into(),
            n => format!(", {n} exits"),
        };
        let error = self.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        format!("{} {}{pid}{exits}{error}", self.version, self.state)
    }

    fn is_running(&self, version: &str) -> bool {
        self.state == SidecarState::Running && self.version == version && self.pid.is_some()
    }

    fn is_failing(&self) -> bool {
        matches!(self.state, SidecarState::Failed | SidecarState::CrashLoop)
    }
}

/// How one instance moved from one version to another.
#[derive(Debug, Clone)]
struct Move {
    id: &'static str,
    old_pid: u32,
    new_pid: u32,
    /// From the start of its batch (or from the rollback) to running the new version.
    took: Duration,
}

/// What the plan did, for the summary.
#[derive(Debug, Clone)]
struct Report {
    /// The plan's target version.
    target: &'static str,
    /// The plan as last read.
    plan: Plan,
    /// From the plan's creation to its completion (healthy run) or its block (`--defect`).
    took: Duration,
    /// Moves to the target version.
    moves: Vec<Move>,
    /// `--defect`: moves back to the old version after the rollback, and how long the
    /// rollback took (from the request to the last instance running the old version).
    rollback: Option<(Vec<Move>, Duration)>,
    /// Instances the plan never touched (`--defect`: the `full` phase), with their pid.
    untouched: Vec<(&'static str, u32)>,
    probes: Vec<(&'static str, LoadStats)>,
    /// `--defect`: what was wrong with the target.
    defect: Option<Defect>,
}

/// What following the plan gave (see [`Report`]).
struct Followed {
    watch: Watch,
    took: Duration,
    rollback: Option<(Vec<Move>, Duration)>,
    untouched: Vec<(&'static str, u32)>,
}

/// Time since the batch started applying (by the manager's clock, which is this machine's).
fn since_start(b: &Batch) -> Option<Duration> {
    Duration::try_from(OffsetDateTime::now_utc() - b.started_at?).ok()
}

/// Everything the demo started, to run the script and to clean up after it.
struct Demo {
    clock: Clock,
    exe: PathBuf,
    sidecar_bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// The temporary directory, canonical (leftover sidecars are found by it).
    root: PathBuf,
    ports: Ports,
    http: reqwest::Client,
    server: Option<Child>,
    client: Option<Client>,
    agents: Vec<Agent>,
    /// `--defect`: the plan targets the defective release.
    defect: Option<Defect>,
}

/// Runs `outrider demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut demo = Demo::prepare(&args)?;
    print_intro(&demo, args.keep);
    let outcome = tokio::select! {
        r = demo.script() => r,
        i = interrupt() => Err(i.into()),
    };
    let interrupted = outcome.as_ref().is_err_and(|e| e.is::<Interrupted>());
    if let Err(e) = &outcome {
        println!();
        demo.clock.say(format!("stopping: {e:#}"));
    }
    tokio::select! {
        () = demo.shutdown() => {}
        _ = interrupt() => {
            demo.clock.say("interrupted again: killing everything");
            demo.kill_everything().await;
        }
    }
    // After a failure the logs are what explains it: keep them.
    let keep = args.keep || (outcome.is_err() && !interrupted);
    demo.finish_dir(keep)?;
    let report = outcome?;
    print_summary(&report, demo.clock);
    Ok(())
}

/// What the demo is about to do.
fn print_intro(demo: &Demo, keep: bool) {
    let [(gray, _, _, gray_bake, _), (full, _, _, full_bake, _)] = PHASES;
    println!("outrider demo: a manager, {} agents and the demo sidecar on this machine;", INSTANCES.len());
    if let Some(defect) = demo.defect {
        println!(
            "then a two-phase plan tries to move service {SERVICE} from {SIDECAR} {OLD} to {BAD}, a defective \
             release (DEMO_FAULT={}: {}):",
            defect.fault(),
            defect.what()
        );
        println!("the plan stops itself after its first batch ({gray}, the canary), and the demo rolls it back.");
        if defect == Defect::Errors {
            println!(
                "Every sidecar gets a request every {} ms; the agents scrape the sidecars' /metrics every {SCRAPE_INTERVAL} \
                 into error_ratio and latency_p99_ms,",
                PROBE_EVERY.as_millis()
            );
            println!(
                "and the judge compares the canary's figures with those of the instances not upgraded (Mann-Whitney U \
                 with effect floors)."
            );
        }
    } else {
        println!("then a two-phase plan moves service {SERVICE} from {SIDECAR} {OLD} to {NEW} in restart mode:");
        println!(
            "phase {gray} on the canary instance (bake {gray_bake}), then phase {full} on the others (bake {full_bake})."
        );
        println!(
            "Each batch is judged on the figures the agents report every {REPORT_INTERVAL} (CPU, memory, and the error \
             ratio and p99 latency"
        );
        println!(
            "they scrape from the sidecars' /metrics under the demo's load of a request every {} ms per sidecar).",
            PROBE_EVERY.as_millis()
        );
    }
    let fate = if keep { "kept: --keep" } else { "removed at the end; --keep keeps it" };
    println!("work dir: {} ({fate})", demo.root.display());
    println!();
}

impl Demo {
    /// Finds the binaries, creates the temporary directory and chooses the ports.
    fn prepare(args: &DemoArgs) -> anyhow::Result<Self> {
        let local::Binaries { outrider: exe, demo_sidecar: sidecar_bin } = local::Binaries::current()?;
        let ports = Ports::choose(args.base_port)?;
        let dir = tempfile::Builder::new()
            .prefix("outrider-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let root = dir.path().canonicalize().context("cannot resolve the temporary directory")?;
        for sub in ["logs", "agents"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // Every request opens a new connection: a probe measures the listener, not a pool.
            .pool_max_idle_per_host(0)
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Self {
            clock: Clock(Instant::now()),
            exe,
            sidecar_bin,
            dir: Some(dir),
            root,
            ports,
            http,
            server: None,
            client: None,
            agents: Vec::new(),
            defect: args.defect,
        })
    }

    /// The demo proper: start, run the plan, show.
    async fn script(&mut self) -> anyhow::Result<Report> {
        self.start_server().await?;
        self.register().await?;
        self.start_agents()?;
        let pids = self.wait_running().await?;
        self.show_answers().await?;
        println!();
        let report = self.run_plan(&pids).await?;
        println!();
        self.show_answers().await?;
        println!();
        self.show_plan_events(&report.plan.id).await?;
        println!();
        Ok(report)
    }

    /// The typed client of the manager (once it runs).
    fn client(&self) -> anyhow::Result<&Client> {
        self.client.as_ref().ok_or_else(|| anyhow!("the manager is not running"))
    }

    /// Checks that the manager and every agent still run.
    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        if let Some(server) = &mut self.server {
            server.ensure_alive()?;
        }
        self.agents.iter_mut().try_for_each(|a| a.process.ensure_alive())?;
        Ok(())
    }

    // ---- 1. the manager ---------------------------------------------------------------

    /// Starts `outrider server` and waits until it is ready and has written its token.
    async fn start_server(&mut self) -> anyhow::Result<()> {
        let data_dir = self.root.join("manager");
        let url = format!("http://127.0.0.1:{}", self.ports.manager);
        let log = self.root.join("logs/manager.log");
        let server = self.server.insert(local::spawn_manager(&self.exe, &data_dir, self.ports.manager, log.clone())?);
        self.clock.say(format!("manager starting on {url} (log: {})", log.display()));
        let (client, _) = local::wait_manager_ready(server, &url, &data_dir, SERVER_READY_TIMEOUT).await?;
        self.client = Some(client);
        self.clock.say("manager ready");
        Ok(())
    }

    // ---- 2. the catalog ----------------------------------------------------------------

    /// Creates the sidecar, its three versions (admitted), the service and its binding.
    async fn register(&mut self) -> anyhow::Result<()> {
        let artifact = local::file_artifact(&self.sidecar_bin).await?;
        let client = self.client()?;
        client.create_sidecar(TENANT, &demo_sidecar()).await.context("cannot create the sidecar")?;
        let defect = self.defect.unwrap_or(Defect::Crash);
        for (version, fault) in [(OLD, None), (NEW, None), (BAD, Some(defect.fault()))] {
            let body = demo_version(version, artifact.clone(), fault);
            client.create_version(TENANT, SIDECAR, &body).await.with_context(|| format!("cannot create {version}"))?;
            let evidence = serde_json::json!({ "by": "outrider demo", "tests": "none: it is a demo" });
            client
                .admit_version(TENANT, SIDECAR, version, &evidence)
                .await
                .with_context(|| format!("cannot admit {version}"))?;
        }
        self.clock.say(format!(
            "sidecar {SIDECAR}: versions {OLD}, {NEW} and {BAD} registered and admitted (artifact {}, sha256 {}…)",
            self.sidecar_bin.display(),
            &artifact.sha256[..12]
        ));
        self.clock.say(format!(
            "sidecar {SIDECAR}: {BAD} is defective on purpose (env DEMO_FAULT={}: {})",
            defect.fault(),
            defect.what()
        ));
        self.clock.say(format!(
            "sidecar {SIDECAR}: the agents scrape its /metrics every {SCRAPE_INTERVAL}: error_ratio = rate(errors_total) / \
             rate(requests_total), latency_p99_ms from request_duration_seconds"
        ));
        let service = Service {
            name: SERVICE.into(),
            priority: Priority::P1,
            traits: BTreeMap::from([("lang".into(), "go".into()), ("protocol".into(), "http".into())]),
            protected: false,
            protected_periods: Vec::new(),
        };
        client.create_service(TENANT, &service).await.context("cannot create the service")?;
        client.set_binding(TENANT, SERVICE, &binding(true, OLD)).await.context("cannot bind the sidecar")?;
        self.clock.say(format!("service {SERVICE} binds {SIDECAR}@{OLD} (mode restart)"));
        Ok(())
    }

    // ---- 3. the agents -----------------------------------------------------------------

    /// Starts one agent per instance.
    fn start_agents(&mut self) -> anyhow::Result<()> {
        let manager = format!("http://127.0.0.1:{}", self.ports.manager);
        let token_file = self.root.join("manager/admin.token");
        for (i, spec) in INSTANCES.iter().enumerate() {
            let (listen, port) = (self.ports.agents[i], self.ports.sidecars[i]);
            let data_dir = self.root.join("agents").join(spec.id);
            let log = self.root.join(format!("logs/agent-{}.log", spec.id));
            let mut args = AgentFlags {
                manager: &manager,
                token_file: &token_file,
                data_dir: &data_dir,
                service: SERVICE,
                instance: spec.id,
                region: spec.region,
                env: spec.env,
                stage: spec.stage,
                labels: vec![("port".into(), port.to_string())],
                listen,
            }
            .args();
            args.extend(["--report-interval".into(), REPORT_INTERVAL.into()]);
            let process = Child::spawn(&format!("agent {}", spec.id), &self.exe, args, log)?;
            self.clock.say(format!(
                "agent {} started ({}/{}/{}, sidecar port {port})",
                spec.id, spec.region, spec.env, spec.stage
            ));
            self.agents.push(Agent {
                spec: *spec,
                process,
                data_dir,
                status_url: format!("http://127.0.0.1:{listen}/status"),
                sidecar_url: format!("http://127.0.0.1:{port}/"),
            });
        }
        Ok(())
    }

    /// Waits until every instance reports the sidecar running at the old version; returns
    /// the pid on each instance.
    async fn wait_running(&mut self) -> anyhow::Result<BTreeMap<&'static str, u32>> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pids = BTreeMap::new();
        let mut last: BTreeMap<&'static str, Seen> = BTreeMap::new();
        while pids.len() < self.agents.len() {
            self.ensure_alive()?;
            let seen = self.sidecar_states().await?;
            for agent in &self.agents {
                let id = agent.spec.id;
                let Some(s) = seen.get(id) else { continue };
                if s.is_running(OLD) && !pids.contains_key(id) {
                    let pid = s.pid.unwrap_or_default();
                    self.clock.say(format!("{id:<4} {SIDECAR}@{OLD} running (pid {pid})"));
                    pids.insert(id, pid);
                } else if s.is_failing() && last.get(id) != Some(s) {
                    self.clock.say(format!("{id:<4} {SIDECAR} {} (the agent retries)", s.describe()));
                }
                last.insert(id, s.clone());
            }
            if Instant::now() > deadline {
                let Some(late) = self.agents.iter().find(|a| !pids.contains_key(a.spec.id)) else { break };
                let now = last
                    .get(late.spec.id)
                    .map_or("nothing reported".into(), |s| format!("last seen: {}", s.describe()));
                bail!(
                    "agent {} did not report the {SIDECAR} sidecar running within {START_TIMEOUT:?} ({now}); see {}",
                    late.spec.id,
                    late.process.log.display()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        Ok(pids)
    }

    /// The demo sidecar's state on each instance, from `GET /instances`.
    async fn sidecar_states(&self) -> anyhow::Result<BTreeMap<String, Seen>> {
        let filter = InstanceFilter { service: Some(SERVICE.into()), ..Default::default() };
        let instances: Vec<Instance> =
            self.client()?.list_instances(TENANT, &filter).await.context("cannot list the instances")?;
        Ok(instances
            .iter()
            .filter_map(|i| i.sidecars.iter().find(|s| s.name == SIDECAR).map(|s| (i.id.clone(), Seen::of(s))))
            .collect())
    }

    /// Prints what each sidecar answers to `GET /`.
    async fn show_answers(&self) -> anyhow::Result<()> {
        for agent in &self.agents {
            let hello = self
                .hello(&agent.sidecar_url)
                .await
                .with_context(|| format!("the sidecar of {} does not answer {}", agent.spec.id, agent.sidecar_url))?;
            let pid = hello.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            self.clock.say(format!("{:<4} GET {} -> version {}{pid}", agent.spec.id, agent.sidecar_url, hello.version));
        }
        Ok(())
    }

    /// `GET /` of a sidecar, tried a few times.
    async fn hello(&self, url: &str) -> anyhow::Result<Hello> {
        let mut last = None;
        for _ in 0..5 {
            match fetch_hello(&self.http, url).await {
                Ok(h) => return Ok(h),
                Err(e) => last = Some(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    // ---- 4. the plan -------------------------------------------------------------------

    /// Creates the plan, follows it to its end (completed; or, with `--defect`, blocked and
    /// rolled back), probing the sidecars all along.
    async fn run_plan(&mut self, old_pids: &BTreeMap<&'static str, u32>) -> anyhow::Result<Report> {
        let target = if self.defect.is_some() { BAD } else { NEW };
        let targets: Vec<(&'static str, String)> =
            self.agents.iter().map(|a| (a.spec.id, a.sidecar_url.clone())).collect();
        let load = Load::start(&self.http, &targets, PROBE_EVERY, LOAD_LIMIT)?;
        // Let the load see the old version first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let outcome = self.create_and_follow(target, old_pids).await;
        // A last look at the processes, then the load reports.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let probes = load.finish().await;
        let Followed { watch, took, rollback, untouched } = outcome?;
        Ok(Report {
            target,
            plan: watch.plan,
            took,
            moves: watch.moves,
            rollback,
            untouched,
            probes,
            defect: self.defect,
        })
    }

    /// The part of [`Demo::run_plan`] that can fail.
    async fn create_and_follow(
        &mut self,
        target: &'static str,
        old_pids: &BTreeMap<&'static str, u32>,
    ) -> anyhow::Result<Followed> {
        let created = Instant::now();
        let client = self.client()?;
        let plan = client.create_plan(TENANT, &plan_spec(target)).await.context("cannot create the plan")?;
        let options = FollowOptions { poll: FOLLOW_EVERY, refresh: PLAN_POLL_EVERY };
        let (follower, _) = PlanFollower::open(client.clone(), TENANT, &plan.id, None, options)
            .await
            .context("cannot follow the plan")?;
        let phases: Vec<String> = plan
            .phases
            .iter()
            .map(|p| {
                let n: u64 = p.batches.iter().map(Batch::instance_count).sum();
                let batches = p.batches.len();
                format!(
                    "{} ({} stage, {batches} batch{}, {n} instance{}, bake {})",
                    p.name,
                    p.stage,
                    if batches == 1 { "" } else { "es" },
                    if n == 1 { "" } else { "s" },
                    p.bake
                )
            })
            .collect();
        self.clock.say(format!(
            "plan {} created (POST /plans): {SIDECAR} {OLD} -> {target} on {} instances of {SERVICE}, mode restart",
            plan.id, plan.counts.total
        ));
        self.clock.say(format!("         phases: {}", phases.join(", then ")));
        let mut watch = Watch::new(plan, follower, target, old_pids.clone());
        if self.defect.is_none() {
            let took = self.healthy_plan(&mut watch, created).await?;
            return Ok(Followed { watch, took, rollback: None, untouched: Vec::new() });
        }
        let took = self.wait_blocked(&mut watch, created).await?;
        let untouched = self.check_untouched(&watch).await?;
        let rollback = self.roll_back(&mut watch).await?;
        Ok(Followed { watch, took, rollback: Some(rollback), untouched })
    }

    /// Follows the healthy plan until it completes and every instance runs the target.
    async fn healthy_plan(&mut self, w: &mut Watch, created: Instant) -> anyhow::Result<Duration> {
        self.follow(w, PLAN_TIMEOUT, "the plan did not complete", |w| match w.plan.state {
            PlanState::Completed => Some(Ok(())),
            PlanState::Blocked | PlanState::Failed | PlanState::Aborted | PlanState::RolledBack | PlanState::Paused => {
                Some(Err(anyhow!("the plan stopped: it is {} ({})", w.plan.state, w.plan.reason)))
            }
            _ => None,
        })
        .await?;
        let took = created.elapsed();
        // Each batch baked only once its instances ran the target: their moves were seen,
        // unless the last look was just before; one more look settles it.
        self.follow(w, Duration::from_secs(5), "not every instance was seen running the target", |w| {
            (w.moves.len() == INSTANCES.len()).then_some(Ok(()))
        })
        .await?;
        self.show_outcome(&w.plan, w.target);
        Ok(took)
    }

    /// Follows the defective plan until it blocks itself.
    async fn wait_blocked(&mut self, w: &mut Watch, created: Instant) -> anyhow::Result<Duration> {
        let what = format!("the plan did not block itself on the defective {SIDECAR} {BAD}");
        let defect = self.defect.unwrap_or(Defect::Crash).what();
        self.follow(w, BLOCK_TIMEOUT, &what, |w| match w.plan.state {
            PlanState::Blocked => Some(Ok(())),
            PlanState::Completed => Some(Err(anyhow!(
                "the plan completed although {SIDECAR} {BAD} is defective ({defect}): the executor did not stop it"
            ))),
            PlanState::Failed | PlanState::Aborted | PlanState::RolledBack | PlanState::Paused => {
                Some(Err(anyhow!("the plan is {} ({}), not blocked", w.plan.state, w.plan.reason)))
            }
            _ => None,
        })
        .await?;
        Ok(created.elapsed())
    }

    /// Checks that the instances of the batches that never started still run the old
    /// version, in the same process as before the plan; returns them with their pid.
    async fn check_untouched(&self, w: &Watch) -> anyhow::Result<Vec<(&'static str, u32)>> {
        let seen = self.sidecar_states().await?;
        let mut untouched = Vec::new();
        for spec in INSTANCES.iter().filter(|s| w.batch_of(s).is_none()) {
            let before = w.old_pids.get(spec.id).copied().unwrap_or_default();
            match seen.get(spec.id) {
                Some(s) if s.is_running(OLD) && s.pid == Some(before) => {
                    let phase = w.phase_of(spec).map_or("its phase".into(), |p| format!("phase {p}"));
                    self.clock.say(format!(
                        "{:<4} untouched: {SIDECAR} {OLD} running, pid {before} as before the plan ({phase} never started)",
                        spec.id
                    ));
                    untouched.push((spec.id, before));
                }
                other => bail!(
                    "{} is outside every started batch, yet its sidecar changed: {} (pid {before} before the plan)",
                    spec.id,
                    other.map_or("not reported".into(), Seen::describe)
                ),
            }
        }
        Ok(untouched)
    }

    /// Rolls the blocked plan back and follows the changed instances until they run the old
    /// version again; returns their moves back and the time from the request to the last one.
    async fn roll_back(&mut self, w: &mut Watch) -> anyhow::Result<(Vec<Move>, Duration)> {
        let why = w.plan.incidents.last().map_or_else(
            || w.plan.reason.clone(),
            |i| format!("{} on {} after the move to {BAD}", i.metric, i.instances.join(", ")),
        );
        let reason = format!("outrider demo: {why}");
        self.clock.say(format!("rolling back: POST /plans/{}/rollback (reason: {reason:?})", w.plan.id));
        let at = Instant::now();
        let plan = self
            .client()?
            .plan_action(TENANT, &w.plan.id, PlanAction::Rollback, Some(&reason))
            .await
            .context("cannot roll the plan back")?;
        w.rollback = Some((at, Vec::new()));
        let (early, late) = w.plan_changes(plan);
        early.iter().chain(&late).for_each(|l| self.clock.say(l));
        let what = format!("the rollback did not bring every changed instance back to {SIDECAR} {OLD}");
        self.follow(w, ROLLBACK_TIMEOUT, &what, |w| w.rolled_back().then_some(Ok(()))).await?;
        // The plan says `rolled_back` once the manager has seen every changed instance back.
        let what = "the plan never said rolled_back".to_owned();
        self.follow(w, ROLLBACK_TIMEOUT, &what, |w| (w.plan.state == PlanState::RolledBack).then_some(Ok(()))).await?;
        let plan = w.follower.fetch().await.context("cannot read the plan")?;
        let (early, late) = w.plan_changes(plan);
        early.iter().chain(&late).for_each(|l| self.clock.say(l));
        self.show_outcome(&w.plan, w.target);
        let back = w.rollback.take().map(|(_, back)| back).unwrap_or_default();
        let took = back.iter().map(|m| m.took).max().unwrap_or_default();
        Ok((back, took))
    }

    /// Prints the plan's counts and blast radius.
    fn show_outcome(&self, plan: &Plan, target: &str) {
        let c = plan.counts;
        self.clock.say(format!(
            "plan {} {}: counts total {}, done {}, failed {}, pending {}; blast radius {} (instances that ran {target} under the plan)",
            plan.id, plan.state, c.total, c.done, c.failed, c.pending, plan.blast_radius
        ));
    }

    /// Looks at the instances (every [`FOLLOW_EVERY`]) and the plan (as the follower brings
    /// it), printing what changed, until `done` answers or `timeout` passes.
    async fn follow(
        &mut self,
        w: &mut Watch,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Watch) -> Option<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut plan = None;
        loop {
            self.ensure_alive()?;
            self.look(w, plan.take()).await?;
            if let Some(outcome) = done(w) {
                return outcome;
            }
            if started.elapsed() > timeout {
                bail!(
                    "{what} within {timeout:?} (plan {} is {}: {}); see the logs in {}",
                    w.plan.id,
                    w.plan.state,
                    w.plan.reason,
                    self.root.join("logs").display()
                );
            }
            let pause = tokio::time::sleep(FOLLOW_EVERY);
            tokio::pin!(pause);
            while plan.is_none() {
                let update = tokio::select! {
                    Some(update) = w.follower.next() => update.context("cannot follow the plan")?,
                    () = &mut pause => break,
                };
                // Events only make the follower fetch the plan again. A passing problem of
                // the manager is waited out: its process is watched, and the follow has a
                // timeout.
                if let PlanUpdate::Plan(p) = update {
                    plan = Some(*p);
                }
            }
        }
    }

    /// One look: the instances, and the plan when the follower brought it or an instance
    /// changed. Prints the plan's starts first, then the instances' changes, then the plan's
    /// other changes (they follow from what the instances did).
    async fn look(&self, w: &mut Watch, plan: Option<Plan>) -> anyhow::Result<()> {
        let seen = self.sidecar_states().await?;
        let changed = INSTANCES.iter().any(|i| seen.get(i.id) != w.seen.get(i.id));
        let plan = match plan {
            None if changed => Some(w.follower.fetch().await.context("cannot read the plan")?),
            plan => plan,
        };
        let (early, late) = plan.map(|p| w.plan_changes(p)).unwrap_or_default();
        let instances = w.instance_changes(&seen);
        early.iter().chain(&instances).chain(&late).for_each(|l| self.clock.say(l));
        Ok(())
    }

    /// Prints the plan's events: its audit trail.
    async fn show_plan_events(&self, id: &str) -> anyhow::Result<()> {
        let query = EventQuery { since: None, plan: Some(id.to_owned()) };
        let events = self.client()?.list_events(TENANT, &query).await.context("cannot read the events")?;
        println!("the plan's audit trail, {} events (GET /events?plan={id}; times in UTC):", events.len());
        for e in &events {
            let t = e.time.to_offset(time::UtcOffset::UTC).time();
            println!(
                "  #{:<4} {:02}:{:02}:{:02}.{:03}  {:<15} by {:<9} {}",
                e.seq,
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond(),
                e.kind,
                e.actor,
                e.reason
            );
        }
        Ok(())
    }

    // ---- 5. cleanup --------------------------------------------------------------------

    /// Stops everything in order: the sidecars (through the manager), the agents, leftover
    /// sidecars, the manager. Never fails; reports what it had to force.
    async fn shutdown(&mut self) {
        self.stop_sidecars_via_manager().await;
        let mut forced = Vec::new();
        for agent in &mut self.agents {
            if agent.process.stop(PROCESS_GRACE).await == Ended::Killed {
                forced.push(agent.process.name.clone());
            }
        }
        let leftovers = kill_leftover_sidecars(&self.root, &self.agent_dirs()).await;
        // The typed client keeps idle connections to the manager, which would hold its
        // graceful shutdown for its whole grace period: close them first.
        self.client = None;
        if let Some(server) = &mut self.server
            && server.stop(PROCESS_GRACE).await == Ended::Killed
        {
            forced.push(server.name.clone());
        }
        if !forced.is_empty() {
            self.clock.say(format!("had to kill (no exit within {PROCESS_GRACE:?}): {}", forced.join(", ")));
        }
        if leftovers > 0 {
            self.clock.say(format!("killed {leftovers} sidecar process(es) the agents had not stopped"));
        }
        match processes_running_from(&self.root).as_slice() {
            [] => self.clock.say("agents and manager stopped; no sidecar process left"),
            left => self.clock.say(format!("warning: sidecar process(es) {left:?} still running")),
        }
    }

    /// Kills every process at once (second Ctrl-C).
    async fn kill_everything(&mut self) {
        for agent in &mut self.agents {
            agent.process.kill().await;
        }
        let leftovers = kill_leftover_sidecars(&self.root, &self.agent_dirs()).await;
        if let Some(server) = &mut self.server {
            server.kill().await;
        }
        self.clock.say(format!("killed the manager, the agents and {leftovers} sidecar process(es)"));
    }

    fn agent_dirs(&self) -> Vec<PathBuf> {
        self.agents.iter().map(|a| a.data_dir.clone()).collect()
    }

    /// Disables the binding and waits (bounded) until no agent runs the sidecar any more.
    async fn stop_sidecars_via_manager(&mut self) {
        if self.agents.is_empty() {
            return;
        }
        let manager_up = self.server.as_mut().is_some_and(|s| s.ensure_alive().is_ok());
        let Some(client) = self.client.as_ref().filter(|_| manager_up) else {
            self.clock.say("the manager is gone: stopping the agents, then killing their sidecars");
            return;
        };
        let started = Instant::now();
        let disabled =
            tokio::time::timeout(HTTP_TIMEOUT * 2, client.set_binding(TENANT, SERVICE, &binding(false, OLD))).await;
        if !matches!(disabled, Ok(Ok(_))) {
            self.clock.say("could not disable the binding; the sidecars will be killed instead");
            return;
        }
        self.clock.say(format!("binding disabled: the agents stop their sidecars (SIGTERM, drain up to {DRAIN:?})"));
        while started.elapsed() < STOP_SIDECARS_TIMEOUT {
            if self.all_sidecars_stopped().await {
                let all = self.agents.iter_mut().all(|a| a.process.ensure_alive().is_ok());
                let who = if all { "all sidecars stopped" } else { "the agents still running stopped their sidecars" };
                self.clock.say(format!("{who} (+{} ms)", started.elapsed().as_millis()));
                return;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        self.clock.say(format!("the sidecars did not all stop within {STOP_SIDECARS_TIMEOUT:?}; they will be killed"));
    }

    /// Whether every agent that still runs answers `/status` with no sidecar (the sidecars
    /// of an agent that died are killed afterwards).
    async fn all_sidecars_stopped(&mut self) -> bool {
        for agent in &mut self.agents {
            if agent.process.ensure_alive().is_err() {
                continue;
            }
            match local::agent_status(&self.http, &agent.status_url).await {
                Ok(s) if s.sidecars.is_empty() => {}
                _ => return false,
            }
        }
        true
    }

    /// Removes the temporary directory, or keeps it and says where it is.
    fn finish_dir(&mut self, keep: bool) -> anyhow::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        if keep {
            let path = dir.keep();
            println!(
                "kept {} (logs of the manager and agents in logs/, of the sidecars in agents/*/logs/)",
                path.display()
            );
            return Ok(());
        }
        let path = dir.path().to_owned();
        dir.close().with_context(|| format!("cannot remove {}", path.display()))?;
        self.clock.say(format!("removed {}", path.display()));
        Ok(())
    }
}

/// What the demo knows of the plan and the instances while it follows them.
struct Watch {
    target: &'static str,
    /// The plan as last read.
    plan: Plan,
    /// Brings the plan whenever it changes.
    follower: PlanFollower,
    /// The pid each instance ran before the plan.
    old_pids: BTreeMap<&'static str, u32>,
    /// Each instance's sidecar as last seen.
    seen: BTreeMap<&'static str, Seen>,
    /// Moves to the target.
    moves: Vec<Move>,
    /// After a rollback: when it was asked, and the moves back to the old version.
    rollback: Option<(Instant, Vec<Move>)>,
    /// Phases already announced as completed.
    completed_phases: BTreeSet<String>,
}

impl Watch {
    fn new(plan: Plan, follower: PlanFollower, target: &'static str, old_pids: BTreeMap<&'static str, u32>) -> Self {
        Self {
            target,
            plan,
            follower,
            old_pids,
            seen: BTreeMap::new(),
            moves: Vec::new(),
            rollback: None,
            completed_phases: BTreeSet::new(),
        }
    }

    /// The started batch that holds the instance, if any.
    fn batch_of(&self, spec: &InstanceSpec) -> Option<&Batch> {
        self.plan
            .phases
            .iter()
            .flat_map(|p| p.batches.iter().filter(|b| b.started_at.is_some() && holds(b, &p.stage, spec)))
            .next()
    }

    /// The name of the first phase that holds the instance in one of its batches.
    fn phase_of(&self, spec: &InstanceSpec) -> Option<&str> {
        self.plan.phases.iter().find(|p| p.batches.iter().any(|b| holds(b, &p.stage, spec))).map(|p| p.name.as_str())
    }

    /// Whether every instance of a started batch runs the old version again (after a
    /// rollback).
    fn rolled_back(&self) -> bool {
        let Some((_, back)) = &self.rollback else { return false };
        INSTANCES.iter().filter(|s| self.batch_of(s).is_some()).all(|s| back.iter().any(|m| m.id == s.id))
    }

    /// Takes a new look at the plan; returns the lines to print before the instances'
    /// changes and those to print after them (what follows from what the instances did: a
    /// batch baking or failing, an incident, the plan blocking or completing).
    fn plan_changes(&mut self, new: Plan) -> (Vec<String>, Vec<String>) {
        let (mut early, mut late) = (Vec::new(), Vec::new());
        let state_changed = new.state != self.plan.state || new.reason != self.plan.reason;
        let state_line = format!("plan {}: {}", new.state, new.reason);
        if state_changed && new.state == PlanState::Running {
            early.push(state_line.clone());
        }
        for (pi, phase) in new.phases.iter().enumerate() {
            for b in &phase.batches {
                let before = self.plan.phases.get(pi).and_then(|p| p.batches.iter().find(|x| x.index == b.index));
                if b.state == BatchState::Baking && before.is_some_and(|x| x.extensions < b.extensions) {
                    let why = b.analysis.as_ref().map_or("", |a| a.reason.as_str());
                    late.push(format!(
                        "{:<5} batch {}  inconclusive, bake extended ({} so far): {why}",
                        phase.name, b.index, b.extensions
                    ));
                }
                if before.is_some_and(|x| x.state == b.state) {
                    continue;
                }
                let extra = match b.state {
                    BatchState::Baking => format!("  (bake {})", phase.bake),
                    BatchState::Passed | BatchState::Failed => {
                        b.verdict.map(|v| format!("  verdict {}", spelled(&v))).unwrap_or_default()
                    }
                    _ => String::new(),
                };
                let state = spelled(&b.state);
                let line = format!("{:<5} batch {}  {state:<9} {}{extra}", phase.name, b.index, describe_batch(b));
                let judged = match (b.state, &b.analysis) {
                    (BatchState::Passed | BatchState::Failed, Some(a)) => describe_analysis(a),
                    _ => Vec::new(),
                };
                if matches!(b.state, BatchState::Baking | BatchState::Failed) {
                    late.push(line);
                    late.extend(judged);
                } else {
                    early.push(line);
                    early.extend(judged);
                }
            }
            let passed = phase.batches.iter().any(|b| b.state == BatchState::Passed)
                && phase.batches.iter().all(|b| matches!(b.state, BatchState::Passed | BatchState::Skipped));
            if passed && self.completed_phases.insert(phase.name.clone()) {
                early.push(format!("{:<5} phase completed", phase.name));
            }
        }
        for i in new.incidents.iter().skip(self.plan.incidents.len()) {
            late.extend(describe_incident(i));
        }
        if state_changed && new.state != PlanState::Running {
            late.push(state_line);
        }
        self.plan = new;
        (early, late)
    }

    /// Takes a new look at the instances; returns a line per change.
    fn instance_changes(&mut self, seen: &BTreeMap<String, Seen>) -> Vec<String> {
        let mut lines = Vec::new();
        let target = self.target;
        for spec in &INSTANCES {
            let id = spec.id;
            let Some(s) = seen.get(id) else { continue };
            let last = self.seen.insert(id, s.clone());
            if last.as_ref() == Some(s) {
                continue;
            }
            let old_pid = self.old_pids.get(id).copied().unwrap_or_default();
            let new_pid = s.pid.unwrap_or_default();
            if let Some((at, back)) = &mut self.rollback
                && s.is_running(OLD)
                && s.pid != Some(old_pid)
                && !back.iter().any(|m| m.id == id)
            {
                let took = at.elapsed();
                let from = last.and_then(|l| l.pid).unwrap_or_default();
                lines.push(format!(
                    "{id:<4} {SIDECAR} {target} -> {OLD} (pid {new_pid}) running  +{} ms since the rollback",
                    took.as_millis()
                ));
                back.push(Move { id, old_pid: from, new_pid, took });
                continue;
            }
            if s.is_running(target) && s.pid != Some(old_pid) && !self.moves.iter().any(|m| m.id == id) {
                let took = self.batch_of(spec).and_then(since_start).unwrap_or_default();
                lines.push(format!(
                    "{id:<4} {SIDECAR} {OLD} (pid {old_pid}) -> {target} (pid {new_pid}) running  +{} ms since its batch started",
                    took.as_millis()
                ));
                self.moves.push(Move { id, old_pid, new_pid, took });
                continue;
            }
            if last.is_none() && s.is_running(OLD) && s.pid == Some(old_pid) {
                continue;
            }
            lines.push(format!("{id:<4} {SIDECAR} {}", s.describe()));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use outrider_model::{Effect, MetricVerdict, Outcome};

    use super::{describe::significant, *};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn defect(args: &[&str]) -> Option<Defect> {
        Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied())).expect("parses").demo.defect
    }

    #[test]
    fn a_bare_defect_crashes_and_errors_is_named() {
        assert_eq!(defect(&[]), None);
        assert_eq!(defect(&["--defect"]), Some(Defect::Crash));
        assert_eq!(defect(&["--defect", "--keep"]), Some(Defect::Crash));
        assert_eq!(defect(&["--defect", "errors"]), Some(Defect::Errors));
        assert_eq!(defect(&["--defect=crash"]), Some(Defect::Crash));
        assert!(Cli::try_parse_from(["demo", "--defect", "latency"]).is_err());
        assert!(Defect::Errors.fault().starts_with("error-rate="));
    }

    #[test]
    fn the_sidecar_and_the_plan_are_valid_and_judge_the_scraped_metrics() {
        let sidecar = demo_sidecar();
        sidecar.validate().expect("valid sidecar");
        let scrape = sidecar.lifecycle.scrape.as_ref().expect("a scrape setting");
        let names: Vec<&str> = scrape.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["error_ratio", "latency_p99_ms"]);
        let spec = plan_spec(BAD);
        spec.validate().expect("valid plan");
        // The plan judges the built-in metrics, which include the scraped ones.
        let judging = AnalysisSpec::resolve(spec.analysis.as_ref(), sidecar.analysis.as_ref(), &sidecar.metrics);
        let judged: Vec<&str> = judging.policy.metrics.iter().map(|m| m.metric.as_str()).collect();
        for name in names {
            assert!(judged.contains(&name), "{name} is not judged: {judged:?}");
        }
        assert_eq!(judging.policy.minimum.samples, MIN_SAMPLES);
        // The built-in metrics, latency with the demo's absolute floor besides the relative one.
        let builtin: Vec<String> = outrider_model::default_metrics().into_iter().map(|m| m.metric).collect();
        assert_eq!(judged, builtin);
        let latency = judging.policy.metrics.iter().find(|m| m.metric == "latency_p99_ms").expect("latency");
        assert_eq!((latency.floor.absolute, latency.floor.relative), (Some(LATENCY_FLOOR_MS), Some(0.25)));
        // The canary's bake at one report a second gives the judge its samples, with one to spare.
        let every: HumanDuration = REPORT_INTERVAL.parse().expect("a duration");
        let reports = PHASES[0].3.0.as_millis() / every.0.as_millis();
        assert!(reports > MIN_SAMPLES as u128, "{reports} reports in the gray bake");
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        for (v, s) in
            [(0.0, "0"), (0.1012345, "0.1012"), (0.09, "0.09"), (1.5, "1.5"), (8.9994, "8.999"), (1234.5, "1234")]
        {
            assert_eq!(significant(v), s, "{v}");
        }
        assert_eq!(significant(-0.25), "-0.25");
    }

    fn side(instances: usize, samples: usize, value: f64) -> Side {
        Side { instances, samples, value: Some(value) }
    }

    #[test]
    fn a_metric_incident_shows_its_evidence() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let i = Incident {
            phase: "gray".into(),
            batch: 0,
            metric: "error_ratio".into(),
            instances: vec!["i-1".into()],
            canary_value: 0.09,
            baseline_value: 0.0,
            test: "mann-whitney u, one-sided (greater), normal".into(),
            summary: "error_ratio regressed on checkout".into(),
            service: Some("checkout".into()),
            comparison: Some(Comparison::Baseline),
            p_value: Some(0.0001766),
            effect: Some(Effect { absolute: 0.09, relative: None, cliffs_delta: 1.0 }),
            canary: Some(side(1, 5, 0.09)),
            baseline: Some(side(2, 10, 0.0)),
            ..Incident::opened(at)
        };
        let lines = describe_incident(&i);
        assert_eq!(
            lines,
            [
                "incident: error_ratio on i-1 (gray batch 0, service checkout)",
                "          canary   0.09     (5 samples from 1 instance): error_ratio on i-1",
                "          baseline 0        (10 samples from 2 instances): the same service's instances not upgraded",
                "          test: mann-whitney u, one-sided (greater), normal; p-value 1.77e-4; effect +0.09, Cliff's \
                 delta +1.00",
            ]
        );
        // A process signal has no comparison: its summary says it all.
        let crash = Incident {
            metric: "sidecar_exits".into(),
            instances: vec!["i-1".into()],
            phase: "gray".into(),
            summary: "the sidecar exited 2 times".into(),
            test: "threshold".into(),
            canary_value: 2.0,
            ..Incident::opened(at)
        };
        let lines = describe_incident(&crash);
        assert_eq!(lines[0], "incident: sidecar_exits on i-1 (gray batch 0): the sidecar exited 2 times");
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn an_analysis_shows_a_line_per_deciding_comparison() {
        let verdict = |metric: &str, comparison, decides, outcome| {
            let v = MetricVerdict {
                metric: metric.into(),
                comparison,
                canary: side(1, 5, 0.99),
                baseline: side(2, 12, 0.99),
                test: None,
                p_value: Some(0.32),
                effect: None,
                outcome,
                reason: String::new(),
                decides,
                instances: vec!["i-1".into()],
            };
            outrider_model::Evidence { service: Some(SERVICE.into()), verdict: v }
        };
        let a = BatchAnalysis {
            outcome: Outcome::Pass,
            reason: "no regression".into(),
            metrics: vec![
                verdict("latency_p99_ms", Comparison::Baseline, true, Outcome::Pass),
                verdict("latency_p99_ms", Comparison::Before, false, Outcome::Inconclusive),
            ],
        };
        assert_eq!(
            describe_analysis(&a),
            ["          latency_p99_ms   canary 0.99     vs baseline 0.99     (5 vs 12 samples, p 3.2e-1): pass"]
        );
    }
}
