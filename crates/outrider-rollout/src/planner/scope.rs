//! Which instances a plan covers.

use outrider_model::{PlanSpec, VersionMatch};

use super::PlanError;
use crate::fleet_view::{FleetView, GroupKey};

/// The plan's scope, as lookup tables over the view's services and symbols.
///
/// An instance is in scope when its service is selected (named in `selector.services` if that
/// is set, and carrying every trait of `selector.traits`) and not `protected`; its region and
/// env are selected (when the selector lists them); and it runs the sidecar at a version that
/// is not the target and matches `from_versions` (any entry; none given: any version).
#[derive(Debug)]
pub(super) struct Scope {
    services: Vec<bool>,
    regions: Vec<bool>,
    envs: Vec<bool>,
    versions: Vec<bool>,
}

impl Scope {
    /// The scope of `spec` over `fleet`. Fails on unknown service names and bad versions.
    pub(super) fn new(spec: &PlanSpec, fleet: &FleetView) -> Result<Self, PlanError> {
        let selector = &spec.selector;
        let mut named = vec![selector.services.is_empty(); fleet.services().len()];
        for name in &selector.services {
            let id = fleet.service_id(name).ok_or_else(|| PlanError::unknown("selector.services", name))?;
            named[id as usize] = true;
        }
        let services = fleet
            .services()
            .iter()
            .zip(named)
            .map(|(s, named)| named && !s.protected && selector.traits.iter().all(|(k, v)| s.traits.get(k) == Some(v)))
            .collect();
        let from = spec.from_matches()?;
        let target = semver::Version::parse(&spec.target_version).ok();
        let listed = |list: &[String], s: &str| list.is_empty() || list.iter().any(|x| x == s);
        let (mut regions, mut envs, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        for (_, s) in fleet.symbols() {
            regions.push(listed(&selector.regions, s));
            envs.push(listed(&selector.envs, s));
            versions.push(version_in_scope(s, &spec.target_version, target.as_ref(), &from));
        }
        Ok(Self { services, regions, envs, versions })
    }

    /// Whether the instances counted under `key` are in scope.
    pub(super) fn admits(&self, key: &GroupKey) -> bool {
        self.services[key.service as usize]
            && self.regions[key.region.index()]
            && self.envs[key.env.index()]
            && key.version.is_some_and(|v| self.versions[v.index()])
    }
}

/// Whether an instance running `version` is to be moved: not already on the target (equal
/// as strings or as semver), and matching one of `from` (none: any version).
fn version_in_scope(
    version: &str,
    target: &str,
    target_semver: Option<&semver::Version>,
    from: &[VersionMatch],
) -> bool {
    let on_target =
        version == target || target_semver.is_some_and(|t| semver::Version::parse(version).is_ok_and(|v| v == *t));
    !on_target && (from.is_empty() || from.iter().any(|m| m.matches(version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_on_target_or_outside_from_are_out() {
        let from = [VersionMatch::parse("<1.2.0").unwrap()];
        let t = semver::Version::parse("1.2.0").unwrap();
        assert!(version_in_scope("1.1.0", "1.2.0", Some(&t), &from));
        assert!(!version_in_scope("1.2.0", "1.2.0", Some(&t), &from));
        assert!(!version_in_scope("1.3.0", "1.2.0", Some(&t), &from));
        assert!(!version_in_scope("banana", "1.2.0", Some(&t), &from), "unparsable never matches a range");
        assert!(version_in_scope("banana", "1.2.0", Some(&t), &[]), "no from_versions: anything but the target");
        assert!(version_in_scope("1.3.0", "1.2.0", Some(&t), &[]));
    }
}
