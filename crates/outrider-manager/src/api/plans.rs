//! Plans: create (with admission), list, show, simulate, and the operator actions.

use axum::{Extension, Json, body::Bytes, extract::State, http::StatusCode};
use outrider_model::{
    BatchState, Plan, PlanSpec, PlanState, Simulation, UpgradeMode, Verdict, VersionState, validate_name,
};
use outrider_store::{Compare, Op};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{
    Actor, AppState,
    extract::{ApiJson, ApiPath},
    require_tenant,
};
use crate::{
    ApiError,
    catalog::{Override, TenantCatalog},
    executor::transition,
    keys,
    repo::{NewEvent, encode},
};

/// Checks what can be checked against the catalog: the sidecar, the target version (exists,
/// active, admitted), and that the sidecar supports every phase's mode.
fn admit(tc: &TenantCatalog, spec: &PlanSpec) -> Result<(), ApiError> {
    let sidecar =
        tc.sidecar(&spec.sidecar).ok_or_else(|| ApiError::not_found(format!("sidecar {:?}", spec.sidecar)))?;
    let v = tc
        .version(&spec.sidecar, &spec.target_version)
        .ok_or_else(|| ApiError::not_found(format!("version {} of sidecar {:?}", spec.target_version, spec.sidecar)))?;
    if v.state != VersionState::Active {
        return Err(ApiError::precondition(format!(
            "version {} is {:?}: only active versions can be a target",
            v.version, v.state
        )));
    }
    if !v.admitted {
        return Err(ApiError::precondition(format!(
            "version {} is not admitted: admit it after its tests (POST …/versions/{}/admit)",
            v.version, v.version
        )));
    }
    for (i, p) in spec.phases.iter().enumerate() {
        if !sidecar.upgrade_modes.contains(&p.mode) {
            return Err(ApiError::invalid(format!(
                "phases[{i}].mode: sidecar {:?} does not support {} (it supports {:?})",
                spec.sidecar, p.mode, sidecar.upgrade_modes
            )));
        }
    }
    for s in spec.selector.services.iter().chain(&spec.feature_services.services) {
        if tc.service(s).is_none() {
            return Err(ApiError::not_found(format!("service {s:?}")));
        }
    }
    Ok(())
}

/// Plans the spec against the live fleet.
fn plan_spec(state: &AppState, tenant: &str, spec: &PlanSpec) -> Result<outrider_rollout::Planned, ApiError> {
    let catalog = state.catalog.read().unwrap_or_else(|p| p.into_inner());
    let tc = catalog.tenant(tenant).ok_or_else(|| ApiError::not_found(format!("tenant {tenant:?}")))?;
    outrider_rollout::Windows::new(&spec.windows)?;
    admit(tc, spec)?;
    let services: Vec<outrider_model::Service> = tc.services().cloned().collect();
    let instances = state.fleet.of_tenant(tenant);
    let view = outrider_rollout::FleetView::from_instances(
        services,
        instances.iter().map(|i| outrider_rollout::InstanceView {
            service: &i.service,
            region: &i.labels.region,
            env: &i.labels.env,
            stage: &i.labels.stage,
            version: i.sidecars.iter().find(|s| s.name == spec.sidecar).map(|s| s.version.as_str()),
        }),
    );
    outrider_rollout::plan(spec, &view).map_err(|e| ApiError::invalid(e.to_string()))
}

fn new_id(now: OffsetDateTime) -> String {
    let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    format!("p{ms:x}{:04x}", rand::random::<u16>())
}

/// A new plan from its body and what the planner made of it.
fn new_plan(
    name: String,
    spec: PlanSpec,
    planned: outrider_rollout::Planned,
    state: PlanState,
    reason: String,
) -> Plan {
    let now = OffsetDateTime::now_utc();
    let mut plan = Plan {
        id: new_id(now),
        name,
        sidecar: spec.sidecar.clone(),
        target_version: spec.target_version.clone(),
        state,
        reason,
        feature_services: planned.feature_services,
        phases: planned.phases,
        counts: Default::default(),
        blast_radius: 0,
        incidents: Vec::new(),
        cursor_phase: 0,
        spec,
        created_at: now,
        updated_at: now,
    };
    plan.recount();
    plan
}

fn services_of(plan: &Plan) -> std::collections::BTreeSet<&str> {
    plan.phases.iter().flat_map(|p| &p.batches).flat_map(|b| &b.cells).map(|c| c.service.as_str()).collect()
}

/// `POST /plans`.
pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(spec): ApiJson<PlanSpec>,
) -> Result<(StatusCode, Json<Plan>), ApiError> {
    require_tenant(&s.repo, &tenant).await?;
    spec.validate()?;
    let planned = plan_spec(&s, &tenant, &spec)?;
    let name =
        if spec.name.is_empty() { format!("{} to {}", spec.sidecar, spec.target_version) } else { spec.name.clone() };
    let plan = new_plan(name, spec, planned, PlanState::Pending, "created".into());
    // No other live plan may touch the same sidecar on the same services.
    let mine = services_of(&plan);
    let others: Vec<Plan> = s.repo.list(&keys::plans(&tenant)).await?;
    if let Some(o) = others.iter().find(|o| {
        !o.state.is_terminal() && o.sidecar == plan.sidecar && services_of(o).iter().any(|svc| mine.contains(svc))
    }) {
        return Err(ApiError::conflict(format!(
            "plan {} ({}) is {} and touches {} on some of the same services",
            o.id, o.name, o.state, o.sidecar
        )));
    }
    let key = keys::plan(&tenant, &plan.id);
    let event = NewEvent {
        tenant: tenant.clone(),
        kind: "plan.created",
        actor,
        object: format!("plan/{}", plan.id),
        reason: plan.name.clone(),
        plan: Some(plan.id.clone()),
        detail: serde_json::json!({"instances": plan.counts.total, "batches": plan.phases.iter().map(|p| p.batches.len()).sum::<usize>()}),
    };
    let r = s.repo.commit(vec![Compare::absent(&key)], vec![Op::put(&key, encode(&plan)?)], vec![event]).await?;
    if !r.succeeded {
        return Err(ApiError::conflict("plan id collision; retry"));
    }
    s.wake.notify_one();
    Ok((StatusCode::CREATED, Json(plan)))
}

/// `POST /plans/simulate`: the predicted schedule; nothing changes.
pub async fn simulate(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(spec): ApiJson<PlanSpec>,
) -> Result<Json<Simulation>, ApiError> {
    require_tenant(&s.repo, &tenant).await?;
    spec.validate()?;
    let planned = plan_spec(&s, &tenant, &spec)?;
    let windows = outrider_rollout::Windows::new(&spec.windows).map_err(|e| ApiError::invalid(e.to_string()))?;
    let freezes: Vec<outrider_model::Freeze> = s.repo.list(&keys::freezes(&tenant)).await?;
    let sim = outrider_rollout::simulate(
        &planned,
        &spec,
        &windows,
        &freezes,
        OffsetDateTime::now_utc(),
        outrider_rollout::SimAssumptions::default(),
    );
    Ok(Json(sim))
}

/// `GET /plans`, newest first.
pub async fn list(State(s): State<AppState>, ApiPath(tenant): ApiPath<String>) -> Result<Json<Vec<Plan>>, ApiError> {
    require_tenant(&s.repo, &tenant).await?;
    let mut plans: Vec<Plan> = s.repo.list(&keys::plans(&tenant)).await?;
    plans.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    Ok(Json(plans))
}

/// `GET /plans/{id}`.
pub async fn get_one(
    State(s): State<AppState>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<Json<Plan>, ApiError> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("plan", &id)?;
    let (p, _) =
        s.repo.get(&keys::plan(&tenant, &id)).await?.ok_or_else(|| ApiError::not_found(format!("plan {id:?}")))?;
    Ok(Json(p))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: String,
}

/// `POST /plans/{id}/{pause|resume|abort|rollback|approve}`.
pub async fn action(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, id, action)): ApiPath<(String, String, String)>,
    raw: Bytes,
) -> Result<Json<Plan>, ApiError> {
    let body: ActionBody = if raw.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    require_tenant(&s.repo, &tenant).await?;
    validate_name("plan", &id)?;
    let key = keys::plan(&tenant, &id);
    for _ in 0..5 {
        let (mut plan, rev) =
            s.repo.get::<Plan>(&key).await?.ok_or_else(|| ApiError::not_found(format!("plan {id:?}")))?;
        let reason = if body.reason.is_empty() { format!("{action} by {actor}") } else { body.reason.clone() };
        let mut ops = Vec::new();
        let to = match (action.as_str(), plan.state) {
            ("pause", PlanState::Pending | PlanState::Running | PlanState::Waiting) => PlanState::Paused,
            ("resume", PlanState::Paused) => PlanState::Running,
            ("abort", st) if !st.is_terminal() => {
                for b in plan.phases.iter_mut().flat_map(|p| &mut p.batches).filter(|b| b.state == BatchState::Pending)
                {
                    b.state = BatchState::Skipped;
                }
                PlanState::Aborted
            }
            ("approve", PlanState::Blocked) => {
                // False alarm: the failed batch counts as passed; its verdict stays on record.
                for b in plan.phases.iter_mut().flat_map(|p| &mut p.batches).filter(|b| b.state == BatchState::Failed) {
                    b.state = BatchState::Passed;
                }
                PlanState::Running
            }
            ("rollback", st) if st != PlanState::RolledBack && st != PlanState::Failed => {
                ops = rollback_ops(&s, &tenant, &mut plan)?;
                PlanState::RolledBack
            }
            ("pause" | "resume" | "abort" | "approve" | "rollback", st) => {
                return Err(ApiError::precondition(format!("plan {id} is {st}: cannot {action} it")));
            }
            _ => {
                return Err(ApiError::not_found(format!(
                    "action {action:?} (use pause, resume, abort, rollback or approve)"
                )));
            }
        };
        let mut event = transition(&mut plan, to, reason, &tenant, &actor);
        event.kind = "plan.action";
        event.detail = serde_json::json!({"action": action, "to": to, "overrides_written": ops.len()});
        plan.updated_at = OffsetDateTime::now_utc();
        plan.recount();
        ops.push(Op::put(&key, encode(&plan)?));
        let r = s.repo.commit(vec![Compare::unchanged(&key, rev)], ops, vec![event]).await?;
        if r.succeeded {
            s.wake.notify_one();
            return Ok(Json(plan));
        }
    }
    Err(ApiError::conflict("the plan is changing; retry"))
}

/// Returns every instance the plan changed to the version it had before: all at once
/// (hot where the sidecar supports it), so the rollback is as fast as the agents.
fn rollback_ops(s: &AppState, tenant: &str, plan: &mut Plan) -> Result<Vec<Op>, ApiError> {
    let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
    let tc = catalog.tenant(tenant).ok_or_else(|| ApiError::not_found(format!("tenant {tenant:?}")))?;
    let mode = match tc.sidecar(&plan.sidecar) {
        Some(sc) if sc.upgrade_modes.contains(&UpgradeMode::Hot) => UpgradeMode::Hot,
        _ => UpgradeMode::Restart,
    };
    let mut ops = Vec::new();
    let mut changed: Vec<(&str, &str, &Override)> = tc.overrides_of_plan(&plan.id).collect();
    // Reverse order of application: last batch first.
    changed.sort_by_key(|c| std::cmp::Reverse((c.2.phase, c.2.batch)));
    for (svc, inst, o) in changed {
        if o.version == o.previous {
            continue;
        }
        let back = Override { version: o.previous.clone(), mode, ..o.clone() };
        ops.push(Op::put(keys::override_key(tenant, svc, inst, &plan.sidecar), encode(&back)?));
    }
    for b in plan.phases.iter_mut().flat_map(|p| &mut p.batches) {
        b.state = match b.state {
            BatchState::Pending => BatchState::Skipped,
            BatchState::Applying | BatchState::Baking | BatchState::Passed | BatchState::Failed => {
                BatchState::RolledBack
            }
            other => other,
        };
        if b.state == BatchState::RolledBack && b.verdict.is_none() {
            b.verdict = Some(Verdict::Inconclusive);
        }
    }
    Ok(ops)
}

/// After a version is marked defective: every live plan that targets it is blocked, and a
/// recall plan (paused, as a draft for an operator to resume) moves every instance running
/// it to the newest healthy version.
pub async fn on_defective(
    s: &AppState,
    tenant: &str,
    sidecar: &str,
    version: &str,
    actor: &str,
) -> Result<(), ApiError> {
    let reason = format!("{sidecar} {version} was marked defective");
    for plan in s.repo.list::<Plan>(&keys::plans(tenant)).await? {
        if plan.sidecar != sidecar || plan.target_version != version || plan.state.is_terminal() {
            continue;
        }
        let key = keys::plan(tenant, &plan.id);
        let r = s
            .repo
            .update(&key, &format!("plan {}", plan.id), |p: &mut Plan| {
                if p.state.is_terminal() || p.state == PlanState::Blocked {
                    return Ok(Vec::new());
                }
                Ok(vec![transition(p, PlanState::Blocked, reason.clone(), tenant, actor)])
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(plan = %plan.id, error = %e, "could not block a plan targeting a defective version");
        }
    }
    let healthy = {
        let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
        let tc = catalog.tenant(tenant);
        let mut candidates: Vec<semver::Version> = tc
            .map(|tc| tc.versions_of(sidecar))
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.state == VersionState::Active && v.admitted && v.version != version)
            .filter_map(|v| semver::Version::parse(&v.version).ok())
            .collect();
        candidates.sort();
        candidates.pop()
    };
    let Some(target) = healthy else {
        tracing::warn!(%sidecar, %version, "no healthy admitted version to recall to");
        return Ok(());
    };
    let mode = {
        let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
        match catalog.tenant(tenant).and_then(|tc| tc.sidecar(sidecar)) {
            Some(sc) if sc.upgrade_modes.contains(&UpgradeMode::Hot) => UpgradeMode::Hot,
            _ => UpgradeMode::Restart,
        }
    };
    let spec = PlanSpec {
        name: format!("recall {sidecar} {version} to {target}"),
        sidecar: sidecar.to_owned(),
        target_version: target.to_string(),
        from_versions: vec![version.to_owned()],
        selector: Default::default(),
        region_order: Vec::new(),
        feature_services: Default::default(),
        windows: Vec::new(),
        phases: vec![outrider_model::PhaseSpec {
            name: "recall".into(),
            stage: "all".into(),
            mode,
            batching: outrider_model::Batching::Exponential { start: 1, factor: 2 },
            max_per_batch: Default::default(),
            max_per_day: Default::default(),
            bake: outrider_model::HumanDuration::from_secs(60),
            region_parallelism: 1,
            batch_timeout: outrider_model::HumanDuration::from_secs(600),
        }],
    };
    let planned = plan_spec(s, tenant, &spec)?;
    let plan = new_plan(
        spec.name.clone(),
        spec,
        planned,
        PlanState::Paused,
        "draft recall plan: review it, then resume it to start".into(),
    );
    let key = keys::plan(tenant, &plan.id);
    let event = NewEvent {
        tenant: tenant.to_owned(),
        kind: "plan.created",
        actor: actor.to_owned(),
        object: format!("plan/{}", plan.id),
        reason: format!("{} (draft: {} instances)", plan.name, plan.counts.total),
        plan: Some(plan.id.clone()),
        detail: serde_json::json!({"recall": version, "to": plan.target_version}),
    };
    s.repo.commit(vec![Compare::absent(&key)], vec![Op::put(&key, encode(&plan)?)], vec![event]).await?;
    Ok(())
}
