//! Binding admission: which checks a change of a binding breaks at a given time (a version
//! not admitted, a freeze, the service's protected period, a protected service). Pure: the
//! handler reads the inputs, and refuses the change unless it is forced with a reason.

use outrider_model::{Binding, Freeze, Service, Version};
use serde::Serialize;
use time::OffsetDateTime;

/// An admission check a binding change can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The change brings a version that has not passed its tests.
    NotAdmitted,
    /// A freeze covering the service is in force.
    Freeze,
    /// One of the service's protected periods is in force.
    ProtectedPeriod,
    /// The service is protected (never changed by plans).
    ProtectedService,
}

impl Check {
    /// The check's stable name (`not_admitted`, `freeze`…).
    pub fn name(self) -> &'static str {
        match self {
            Self::NotAdmitted => "not_admitted",
            Self::Freeze => "freeze",
            Self::ProtectedPeriod => "protected_period",
            Self::ProtectedService => "protected_service",
        }
    }
}

/// A broken check, with why in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which check.
    pub check: Check,
    /// Why it refuses.
    pub reason: String,
}

/// The checks that replacing `old` by `new` (a different binding) on `service` breaks at
/// `now`. `version` is the version `new` names; `freezes` are the tenant's. A change of any
/// kind (version, mode, enabled) is a change of the service; only a change that makes the
/// service run a version it did not run before needs that version admitted.
pub fn violations(
    old: Option<&Binding>,
    new: &Binding,
    version: &Version,
    service: &Service,
    freezes: &[Freeze],
    now: OffsetDateTime,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let brings_version = new.enabled && old.is_none_or(|o| !o.enabled || o.version != new.version);
    if brings_version && !version.admitted {
        out.push(Violation {
            check: Check::NotAdmitted,
            reason: format!(
                "version {} of sidecar {:?} is not admitted: admit it after its tests (POST …/versions/{}/admit)",
                version.version, version.sidecar, version.version
            ),
        });
    }
    for f in freezes.iter().filter(|f| f.covers(now, &service.name)) {
        out.push(Violation { check: Check::Freeze, reason: format!("freeze {} until {}: {}", f.id, f.to, f.reason) });
    }
    for p in service.protected_periods.iter().filter(|p| p.from <= now && now < p.to) {
        out.push(Violation {
            check: Check::ProtectedPeriod,
            reason: format!("service {} is protected until {}: {}", service.name, p.to, p.reason),
        });
    }
    if service.protected {
        out.push(Violation {
            check: Check::ProtectedService,
            reason: format!("service {} is protected", service.name),
        });
    }
    out
}

/// One line naming every violation (`not_admitted: …; freeze: …`).
pub fn describe(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.check.name(), v.reason)).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use outrider_model::{Artifact, NewVersion, ProtectedPeriod, UpgradeMode};
    use time::{Duration, macros::datetime};

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-03-06 16:00 UTC);

    fn version(admitted: bool) -> Version {
        let body = NewVersion {
            version: "1.1.0".into(),
            artifact: Artifact { url: "file:///bin/true".into(), sha256: "a".repeat(64) },
            command: vec!["${artifact}".into()],
            env: Default::default(),
            notes: String::new(),
        };
        Version { admitted, ..Version::new("mesh", body, NOW) }
    }

    fn service() -> Service {
        serde_json::from_str(r#"{"name":"checkout"}"#).unwrap()
    }

    fn binding(version: &str, mode: UpgradeMode) -> Binding {
        Binding { sidecar: "mesh".into(), enabled: true, version: version.into(), mode }
    }

    fn freeze(from: OffsetDateTime, to: OffsetDateTime, services: &[&str]) -> Freeze {
        Freeze {
            id: "f1".into(),
            from,
            to,
            reason: "release week".into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn checks(v: &[Violation]) -> Vec<Check> {
        v.iter().map(|v| v.check).collect()
    }

    #[test]
    fn an_admitted_version_outside_freezes_and_periods_passes() {
        let new = binding("1.1.0", UpgradeMode::Restart);
        assert!(violations(None, &new, &version(true), &service(), &[], NOW).is_empty());
    }

    #[test]
    fn a_version_not_admitted_is_refused_when_the_change_brings_it() {
        let (v, svc) = (version(false), service());
        let new = binding("1.1.0", UpgradeMode::Restart);
        let got = violations(None, &new, &v, &svc, &[], NOW);
        assert_eq!(checks(&got), [Check::NotAdmitted]);
        assert!(got[0].reason.contains("1.1.0") && got[0].reason.contains("not admitted"), "{got:?}");
        let older = binding("1.0.0", UpgradeMode::Restart);
        assert_eq!(checks(&violations(Some(&older), &new, &v, &svc, &[], NOW)), [Check::NotAdmitted]);
        let disabled = Binding { enabled: false, ..new.clone() };
        assert_eq!(checks(&violations(Some(&disabled), &new, &v, &svc, &[], NOW)), [Check::NotAdmitted]);
        // Only the mode changes, or the sidecar is disabled: no new version runs anywhere.
        let hot = binding("1.1.0", UpgradeMode::Hot);
        assert!(violations(Some(&new), &hot, &v, &svc, &[], NOW).is_empty());
        assert!(violations(Some(&new), &disabled, &v, &svc, &[], NOW).is_empty());
    }

    #[test]
    fn a_freeze_in_force_covering_the_service_refuses_any_change() {
        let (v, svc) = (version(true), service());
        let (old, new) = (binding("1.1.0", UpgradeMode::Restart), binding("1.1.0", UpgradeMode::Hot));
        let hour = Duration::hours(1);
        let now_frozen = freeze(NOW - hour, NOW + hour, &[]);
        let got = violations(Some(&old), &new, &v, &svc, std::slice::from_ref(&now_frozen), NOW);
        assert_eq!(checks(&got), [Check::Freeze]);
        assert!(got[0].reason.contains("f1") && got[0].reason.contains("release week"), "{got:?}");
        let this_service = freeze(NOW - hour, NOW + hour, &["checkout"]);
        assert_eq!(checks(&violations(Some(&old), &new, &v, &svc, &[this_service], NOW)), [Check::Freeze]);
        let other_service = freeze(NOW - hour, NOW + hour, &["search"]);
        let ended = freeze(NOW - hour, NOW, &[]);
        let later = freeze(NOW + hour, NOW + hour * 2, &[]);
        assert!(violations(Some(&old), &new, &v, &svc, &[other_service, ended, later], NOW).is_empty());
    }

    #[test]
    fn a_protected_period_in_force_refuses() {
        let v = version(true);
        let mut svc = service();
        let hour = Duration::hours(1);
        svc.protected_periods = vec![
            ProtectedPeriod { from: NOW + hour, to: NOW + hour * 2, reason: "later".into() },
            ProtectedPeriod { from: NOW, to: NOW + hour, reason: "sale".into() },
        ];
        let new = binding("1.1.0", UpgradeMode::Restart);
        let got = violations(None, &new, &v, &svc, &[], NOW);
        assert_eq!(checks(&got), [Check::ProtectedPeriod]);
        assert!(got[0].reason.contains("sale"), "{got:?}");
        assert!(violations(None, &new, &v, &svc, &[], NOW + hour * 2).is_empty());
    }

    #[test]
    fn a_protected_service_refuses_and_every_broken_check_is_named() {
        let v = version(false);
        let mut svc = service();
        svc.protected = true;
        let hour = Duration::hours(1);
        let new = binding("1.1.0", UpgradeMode::Restart);
        let got = violations(None, &new, &v, &svc, &[freeze(NOW - hour, NOW + hour, &[])], NOW);
        assert_eq!(checks(&got), [Check::NotAdmitted, Check::Freeze, Check::ProtectedService]);
        let text = describe(&got);
        for name in ["not_admitted: ", "freeze: ", "protected_service: service checkout is protected"] {
            assert!(text.contains(name), "{text}");
        }
    }
}
