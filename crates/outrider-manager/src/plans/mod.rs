//! Plans as the manager's domain: creating one (admission, planning against the live fleet,
//! no overlap with another live plan), simulating one, the operator actions, and the recall
//! that follows a defective version. The HTTP handlers only parse, call and render; the
//! executor moves plans forward (`crate::executor`).

mod actions;
mod admission;
mod last_good;
mod recall;
mod supersede;
mod withdraw;

use outrider_model::{Freeze, Plan, PlanSpec, Simulation, validate_name};
use outrider_rollout::{FleetView, InstanceView, Planned, SimAssumptions, Windows};
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

pub(crate) use actions::rollback;
pub use actions::{Action, act};
pub use recall::mark_defective;

use crate::{
    Error, keys, live_plans,
    repo::{NewEvent, encode},
    state::AppState,
};

/// Plans `spec` against the live fleet of `tenant`, after admission.
fn plan_spec(s: &AppState, tenant: &str, spec: &PlanSpec) -> Result<Planned, Error> {
    let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
    let tc = catalog.tenant(tenant).ok_or_else(|| Error::not_found(format!("tenant {tenant:?}")))?;
    Windows::new(&spec.windows)?;
    admission::admit(tc, spec)?;
    let services: Vec<outrider_model::Service> = tc.services().cloned().collect();
    let instances = s.fleet.of_tenant(tenant);
    let view = FleetView::from_instances(
        services,
        instances.iter().map(|i| InstanceView {
            service: &i.service,
            region: &i.labels.region,
            env: &i.labels.env,
            stage: &i.labels.stage,
            version: i.sidecars.iter().find(|s| s.name == spec.sidecar).map(|s| s.version.as_str()),
        }),
    );
    outrider_rollout::plan(spec, &view).map_err(|e| Error::invalid(e.to_string()))
}

/// A new plan id: time-ordered, with a random tail.
fn new_id(now: OffsetDateTime) -> String {
    let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    format!("p{ms:x}{:04x}", rand::random::<u16>())
}

/// Creates a `pending` plan from `spec` for `actor`: validated, admitted, planned, and not
/// overlapping another live plan of the same sidecar — but the blocked plan it `supersedes`,
/// which ends `aborted` in the same commit.
pub async fn create(s: &AppState, tenant: &str, actor: &str, spec: PlanSpec) -> Result<Plan, Error> {
    spec.validate()?;
    let superseded = supersede::superseded(s, tenant, &spec).await?;
    let planned = plan_spec(s, tenant, &spec)?;
    let now = OffsetDateTime::now_utc();
    let plan = Plan::new(new_id(now), spec, planned.feature_services, planned.phases, now);
    let mut others = live_plans::of_tenant(s.repo.store().as_ref(), tenant).await?;
    others.retain(|o| plan.supersedes.as_ref() != Some(&o.id));
    admission::no_overlap(&plan, &others)?;
    let key = keys::plan(tenant, &plan.id);
    let batches = plan.phases.iter().map(|p| p.batches.len()).sum::<usize>();
    let event = NewEvent::new(tenant, "plan.created", actor, format!("plan/{}", plan.id))
        .plan(&plan.id)
        .reason(plan.name.clone())
        .detail(serde_json::json!({"instances": plan.counts.total, "batches": batches, "supersedes": plan.supersedes}));
    let mut compare = vec![Compare::absent(&key)];
    let mut ops = vec![Op::put(&key, encode(&plan)?), live_plans::op(tenant, &plan)];
    let mut events = vec![event];
    if let Some((mut old, rev)) = superseded {
        let e = supersede::take_over(&mut old, &plan.id, now);
        let old_key = keys::plan(tenant, &old.id);
        compare.extend([Compare::unchanged(&old_key, rev), Compare::absent(keys::plan_write(tenant, &old.id))]);
        ops.extend([Op::put(&old_key, encode(&old)?), live_plans::op(tenant, &old)]);
        events.push(NewEvent::of_plan(tenant, actor, &old.id, e));
    }
    let r = s.repo.commit(compare, ops, events).await?;
    if !r.succeeded {
        return Err(match &plan.supersedes {
            Some(old) => Error::conflict(format!("plan {old} changed meanwhile (superseded already?); retry")),
            None => Error::conflict("plan id collision; retry"),
        });
    }
    s.wake.notify_one();
    Ok(plan)
}

/// The predicted schedule of `spec` from now, with `deploys_per_day` deploys per instance and
/// day for on-deploy phases (default 0.2); a plan it `supersedes` is checked as by
/// [`create`]; nothing changes.
pub async fn simulate(
    s: &AppState,
    tenant: &str,
    spec: &PlanSpec,
    deploys_per_day: Option<f64>,
) -> Result<Simulation, Error> {
    spec.validate()?;
    supersede::superseded(s, tenant, spec).await?;
    let mut assumptions = SimAssumptions::default();
    if let Some(rate) = deploys_per_day {
        if !(rate.is_finite() && (0.0..=1000.0).contains(&rate)) {
            return Err(Error::invalid(format!("deploys_per_day: {rate} is not between 0 and 1000")));
        }
        assumptions.deploys_per_day = rate;
    }
    let planned = plan_spec(s, tenant, spec)?;
    let windows = Windows::new(&spec.windows).map_err(|e| Error::invalid(e.to_string()))?;
    let freezes: Vec<Freeze> = s.repo.list(&keys::freezes(tenant)).await?;
    Ok(outrider_rollout::simulate(&planned, spec, &windows, &freezes, OffsetDateTime::now_utc(), assumptions))
}

/// Every plan of `tenant`, newest first.
pub async fn list(s: &AppState, tenant: &str) -> Result<Vec<Plan>, Error> {
    let mut plans: Vec<Plan> = s.repo.list(&keys::plans(tenant)).await?;
    plans.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    Ok(plans)
}

/// Deletes plan `id` of `tenant`, which must be done (completed, aborted, rolled back or
/// failed); records `plan.deleted`.
pub async fn delete(s: &AppState, tenant: &str, id: &str, actor: &str) -> Result<(), Error> {
    validate_name("plan", id)?;
    let key = keys::plan(tenant, id);
    let (plan, rev) = s.repo.get::<Plan>(&key).await?.ok_or_else(|| Error::not_found(format!("plan {id:?}")))?;
    if !plan.state.is_terminal() {
        return Err(Error::precondition(format!(
            "plan {id} is {}; only a plan that is done can be deleted (abort it first)",
            plan.state
        )));
    }
    let event = NewEvent::new(tenant, "plan.deleted", actor, format!("plan/{id}")).plan(id);
    let ops = vec![Op::delete(&key), Op::delete(keys::live_plan(tenant, id))];
    let compare = vec![Compare::unchanged(&key, rev), Compare::absent(keys::plan_write(tenant, id))];
    let r = s.repo.commit(compare, ops, vec![event]).await?;
    if !r.succeeded {
        return Err(Error::conflict(format!("plan {id} changed meanwhile; retry")));
    }
    s.wake.notify_one();
    Ok(())
}

/// Plan `id` of `tenant`.
pub async fn get(s: &AppState, tenant: &str, id: &str) -> Result<Plan, Error> {
    validate_name("plan", id)?;
    let found = s.repo.get(&keys::plan(tenant, id)).await?;
    found.map(|(p, _)| p).ok_or_else(|| Error::not_found(format!("plan {id:?}")))
}
