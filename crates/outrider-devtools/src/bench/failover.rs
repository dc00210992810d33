//! `outrider bench failover`: several managers on an etcd cluster, all started here on
//! loopback, a simulated fleet spread over them, and upgrade plans moving through it while
//! the leader is killed (`kill -9`) again and again at random moments. For each kill: how
//! long until another manager leads, and until its executor moves the plan again; at the end,
//! from the event log, that no batch was applied twice and none skipped.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use outrider_client::{Client, EventQuery, OutputFormat};
use outrider_model::{HumanDuration, PlanSpec, PlanState};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, stats};
use outrider_store::test_etcd::{TestEtcd, etcd_binary};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::harness::{Child, PROCESS_GRACE, free_ports, manager_leads, wait_manager_ready};

/// Flags of `outrider bench failover`.
#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// Times the leader is killed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub kills: u32,
    /// Managers sharing the etcd cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=9))]
    pub managers: u32,
    /// Members of the etcd cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub etcd_members: u32,
    /// Services of the simulated fleet.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub services: u32,
    /// Simulated instances (one agent each).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub instances: u32,
    /// The managers' `--leader-lease`.
    #[arg(long, default_value = "2s")]
    pub lease: HumanDuration,
    /// Seed of the fleet and of the kill moments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The etcd server (default: Debian's /usr/bin/etcd, else `etcd` on PATH).
    #[arg(long)]
    pub etcd: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// What one kill cost.
#[derive(Debug, Serialize)]
struct Kill {
    /// The manager killed.
    manager: String,
    /// Until another manager said it leads.
    elected_s: f64,
    /// Until the plan's next event (its executor moved it again).
    moved_s: f64,
}

/// The figures of `outrider bench failover`.
#[derive(Debug, Serialize)]
struct FailoverResult {
    managers: u32,
    etcd_members: u32,
    instances: u32,
    lease_s: f64,
    kills: Vec<Kill>,
    elected_p50_s: f64,
    elected_max_s: f64,
    moved_p50_s: f64,
    moved_max_s: f64,
    plans: usize,
    batches: usize,
    /// Batches with more than one `applying` event (must be 0).
    applied_twice: usize,
    /// Batches of completed plans with no `applying` event (must be 0).
    skipped: usize,
}

/// One running manager.
struct Manager {
    name: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Manager {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of its API, with the admin token in its data dir.
    fn api(&self) -> anyhow::Result<Client> {
        let token = std::fs::read_to_string(self.dir.join("admin.token"))?;
        Ok(Client::new(&self.url(), Some(token.trim().to_owned()))?)
    }
}

/// The managers and what starting one takes.
struct Pool {
    /// The `outrider` executable.
    exe: PathBuf,
    /// The etcd store URL they share.
    store: String,
    /// Their `--leader-lease`.
    lease: String,
    /// Where their logs go.
    logs: PathBuf,
    managers: Vec<Manager>,
}

impl Pool {
    /// Starts `outrider server` as manager `i` and waits until it is ready.
    async fn start(&mut self, i: usize) -> anyhow::Result<Client> {
        let m = &mut self.managers[i];
        let listen = format!("127.0.0.1:{}", m.port);
        let args: Vec<OsString> = [
            "server",
            "--store",
            &self.store,
            "--listen",
            &listen,
            "--name",
            &m.name,
            "--leader-lease",
            &self.lease,
            "--data-dir",
        ]
        .map(OsString::from)
        .into_iter()
        .chain([m.dir.clone().into()])
        .collect();
        let mut child = Child::spawn(&m.name, &self.exe, args, self.logs.join(format!("{}.log", m.name)))?;
        let (client, _) = wait_manager_ready(&mut child, &m.url(), &m.dir, Duration::from_secs(30)).await?;
        m.child = Some(child);
        Ok(client)
    }
}

/// The index of the manager that leads, once exactly one does.
async fn find_leader(http: &reqwest::Client, managers: &[Manager], timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut found = Vec::new();
        for (i, m) in managers.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
            if manager_leads(http, &m.url()).await {
                found.push(i);
            }
        }
        if let [one] = found[..] {
            return Ok(one);
        }
        anyhow::ensure!(Instant::now() < deadline, "no single leader after {timeout:?}: {found:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body of an upgrade from `from` to `to` in batches of `size` instances.
fn plan_spec(from: &str, to: &str, size: u32) -> anyhow::Result<PlanSpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "sidecar": "mesh", "target_version": to, "from_versions": [from],
        "analysis": {"metrics": []},
        "phases": [{"name": "all", "stage": "all", "mode": "restart",
                    "batching": {"strategy": "linear", "size": size}, "bake": "300ms",
                    "batch_timeout": "60s"}]
    }))?)
}

/// Waits until the manager behind `api` sees all `total` instances run `version`.
async fn all_on(api: &Client, version: &str, total: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = api.distribution("default", "mesh").await?;
        if d.versions.iter().any(|v| v.version == version && v.instances == total as u64) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the fleet is not on {version}: {:?}", d.versions);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

/// Runs the benchmark.
pub async fn run(args: FailoverArgs) -> anyhow::Result<String> {
    let etcd_path = args.etcd.clone().or_else(etcd_binary).context("no etcd: apt-get install etcd-server")?;
    let exe = std::env::current_exe().context("cannot find the outrider executable")?;
    let root = tempfile::Builder::new().prefix("outrider-failover-").tempdir()?;
    eprintln!("starting a {}-member etcd cluster…", args.etcd_members);
    let etcd = TestEtcd::start_cluster(&etcd_path, args.etcd_members as usize).await?;
    let ports = free_ports(args.managers as usize)?;
    let managers: Vec<Manager> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| Manager {
            name: format!("m{}", i + 1),
            port: *port,
            dir: root.path().join(format!("m{}", i + 1)),
            child: None,
        })
        .collect();
    let mut pool = Pool {
        exe,
        store: etcd.url("failover"),
        lease: args.lease.to_string(),
        logs: root.path().to_owned(),
        managers,
    };
    let client = pool.start(0).await?;
    let token = std::fs::read_to_string(pool.managers[0].dir.join("admin.token"))?;
    for i in 1..pool.managers.len() {
        let dir = &pool.managers[i].dir;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("admin.token"), &token)?;
        pool.start(i).await?;
    }
    let token = token.trim().to_owned();
    let outcome = drive(&args, &mut pool, &client, &token).await;
    for m in &mut pool.managers {
        if let Some(mut c) = m.child.take() {
            c.stop(PROCESS_GRACE).await;
        }
    }
    drop(etcd);
    let result = outcome?;
    Ok(match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&result)?,
        OutputFormat::Table => format!(
            "{} managers on a {}-member etcd, {} instances, lease {}s: {} kills of the leader\n\
             another manager leads after p50 {:.2}s, max {:.2}s; the plan moves again after p50 {:.2}s, max {:.2}s\n\
             {} plans, {} batches: {} applied twice, {} skipped\n",
            result.managers,
            result.etcd_members,
            result.instances,
            result.lease_s,
            result.kills.len(),
            result.elected_p50_s,
            result.elected_max_s,
            result.moved_p50_s,
            result.moved_max_s,
            result.plans,
            result.batches,
            result.applied_twice,
            result.skipped
        ),
    })
}

async fn drive(args: &FailoverArgs, pool: &mut Pool, client: &Client, token: &str) -> anyhow::Result<FailoverResult> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).pool_max_idle_per_host(0).build()?;
    let tenant = "default";
    let spec = FleetSpec::generate(FleetParams {
        services: args.services as usize,
        instances: args.instances as usize,
        seed: args.seed,
    })?;
    let versions: Vec<String> = (0..=args.kills).map(|k| format!("1.{k}.0")).collect();
    let mesh = SidecarRef { name: "mesh".into(), version: versions[0].clone() };
    outrider_sim::seed_catalog(client, tenant, &spec, Some(&mesh)).await?;
    for v in &versions[1..] {
        outrider_sim::ensure_version(client, tenant, "mesh", v).await?;
        client.admit_version(tenant, "mesh", v, &serde_json::json!({"bench": "failover"})).await?;
    }
    let urls: Vec<String> = pool.managers.iter().map(Manager::url).collect();
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(500),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::from_millis(10) },
        agents_per_connection: 8,
        service_traits: spec.service_traits(),
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&urls.join(","), token, tenant, &spec.instances, &options)?;
    let outcome = kill_loop(args, pool, &http, &fleet, &versions).await;
    fleet.shutdown().await;
    outcome
}

async fn kill_loop(
    args: &FailoverArgs,
    pool: &mut Pool,
    http: &reqwest::Client,
    fleet: &SimFleet,
    versions: &[String],
) -> anyhow::Result<FailoverResult> {
    let tenant = "default";
    let total = fleet.agents().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.holding("mesh", &versions[0]) < total {
        anyhow::ensure!(Instant::now() < deadline, "the fleet did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    // Batches of a few instances: each plan outlasts the moment of its kill.
    let size = (args.instances / 12).max(1);
    let mut kills = Vec::new();
    let mut plans = Vec::new();
    for k in 0..args.kills as usize {
        let leader = find_leader(http, &pool.managers, Duration::from_secs(30)).await?;
        let via = (leader + 1) % pool.managers.len();
        let api = pool.managers[via].api()?;
        // The plan is made from what that manager sees: the whole fleet on the version.
        all_on(&api, &versions[k], total).await?;
        let plan = api.create_plan(tenant, &plan_spec(&versions[k], &versions[k + 1], size)?).await?;
        anyhow::ensure!(plan.phases.iter().any(|p| !p.batches.is_empty()), "plan {} has no batch", plan.id);
        plans.push(plan.id.clone());
        // A random moment of the plan: after its first batch started, within its first seconds.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        let victim = find_leader(http, &pool.managers, Duration::from_secs(30)).await?;
        let killed_at = time::OffsetDateTime::now_utc();
        let started = Instant::now();
        if let Some(mut c) = pool.managers[victim].child.take() {
            c.kill().await;
        }
        let elected = find_leader(http, &pool.managers, Duration::from_secs(60)).await?;
        let elected_s = seconds(started.elapsed());
        let api = pool.managers[elected].api()?;
        let moved_s = loop {
            let events = api.list_events(tenant, &EventQuery { since: None, plan: Some(plan.id.clone()) }).await?;
            if let Some(e) = events.iter().find(|e| e.time > killed_at) {
                break seconds(Duration::try_from(e.time - killed_at).unwrap_or_default());
            }
            let p = api.get_plan(tenant, &plan.id).await?;
            if p.state != PlanState::Running && p.state != PlanState::Pending && p.state != PlanState::Waiting {
                break f64::NAN;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the plan did not move after the kill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "kill {}: {} killed; {} leads after {elected_s:.2}s; the plan moved after {moved_s:.2}s",
            k + 1,
            pool.managers[victim].name,
            pool.managers[elected].name
        );
        kills.push(Kill { manager: pool.managers[victim].name.clone(), elected_s, moved_s });
        // The plan completes before the next one starts (its agents on the managers left).
        let wait = Instant::now();
        loop {
            let p = api.get_plan(tenant, &plan.id).await?;
            if p.state == PlanState::Completed {
                break;
            }
            anyhow::ensure!(wait.elapsed() < Duration::from_secs(120), "plan {} stuck in {:?}", plan.id, p.state);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The killed manager comes back under a new name (its old one is held until its
        // lease expires), on the same port, so the pool stays whole.
        let m = &mut pool.managers[victim];
        m.name = format!("{}-{}", m.name.split('-').next().unwrap_or("m"), k + 2);
        pool.start(victim).await?;
    }
    let mut batches = 0;
    let (mut twice, mut skipped) = (0, 0);
    let survivor = pool.managers.iter().find(|m| m.child.is_some()).context("no manager left")?;
    let api = survivor.api()?;
    for id in &plans {
        let plan = api.get_plan(tenant, id).await?;
        let events = api.list_events(tenant, &EventQuery { since: None, plan: Some(id.clone()) }).await?;
        let mut applying: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == "batch.state" && e.detail["state"] == "applying") {
            let phase = e.detail["phase"].as_str().unwrap_or_default().to_owned();
            *applying.entry((phase, e.detail["batch"].as_u64().unwrap_or(u64::MAX))).or_default() += 1;
        }
        twice += applying.values().filter(|n| **n > 1).count();
        for phase in &plan.phases {
            for b in &phase.batches {
                batches += 1;
                if !applying.contains_key(&(phase.name.clone(), u64::from(b.index))) {
                    skipped += 1;
                }
            }
        }
    }
    let elected: Vec<Duration> = kills.iter().map(|k| Duration::from_secs_f64(k.elected_s)).collect();
    let moved: Vec<Duration> =
        kills.iter().filter(|k| k.moved_s.is_finite()).map(|k| Duration::from_secs_f64(k.moved_s)).collect();
    let e = stats::LatencySummary::of(elected).context("no kill")?;
    let m = stats::LatencySummary::of(moved).context("no plan moved after a kill")?;
    Ok(FailoverResult {
        managers: args.managers,
        etcd_members: args.etcd_members,
        instances: args.instances,
        lease_s: args.lease.0.as_secs_f64(),
        kills,
        elected_p50_s: seconds(e.p50),
        elected_max_s: seconds(e.max),
        moved_p50_s: seconds(m.p50),
        moved_max_s: seconds(m.max),
        plans: plans.len(),
        batches,
        applied_twice: twice,
        skipped,
    })
}
