//! Withdrawing what would still deliver a defective version: every plan record
//! ([`Override`]) and cell target ([`CellTarget`]) that names it — of any plan, live or not,
//! pending on-deploy ones included — is rewritten so that an instance that does not run it
//! never gets it.
//!
//! An instance's record comes before its cell's target, so: a record of an instance not
//! running the defective version goes back to its `previous`; a record of one running it is
//! kept (the recall plan moves it, grayed — never a mass move here). A cell target goes back
//! to its `base_version`; members of the cell that run the defective version without a
//! record first get one pinning them where they are. A version to go back to that is itself
//! defective is replaced by the recall target. Rewriting twice changes nothing more.

use std::collections::BTreeSet;

use outrider_model::{CellTarget, Instance, Override};

use crate::catalog::CellKey;

/// A plan record of one instance: (service, instance, record).
pub type Record = (String, String, Override);

/// A cell target: (service, cell, target).
pub type Target = (String, CellKey, CellTarget);

/// The rewritten records and targets, to be written.
#[derive(Debug, Default, PartialEq)]
pub struct Withdrawal {
    /// Records to put: rewritten ones and new pins.
    pub records: Vec<Record>,
    /// Cell targets to put.
    pub targets: Vec<Target>,
    /// How many of `records` pin an instance where it is.
    pub pinned: usize,
}

impl Withdrawal {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.targets.is_empty()
    }
}

/// What replaces `defective` in the records and targets of `sidecar` (`records` and
/// `targets`: every one of the sidecar), given the instances as they report. `replacement`
/// maps a version to go back to onto the one to use (the recall target for a defective one).
pub fn withdraw(
    sidecar: &str,
    defective: &str,
    records: &[Record],
    targets: &[Target],
    instances: &[Instance],
    replacement: &dyn Fn(&str) -> String,
) -> Withdrawal {
    let runs_defective = |service: &str, id: &str| {
        instances.iter().any(|i| {
            i.service == service && i.id == id && i.sidecars.iter().any(|s| s.name == sidecar && s.version == defective)
        })
    };
    let mut out = Withdrawal::default();
    for (service, instance, r) in records {
        if r.version == defective && !runs_defective(service, instance) {
            let back = Override { version: replacement(&r.previous), ..r.clone() };
            if back.version != r.version {
                out.records.push((service.clone(), instance.clone(), back));
            }
        }
    }
    let mut recorded: BTreeSet<(&str, &str)> = records.iter().map(|(s, i, _)| (s.as_str(), i.as_str())).collect();
    for (service, cell, t) in targets {
        if cell.sidecar != sidecar || t.version != defective {
            continue;
        }
        for i in instances.iter().filter(|i| &i.service == service && cell.covers(&i.labels)) {
            let Some(st) = i.sidecars.iter().find(|s| s.name == sidecar && s.version == defective) else { continue };
            if !recorded.insert((i.service.as_str(), i.id.as_str())) {
                continue;
            }
            let pin = Override {
                plan: t.plan.clone(),
                phase: t.phase,
                batch: t.batch,
                version: defective.to_owned(),
                mode: t.mode,
                previous: t.base_version.clone(),
                base_version: t.base_version.clone(),
                exits_before: st.exits,
            };
            out.records.push((service.clone(), i.id.clone(), pin));
            out.pinned += 1;
        }
        let back = CellTarget { version: replacement(&t.base_version), ..t.clone() };
        if back.version != t.version {
            out.targets.push((service.clone(), cell.clone(), back));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use outrider_model::{InstanceLabels, SidecarStatus, UpgradeMode};
    use time::OffsetDateTime;

    use super::*;

    fn instance(id: &str, stage: &str, runs: &str) -> Instance {
        Instance {
            id: id.into(),
            service: "svc".into(),
            labels: InstanceLabels {
                region: "r1".into(),
                env: "prod".into(),
                stage: stage.into(),
                ..Default::default()
            },
            deploy_id: String::new(),
            connected: true,
            gone: false,
            last_seen: OffsetDateTime::UNIX_EPOCH,
            desired_revision: 0,
            acked_revision: 0,
            sidecars: vec![SidecarStatus { name: "mesh".into(), version: runs.into(), exits: 2, ..Default::default() }],
        }
    }

    fn record(id: &str, version: &str, previous: &str, mode: UpgradeMode) -> Record {
        let o = Override {
            plan: "p".into(),
            phase: 1,
            batch: 0,
            version: version.into(),
            mode,
            previous: previous.into(),
            base_version: "1.1.0".into(),
            exits_before: 0,
        };
        ("svc".into(), id.into(), o)
    }

    fn target(stage: &str, version: &str, base: &str) -> Target {
        let cell = CellKey { sidecar: "mesh".into(), region: "r1".into(), env: "prod".into(), stage: stage.into() };
        let t = CellTarget {
            plan: "p".into(),
            phase: 0,
            batch: 0,
            version: version.into(),
            mode: UpgradeMode::Hot,
            base_version: base.into(),
        };
        ("svc".into(), cell, t)
    }

    fn same(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn records_of_instances_not_on_the_defective_version_go_back_and_the_others_stay() {
        let records = [
            record("on-it", "1.3.0", "1.1.0", UpgradeMode::Hot),
            record("waits-for-deploy", "1.3.0", "1.1.0", UpgradeMode::OnDeploy),
            record("elsewhere", "1.2.0", "1.1.0", UpgradeMode::Hot),
        ];
        let instances = [
            instance("on-it", "canary", "1.3.0"),
            instance("waits-for-deploy", "full", "1.1.0"),
            instance("elsewhere", "full", "1.2.0"),
        ];
        let w = withdraw("mesh", "1.3.0", &records, &[], &instances, &same);
        let want = record("waits-for-deploy", "1.1.0", "1.1.0", UpgradeMode::OnDeploy);
        assert_eq!(w, Withdrawal { records: vec![want], targets: Vec::new(), pinned: 0 });
    }

    #[test]
    fn a_cell_target_goes_back_to_its_base_after_pinning_members_on_the_defective_version() {
        let records = [record("recorded", "1.3.0", "1.1.0", UpgradeMode::Hot)];
        let targets = [target("canary", "1.3.0", "1.1.0"), target("all", "1.2.0", "1.1.0")];
        let instances = [
            instance("recorded", "canary", "1.3.0"),
            instance("joined-later", "canary", "1.3.0"),
            instance("not-on-it", "canary", "1.1.0"),
            instance("other-stage", "full", "1.3.0"),
        ];
        let w = withdraw("mesh", "1.3.0", &records, &targets, &instances, &same);
        assert_eq!(w.pinned, 1);
        let (svc, id, pin) = &w.records[0];
        assert_eq!((svc.as_str(), id.as_str()), ("svc", "joined-later"));
        assert_eq!((pin.version.as_str(), pin.previous.as_str(), pin.exits_before), ("1.3.0", "1.1.0", 2));
        assert_eq!(w.targets, vec![target("canary", "1.1.0", "1.1.0")]);
        // Done once, nothing is left to do.
        let records: Vec<Record> = records.iter().cloned().chain(w.records).collect();
        let again = withdraw("mesh", "1.3.0", &records, &w.targets, &instances, &same);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn a_defective_version_to_go_back_to_is_replaced_by_the_recall_target() {
        let records = [record("i", "1.3.0", "1.2.0", UpgradeMode::Restart)];
        let targets = [target("all", "1.3.0", "1.2.0")];
        let instances = [instance("i", "full", "1.2.0")];
        let recall = |v: &str| if v == "1.2.0" { "1.1.0".to_owned() } else { v.to_owned() };
        let w = withdraw("mesh", "1.3.0", &records, &targets, &instances, &recall);
        assert_eq!(w.records[0].2.version, "1.1.0");
        assert_eq!(w.targets, vec![target("all", "1.1.0", "1.2.0")]);
    }
}
