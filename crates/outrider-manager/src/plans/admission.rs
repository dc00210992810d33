//! Plan admission: what must hold before a plan is stored (the catalog side; the target is
//! checked again before every batch by the reconciler's gate).

use std::collections::BTreeSet;

use outrider_model::{Plan, PlanSpec, VersionState};

use crate::{Error, catalog::TenantCatalog};

/// Checks what can be checked against the catalog: the sidecar, the target version (exists,
/// active, admitted), that the sidecar supports every phase's mode, and the named services.
pub fn admit(tc: &TenantCatalog, spec: &PlanSpec) -> Result<(), Error> {
    let sidecar = tc.sidecar(&spec.sidecar).ok_or_else(|| Error::not_found(format!("sidecar {:?}", spec.sidecar)))?;
    let v = tc
        .version(&spec.sidecar, &spec.target_version)
        .ok_or_else(|| Error::not_found(format!("version {} of sidecar {:?}", spec.target_version, spec.sidecar)))?;
    if v.state != VersionState::Active {
        return Err(Error::precondition(format!(
            "version {} is {:?}: only active versions can be a target",
            v.version, v.state
        )));
    }
    if !v.admitted {
        return Err(Error::precondition(format!(
            "version {} is not admitted: admit it after its tests (POST …/versions/{}/admit)",
            v.version, v.version
        )));
    }
    for (i, p) in spec.phases.iter().enumerate() {
        if !sidecar.upgrade_modes.contains(&p.mode) {
            return Err(Error::invalid(format!(
                "phases[{i}].mode: sidecar {:?} does not support {} (it supports {:?})",
                spec.sidecar, p.mode, sidecar.upgrade_modes
            )));
        }
    }
    for s in spec.selector.services.iter().chain(&spec.feature_services.services) {
        if tc.service(s).is_none() {
            return Err(Error::not_found(format!("service {s:?}")));
        }
    }
    Ok(())
}

/// The services a plan has cells in.
fn services_of(plan: &Plan) -> BTreeSet<&str> {
    plan.phases.iter().flat_map(|p| &p.batches).flat_map(|b| &b.cells).map(|c| c.service.as_str()).collect()
}

/// Refuses `plan` when another live plan touches the same sidecar on some of its services.
pub fn no_overlap(plan: &Plan, others: &[Plan]) -> Result<(), Error> {
    let mine = services_of(plan);
    let overlapping = others.iter().find(|o| {
        !o.state.is_terminal() && o.sidecar == plan.sidecar && services_of(o).iter().any(|svc| mine.contains(svc))
    });
    match overlapping {
        Some(o) => Err(Error::conflict(format!(
            "plan {} ({}) is {} and touches {} on some of the same services",
            o.id, o.name, o.state, o.sidecar
        ))),
        None => Ok(()),
    }
}
