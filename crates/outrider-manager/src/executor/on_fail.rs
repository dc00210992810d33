//! The plan policy `on_fail: rollback` (unattended): when a step blocks the plan on a failed
//! verdict, the executor rolls it back in the same commit, as an operator's `rollback` would.
//! A block for want of evidence, a gate (admission lost, a defective target) or a defective
//! mark is no failed verdict: the plan waits for an operator as with `on_fail: block`.

use outrider_model::{Incident, OnFail, Plan, PlanState};
use outrider_rollout::reconcile::{Step, Write, transition};
use outrider_store::Op;

use crate::{Error, catalog::TenantCatalog, plans};

/// The incident for which the plan after a step (`after`) rolls back by itself: the step
/// blocked it (it was not blocked before) on a failed verdict (it opened an incident) and
/// its policy is `on_fail: rollback`.
pub(super) fn rolls_back_by_itself<'p>(before: &Plan, after: &'p Plan) -> Option<&'p Incident> {
    let blocked_now = before.state != PlanState::Blocked && after.state == PlanState::Blocked;
    let failed = after.incidents.len() > before.incidents.len();
    if after.spec.on_fail == OnFail::Rollback && blocked_now && failed { after.incidents.last() } else { None }
}

/// Turns `step`, which blocked its plan on `incident`, into the start of its rollback: the
/// overrides and targets that take the changed instances back (to commit with the step), the
/// plan `running` with `rolling_back`, and a `plan.action` event that names the incident.
/// Records of instances the step took in are dropped: they follow their cell's target back.
pub(super) fn roll_back(
    tc: &TenantCatalog,
    tenant: &str,
    step: &mut Step,
    incident: &Incident,
) -> Result<Vec<Op>, Error> {
    let summary = format!("{} ({})", incident.summary, incident.metric);
    step.writes.retain(|w| !matches!(w, Write::Override { .. }));
    let ops = plans::rollback(tc, tenant, &mut step.plan)?;
    let reason = format!("rolling back by itself (on_fail: rollback) after the incident: {summary}");
    let mut e = transition(&mut step.plan, PlanState::Running, reason);
    e.kind = "plan.action";
    e.detail = serde_json::json!({"action": "rollback", "to": PlanState::Running, "on_fail": OnFail::Rollback,
        "incident": incident.metric, "overrides_written": ops.len()});
    step.events.push(e);
    step.plan.recount();
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use outrider_model::{Incident, OnFail, Plan, PlanSpec, PlanState};
    use time::OffsetDateTime;

    use super::rolls_back_by_itself;

    fn plan(on_fail: &str) -> Plan {
        let body = serde_json::json!({"sidecar": "mesh", "target_version": "1.2.0", "on_fail": on_fail});
        let spec: PlanSpec = serde_json::from_value(body).unwrap();
        let mut p = Plan::new("p1".into(), spec, Vec::new(), Vec::new(), OffsetDateTime::UNIX_EPOCH);
        p.state = PlanState::Running;
        p
    }

    fn blocked(before: &Plan, incident: bool) -> Plan {
        let mut after = before.clone();
        after.state = PlanState::Blocked;
        if incident {
            after
                .incidents
                .push(Incident { metric: "crash_loop".into(), ..Incident::opened(OffsetDateTime::UNIX_EPOCH) });
        }
        after
    }

    #[test]
    fn only_a_failed_verdict_of_a_plan_with_the_policy_rolls_back_by_itself() {
        let on = plan("rollback");
        assert_eq!(on.spec.on_fail, OnFail::Rollback);
        let failed = blocked(&on, true);
        assert_eq!(rolls_back_by_itself(&on, &failed).map(|i| i.metric.as_str()), Some("crash_loop"));
        assert!(rolls_back_by_itself(&on, &blocked(&on, false)).is_none(), "inconclusive or a gate: wait");
        assert!(rolls_back_by_itself(&failed, &failed).is_none(), "already blocked (a defective mark): wait");
        let running = Plan { incidents: failed.incidents.clone(), ..on.clone() };
        assert!(rolls_back_by_itself(&on, &running).is_none(), "not blocked");
        let off = plan("block");
        assert!(rolls_back_by_itself(&off, &blocked(&off, true)).is_none(), "the default blocks and waits");
        let absent: PlanSpec = serde_json::from_str(r#"{"sidecar":"mesh","target_version":"1.2.0"}"#).unwrap();
        assert_eq!(absent.on_fail, OnFail::Block, "off by default");
    }
}
