//! The rollout executor: a level-triggered loop over the plans in the store. Each pass reads
//! a plan, the catalog and the fleet, and takes the next steps — start, gate, apply a batch,
//! judge, bake, block, complete — then writes the plan back with compare-and-swap, together
//! with the overrides and events of those steps, in one transaction. A manager that restarts
//! reads where every plan was and continues: no batch is applied twice (its state is written
//! in the same transaction as its overrides), and none is skipped.

mod judge;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use outrider_model::{
    Batch, BatchState, Freeze, Incident, Plan, PlanState, SidecarState, UpgradeMode, Verdict, VersionMatch,
    VersionState,
};
use outrider_rollout::Windows;
use outrider_store::{Compare, Op};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    ApiError,
    api::AppState,
    catalog::{Override, TenantCatalog},
    fleet::Fleet,
    keys,
    repo::{NewEvent, decode, encode},
};

/// How often the executor looks at every plan (it also wakes when poked).
const TICK: Duration = Duration::from_millis(200);

/// Where the executor reads the time. Tests of time-dependent logic can substitute one.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// After the manager starts, the executor waits this long before acting on plans: instance
/// records read from the store may lag what the agents run (status writes are batched), and
/// reconnecting agents report the truth within a second or two. Acting earlier could leave
/// out an instance whose stored record is behind.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Runs the executor until `cancel`. `wake` makes it look at once (after an operator action).
pub async fn run(state: AppState, clock: Arc<dyn Clock>, wake: Arc<Notify>, cancel: CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(SETTLE) => {}
        () = cancel.cancelled() => return,
    }
    let mut cache: HashMap<String, (u64, Plan)> = HashMap::new();
    loop {
        if let Err(e) = pass(&state, clock.now(), &mut cache).await {
            tracing::warn!(error = %e, "executor pass failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = wake.notified() => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn pass(state: &AppState, now: OffsetDateTime, cache: &mut HashMap<String, (u64, Plan)>) -> Result<(), ApiError> {
    let range = state.repo.store().range(keys::PLANS).await?;
    cache.retain(|k, _| range.kvs.iter().any(|kv| &kv.key == k));
    for kv in &range.kvs {
        let plan = match cache.get(&kv.key) {
            Some((rev, p)) if *rev == kv.mod_revision => p.clone(),
            _ => {
                let p: Plan = decode(&kv.key, &kv.value)?;
                cache.insert(kv.key.clone(), (kv.mod_revision, p.clone()));
                p
            }
        };
        if plan.state.is_terminal() || plan.state == PlanState::Blocked {
            continue;
        }
        let Some(tenant) = kv.key.strip_prefix(keys::PLANS).and_then(|r| r.split('/').next()) else { continue };
        if let Err(e) = step(state, tenant, plan, kv.mod_revision, now).await {
            tracing::warn!(key = %kv.key, error = %e, "plan step failed");
        }
    }
    Ok(())
}

/// What one step decided to write besides the plan.
#[derive(Default)]
struct Writes {
    ops: Vec<Op>,
    events: Vec<NewEvent>,
}

impl Writes {
    fn event(&mut self, tenant: &str, plan: &Plan, kind: &'static str, reason: String, detail: serde_json::Value) {
        self.events.push(NewEvent {
            tenant: tenant.to_owned(),
            kind,
            actor: "executor".into(),
            object: format!("plan/{}", plan.id),
            reason,
            plan: Some(plan.id.clone()),
            detail,
        });
    }
}

/// Moves the plan to `to`, with an event.
pub(crate) fn transition(plan: &mut Plan, to: PlanState, reason: String, tenant: &str, actor: &str) -> NewEvent {
    let from = plan.state;
    plan.state = to;
    plan.reason = reason.clone();
    NewEvent {
        tenant: tenant.to_owned(),
        kind: "plan.state",
        actor: actor.to_owned(),
        object: format!("plan/{}", plan.id),
        reason,
        plan: Some(plan.id.clone()),
        detail: serde_json::json!({"from": from, "to": to}),
    }
}

async fn step(state: &AppState, tenant: &str, mut plan: Plan, rev: u64, now: OffsetDateTime) -> Result<(), ApiError> {
    let before = plan.clone();
    let freezes: Vec<Freeze> = state.repo.list(&keys::freezes(tenant)).await?;
    let mut w = Writes::default();
    {
        let catalog = state.catalog.read().unwrap_or_else(|p| p.into_inner());
        let Some(tc) = catalog.tenant(tenant) else { return Ok(()) };
        let ctx = Ctx { tenant, tc, fleet: &state.fleet, freezes: &freezes, now };
        if plan.state == PlanState::Pending {
            let e = transition(&mut plan, PlanState::Running, "started".into(), tenant, "executor");
            w.events.push(e);
        }
        advance(&ctx, &mut plan, &mut w);
    }
    if plan == before {
        return Ok(());
    }
    plan.updated_at = now;
    plan.recount();
    let key = keys::plan(tenant, &plan.id);
    w.ops.push(Op::put(&key, encode(&plan)?));
    let r = state.repo.commit(vec![Compare::unchanged(&key, rev)], w.ops, w.events).await?;
    if !r.succeeded {
        tracing::debug!(plan = %plan.id, "plan changed meanwhile; next pass retries");
    }
    Ok(())
}

/// What a step reads.
struct Ctx<'a> {
    tenant: &'a str,
    tc: &'a TenantCatalog,
    fleet: &'a Fleet,
    freezes: &'a [Freeze],
    now: OffsetDateTime,
}

fn advance(ctx: &Ctx<'_>, plan: &mut Plan, w: &mut Writes) {
    update_blast_radius(ctx, plan);
    while (plan.cursor_phase as usize) < plan.phases.len() {
        let pi = plan.cursor_phase as usize;
        for bi in 0..plan.phases[pi].batches.len() {
            if matches!(plan.phases[pi].batches[bi].state, BatchState::Applying | BatchState::Baking) {
                judge_batch(ctx, plan, pi, bi, w);
                if plan.state == PlanState::Blocked {
                    return;
                }
            }
        }
        let phase_done =
            plan.phases[pi].batches.iter().all(|b| matches!(b.state, BatchState::Passed | BatchState::Skipped));
        if phase_done {
            let name = plan.phases[pi].name.clone();
            w.event(ctx.tenant, plan, "phase.completed", format!("phase {name} completed"), serde_json::Value::Null);
            plan.cursor_phase += 1;
            continue;
        }
        if plan.state == PlanState::Paused {
            return;
        }
        start_batches(ctx, plan, pi, w);
        return;
    }
    let e = transition(plan, PlanState::Completed, "every batch passed".into(), ctx.tenant, "executor");
    w.events.push(e);
}

fn update_blast_radius(ctx: &Ctx<'_>, plan: &mut Plan) {
    let mut by_service: HashMap<&str, Vec<&str>> = HashMap::new();
    for (svc, inst, _) in ctx.tc.overrides_of_plan(&plan.id) {
        by_service.entry(svc).or_default().push(inst);
    }
    let mut ran = 0u64;
    for (svc, ids) in by_service {
        let ids: BTreeSet<&str> = ids.into_iter().collect();
        for i in ctx.fleet.of_service(ctx.tenant, svc) {
            if ids.contains(i.id.as_str())
                && i.sidecars.iter().any(|s| s.name == plan.sidecar && s.version == plan.target_version)
            {
                ran += 1;
            }
        }
    }
    plan.blast_radius = plan.blast_radius.max(ran);
}

/// The members of a batch: (service, instance, override).
fn members<'a>(ctx: &Ctx<'a>, plan: &'a Plan, pi: usize, bi: usize) -> Vec<(&'a str, &'a str, &'a Override)> {
    ctx.tc
        .overrides_of_plan(&plan.id)
        .filter(|(_, _, o)| o.phase as usize == pi && o.batch as usize == bi && o.version == plan.target_version)
        .collect()
}

fn judge_batch(ctx: &Ctx<'_>, plan: &mut Plan, pi: usize, bi: usize, w: &mut Writes) {
    let snapshot = plan.clone();
    let members = members(ctx, &snapshot, pi, bi);
    let services: BTreeSet<&str> = members.iter().map(|(s, _, _)| *s).collect();
    let records: HashMap<String, outrider_model::Instance> =
        services.iter().flat_map(|s| ctx.fleet.of_service(ctx.tenant, s)).map(|i| (i.id.clone(), i)).collect();
    let obs: Vec<judge::InstanceObs<'_>> = members
        .iter()
        .map(|(_, id, o)| judge::InstanceObs {
            id,
            status: records.get(*id).and_then(|r| r.sidecars.iter().find(|s| s.name == plan.sidecar)),
            exits_before: o.exits_before,
        })
        .collect();
    let seen = judge::observe(&obs, &plan.target_version);
    let phase = &snapshot.phases[pi];
    let batch = &snapshot.phases[pi].batches[bi];
    if let Some((metric, ids)) = seen.harm.clone() {
        let member_ids: BTreeSet<&str> = members.iter().map(|(_, i, _)| *i).collect();
        let baseline: Vec<&outrider_model::Instance> =
            records.values().filter(|r| !member_ids.contains(r.id.as_str())).collect();
        let baseline_bad = baseline
            .iter()
            .filter(|r| {
                r.sidecars.iter().any(|s| {
                    s.name == plan.sidecar && matches!(s.state, SidecarState::CrashLoop | SidecarState::Failed)
                })
            })
            .count();
        let incident = Incident {
            opened_at: ctx.now,
            phase: phase.name.clone(),
            batch: batch.index,
            metric: metric.to_owned(),
            canary_value: ids.len() as f64 / members.len().max(1) as f64,
            baseline_value: baseline_bad as f64 / baseline.len().max(1) as f64,
            test: "threshold: any upgraded instance with this signal fails the batch".into(),
            summary: format!(
                "{} of {} upgraded instances show {metric} on {} {} (baseline: {baseline_bad} of {} not upgraded)",
                ids.len(),
                members.len(),
                plan.sidecar,
                plan.target_version,
                baseline.len()
            ),
            instances: ids,
        };
        fail_batch(ctx, plan, pi, bi, incident, w);
        return;
    }
    let b = &mut plan.phases[pi].batches[bi];
    match b.state {
        BatchState::Applying => {
            let started = b.started_at.unwrap_or(ctx.now);
            if seen.missing.is_empty() || phase.mode == UpgradeMode::OnDeploy {
                b.state = BatchState::Baking;
                b.applied_at = Some(ctx.now);
                let detail = serde_json::json!({"phase": phase.name, "batch": bi, "state": "baking", "instances": members.len()});
                let reason = format!("batch {bi} of {} reached {}", phase.name, plan.target_version);
                w.event(ctx.tenant, plan, "batch.state", reason, detail);
            } else if ctx.now - started > phase_timeout(plan, pi) {
                let incident = Incident {
                    opened_at: ctx.now,
                    phase: phase.name.clone(),
                    batch: batch.index,
                    metric: "version_missing".into(),
                    canary_value: seen.missing.len() as f64,
                    baseline_value: 0.0,
                    test: format!(
                        "deadline: every instance reports the target within {}",
                        plan.spec.phases[pi].batch_timeout
                    ),
                    summary: format!(
                        "{} of {} instances did not report {} running in time",
                        seen.missing.len(),
                        members.len(),
                        plan.target_version
                    ),
                    instances: seen.missing,
                };
                fail_batch(ctx, plan, pi, bi, incident, w);
            }
        }
        BatchState::Baking => {
            let baked = b.applied_at.is_none_or(|t| ctx.now - t >= phase.bake.0);
            if baked {
                b.state = BatchState::Passed;
                b.verdict = Some(if members.is_empty() { Verdict::Inconclusive } else { Verdict::Pass });
                b.finished_at = Some(ctx.now);
                let detail = serde_json::json!({"phase": phase.name, "batch": bi, "verdict": b.verdict});
                w.event(ctx.tenant, plan, "batch.verdict", format!("batch {bi} of {} passed", phase.name), detail);
            }
        }
        _ => {}
    }
}

fn phase_timeout(plan: &Plan, pi: usize) -> time::Duration {
    let d = plan.spec.phases.get(pi).map_or(Duration::from_secs(600), |p| p.batch_timeout.0);
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn fail_batch(ctx: &Ctx<'_>, plan: &mut Plan, pi: usize, bi: usize, incident: Incident, w: &mut Writes) {
    let b = &mut plan.phases[pi].batches[bi];
    b.state = BatchState::Failed;
    b.verdict = Some(Verdict::Fail);
    b.finished_at = Some(ctx.now);
    let summary = incident.summary.clone();
    let detail = serde_json::to_value(&incident).unwrap_or_default();
    plan.incidents.push(incident);
    w.event(ctx.tenant, plan, "incident.opened", summary.clone(), detail);
    let e = transition(plan, PlanState::Blocked, summary, ctx.tenant, "executor");
    w.events.push(e);
}

/// Why a batch may not start now, if it may not.
fn gate(ctx: &Ctx<'_>, plan: &Plan, pi: usize, batch: &Batch) -> Option<(PlanState, String)> {
    match ctx.tc.version(&plan.sidecar, &plan.target_version) {
        None => return Some((PlanState::Failed, "the target version no longer exists".into())),
        Some(v) if v.state == VersionState::Defective => {
            return Some((
                PlanState::Blocked,
                format!("{} {} was marked defective", plan.sidecar, plan.target_version),
            ));
        }
        Some(v) if v.state != VersionState::Active || !v.admitted => {
            return Some((
                PlanState::Blocked,
                format!("{} {} is not active and admitted", plan.sidecar, plan.target_version),
            ));
        }
        Some(_) => {}
    }
    match Windows::new(&plan.spec.windows) {
        // Refused when the plan is created; a stored plan with unreadable windows never runs.
        Err(e) => return Some((PlanState::Failed, format!("unreadable change windows: {e}"))),
        Ok(windows) if !windows.allows(ctx.now) => {
            let next = windows.next_open(ctx.now).map_or("never".into(), |t| t.to_string());
            return Some((PlanState::Waiting, format!("outside the change windows; next opens {next}")));
        }
        Ok(_) => {}
    }
    for cell in &batch.cells {
        if let Some(f) = ctx.freezes.iter().find(|f| f.covers(ctx.now, &cell.service)) {
            return Some((PlanState::Waiting, format!("freeze {} until {}: {}", f.id, f.to, f.reason)));
        }
        if let Some(p) = ctx
            .tc
            .service(&cell.service)
            .and_then(|s| s.protected_periods.iter().find(|p| p.from <= ctx.now && ctx.now < p.to))
        {
            return Some((
                PlanState::Waiting,
                format!("service {} is protected until {}: {}", cell.service, p.to, p.reason),
            ));
        }
    }
    let caps = plan.spec.phases.get(pi).map(|p| p.max_per_day).unwrap_or_default();
    if caps.cells.is_some() || caps.instances.is_some() {
        let today = ctx.now.date();
        let started_today = plan.phases[pi].batches.iter().filter(|b| b.started_at.is_some_and(|t| t.date() == today));
        let (cells, instances) =
            started_today.fold((0u64, 0u64), |(c, i), b| (c + b.cells.len() as u64, i + b.instance_count()));
        let over = |cap: Option<u64>, used: u64, add: u64| cap.is_some_and(|cap| used > 0 && used + add > cap);
        if over(caps.cells, cells, batch.cells.len() as u64) || over(caps.instances, instances, batch.instance_count())
        {
            return Some((PlanState::Waiting, "the phase's daily cap is reached; resumes after 00:00 UTC".into()));
        }
    }
    None
}

fn start_batches(ctx: &Ctx<'_>, plan: &mut Plan, pi: usize, w: &mut Writes) {
    let lanes: BTreeSet<u32> = plan.phases[pi].batches.iter().map(|b| b.lane).collect();
    let mut started = false;
    let mut waiting: Option<(PlanState, String)> = None;
    for lane in lanes {
        let in_lane = || plan.phases[pi].batches.iter().enumerate().filter(move |(_, b)| b.lane == lane);
        if in_lane().any(|(_, b)| matches!(b.state, BatchState::Applying | BatchState::Baking | BatchState::Failed)) {
            continue;
        }
        let Some(bi) = in_lane().find(|(_, b)| b.state == BatchState::Pending).map(|(i, _)| i) else { continue };
        if let Some(why) = gate(ctx, plan, pi, &plan.phases[pi].batches[bi]) {
            waiting = Some(why);
            break;
        }
        apply_batch(ctx, plan, pi, bi, w);
        started = true;
    }
    match waiting {
        Some((to, reason)) if !started && (plan.state != to || plan.reason != reason) => {
            let e = transition(plan, to, reason, ctx.tenant, "executor");
            w.events.push(e);
        }
        _ if plan.state == PlanState::Waiting && started => {
            let e = transition(plan, PlanState::Running, "resumed".into(), ctx.tenant, "executor");
            w.events.push(e);
        }
        _ => {}
    }
}

fn apply_batch(ctx: &Ctx<'_>, plan: &mut Plan, pi: usize, bi: usize, w: &mut Writes) {
    let from: Vec<VersionMatch> = plan.spec.from_matches().unwrap_or_default();
    let stage = plan.phases[pi].stage.clone();
    let mode = plan.phases[pi].mode;
    let mut count = 0u64;
    for cell in &plan.phases[pi].batches[bi].cells {
        let Some(service) = ctx.tc.service(&cell.service) else { continue };
        let Some(binding) = ctx.tc.binding(&cell.service, &plan.sidecar) else { continue };
        if service.protected {
            continue;
        }
        for inst in ctx.fleet.of_service(ctx.tenant, &cell.service) {
            let l = &inst.labels;
            if l.region != cell.region || l.env != cell.env || (stage != "all" && l.stage != stage) {
                continue;
            }
            let Some(st) = inst.sidecars.iter().find(|s| s.name == plan.sidecar) else { continue };
            if st.version == plan.target_version || !(from.is_empty() || from.iter().any(|m| m.matches(&st.version))) {
                continue;
            }
            let o = Override {
                plan: plan.id.clone(),
                phase: pi as u32,
                batch: bi as u32,
                version: plan.target_version.clone(),
                mode,
                previous: st.version.clone(),
                base_version: binding.version.clone(),
                exits_before: st.exits,
            };
            let Ok(value) = encode(&o) else { continue };
            w.ops.push(Op::put(keys::override_key(ctx.tenant, &cell.service, &inst.id, &plan.sidecar), value));
            count += 1;
        }
    }
    let b = &mut plan.phases[pi].batches[bi];
    b.state = BatchState::Applying;
    b.started_at = Some(ctx.now);
    let name = plan.phases[pi].name.clone();
    let detail = serde_json::json!({"phase": name, "batch": bi, "state": "applying", "instances": count, "mode": mode});
    w.event(
        ctx.tenant,
        plan,
        "batch.state",
        format!("batch {bi} of {name}: {count} instances to {}", plan.target_version),
        detail,
    );
}
