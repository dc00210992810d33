//! `outrider bench`: benchmarks that print figures (PRODUCT.md §5).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use outrider_client::{Client, ConnectArgs, OutputFormat};
use outrider_model::{Binding, HumanDuration, Priority, Service, UpgradeMode};
use outrider_sim::{ensure_sidecar, ensure_version, stats::LatencySummary};
use serde::Serialize;

use self::hosts::{AgentHosts, Counts, HostSpec, WallAnchor};

pub mod analysis;
mod failover;
mod hosts;
mod idle;
mod storm;
mod upgrade;
mod writes;

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Time from a binding write acknowledged by the API to each agent holding the new
    /// desired state, over N simulated agents of a dedicated service.
    Propagation(PropagationArgs),
    /// Plans and simulates the default two-phase upgrade of a generated fleet, in process,
    /// and prints the time each step took and the peak memory.
    Plan(PlanArgs),
    /// Upgrades of a real sidecar under load (wrk) in each upgrade mode, crash recovery and
    /// the agent's footprint, with a manager and an agent it starts on this machine.
    Upgrade(upgrade::UpgradeArgs),
    /// What plans cost the manager while they wait: its CPU and the executor's steps with N
    /// plans waiting on a closed change window, against the same fleet without plans.
    Idle(idle::IdleArgs),
    /// How well the judge tells bad versions from good ones: a labelled corpus of plans
    /// (healthy versions, and each effect at several magnitudes on a random trait subset)
    /// run through an in-process manager against a noisy simulated fleet on a virtual
    /// clock; recall, detection delay and blast radius per effect and magnitude, and the
    /// false-block rate over healthy batches.
    Analysis(analysis::AnalysisArgs),
    /// Several managers on an etcd cluster started here, a simulated fleet spread over them,
    /// and plans moving while the leader is killed again and again: time until another
    /// manager leads and moves the plan, and proof from the events that no batch ran twice
    /// and none was skipped.
    Failover(failover::FailoverArgs),
    /// API write throughput of one manager: services created by concurrent clients (each a
    /// store transaction with its event) — the embedded store against etcd, say.
    Writes(writes::WritesArgs),
    /// A reconnect storm: a manager started here with N simulated agents is killed
    /// (`kill -9`) and started again; the time until every agent is synced again, and the
    /// API's latency meanwhile.
    Storm(storm::StormArgs),
    /// One share of a benchmark's simulated agents, driven over stdin/stdout by the benchmark
    /// that started this process.
    #[command(hide = true)]
    Agents(hosts::AgentsArgs),
}

/// Flags of `outrider bench propagation`.
#[derive(clap::Args, Debug)]
pub struct PropagationArgs {
    /// Simulated agents (all instances of one dedicated service).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub agents: u32,
    /// Binding changes to time, one after the other.
    #[arg(long, value_name = "K", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub changes: u32,
    /// Agents sharing one HTTP/2 connection (the manager allows 200 streams per connection).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub agents_per_connection: u16,
    /// How long one change may take to reach every agent.
    #[arg(long, default_value = "30s")]
    pub timeout: HumanDuration,
    /// Simulated time an agent takes to apply a change (± 40 %); its status reports follow.
    #[arg(long, default_value = "50ms")]
    pub apply_delay: HumanDuration,
    /// The managers the agents sync with, `URL,URL,…` (several managers of one store: the
    /// agents are spread over them); default: --manager. The memory figures are --manager's.
    #[arg(long, value_name = "URLS")]
    pub sync: Option<String>,
    /// Processes the agents run in (children of this one, each a share of the agents).
    #[arg(long, value_name = "P", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: u32,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// Runs a benchmark; returns its figures for standard output (text or JSON, as `-o` asks).
pub async fn run(cmd: BenchCommand) -> anyhow::Result<String> {
    match cmd {
        BenchCommand::Propagation(args) => propagation(args).await,
        BenchCommand::Plan(args) => plan_bench(&args),
        BenchCommand::Upgrade(args) => upgrade::run(args).await,
        BenchCommand::Idle(args) => idle::run(args).await,
        BenchCommand::Analysis(args) => analysis::run(args).await,
        BenchCommand::Failover(args) => failover::run(args).await,
        BenchCommand::Writes(args) => writes::run(args).await,
        BenchCommand::Storm(args) => storm::run(args).await,
        BenchCommand::Agents(args) => hosts::run_child(args).await,
    }
}

/// Flags of `outrider bench plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Services of the generated fleet.
    #[arg(long, value_name = "N", default_value_t = 40_000)]
    pub services: usize,
    /// Instances of the generated fleet (at least one per service).
    #[arg(long, value_name = "M", default_value_t = 4_000_000)]
    pub instances: usize,
    /// Seed of the fleet generator.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub seed: u64,
    /// A plan body (JSON) to plan and simulate instead of the default one (its windows, caps
    /// and phases count; its sidecar and versions are replaced by the generated fleet's).
    #[arg(short = 'f', long = "file", value_name = "PLAN.json")]
    pub file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The result of `outrider bench propagation` (`agents`, `changes`, `p50_ms`, `p99_ms`,
/// `max_ms` are the contract).
#[derive(Debug, Serialize)]
struct PropagationResult {
    agents: usize,
    changes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Latency samples (agents × changes).
    samples: usize,
    /// Samples where the agent held the change before the write's answer came back (0 ms).
    arrived_before_ack: usize,
    /// Slowest binding write, request to answer.
    write_max_ms: f64,
    /// HTTP/2 connections the agents shared.
    connections: usize,
    /// Processes the agents ran in.
    processes: usize,
    /// Time until every agent was connected and held the first desired state.
    connect_s: f64,
    /// The manager's resident memory before the agents connected.
    server_rss_before_bytes: u64,
    /// The manager's resident memory with every agent connected.
    server_rss_bytes: u64,
    /// The difference, per agent.
    server_rss_per_agent_bytes: u64,
    /// The manager's CPU time (user + system) per change, from the write until the agents'
    /// acknowledgements and upgrade reports were in (half a second after the last arrival).
    server_cpu_ms_per_change: f64,
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A sample of the manager's `/metrics` without labels (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`).
async fn server_metric(http: &reqwest::Client, manager: &str, name: &str) -> anyhow::Result<f64> {
    let url = format!("{}/metrics", manager.trim_end_matches('/'));
    let text = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot read {url}"))?
        .text()
        .await
        .with_context(|| format!("cannot read {url}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .with_context(|| format!("{url} has no {name}"))
}

/// The manager's resident memory, from its `/metrics`.
async fn server_rss(http: &reqwest::Client, manager: &str) -> anyhow::Result<u64> {
    // A byte count far below 2^53: exact as f64.
    Ok(server_metric(http, manager, "process_resident_memory_bytes").await? as u64)
}

/// The manager's CPU time so far, from its `/metrics`.
async fn server_cpu(http: &reqwest::Client, manager: &str) -> anyhow::Result<Duration> {
    Ok(Duration::from_secs_f64(server_metric(http, manager, "process_cpu_seconds_total").await?.max(0.0)))
}

/// Creates the benchmark's sidecar with `changes + 1` admitted versions and its service bound
/// to the first one; returns the versions.
async fn prepare(client: &Client, tenant: &str, name: &str, changes: u32) -> anyhow::Result<Vec<String>> {
    ensure_sidecar(client, tenant, name).await?;
    let versions: Vec<String> = (0..=changes).map(|k| format!("1.0.{k}")).collect();
    for v in &versions {
        ensure_version(client, tenant, name, v).await?;
        client
            .admit_version(tenant, name, v, &serde_json::json!({"bench": "propagation"}))
            .await
            .with_context(|| format!("cannot admit version {v} of {name:?}"))?;
    }
    create_bound_service(client, tenant, name, &binding(name, &versions[0])).await?;
    Ok(versions)
}

/// Creates a benchmark's service `name` (P2, a grpc service) bound as `binding` says.
async fn create_bound_service(client: &Client, tenant: &str, name: &str, binding: &Binding) -> anyhow::Result<()> {
    let service = Service {
        name: name.to_owned(),
        priority: Priority::P2,
        traits: [("protocol".to_owned(), "grpc".to_owned())].into(),
        protected: false,
        protected_periods: Vec::new(),
    };
    client.create_service(tenant, &service).await.with_context(|| format!("cannot create service {name:?}"))?;
    client.set_binding(tenant, name, binding).await.with_context(|| format!("cannot bind service {name:?}"))?;
    Ok(())
}

fn binding(sidecar: &str, version: &str) -> Binding {
    Binding { sidecar: sidecar.to_owned(), enabled: true, version: version.to_owned(), mode: UpgradeMode::Restart }
}

/// A name unique per run (the manager has no delete, so every run leaves its service behind).
fn run_name(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Waits until `done` holds of the agents' counts (for `version` of `sidecar`), printing
/// progress to stderr; returns the last counts.
async fn wait_counts(
    hosts: &mut AgentHosts,
    total: usize,
    sidecar: &str,
    version: &str,
    timeout: Duration,
    done: impl Fn(&Counts) -> bool,
) -> anyhow::Result<Counts> {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    loop {
        let c = hosts.count(sidecar, version).await?;
        if done(&c) {
            eprintln!(
                "{}/{total} agents connected, {}/{total} synced, {}/{total} hold {version}",
                c.connected, c.synced, c.holding
            );
            return Ok(c);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after {timeout:?}: {}/{total} agents connected, {}/{total} synced, {}/{total} hold {version}",
            c.connected,
            c.synced,
            c.holding
        );
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "{}/{total} agents connected, {}/{total} synced, {}/{total} hold {version}",
                c.connected, c.synced, c.holding
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The file of `--ca-file`, checked to be a readable CA.
fn ca_roots(conn: &ConnectArgs) -> anyhow::Result<Vec<reqwest::Certificate>> {
    Ok(match conn.ca()? {
        Some(pem) => reqwest::Certificate::from_pem_bundle(&pem).context("the CA file")?,
        None => Vec::new(),
    })
}

async fn propagation(args: PropagationArgs) -> anyhow::Result<String> {
    let client = args.conn.client()?;
    let token = args.conn.token()?.context("agents need a token: give --token-file FILE (or set OUTRIDER_TOKEN)")?;
    let tenant = &args.conn.tenant;
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).tls_certs_merge(ca_roots(&args.conn)?).build()?;
    let (agents, changes) = (args.agents as usize, args.changes as usize);
    let name = run_name("bench-prop");

    eprintln!("preparing service and sidecar {name} with {} versions…", changes + 1);
    let versions = prepare(&client, tenant, &name, args.changes).await?;
    let rss_before = server_rss(&http, client.base_url()).await?;

    let spec = HostSpec {
        sync: args.sync.clone().unwrap_or_else(|| client.base_url().to_owned()),
        token,
        tenant: tenant.clone(),
        service: name.clone(),
        agents: args.agents,
        agents_per_connection: args.agents_per_connection,
        apply_delay: args.apply_delay.0,
        ca_file: args.conn.ca_file.clone(),
    };
    let started = Instant::now();
    let mut hosts = AgentHosts::spawn(&spec, args.processes)?;
    let (connections, processes) = (hosts.connections, hosts.processes());
    eprintln!("starting {agents} agents in {processes} processes over {connections} connections…");
    let connect_timeout = Duration::from_secs(60) + Duration::from_millis(10) * args.agents;
    let outcome = async {
        wait_counts(&mut hosts, agents, &name, &versions[0], connect_timeout, |c| c.holding == agents).await?;
        let connect_s = started.elapsed().as_secs_f64();
        // Let the first reports and the write-behind of the instance records settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = server_rss(&http, client.base_url()).await?;
        let cpu_before = server_cpu(&http, client.base_url()).await?;
        let timed = time_changes(&mut hosts, &client, tenant, &name, &versions, args.timeout.0).await?;
        let cpu = server_cpu(&http, client.base_url()).await?.saturating_sub(cpu_before);
        anyhow::Ok((timed, connect_s, rss, cpu))
    }
    .await;
    hosts.shutdown().await;
    let (timed, connect_s, rss_after, cpu) = outcome?;

    let summary = LatencySummary::of(timed.samples).context("no latency samples")?;
    let result = PropagationResult {
        agents,
        changes,
        p50_ms: ms(summary.p50),
        p99_ms: ms(summary.p99),
        max_ms: ms(summary.max),
        samples: summary.samples,
        arrived_before_ack: timed.before_answer,
        write_max_ms: ms(timed.slowest_write),
        connections,
        processes,
        connect_s: (connect_s * 1e3).round() / 1e3,
        server_rss_before_bytes: rss_before,
        server_rss_bytes: rss_after,
        server_rss_per_agent_bytes: rss_after.saturating_sub(rss_before) / agents as u64,
        server_cpu_ms_per_change: ms(cpu / args.changes),
    };
    Ok(match args.conn.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => format!(
            "propagation to {} agents × {} changes: p50 {} ms, p99 {} ms, max {} ms \
             ({} connection(s) from {} process(es), connected in {:.1} s); server RSS +{:.1} KiB per agent, \
             CPU {} ms per change",
            result.agents,
            result.changes,
            result.p50_ms,
            result.p99_ms,
            result.max_ms,
            result.connections,
            result.processes,
            result.connect_s,
            result.server_rss_per_agent_bytes as f64 / 1024.0,
            result.server_cpu_ms_per_change,
        ),
    })
}

/// What [`time_changes`] measured.
#[derive(Debug, Default)]
struct Timed {
    /// Agents × changes latencies from the write's answer to the agent holding the change.
    samples: Vec<Duration>,
    /// Samples where the agent held the change before the write's answer came back
    /// (counted as 0 ms).
    before_answer: usize,
    /// Slowest binding write (request to answer).
    slowest_write: Duration,
}

/// Times each change after the first version: the binding write, then every agent's
/// arrival.
async fn time_changes(
    hosts: &mut AgentHosts,
    client: &Client,
    tenant: &str,
    name: &str,
    versions: &[String],
    timeout: Duration,
) -> anyhow::Result<Timed> {
    let total = versions.len() - 1;
    let mut timed = Timed::default();
    for (k, version) in versions.iter().enumerate().skip(1) {
        hosts.watch(name, version, timeout).await?;
        let sent = Instant::now();
        client
            .set_binding(tenant, name, &binding(name, version))
            .await
            .with_context(|| format!("cannot move {name} to {version}"))?;
        let t0 = Instant::now();
        // The children's clocks are read against this process's through the wall clock.
        let anchor = WallAnchor::now();
        let at = hosts.arrivals(&anchor).await.with_context(|| format!("change {k}/{total} to {version}"))?;
        let early = at.iter().filter(|a| **a < t0).count();
        let these: Vec<Duration> = at.iter().map(|a| a.saturating_duration_since(t0)).collect();
        if let Some(s) = LatencySummary::of(these.clone()) {
            let first = these.iter().min().copied().unwrap_or_default();
            eprintln!(
                "change {k}/{total} ({version}): p50 {} ms, p99 {} ms, max {} ms; write {} ms, first agent {} ms, \
                 {early} before the write's answer",
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                ms(t0 - sent),
                ms(first),
            );
        }
        timed.samples.extend(these);
        timed.before_answer += early;
        timed.slowest_write = timed.slowest_write.max(t0 - sent);
        // Let the agents' upgrade reports drain before the next change.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(timed)
}

/// The result of `outrider bench plan` (`services`, `instances`, `cells`, `batches`, `plan_ms`
/// are the contract).
#[derive(Debug, Serialize)]
struct PlanResult {
    services: usize,
    instances: usize,
    /// Cells over every phase.
    cells: usize,
    /// Batches over every phase.
    batches: usize,
    /// `outrider_rollout::plan` alone.
    plan_ms: f64,
    /// Generating the fleet straight into the planner's `FleetView` (not part of planning).
    generate_ms: f64,
    /// `outrider_rollout::simulate` of the plan.
    simulate_ms: f64,
    /// Peak resident memory of the whole run (`VmHWM`), generation included.
    peak_rss_bytes: u64,
    /// Predicted duration of the plan, in days (no window, no freeze).
    days: f64,
    /// Feature services picked.
    feature_services: usize,
    /// Per phase: name, cells, batches, instances.
    phases: Vec<PhaseFigures>,
}

/// Size of one planned phase.
#[derive(Debug, Serialize)]
struct PhaseFigures {
    name: String,
    cells: usize,
    batches: usize,
    instances: u64,
}

/// Generates a fleet where every instance runs `mesh-proxy` 1.0.0, then plans and simulates
/// its default upgrade to 1.1.0.
fn plan_bench(args: &PlanArgs) -> anyhow::Result<String> {
    use outrider_model::{FeatureServices, PhaseSpec, PlanSpec, Selector};
    use outrider_rollout::{FleetView, InstanceView, SimAssumptions, Windows};
    use outrider_sim::{FleetParams, FleetSpec};

    // The fleet is generated straight into the planner's view: no instance is kept, as a
    // manager keeps its fleet as records, not as a second copy for planning.
    let t = Instant::now();
    let params = FleetParams { services: args.services, instances: args.instances, seed: args.seed };
    let (_, view) = FleetSpec::generate_into(
        params,
        |services| FleetView::new(services.to_vec()),
        |view, service, _, region, env, stage| {
            view.push(InstanceView { service: &service.name, region, env, stage, version: Some("1.0.0") });
        },
    )?;
    let generate = t.elapsed();
    eprintln!(
        "generated {} services, {} instances into the planner's view in {:.1} s",
        args.services,
        args.instances,
        generate.as_secs_f64()
    );

    let spec = match &args.file {
        None => PlanSpec {
            name: "bench".into(),
            sidecar: "mesh-proxy".into(),
            target_version: "1.1.0".into(),
            from_versions: Vec::new(),
            selector: Selector::default(),
            region_order: Vec::new(),
            feature_services: FeatureServices::default(),
            windows: Vec::new(),
            phases: PhaseSpec::defaults(),
            analysis: None,
            supersedes: None,
            on_fail: Default::default(),
        },
        Some(path) => {
            let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut spec: PlanSpec =
                serde_json::from_slice(&raw).with_context(|| format!("{} is not a plan body", path.display()))?;
            spec.sidecar = "mesh-proxy".into();
            spec.target_version = "1.1.0".into();
            spec.from_versions.clear();
            spec.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            spec
        }
    };
    let t = Instant::now();
    let planned = outrider_rollout::plan(&spec, &view)?;
    let plan_time = t.elapsed();

    let windows = Windows::new(&spec.windows)?;
    let t = Instant::now();
    let now = time::OffsetDateTime::now_utc();
    let sim = outrider_rollout::simulate(&planned, &spec, &windows, &[], now, SimAssumptions::default());
    let simulate_time = t.elapsed();
    let peak = outrider_procfs::status_bytes(std::process::id(), "VmHWM")?;

    let phases: Vec<PhaseFigures> = planned
        .phases
        .iter()
        .map(|p| PhaseFigures {
            name: p.name.clone(),
            cells: p.batches.iter().map(|b| b.cells.len()).sum(),
            batches: p.batches.len(),
            instances: p.batches.iter().map(|b| b.instance_count()).sum(),
        })
        .collect();
    let result = PlanResult {
        services: args.services,
        instances: args.instances,
        cells: phases.iter().map(|p| p.cells).sum(),
        batches: phases.iter().map(|p| p.batches).sum(),
        plan_ms: ms(plan_time),
        generate_ms: ms(generate),
        simulate_ms: ms(simulate_time),
        peak_rss_bytes: peak,
        days: (sim.days * 1e3).round() / 1e3,
        feature_services: planned.feature_services.len(),
        phases,
    };
    Ok(match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => format!(
            "planned {} services / {} instances: {} cells in {} batches in {} ms \
             (fleet generated into the view in {} ms, simulated in {} ms: {} days); peak RSS {} MiB",
            result.services,
            result.instances,
            result.cells,
            result.batches,
            result.plan_ms,
            result.generate_ms,
            result.simulate_ms,
            result.days,
            result.peak_rss_bytes >> 20,
        ),
    })
}
