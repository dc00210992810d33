//! Fix-forward: a new plan that names a `blocked` plan in `supersedes` takes it over. The new
//! plan is created and the old one ends `aborted` in one commit, compared on the old plan's
//! revision, so that of two fix-forwards of the same plan only one wins. The old plan's cell
//! targets and records stay (its instances keep what they run) until the new plan's batches
//! overwrite them; the reconciler carries over what those instances ran before the old plan.

use outrider_model::{Plan, PlanSpec, PlanState, VersionMatch};
use outrider_rollout::reconcile::{PlanEvent, transition};

use super::actions::skip_pending;
use crate::{Error, keys, state::AppState};

/// The plan `spec` supersedes, with its store revision, once checked (see [`check`]); `None`
/// when `spec` supersedes nothing.
pub(super) async fn superseded(s: &AppState, tenant: &str, spec: &PlanSpec) -> Result<Option<(Plan, u64)>, Error> {
    let Some(id) = &spec.supersedes else { return Ok(None) };
    let (old, rev) = s
        .repo
        .get::<Plan>(&keys::plan(tenant, id))
        .await?
        .ok_or_else(|| Error::not_found(format!("supersedes: plan {id:?}")))?;
    check(&old, spec)?;
    Ok(Some((old, rev)))
}

/// Whether `spec` may take over `old`: `old` is blocked, of the same sidecar, `spec` moves to
/// another version, and its `from_versions` (if any) take in the instances on `old`'s target.
fn check(old: &Plan, spec: &PlanSpec) -> Result<(), Error> {
    if old.state != PlanState::Blocked || old.rolling_back {
        return Err(Error::precondition(format!(
            "supersedes: plan {} is {}{}; only a blocked plan can be superseded",
            old.id,
            old.state,
            if old.rolling_back { " (rolling back)" } else { "" }
        )));
    }
    if old.sidecar != spec.sidecar {
        return Err(Error::invalid(format!(
            "supersedes: plan {} upgrades sidecar {:?}, not {:?}",
            old.id, old.sidecar, spec.sidecar
        )));
    }
    if old.target_version == spec.target_version {
        return Err(Error::invalid(format!(
            "supersedes: plan {} already targets {}; a fix-forward moves to another version",
            old.id, old.target_version
        )));
    }
    let from = spec.from_matches()?;
    if !from.is_empty() && !from.iter().any(|m: &VersionMatch| m.matches(&old.target_version)) {
        return Err(Error::invalid(format!(
            "from_versions: must take in {} (the target of the superseded plan {}), or be empty",
            old.target_version, old.id
        )));
    }
    Ok(())
}

/// Ends `old` as taken over by plan `by`: `aborted` with the reason, its pending batches
/// skipped, `superseded_by` set. The event to record with it.
pub(super) fn take_over(old: &mut Plan, by: &str, now: time::OffsetDateTime) -> PlanEvent {
    skip_pending(old);
    old.superseded_by = Some(by.to_owned());
    old.updated_at = now;
    let mut e = transition(old, PlanState::Aborted, format!("superseded by plan {by}"));
    e.detail["superseded_by"] = serde_json::json!(by);
    old.recount();
    e
}

#[cfg(test)]
mod tests {
    use outrider_model::{Plan, PlanSpec, PlanState};
    use time::OffsetDateTime;

    use super::{check, take_over};

    fn spec(body: serde_json::Value) -> PlanSpec {
        serde_json::from_value(body).unwrap()
    }

    fn blocked(target: &str) -> Plan {
        let mut old = Plan::new(
            "p0".into(),
            spec(serde_json::json!({"sidecar": "mesh", "target_version": target})),
            Vec::new(),
            Vec::new(),
            OffsetDateTime::UNIX_EPOCH,
        );
        old.state = PlanState::Blocked;
        old
    }

    #[test]
    fn only_a_blocked_plan_of_the_same_sidecar_to_another_version_can_be_superseded() {
        let fix = spec(serde_json::json!({"sidecar": "mesh", "target_version": "1.3.0", "supersedes": "p0"}));
        check(&blocked("1.2.0"), &fix).unwrap();
        let code = |old: &Plan, s: &PlanSpec| check(old, s).unwrap_err().code();
        for state in [PlanState::Running, PlanState::Paused, PlanState::Aborted, PlanState::Completed] {
            let old = Plan { state, ..blocked("1.2.0") };
            assert_eq!(code(&old, &fix), "failed_precondition", "{state}");
        }
        let rolling = Plan { rolling_back: true, ..blocked("1.2.0") };
        assert_eq!(code(&rolling, &fix), "failed_precondition");
        assert_eq!(code(&blocked("1.3.0"), &fix), "invalid_argument", "same target");
        let other = Plan { sidecar: "log".into(), ..blocked("1.2.0") };
        assert_eq!(code(&other, &fix), "invalid_argument", "other sidecar");
        let narrow =
            spec(serde_json::json!({"sidecar": "mesh", "target_version": "1.3.0", "from_versions": ["1.0.0"]}));
        assert_eq!(code(&blocked("1.2.0"), &narrow), "invalid_argument", "leaves out the bad version");
        let wide = spec(serde_json::json!({"sidecar": "mesh", "target_version": "1.3.0", "from_versions": ["<1.3.0"]}));
        check(&blocked("1.2.0"), &wide).unwrap();
    }

    #[test]
    fn the_superseded_plan_ends_aborted_with_the_reason() {
        let mut old = blocked("1.2.0");
        let e = take_over(&mut old, "p1", OffsetDateTime::UNIX_EPOCH);
        assert_eq!((old.state, old.reason.as_str()), (PlanState::Aborted, "superseded by plan p1"));
        assert_eq!(old.superseded_by.as_deref(), Some("p1"));
        assert_eq!(
            (e.reason.as_str(), &e.detail["superseded_by"]),
            ("superseded by plan p1", &serde_json::json!("p1"))
        );
    }
}
