//! Marking a version defective, and what follows: in the same transaction as the mark (or,
//! when they are more than one store transaction takes, in chunks before it: `crate::chunked`),
//! every pending plan record and cell target naming it is withdrawn (`withdraw.rs`) and the
//! last known good version (`last_good.rs`) is stored as its `recall_to`; then the live plans that
//! target it are blocked, the withdrawal is redone for what a plan step committed meanwhile,
//! and a recall plan is drafted.

use outrider_model::{
    Batching, HumanDuration, Instance, Override, PhaseSpec, Plan, PlanSpec, PlanState, UpgradeMode, Version,
    VersionState,
};
use outrider_rollout::reconcile::transition;
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

use super::{
    actions::update_plan,
    last_good::recall_target,
    new_id, plan_spec,
    withdraw::{Record, Target, Withdrawal, withdraw},
};
use crate::{
    Error,
    catalog::CellKey,
    chunked::{self, Chunked},
    keys::{self, CatalogKey},
    live_plans,
    repo::{NewEvent, decode, encode},
    state::AppState,
};

/// Tries of a mark on a version that changed meanwhile.
const MARK_TRIES: u32 = 5;

/// Marks `sidecar` `version` defective for `reason`, withdraws what would still deliver it,
/// blocks the live plans that target it and drafts a paused recall plan towards the last
/// known good version (none, and `recall_skipped` says why, when there is no such version).
/// Marking a version already defective changes nothing and drafts nothing twice; it only
/// finishes what a manager stopped between the mark and the draft left undone.
pub async fn mark_defective(
    s: &AppState,
    tenant: &str,
    sidecar: &str,
    version: &str,
    reason: &str,
    actor: &str,
) -> Result<Version, Error> {
    let key = keys::version(tenant, sidecar, version);
    let what = format!("version {version} of sidecar {sidecar:?}");
    if let Some((v, _)) = s.repo.get::<Version>(&key).await?
        && v.state == VersionState::Defective
    {
        follow_up(s, tenant, &v, actor).await?;
        return Ok(v);
    }
    let (records, targets) = pending(s, tenant, sidecar).await?;
    let instances = s.fleet.of_tenant(tenant);
    let (recall, withdrawal) = {
        let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
        let versions = catalog.tenant(tenant).map(|tc| tc.versions_of(sidecar)).unwrap_or_default();
        let previous = records
            .iter()
            .filter(|(svc, id, r)| r.version == version && runs(&instances, svc, id, sidecar, version))
            .map(|(_, _, r)| r.previous.as_str());
        let recall = recall_target(version, previous, &versions);
        let defective =
            |v: &str| v == version || versions.iter().any(|x| x.version == v && x.state == VersionState::Defective);
        let to = recall.as_ref().ok().cloned();
        let replacement = |v: &str| match &to {
            Some(to) if defective(v) => to.clone(),
            _ => v.to_owned(),
        };
        (recall, withdraw(sidecar, version, &records, &targets, &instances, &replacement))
    };
    let ops = withdrawal_ops(tenant, sidecar, &withdrawal)?;
    let detail = serde_json::json!({
        "recall_to": recall.as_ref().ok(),
        "recall_skipped": recall.as_ref().err(),
        "withdrawn": {"records": withdrawal.records.len() - withdrawal.pinned, "targets": withdrawal.targets.len(),
                      "pinned": withdrawal.pinned},
    });
    let object = format!("sidecar/{sidecar}/version/{version}");
    // The withdrawal may be longer than one store transaction: in chunks then, the mark last.
    let intent = keys::version_write(tenant, sidecar, version);
    let mut tries = 0;
    let marked = loop {
        let (mut v, rev) = s.repo.get::<Version>(&key).await?.ok_or_else(|| Error::not_found(&what))?;
        if v.state == VersionState::Defective {
            return Err(Error::conflict(format!("{what} was marked defective meanwhile")));
        }
        v.state = VersionState::Defective;
        v.defect_reason = Some(reason.to_owned());
        v.recall_to = recall.as_ref().ok().cloned();
        v.recall_skipped = recall.as_ref().err().cloned();
        let event = NewEvent::new(tenant, "version.defective", actor, &object).reason(reason).detail(detail.clone());
        let record = vec![Op::put(&key, encode(&v)?)];
        let guard = vec![Compare::unchanged(&key, rev)];
        let w = Chunked { intent: intent.clone(), guard, data: ops.clone(), record, events: vec![event] };
        if chunked::commit(&s.repo, &[], w).await?.is_some() {
            break v;
        }
        tries += 1;
        if tries == MARK_TRIES {
            return Err(Error::conflict(format!("{what} is being changed concurrently; retry")));
        }
    };
    follow_up(s, tenant, &marked, actor).await?;
    Ok(marked)
}

/// What follows the mark of `v`, each part idempotent: its live plans blocked, the withdrawal
/// redone (a plan step committed between the mark's read and the blocks may have applied a
/// batch; the blocked plans write nothing more), and the recall plan drafted unless it was.
async fn follow_up(s: &AppState, tenant: &str, v: &Version, actor: &str) -> Result<(), Error> {
    let (sidecar, version) = (v.sidecar.as_str(), v.version.as_str());
    block_plans(s, tenant, sidecar, version, actor).await?;
    rewithdraw(s, tenant, sidecar, version, v.recall_to.as_deref()).await?;
    let Some(to) = &v.recall_to else {
        tracing::warn!(%sidecar, %version, "no known good version to recall to");
        return Ok(());
    };
    let drafted = super::list(s, tenant)
        .await?
        .iter()
        .any(|p| p.sidecar == sidecar && p.target_version == *to && p.spec.from_versions.as_slice() == [version]);
    if !drafted {
        draft_recall(s, tenant, sidecar, version, to, actor).await?;
    }
    Ok(())
}

/// Whether `instance` of `service` reports running `sidecar` at `version`.
fn runs(instances: &[Instance], service: &str, instance: &str, sidecar: &str, version: &str) -> bool {
    instances.iter().any(|i| {
        i.service == service && i.id == instance && i.sidecars.iter().any(|s| s.name == sidecar && s.version == version)
    })
}

/// Every plan record and cell target of `sidecar` in `tenant`, read from the store (not the
/// catalog mirror, which may lag behind a plan step).
async fn pending(s: &AppState, tenant: &str, sidecar: &str) -> Result<(Vec<Record>, Vec<Target>), Error> {
    let store = s.repo.store();
    let mut records = Vec::new();
    for kv in store.range(&keys::overrides(tenant)).await?.kvs {
        if let Some(CatalogKey::Override { service, instance, sidecar: sc, .. }) = keys::parse_catalog(&kv.key)
            && sc == sidecar
        {
            let o: Override = decode(&kv.key, &kv.value)?;
            records.push((service.to_owned(), instance.to_owned(), o));
        }
    }
    let mut targets = Vec::new();
    for kv in store.range(&keys::targets(tenant)).await?.kvs {
        if let Some(CatalogKey::Target { service, cell, .. }) = keys::parse_catalog(&kv.key)
            && cell.sidecar == sidecar
        {
            targets.push((service.to_owned(), CellKey::from(cell), decode(&kv.key, &kv.value)?));
        }
    }
    Ok((records, targets))
}

fn withdrawal_ops(tenant: &str, sidecar: &str, w: &Withdrawal) -> Result<Vec<Op>, Error> {
    let mut ops = Vec::with_capacity(w.records.len() + w.targets.len());
    for (svc, inst, o) in &w.records {
        ops.push(Op::put(keys::override_key(tenant, svc, inst, sidecar), encode(o)?));
    }
    for (svc, cell, t) in &w.targets {
        let key = keys::target_key(tenant, svc, &cell.sidecar, &cell.region, &cell.env, &cell.stage);
        ops.push(Op::put(key, encode(t)?));
    }
    Ok(ops)
}

/// Withdraws again, once the version is marked: idempotent, so it writes only what changed.
async fn rewithdraw(
    s: &AppState,
    tenant: &str,
    sidecar: &str,
    version: &str,
    recall_to: Option<&str>,
) -> Result<(), Error> {
    let (records, targets) = pending(s, tenant, sidecar).await?;
    let instances = s.fleet.of_tenant(tenant);
    let withdrawal = {
        let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
        let tc = catalog.tenant(tenant);
        let defective = |v: &str| {
            v == version || tc.and_then(|tc| tc.version(sidecar, v)).is_some_and(|x| x.state == VersionState::Defective)
        };
        let replacement = |v: &str| match recall_to {
            Some(to) if defective(v) => to.to_owned(),
            _ => v.to_owned(),
        };
        withdraw(sidecar, version, &records, &targets, &instances, &replacement)
    };
    if !withdrawal.is_empty() {
        tracing::info!(%sidecar, %version, records = withdrawal.records.len(), targets = withdrawal.targets.len(),
            "withdrew what a plan step wrote while the version was marked defective");
        // Each write stands alone (rewriting twice changes nothing more): split as the store takes them.
        let ops = withdrawal_ops(tenant, sidecar, &withdrawal)?.into_iter().map(|op| vec![op]).collect();
        for chunk in Op::batches(ops, s.repo.store().max_txn_ops()) {
            s.repo.commit(Vec::new(), chunk, Vec::new()).await?;
        }
    }
    Ok(())
}

/// Blocks every live plan of `tenant` that targets `sidecar` `version` (one rolling back
/// goes on doing so: that takes its instances off the version).
async fn block_plans(s: &AppState, tenant: &str, sidecar: &str, version: &str, actor: &str) -> Result<(), Error> {
    let reason = format!("{sidecar} {version} was marked defective");
    let blocks = |p: &Plan| !p.state.is_terminal() && p.state != PlanState::Blocked && !p.rolling_back;
    for plan in live_plans::of_tenant(s.repo.store().as_ref(), tenant).await? {
        if plan.sidecar != sidecar || plan.target_version != version || !blocks(&plan) {
            continue;
        }
        let r = update_plan(&s.repo, tenant, &plan.id, |p: &mut Plan| {
            if !blocks(p) {
                return Ok((Vec::new(), Vec::new()));
            }
            let e = transition(p, PlanState::Blocked, reason.clone());
            Ok((Vec::new(), vec![NewEvent::of_plan(tenant, actor, &p.id, e)]))
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(plan = %plan.id, error = %e, "could not block a plan targeting a defective version");
        }
    }
    Ok(())
}

/// Drafts the recall plan (paused, for an operator to review and resume): every instance
/// running `sidecar` `version` to `target`.
async fn draft_recall(
    s: &AppState,
    tenant: &str,
    sidecar: &str,
    version: &str,
    target: &str,
    actor: &str,
) -> Result<(), Error> {
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
        target_version: target.to_owned(),
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
