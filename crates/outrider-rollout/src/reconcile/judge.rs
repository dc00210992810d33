//! The judge of a batch's process signals: until anomaly detection lands, a batch fails when its
//! upgraded instances report sidecar exits, crash loops, a failed sidecar, an upgrade the
//! agent gave up on (the old version kept serving), or a version that never arrives. Pure:
//! it looks only at what it is given.

use outrider_model::{SidecarState, SidecarStatus};

/// One instance of a batch, as observed now.
#[derive(Debug, Clone)]
pub struct InstanceObs<'a> {
    /// Instance id.
    pub id: &'a str,
    /// The plan's sidecar on it, as last reported (None: not reported or instance gone).
    pub status: Option<&'a SidecarStatus>,
    /// The sidecar's exit count when the batch was applied.
    pub exits_before: u32,
}

/// What the judge sees in a batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Instances running the target version and healthy.
    pub reached: Vec<String>,
    /// Instances not (yet) running the target.
    pub missing: Vec<String>,
    /// Harm: the metric and the instances that show it.
    pub harm: Option<(&'static str, Vec<String>)>,
    /// Instances that have run the target version (healthy or not).
    pub ran_target: u64,
}

/// Observes a batch's instances against `target`.
pub fn observe(instances: &[InstanceObs<'_>], target: &str) -> Observation {
    let mut o = Observation::default();
    let mut crash = Vec::new();
    let mut failed = Vec::new();
    let mut exited = Vec::new();
    let mut gave_up = Vec::new();
    for i in instances {
        let Some(s) = i.status else {
            o.missing.push(i.id.to_owned());
            continue;
        };
        let on_target = s.version == target;
        if on_target {
            o.ran_target += 1;
        }
        match s.state {
            _ if !on_target && s.failed_upgrade.as_deref() == Some(target) => gave_up.push(i.id.to_owned()),
            SidecarState::CrashLoop if on_target => crash.push(i.id.to_owned()),
            SidecarState::Failed if on_target => failed.push(i.id.to_owned()),
            _ if on_target && s.exits > i.exits_before => exited.push(i.id.to_owned()),
            SidecarState::Running if on_target => o.reached.push(i.id.to_owned()),
            _ => o.missing.push(i.id.to_owned()),
        }
    }
    o.harm =
        [("crash_loop", crash), ("sidecar_failed", failed), ("sidecar_exits", exited), ("upgrade_failed", gave_up)]
            .into_iter()
            .find(|(_, ids)| !ids.is_empty());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(version: &str, state: SidecarState, exits: u32) -> SidecarStatus {
        SidecarStatus { name: "mesh".into(), version: version.into(), state, exits, ..Default::default() }
    }

    #[test]
    fn healthy_target_is_reached_and_old_version_is_missing() {
        let (a, b) = (status("1.1.0", SidecarState::Running, 0), status("1.0.0", SidecarState::Running, 0));
        let obs = observe(
            &[
                InstanceObs { id: "a", status: Some(&a), exits_before: 0 },
                InstanceObs { id: "b", status: Some(&b), exits_before: 0 },
                InstanceObs { id: "c", status: None, exits_before: 0 },
            ],
            "1.1.0",
        );
        assert_eq!(obs.reached, ["a"]);
        assert_eq!(obs.missing, ["b", "c"]);
        assert_eq!((obs.harm, obs.ran_target), (None, 1));
    }

    #[test]
    fn crash_loops_and_new_exits_on_the_target_are_harm() {
        let crash = status("1.1.0", SidecarState::CrashLoop, 4);
        let exited = status("1.1.0", SidecarState::Running, 3);
        let old_exits = status("1.1.0", SidecarState::Running, 2);
        let obs = observe(&[InstanceObs { id: "a", status: Some(&crash), exits_before: 0 }], "1.1.0");
        assert_eq!(obs.harm, Some(("crash_loop", vec!["a".to_owned()])));
        let obs = observe(
            &[
                InstanceObs { id: "b", status: Some(&exited), exits_before: 2 },
                InstanceObs { id: "c", status: Some(&old_exits), exits_before: 2 },
            ],
            "1.1.0",
        );
        assert_eq!(obs.harm, Some(("sidecar_exits", vec!["b".to_owned()])), "exits before the batch don't count");
        assert_eq!(obs.reached, ["c"]);
    }

    #[test]
    fn a_crash_of_the_old_version_is_not_the_targets_fault() {
        let old = status("1.0.0", SidecarState::CrashLoop, 9);
        let obs = observe(&[InstanceObs { id: "a", status: Some(&old), exits_before: 0 }], "1.1.0");
        assert_eq!((obs.harm, obs.missing), (None, vec!["a".to_owned()]));
    }

    #[test]
    fn an_upgrade_the_agent_gave_up_on_is_harm_only_for_its_target() {
        let gave_up =
            SidecarStatus { failed_upgrade: Some("1.1.0".into()), ..status("1.0.0", SidecarState::Running, 0) };
        let obs = observe(&[InstanceObs { id: "a", status: Some(&gave_up), exits_before: 0 }], "1.1.0");
        assert_eq!(obs.harm, Some(("upgrade_failed", vec!["a".to_owned()])));
        assert_eq!(obs.ran_target, 0);
        // Another plan's target, or a rollback to 1.0.0, is not concerned.
        let obs = observe(&[InstanceObs { id: "a", status: Some(&gave_up), exits_before: 0 }], "1.2.0");
        assert_eq!((obs.harm, obs.missing), (None, vec!["a".to_owned()]));
    }
}
