//! One plan of the corpus, run for real: a manager in process (its store on a scratch
//! directory, its executor on a virtual clock), a simulated fleet whose agents speak the
//! real sync protocol to it, the plan created over the REST API, and an operator who
//! approves false alarms. Time is tokio's paused clock, so bakes of minutes pass as fast as
//! the machine computes them: the caller runs this on a current-thread runtime started
//! paused.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use outrider_client::{Client, PlanAction};
use outrider_manager::{ManagerConfig, executor::Clock};
use outrider_model::{BatchState, Plan, PlanSpec, PlanState, Verdict};
use outrider_sim::{Defect, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, ensure_version, seed_catalog};
use serde::Serialize;
use time::{OffsetDateTime, macros::datetime};

use super::corpus::{Case, Kind, Shape};

const TENANT: &str = "default";
const SIDECAR: &str = "mesh";
const BASE: &str = "1.0.0";
const TARGET: &str = "1.1.0";
/// How often the operator looks at the plan.
const POLL: Duration = Duration::from_secs(10);
/// False alarms an operator approves in one plan before giving up on it.
const MAX_APPROVALS: u32 = 20;
/// Plan time after which a plan that has not ended is given up.
const PLAN_LIMIT: Duration = Duration::from_secs(3 * 24 * 3600);
/// Time the fleet runs on the base version before the plan is created (below the manager's
/// idle timeout of 2 minutes, so the client's pooled connection is still open).
const WARM_UP: Duration = Duration::from_secs(90);

/// How every trial runs.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// The fleet of each plan.
    pub shape: Shape,
    /// Bake of every batch.
    pub bake: Duration,
    /// How often agents report.
    pub report_interval: Duration,
    /// Business deploys per instance and day.
    pub deploys_per_day: f64,
}

/// A clock that reads tokio's (paused) time from a fixed start.
#[derive(Debug)]
struct VirtualClock {
    epoch: OffsetDateTime,
    start: tokio::time::Instant,
}

impl Clock for VirtualClock {
    fn now(&self) -> OffsetDateTime {
        self.epoch + (tokio::time::Instant::now() - self.start)
    }
}

/// What became of one batch that started.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    /// `gray/0`, `full/3`, …
    pub batch: String,
    /// Instances planned in it.
    pub instances: u64,
    /// Whether it holds an instance of a service the defect selects.
    pub affected: bool,
    /// The judge's verdict (`None`: not judged when the trial ended).
    pub verdict: Option<Verdict>,
    /// Bake extensions for want of evidence.
    pub extensions: u32,
    /// The metric of its incident, if it failed.
    pub metric: Option<String>,
    /// The judge's reason, unless it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Every batch passed (false alarms approved).
    Completed,
    /// A batch holding an affected instance failed: the defect was caught.
    Detected,
    /// The operator gave up approving false alarms, or the plan took too long.
    GaveUp,
}

/// The outcome of one plan of the corpus.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Its position in the corpus.
    pub index: u32,
    /// `healthy`, or the effect and magnitude.
    pub kind: String,
    /// The traits selecting the affected services.
    pub traits: String,
    /// Instances of the fleet.
    pub fleet_instances: usize,
    /// Services and instances the defect selects.
    pub affected_services: usize,
    /// Instances of those services.
    pub affected_instances: usize,
    /// How it ended.
    pub end: End,
    /// Bakes from the start of the first batch holding an affected instance to the block
    /// (detected plans only).
    pub delay_bakes: Option<f64>,
    /// Instances that ran the target under the plan when it blocked on the defect (or when
    /// it ended).
    pub blast_radius: u64,
    /// The metric that caught the defect.
    pub caught_by: Option<String>,
    /// Blocks the operator approved (false alarms and "not enough evidence").
    pub approvals: u32,
    /// The batches that started, in order.
    pub batches: Vec<BatchResult>,
    /// Plan time it took.
    pub plan_minutes: f64,
    /// Machine time it took.
    pub wall_s: f64,
}

/// A scratch directory for a manager's store: in memory (`/dev/shm`) where there is one.
fn scratch() -> anyhow::Result<tempfile::TempDir> {
    let shm = PathBuf::from("/dev/shm");
    let builder = tempfile::Builder::new().prefix("outrider-bench-").tempdir_in(&shm);
    match builder {
        Ok(dir) => Ok(dir),
        Err(_) => tempfile::Builder::new().prefix("outrider-bench-").tempdir().context("cannot create a scratch dir"),
    }
}

/// The plan every trial runs: `gray` over the canary instances, then `full` over every
/// instance, both hot in batches of 1, 2, 4 … cells, each batch baking `bake`, judged with
/// the built-in metrics.
fn plan_body(bake: Duration) -> anyhow::Result<PlanSpec> {
    let bake = format!("{}s", bake.as_secs());
    let body = serde_json::json!({
        "name": "bench analysis",
        "sidecar": SIDECAR, "target_version": TARGET,
        "phases": [
            {"name": "gray", "stage": "canary", "mode": "hot",
             "batching": {"strategy": "exponential", "start": 1, "factor": 2}, "bake": bake},
            {"name": "full", "stage": "all", "mode": "hot",
             "batching": {"strategy": "exponential", "start": 1, "factor": 2}, "bake": bake}
        ]
    });
    serde_json::from_value(body).context("the benchmark's plan body")
}

/// Runs `case` (see the module docs).
pub async fn run(case: &Case, setup: &Setup) -> anyhow::Result<Trial> {
    let wall = Instant::now();
    let started = tokio::time::Instant::now();
    let dir = scratch()?;
    let clock = Arc::new(VirtualClock { epoch: datetime!(2027-03-01 00:00 UTC) + case.time_of_day, start: started });
    let config = ManagerConfig::new(dir.path(), "127.0.0.1:0".parse()?);
    let manager = outrider_manager::start_with_clock(config, clock).await.context("cannot start a manager")?;
    let result = drive(case, setup, &manager, dir.path()).await;
    manager.shutdown().await;
    let mut trial = result?;
    trial.plan_minutes = (tokio::time::Instant::now() - started).as_secs_f64() / 60.0;
    trial.wall_s = wall.elapsed().as_secs_f64();
    Ok(trial)
}

async fn drive(
    case: &Case,
    setup: &Setup,
    manager: &outrider_manager::RunningManager,
    dir: &std::path::Path,
) -> anyhow::Result<Trial> {
    let token = std::fs::read_to_string(dir.join("admin.token")).context("the manager's admin token")?;
    let token = token.trim().to_owned();
    let client = Client::new(&format!("http://{}", manager.addr), Some(token.clone()))?;
    let spec = setup.shape.fleet(case.seed)?;
    let base = SidecarRef { name: SIDECAR.into(), version: BASE.into() };
    seed_catalog(&client, TENANT, &spec, Some(&base)).await?;
    ensure_version(&client, TENANT, SIDECAR, TARGET).await?;
    client.admit_version(TENANT, SIDECAR, TARGET, &serde_json::json!({"tests": "bench"})).await?;

    let defects = match case.kind {
        Kind::Healthy => Vec::new(),
        Kind::Defect(effect) => vec![Defect {
            version: TARGET.into(),
            effect,
            sidecar: None,
            service: None,
            region: None,
            traits: case.traits.clone(),
        }],
    };
    let affected: BTreeSet<String> = match case.kind {
        Kind::Healthy => BTreeSet::new(),
        Kind::Defect(_) => spec
            .services
            .iter()
            .filter(|s| case.traits.iter().all(|(k, v)| s.traits.get(k) == Some(v)))
            .map(|s| s.name.clone())
            .collect(),
    };
    let affected_instances = spec.instances.iter().filter(|i| affected.contains(&i.service)).count();
    let n = spec.instances.len();
    let options = SimFleetOptions {
        report_interval: setup.report_interval,
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(500), jitter: Duration::from_millis(200) },
        defects,
        service_traits: spec.service_traits(),
        deploy_rate: setup.deploys_per_day * n as f64 / (24.0 * 60.0),
        seed: case.seed,
        time_of_day: case.time_of_day,
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options)?;
    let outcome = follow(&client, &fleet, n, setup, &affected).await;
    fleet.shutdown().await;
    let (plan, approvals, end) = outcome?;

    let mut batches = Vec::new();
    let mut first_affected: Option<OffsetDateTime> = None;
    let mut caught: Option<(OffsetDateTime, Option<String>)> = None;
    for phase in &plan.phases {
        for b in phase.batches.iter().filter(|b| b.started_at.is_some()) {
            let is_affected = b.cells.iter().any(|c| affected.contains(&c.service));
            let incident = plan.incidents.iter().rfind(|i| i.phase == phase.name && i.batch == b.index);
            let metric = (b.verdict == Some(Verdict::Fail)).then(|| incident.map(|i| i.metric.clone())).flatten();
            if is_affected && first_affected.is_none() {
                first_affected = b.applied_at.or(b.started_at);
            }
            if is_affected && b.verdict == Some(Verdict::Fail) && b.state == BatchState::Failed && caught.is_none() {
                caught = Some((b.finished_at.unwrap_or(plan.updated_at), metric.clone()));
            }
            batches.push(BatchResult {
                batch: format!("{}/{}", phase.name, b.index),
                instances: b.instance_count(),
                affected: is_affected,
                verdict: b.verdict,
                extensions: b.extensions,
                metric,
                reason: (b.verdict != Some(Verdict::Pass))
                    .then(|| b.analysis.as_ref().map(|a| a.reason.clone()))
                    .flatten(),
            });
        }
    }
    let delay_bakes = match (end, first_affected, &caught) {
        (End::Detected, Some(from), Some((at, _))) => {
            Some(((*at - from).as_seconds_f64() / setup.bake.as_secs_f64() * 100.0).round() / 100.0)
        }
        _ => None,
    };
    Ok(Trial {
        index: case.index,
        kind: case.kind.to_string(),
        traits: case.traits.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        fleet_instances: n,
        affected_services: affected.len(),
        affected_instances,
        end,
        delay_bakes,
        blast_radius: plan.blast_radius,
        caught_by: caught.and_then(|(_, m)| m),
        approvals,
        batches,
        plan_minutes: 0.0,
        wall_s: 0.0,
    })
}

/// Brings the fleet up on the base version, creates the plan and follows it as an operator
/// would: a block on a batch without any affected instance (a false alarm) or for want of
/// evidence is approved; a failed batch holding affected instances ends the trial, as does
/// the plan's completion. Returns the plan as it ended, the approvals and how it ended.
async fn follow(
    client: &Client,
    fleet: &SimFleet,
    n: usize,
    setup: &Setup,
    affected: &BTreeSet<String>,
) -> anyhow::Result<(Plan, u32, End)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while fleet.holding(SIDECAR, BASE) < n {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} simulated agents hold {SIDECAR} {BASE}",
            fleet.holding(SIDECAR, BASE)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(WARM_UP).await;
    let created = client.create_plan(TENANT, &plan_body(setup.bake)?).await.context("cannot create the plan")?;
    let limit = tokio::time::Instant::now() + PLAN_LIMIT;
    let mut approvals = 0;
    loop {
        tokio::time::sleep(POLL).await;
        let plan = get_plan(client, &created.id).await?;
        match plan.state {
            PlanState::Completed => return Ok((plan, approvals, End::Completed)),
            PlanState::Blocked => {
                if blocked_on_the_defect(&plan, affected) {
                    return Ok((plan, approvals, End::Detected));
                }
                if approvals >= MAX_APPROVALS {
                    return Ok((plan, approvals, End::GaveUp));
                }
                approvals += 1;
                client.plan_action(TENANT, &plan.id, PlanAction::Approve, Some("bench: a false alarm")).await?;
            }
            s if s.is_terminal() => return Ok((plan, approvals, End::GaveUp)),
            _ if tokio::time::Instant::now() >= limit => return Ok((plan, approvals, End::GaveUp)),
            _ => {}
        }
    }
}

/// The plan, asked again once if the connection broke (a pooled connection the manager
/// closed as idle at the moment it was reused).
async fn get_plan(client: &Client, id: &str) -> anyhow::Result<Plan> {
    match client.get_plan(TENANT, id).await {
        Ok(plan) => Ok(plan),
        Err(_) => Ok(client.get_plan(TENANT, id).await?),
    }
}

/// Whether the plan is blocked by a failed batch that holds an instance the defect selects.
fn blocked_on_the_defect(plan: &Plan, affected: &BTreeSet<String>) -> bool {
    plan.phases
        .iter()
        .flat_map(|p| &p.batches)
        .filter(|b| b.state == BatchState::Failed)
        .any(|b| b.cells.iter().any(|c| affected.contains(&c.service)))
}
