//! What follows a version marked defective: the live plans that target it are blocked, and
//! a recall plan is drafted.

use outrider_model::{Batching, HumanDuration, PhaseSpec, Plan, PlanSpec, PlanState, UpgradeMode, VersionState};
use outrider_rollout::reconcile::transition;
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

use super::{new_id, plan_spec};
use crate::{
    Error, keys, live_plans,
    repo::{NewEvent, encode},
    state::AppState,
};

/// After `sidecar` `version` is marked defective: every live plan that targets it is blocked,
/// and a recall plan (paused, as a draft for an operator to resume) moves every instance
/// running it to the newest healthy version.
pub async fn on_defective(s: &AppState, tenant: &str, sidecar: &str, version: &str, actor: &str) -> Result<(), Error> {
    let reason = format!("{sidecar} {version} was marked defective");
    for plan in live_plans::of_tenant(s.repo.store().as_ref(), tenant).await? {
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
                let e = transition(p, PlanState::Blocked, reason.clone());
                Ok(vec![NewEvent::of_plan(tenant, actor, &p.id, e)])
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(plan = %plan.id, error = %e, "could not block a plan targeting a defective version");
        }
    }
    let (healthy, mode) = {
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
        let mode = match tc.and_then(|tc| tc.sidecar(sidecar)) {
            Some(sc) if sc.upgrade_modes.contains(&UpgradeMode::Hot) => UpgradeMode::Hot,
            _ => UpgradeMode::Restart,
        };
        (candidates.pop(), mode)
    };
    let Some(target) = healthy else {
        tracing::warn!(%sidecar, %version, "no healthy admitted version to recall to");
        return Ok(());
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
        phases: vec![PhaseSpec {
            bake: HumanDuration::from_secs(60),
            ..PhaseSpec::new("recall", mode, Batching::Exponential { start: 1, factor: 2 })
        }],
        analysis: None,
        supersedes: None,
        on_fail: Default::default(),
    };
    let planned = plan_spec(s, tenant, &spec)?;
    let now = OffsetDateTime::now_utc();
    let mut plan = Plan::new(new_id(now), spec, planned.feature_services, planned.phases, now);
    plan.state = PlanState::Paused;
    plan.reason = "draft recall plan: review it, then resume it to start".into();
    let key = keys::plan(tenant, &plan.id);
    let event = NewEvent::new(tenant, "plan.created", actor, format!("plan/{}", plan.id))
        .plan(&plan.id)
        .reason(format!("{} (draft: {} instances)", plan.name, plan.counts.total))
        .detail(serde_json::json!({"recall": version, "to": plan.target_version}));
    let ops = vec![Op::put(&key, encode(&plan)?), live_plans::op(tenant, &plan)];
    s.repo.commit(vec![Compare::absent(&key)], ops, vec![event]).await?;
    Ok(())
}
