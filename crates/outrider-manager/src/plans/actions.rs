//! Operator actions on a plan — pause, resume, abort, approve, rollback — as a state machine,
//! each committed with compare-and-swap together with its event (and, for a rollback, the
//! overrides that take the changed instances back: in chunks when they are more than one
//! store transaction takes, the plan last). No action interleaves with a step of the
//! executor written in chunks: it waits for it.

use std::{fmt, str::FromStr, time::Duration};

use outrider_model::{BatchState, CellTarget, Override, Plan, PlanState, UpgradeMode, VersionState};
use outrider_rollout::reconcile::{approve, transition};
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

use crate::{
    Error,
    catalog::TenantCatalog,
    chunked::{self, Chunked},
    keys, live_plans,
    repo::{NewEvent, Repo, encode},
    state::AppState,
};

/// Tries of an action on a plan that changed meanwhile.
const CHANGED_TRIES: u32 = 5;

/// Tries of an action on a plan while a long write of it is under way, and the pause between
/// two (long writes take a few transactions).
const UNDER_WAY_TRIES: u32 = 60;
const UNDER_WAY_PAUSE: Duration = Duration::from_millis(50);

/// An operator action (`POST /plans/{id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop starting batches.
    Pause,
    /// Start batches again.
    Resume,
    /// End the plan; instances keep what they run.
    Abort,
    /// A blocked plan's incident was a false alarm: continue.
    Approve,
    /// Take every instance the plan changed back to its previous version.
    Rollback,
}

impl FromStr for Action {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "abort" => Self::Abort,
            "approve" => Self::Approve,
            "rollback" => Self::Rollback,
            _ => {
                return Err(Error::not_found(format!("action {s:?} (use pause, resume, abort, rollback or approve)")));
            }
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Approve => "approve",
            Self::Rollback => "rollback",
        })
    }
}

/// Carries out `action` on plan `id` for `actor`; `reason` may be empty.
pub async fn act(
    s: &AppState,
    tenant: &str,
    id: &str,
    action: Action,
    reason: &str,
    actor: &str,
) -> Result<Plan, Error> {
    let reason = if reason.is_empty() { format!("{action} by {actor}") } else { reason.to_owned() };
    let plan = update_plan(&s.repo, tenant, id, |plan: &mut Plan| {
        let mut ops = Vec::new();
        let to = next_state(plan, action)?;
        if matches!(action, Action::Approve | Action::Resume) {
            refuse_defective_target(s, tenant, plan, action)?;
        }
        match action {
            Action::Abort => skip_pending(plan),
            // False alarm: the failed batch counts as passed; its verdict stays on record.
            Action::Approve => approve(plan, OffsetDateTime::now_utc()),
            Action::Rollback => {
                let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
                let tc = catalog.tenant(tenant).ok_or_else(|| Error::not_found(format!("tenant {tenant:?}")))?;
                ops = rollback(tc, tenant, plan)?;
            }
            Action::Pause | Action::Resume => {}
        }
        let mut e = transition(plan, to, reason.clone());
        e.kind = "plan.action";
        e.detail = serde_json::json!({"action": action.to_string(), "to": to, "overrides_written": ops.len()});
        plan.updated_at = OffsetDateTime::now_utc();
        plan.recount();
        Ok((ops, vec![NewEvent::of_plan(tenant, actor, id, e)]))
    })
    .await?;
    s.wake.notify_one();
    Ok(plan)
}

/// Read-modify-write of plan `id` of `tenant` with compare-and-swap: `f` changes the plan and
/// returns the other writes and the events to commit with it — in chunks when they are longer
/// than one store transaction, the plan last (`crate::chunked`). Retried a few times under
/// contention, and for a while when a long write of the plan (an executor step) is under way.
pub(super) async fn update_plan<F>(repo: &Repo, tenant: &str, id: &str, mut f: F) -> Result<Plan, Error>
where
    F: FnMut(&mut Plan) -> Result<(Vec<Op>, Vec<NewEvent>), Error>,
{
    let key = keys::plan(tenant, id);
    let intent = keys::plan_write(tenant, id);
    let (mut changed, mut waited) = (0, 0);
    loop {
        let (mut plan, rev) = repo.get::<Plan>(&key).await?.ok_or_else(|| Error::not_found(format!("plan {id:?}")))?;
        let (data, events) = f(&mut plan)?;
        let record = vec![Op::put(&key, encode(&plan)?), live_plans::op(tenant, &plan)];
        let guard = vec![Compare::unchanged(&key, rev)];
        let w = Chunked { intent: intent.clone(), guard, data, record, events };
        if chunked::commit(repo, &[], w).await?.is_some() {
            return Ok(plan);
        }
        if chunked::under_way(repo, &intent).await? {
            waited += 1;
            if waited == UNDER_WAY_TRIES {
                return Err(Error::conflict(format!(
                    "plan {id}: a long write of it (a step or a rollback) is under way; retry"
                )));
            }
            tokio::time::sleep(UNDER_WAY_PAUSE).await;
        } else {
            changed += 1;
            if changed == CHANGED_TRIES {
                return Err(Error::conflict(format!("plan {id:?} is being changed concurrently; retry")));
            }
        }
    }
}

/// The state `action` moves `plan` to, or why it cannot. A rollback keeps the plan `running`
/// until every instance it changed is back (then the executor makes it `rolled_back`).
fn next_state(plan: &Plan, action: Action) -> Result<PlanState, Error> {
    if plan.rolling_back {
        return Err(Error::precondition(format!("plan {} is rolling back: cannot {action} it", plan.id)));
    }
    if let Some(by) = &plan.superseded_by {
        return Err(Error::precondition(format!(
            "plan {} was superseded by plan {by}, which owns its instances now: act on {by}",
            plan.id
        )));
    }
    let to = match (action, plan.state) {
        (Action::Pause, PlanState::Pending | PlanState::Running | PlanState::Waiting) => PlanState::Paused,
        (Action::Resume, PlanState::Paused) => PlanState::Running,
        (Action::Abort, st) if !st.is_terminal() => PlanState::Aborted,
        (Action::Approve, PlanState::Blocked) => PlanState::Running,
        (Action::Rollback, st) if st != PlanState::RolledBack && st != PlanState::Failed => PlanState::Running,
        (_, st) => {
            return Err(Error::precondition(format!("plan {} is {st}: cannot {action} it", plan.id)));
        }
    };
    Ok(to)
}

/// A plan whose target was marked defective may not go on (it would take newcomers of its
/// cells to the target again): roll it back or abort it.
fn refuse_defective_target(s: &AppState, tenant: &str, plan: &Plan, action: Action) -> Result<(), Error> {
    let catalog = s.catalog.read().unwrap_or_else(|p| p.into_inner());
    let v = catalog.tenant(tenant).and_then(|tc| tc.version(&plan.sidecar, &plan.target_version));
    if v.is_some_and(|v| v.state == VersionState::Defective) {
        return Err(Error::precondition(format!(
            "plan {}: {} {} is defective: cannot {action} it (roll it back or abort it)",
            plan.id, plan.sidecar, plan.target_version
        )));
    }
    Ok(())
}

/// Marks the plan's batches that have not started `skipped`.
pub(super) fn skip_pending(plan: &mut Plan) {
    for b in plan.phases.iter_mut().flat_map(|p| &mut p.batches).filter(|b| b.state == BatchState::Pending) {
        b.state = BatchState::Skipped;
    }
}

/// Takes every instance the plan changed back to the version it had before, and every cell
/// it applied back to the binding's version (so instances that join later start there too):
/// all at once (hot where the sidecar supports it), so the rollback is as fast as the agents.
/// The plan follows it until every changed instance is back.
pub(crate) fn rollback(tc: &TenantCatalog, tenant: &str, plan: &mut Plan) -> Result<Vec<Op>, Error> {
    let mode = match tc.sidecar(&plan.sidecar) {
        Some(sc) if sc.upgrade_modes.contains(&UpgradeMode::Hot) => UpgradeMode::Hot,
        _ => UpgradeMode::Restart,
    };
    let mut ops = Vec::new();
    let mut changed = tc.overrides_of_plan(&plan.id);
    // Reverse order of application: last batch first.
    changed.sort_by_key(|c| std::cmp::Reverse((c.2.phase, c.2.batch)));
    for (svc, inst, o) in changed {
        if o.version == o.previous {
            continue;
        }
        let back = Override { version: o.previous.clone(), mode, ..o.clone() };
        ops.push(Op::put(keys::override_key(tenant, svc, inst, &plan.sidecar), encode(&back)?));
    }
    for (svc, cell, t) in tc.targets_of_plan(&plan.id) {
        let back = CellTarget { version: t.base_version.clone(), mode, ..t.clone() };
        let key = keys::target_key(tenant, svc, &cell.sidecar, &cell.region, &cell.env, &cell.stage);
        ops.push(Op::put(key, encode(&back)?));
    }
    plan.rolling_back = true;
    for b in plan.phases.iter_mut().flat_map(|p| &mut p.batches) {
        if b.state == BatchState::Pending {
            b.state = BatchState::Skipped;
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use outrider_model::{Plan, PlanSpec, PlanState};
    use outrider_store::{Compare, Op, Store, Txn};
    use time::OffsetDateTime;

    use super::{Action, next_state, update_plan};
    use crate::{
        Error,
        chunked::{self, Chunked},
        keys,
        repo::{Repo, encode},
        test_store::TestStore,
    };

    /// A store of 8 operations per transaction holding plan `p1`, and a long write of it (a
    /// step that records 40 instances and sets the plan's reason) stopped once its intent was
    /// stored.
    async fn step_under_way() -> (Arc<TestStore>, Repo) {
        let store = Arc::new(TestStore::new().with_max_txn_ops(8));
        let repo = Repo::new(store.clone());
        let spec: PlanSpec = serde_json::from_str(r#"{"sidecar":"mesh","target_version":"1.1.0"}"#).unwrap();
        let mut plan = Plan::new("p1".into(), spec, Vec::new(), Vec::new(), OffsetDateTime::UNIX_EPOCH);
        plan.state = PlanState::Running;
        let key = keys::plan("t", "p1");
        let rev = store.txn(Txn::ops(vec![Op::put(&key, encode(&plan).unwrap())])).await.unwrap().revision;
        plan.reason = "the step".into();
        let data = (0..40).map(|i| Op::put(keys::override_key("t", "svc", &format!("i{i}"), "mesh"), "{}")).collect();
        let step = Chunked {
            intent: keys::plan_write("t", "p1"),
            guard: vec![Compare::unchanged(&key, rev)],
            data,
            record: vec![Op::put(&key, encode(&plan).unwrap())],
            events: Vec::new(),
        };
        store.fail_after(3);
        assert!(chunked::commit(&repo, &[], step).await.is_err());
        assert!(chunked::under_way(&repo, &keys::plan_write("t", "p1")).await.unwrap());
        (store, repo)
    }

    fn pause(p: &mut Plan) -> Result<(Vec<Op>, Vec<crate::repo::NewEvent>), Error> {
        p.state = PlanState::Paused;
        Ok((Vec::new(), Vec::new()))
    }

    #[tokio::test]
    async fn an_action_waits_for_a_long_step_under_way_and_applies_on_top_of_it() {
        let (store, repo) = step_under_way().await;
        // A restarted executor finishes the step a moment later.
        let finisher = {
            let repo = Repo::new(store.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                chunked::finish_found(&repo, &[]).await.unwrap();
            })
        };
        let paused = update_plan(&repo, "t", "p1", pause).await.unwrap();
        finisher.await.unwrap();
        assert_eq!(
            (paused.state, paused.reason.as_str()),
            (PlanState::Paused, "the step"),
            "after the step, not over it"
        );
    }

    #[tokio::test]
    async fn an_action_on_a_plan_whose_long_step_never_finishes_is_a_conflict_that_changes_nothing() {
        let (store, repo) = step_under_way().await;
        let e = update_plan(&repo, "t", "p1", pause).await.unwrap_err();
        assert_eq!(e.code(), "conflict", "{e}");
        let stored: Plan =
            serde_json::from_slice(&store.get(&keys::plan("t", "p1")).await.unwrap().unwrap().value).unwrap();
        assert_eq!(stored.state, PlanState::Running);
    }

    #[test]
    fn a_superseded_plan_cannot_be_rolled_back_over_the_plan_that_took_it_over() {
        let spec: PlanSpec = serde_json::from_str(r#"{"sidecar":"mesh","target_version":"1.2.0"}"#).unwrap();
        let mut plan = Plan::new("p0".into(), spec, Vec::new(), Vec::new(), OffsetDateTime::UNIX_EPOCH);
        plan.state = PlanState::Aborted;
        assert_eq!(next_state(&plan, Action::Rollback).unwrap(), PlanState::Running, "an aborted plan can roll back");
        plan.superseded_by = Some("p1".into());
        let e = next_state(&plan, Action::Rollback).unwrap_err();
        assert!(e.to_string().contains("act on p1"), "{e}");
    }
}
