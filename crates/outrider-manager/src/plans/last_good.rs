//! The last known good version of a sidecar, which the recall of a defective version goes to.
//!
//! Known good means instances ran it before they took the defective version (the `previous`
//! of the plan records that moved them — which covers a version bound at service creation),
//! or a plan that targeted it completed (it went through gray and reached its whole scope).
//! A version that was only admitted is never known good. Like any plan target, the chosen
//! version must be `active` and admitted.

use std::collections::BTreeMap;

use outrider_model::{Version, VersionState};

/// The version to recall `defective` to. `previous` holds, per instance running the
/// defective version, what it ran before (the plan records' `previous`): the most common
/// eligible one wins (ties: the newest), else the newest eligible version that completed a
/// plan. Err says why there is none.
pub fn recall_target<'a>(
    defective: &str,
    previous: impl IntoIterator<Item = &'a str>,
    versions: &[&Version],
) -> Result<String, String> {
    let eligible = |v: &str| {
        versions
            .iter()
            .find(|x| x.version == v)
            .filter(|x| x.version != defective && x.state == VersionState::Active && x.admitted)
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in previous {
        *counts.entry(p).or_default() += 1;
    }
    let ran_before = counts
        .iter()
        .filter(|(v, _)| eligible(v).is_some())
        .filter_map(|(v, n)| Some((*n, semver::Version::parse(v).ok()?, *v)))
        .max();
    if let Some((_, _, v)) = ran_before {
        return Ok(v.to_owned());
    }
    let proven = versions
        .iter()
        .filter(|x| x.completed_plan.is_some() && eligible(&x.version).is_some())
        .filter_map(|x| Some((semver::Version::parse(&x.version).ok()?, x.version.as_str())))
        .max();
    match proven {
        Some((_, v)) => Ok(v.to_owned()),
        None => Err(format!(
            "no version to recall {defective} to: no instance on it ran an active admitted version before, \
             and no other active admitted version completed a plan"
        )),
    }
}

#[cfg(test)]
mod tests {
    use outrider_model::{Artifact, NewVersion};
    use time::OffsetDateTime;

    use super::*;

    fn version(v: &str, admitted: bool, completed: bool) -> Version {
        let body = NewVersion {
            version: v.into(),
            artifact: Artifact { url: "file:///bin/true".into(), sha256: "a".repeat(64) },
            command: vec!["${artifact}".into()],
            env: Default::default(),
            notes: String::new(),
        };
        let mut out = Version::new("mesh", body, OffsetDateTime::UNIX_EPOCH);
        out.admitted = admitted;
        out.completed_plan = completed.then(|| "p1".to_owned());
        out
    }

    #[test]
    fn the_version_most_instances_ran_before_wins() {
        let vs = [version("1.0.0", true, false), version("1.1.0", true, true), version("1.3.0", true, false)];
        let all: Vec<&Version> = vs.iter().collect();
        let previous = ["1.0.0", "1.1.0", "1.0.0"];
        assert_eq!(recall_target("1.3.0", previous, &all).unwrap(), "1.0.0");
    }

    #[test]
    fn a_previous_version_that_is_not_eligible_is_passed_over() {
        let mut defective = version("1.0.0", true, true);
        defective.state = VersionState::Defective;
        let vs =
            [defective, version("1.1.0", true, false), version("1.2.0", false, true), version("1.3.0", true, true)];
        let all: Vec<&Version> = vs.iter().collect();
        // 1.0.0 is defective, 1.2.0 not admitted: 1.1.0 is the only eligible previous.
        assert_eq!(recall_target("1.3.0", ["1.0.0", "1.0.0", "1.2.0", "1.1.0"], &all).unwrap(), "1.1.0");
    }

    #[test]
    fn without_a_previous_the_newest_version_that_completed_a_plan_wins_never_an_only_admitted_one() {
        let vs = [
            version("1.0.0", true, true),
            version("1.1.0", true, true),
            version("1.2.0", true, false),
            version("1.3.0", true, true),
        ];
        let all: Vec<&Version> = vs.iter().collect();
        assert_eq!(recall_target("1.3.0", [], &all).unwrap(), "1.1.0");
    }

    #[test]
    fn no_known_good_version_means_no_recall_and_says_why() {
        let vs = [version("1.0.0", false, false), version("1.2.0", true, false), version("1.3.0", true, true)];
        let all: Vec<&Version> = vs.iter().collect();
        let why = recall_target("1.3.0", ["1.0.0"], &all).unwrap_err();
        assert!(why.contains("no version to recall 1.3.0 to"), "{why}");
    }
}
