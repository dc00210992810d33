//! `outrider bench idle`: what plans cost the manager while they wait. N services of one
//! simulated instance each, then one plan per service whose change window is closed; the
//! manager's CPU time and the executor's steps are read from its `/metrics` over the same
//! interval before and after the plans exist.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use outrider_client::{Client, ConnectArgs, OutputFormat, PlanAction};
use outrider_model::{
    Batching, Binding, ChangeWindow, FeatureServices, HumanDuration, PhaseSpec, PlanSpec, PlanState, Selector,
    UpgradeMode,
};
use outrider_sim::{SimFleet, SimFleetOptions, SimInstance, ensure_sidecar, ensure_version};
use serde::Serialize;

use super::create_bound_service;

/// Flags of `outrider bench idle`.
#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// Plans waiting on a closed change window (one service and one instance each).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub plans: u32,
    /// Length of each measurement (without plans, then with them).
    #[arg(long, default_value = "20s")]
    pub measure: HumanDuration,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// What `outrider bench idle` prints.
#[derive(Debug, Serialize)]
struct IdleResult {
    plans: u32,
    /// Plans that were `waiting` during the measurement.
    plans_waiting: usize,
    instances: u32,
    measure_s: f64,
    /// The manager's CPU (percent of one core) with the fleet connected and no plan.
    baseline_cpu_percent: f64,
    /// The same with every plan waiting.
    waiting_cpu_percent: f64,
    /// The difference, per 1,000 plans.
    extra_cpu_percent_per_1000_plans: f64,
    /// Reconciler steps the executor took during the measurement with plans.
    executor_steps: u64,
    /// Plan steps it committed meanwhile.
    executor_commits: u64,
}

/// One reading of the manager's `/metrics`.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    cpu_seconds: f64,
    steps: f64,
    commits: f64,
}

async fn read(http: &reqwest::Client, manager: &str) -> anyhow::Result<Reading> {
    let url = format!("{}/metrics", manager.trim_end_matches('/'));
    let text = http.get(&url).send().await.and_then(reqwest::Response::error_for_status)?.text().await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .with_context(|| format!("{url} has no {name}"))
    };
    Ok(Reading {
        at: Instant::now(),
        cpu_seconds: value("process_cpu_seconds_total")?,
        steps: value("outrider_executor_steps_total")?,
        commits: value("outrider_executor_commits_total")?,
    })
}

/// CPU percent of one core between two readings.
fn cpu_percent(a: Reading, b: Reading) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    ((b.cpu_seconds - a.cpu_seconds) / wall * 1e4).round() / 100.0
}

async fn measure(http: &reqwest::Client, manager: &str, how_long: Duration) -> anyhow::Result<(Reading, Reading)> {
    let a = read(http, manager).await?;
    tokio::time::sleep(how_long).await;
    Ok((a, read(http, manager).await?))
}

/// A window of one minute twelve hours from now: closed for the whole benchmark.
fn closed_window() -> ChangeWindow {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let minute_of_day = (secs / 60 + 12 * 60) % (24 * 60);
    let hhmm = |m: u64| format!("{:02}:{:02}", m / 60, m % 60);
    ChangeWindow {
        days: "mon-sun".into(),
        from: hhmm(minute_of_day),
        to: hhmm((minute_of_day + 1) % (24 * 60)),
        tz: "UTC".into(),
    }
}

fn plan_body(sidecar: &str, service: &str, window: &ChangeWindow) -> PlanSpec {
    PlanSpec {
        name: format!("idle {service}"),
        sidecar: sidecar.to_owned(),
        target_version: "1.0.1".into(),
        from_versions: Vec::new(),
        selector: Selector { services: vec![service.to_owned()], ..Selector::default() },
        region_order: Vec::new(),
        feature_services: FeatureServices { per_trait_value: 0, services: Vec::new() },
        windows: vec![window.clone()],
        phases: vec![PhaseSpec {
            bake: HumanDuration::from_secs(60),
            ..PhaseSpec::new("all", UpgradeMode::Restart, Batching::Linear { size: 1 })
        }],
        analysis: None,
        supersedes: None,
        on_fail: Default::default(),
    }
}

/// Runs the benchmark against the manager of `args.conn`.
pub async fn run(args: IdleArgs) -> anyhow::Result<String> {
    let client = args.conn.client()?;
    let token = args.conn.token()?.context("agents need a token: give --token-file FILE (or set OUTRIDER_TOKEN)")?;
    let tenant = args.conn.tenant.as_str();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let n = args.plans as usize;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("bench-idle-{:08x}", nanos ^ std::process::id().rotate_left(16));

    eprintln!("preparing sidecar {name} and {n} services…");
    ensure_sidecar(&client, tenant, &name).await?;
    for v in ["1.0.0", "1.0.1"] {
        ensure_version(&client, tenant, &name, v).await?;
        client.admit_version(tenant, &name, v, &serde_json::json!({"bench": "idle"})).await?;
    }
    let services: Vec<String> = (0..n).map(|i| format!("{name}-{i:05}")).collect();
    let binding = Binding { sidecar: name.clone(), enabled: true, version: "1.0.0".into(), mode: UpgradeMode::Restart };
    futures::stream::iter(services.iter().map(|s| create_bound_service(&client, tenant, s, &binding)))
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;

    let instances: Vec<SimInstance> =
        services.iter().map(|s| SimInstance::new(format!("{s}-i0"), s, "cn-north", "prod", "full")).collect();
    let options = SimFleetOptions { report_interval: Duration::from_secs(30), ..SimFleetOptions::default() };
    let fleet = SimFleet::start(client.base_url(), &token, tenant, &instances, &options)?;
    let outcome = async {
        wait_initial(&fleet, &name, "1.0.0", Duration::from_secs(60) + Duration::from_millis(10) * args.plans).await?;
        // Let the reports and the write-behind of the instance records settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!("measuring {:?} without plans…", args.measure.0);
        let baseline = measure(&http, client.base_url(), args.measure.0).await?;

        eprintln!("creating {n} plans that wait for a closed window…");
        let window = closed_window();
        let ids: Vec<String> = futures::stream::iter(services.iter().map(|s| {
            let body = plan_body(&name, s, &window);
            let client = &client;
            async move { client.create_plan(tenant, &body).await.map(|p| p.id) }
        }))
        .buffer_unordered(16)
        .try_collect()
        .await?;
        let waiting = wait_waiting(&client, tenant, &ids, Duration::from_secs(60)).await?;
        // The executor's first look at each plan is over; what follows is the idle cost.
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("measuring {:?} with {waiting} plans waiting…", args.measure.0);
        let with_plans = measure(&http, client.base_url(), args.measure.0).await?;
        for id in &ids {
            let _ = client.plan_action(tenant, id, PlanAction::Abort, Some("benchmark over")).await;
        }
        anyhow::Ok((baseline, with_plans, waiting))
    }
    .await;
    fleet.shutdown().await;
    let (baseline, with_plans, plans_waiting) = outcome?;
    let (base, waiting) = (cpu_percent(baseline.0, baseline.1), cpu_percent(with_plans.0, with_plans.1));
    let result = IdleResult {
        plans: args.plans,
        plans_waiting,
        instances: args.plans,
        measure_s: args.measure.0.as_secs_f64(),
        baseline_cpu_percent: base,
        waiting_cpu_percent: waiting,
        extra_cpu_percent_per_1000_plans: ((waiting - base) * 1000.0 / f64::from(args.plans) * 100.0).round() / 100.0,
        executor_steps: (with_plans.1.steps - with_plans.0.steps).round() as u64,
        executor_commits: (with_plans.1.commits - with_plans.0.commits).round() as u64,
    };
    Ok(match args.conn.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => format!(
            "{} plans waiting on a closed window: manager CPU {} % (without plans {} %), {} executor steps in {} s",
            result.plans_waiting,
            result.waiting_cpu_percent,
            result.baseline_cpu_percent,
            result.executor_steps,
            result.measure_s
        ),
    })
}

/// Waits until every plan of `ids` is `waiting`; returns how many are.
async fn wait_waiting(client: &Client, tenant: &str, ids: &[String], timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let plans = client.list_plans(tenant).await?;
        let waiting = plans.iter().filter(|p| ids.contains(&p.id) && p.state == PlanState::Waiting).count();
        if waiting == ids.len() {
            return Ok(waiting);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {waiting} of {} plans are waiting after {timeout:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every agent holds `version` of `sidecar`, printing progress to stderr.
async fn wait_initial(fleet: &SimFleet, sidecar: &str, version: &str, timeout: Duration) -> anyhow::Result<()> {
    let total = fleet.agents().len();
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_print = Instant::now();
    loop {
        tick.tick().await;
        let (connected, holding) = (fleet.connected(), fleet.holding(sidecar, version));
        if holding == total {
            eprintln!("{connected}/{total} agents connected, {holding}/{total} hold {version}");
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {connected}/{total} agents connected and {holding}/{total} hold {version} after {timeout:?}"
        );
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("{connected}/{total} agents connected, {holding}/{total} hold {version}");
            last_print = Instant::now();
        }
    }
}
