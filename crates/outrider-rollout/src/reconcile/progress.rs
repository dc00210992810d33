//! What keeps a plan true of a fleet that changes under it: instances that join an upgraded
//! cell are taken in, on-deploy progress is counted, a plan completes only when every
//! instance in scope runs the target (and then promotes the target into the bindings), and a
//! rollback ends only when every instance it changed runs its previous version again.

use std::collections::{BTreeMap, BTreeSet};

use outrider_model::{BatchState, Binding, Plan, PlanState, UpgradeMode, Verdict, VersionMatch};

use super::{CellRef, Placed, Stepper, Write, is_live, is_present};

/// Whether the plan's next step depends on what instances report (the caller wakes it on
/// new reports): a batch in flight, a rollback under way, or a plan waiting at its end for
/// instances to reach the target.
pub fn needs_observations(plan: &Plan) -> bool {
    if !is_live(plan.state) {
        return false;
    }
    let pi = plan.cursor_phase as usize;
    let in_flight = plan
        .phases
        .get(pi)
        .is_some_and(|p| p.batches.iter().any(|b| matches!(b.state, BatchState::Applying | BatchState::Baking)));
    in_flight || plan.rolling_back || (plan.state == PlanState::Running && pi >= plan.phases.len())
}

/// The cells of the batches that have been applied, with their phase and batch index.
fn applied_cells(plan: &Plan) -> Vec<(usize, usize, CellRef)> {
    let mut out = Vec::new();
    for (pi, phase) in plan.phases.iter().enumerate().take(plan.cursor_phase as usize + 1) {
        for (bi, b) in phase.batches.iter().enumerate() {
            if !matches!(b.state, BatchState::Applying | BatchState::Baking | BatchState::Passed) {
                continue;
            }
            for c in &b.cells {
                let cell = CellRef {
                    service: c.service.clone(),
                    sidecar: plan.sidecar.clone(),
                    region: c.region.clone(),
                    env: c.env.clone(),
                    stage: phase.stage.clone(),
                };
                out.push((pi, bi, cell));
            }
        }
    }
    out
}

impl Stepper<'_> {
    /// Takes in the instances that joined an applied cell since (a rescheduled pod, a
    /// scale-up): they already follow the cell's target; the plan records what they would
    /// run without it, for rollback and the judge.
    pub(super) fn adopt_newcomers(&mut self) {
        let plan = &self.plan;
        let from: Vec<VersionMatch> = plan.spec.from_matches().unwrap_or_default();
        let mut known: BTreeSet<(String, String)> =
            self.view.overrides_of_plan(&plan.id).into_iter().map(|(s, i, _)| (s.to_owned(), i.to_owned())).collect();
        let inherited = super::inherited_previous(self.view, plan);
        let mut writes = Vec::new();
        for (pi, bi, cell) in applied_cells(plan) {
            let Some(service) = self.view.service(&cell.service) else { continue };
            let Some(binding) = self.view.binding(&cell.service, &plan.sidecar) else { continue };
            if service.protected {
                continue;
            }
            let mode = plan.phases[pi].mode;
            self.view.for_each_instance(&cell.service, &mut |i| {
                if !is_present(i) || !cell.covers(i) || known.contains(&(i.service.clone(), i.id.clone())) {
                    return;
                }
                let Some(st) = i.sidecars.iter().find(|s| s.name == plan.sidecar) else { return };
                let on_target = st.version == plan.target_version;
                if !(on_target || from.is_empty() || from.iter().any(|m| m.matches(&st.version))) {
                    return;
                }
                known.insert((i.service.clone(), i.id.clone()));
                let at = Placed { plan, phase: pi, batch: bi, mode, base: &binding.version };
                // Born on the target: without the plan it would run the binding's, and every
                // exit counts.
                writes.push(if on_target {
                    at.record(i, binding.version.clone(), 0)
                } else {
                    let previous = inherited.get(&(i.service.as_str(), i.id.as_str())).copied().unwrap_or(&st.version);
                    at.record(i, previous.to_owned(), st.exits)
                });
            });
        }
        self.writes.extend(writes);
    }

    /// Counts the instances of applied on-deploy batches that have not deployed onto the
    /// target yet.
    pub(super) fn count_awaiting_deploy(&mut self) {
        let plan = &self.plan;
        let waiting: BTreeMap<&str, BTreeSet<&str>> = {
            let mut m: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (svc, inst, o) in self.view.overrides_of_plan(&plan.id) {
                if o.mode == UpgradeMode::OnDeploy && o.version == plan.target_version {
                    m.entry(svc).or_default().insert(inst);
                }
            }
            m
        };
        let mut awaiting = 0u64;
        for (svc, ids) in &waiting {
            self.view.for_each_instance(svc, &mut |i| {
                let on_target = i.sidecars.iter().any(|s| s.name == plan.sidecar && s.version == plan.target_version);
                if ids.contains(i.id.as_str()) && is_present(i) && !on_target {
                    awaiting += 1;
                }
            });
        }
        self.plan.counts.awaiting_deploy = awaiting;
    }

    /// Every batch passed: the plan completes once every instance in scope runs the target,
    /// or is accounted for. Completion promotes the target into the bindings and retires the
    /// plan's targets and records, in the same step.
    pub(super) fn finish(&mut self) {
        let plan = &self.plan;
        let from: Vec<VersionMatch> = plan.spec.from_matches().unwrap_or_default();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut accounted: BTreeMap<String, u64> = BTreeMap::new();
        let mut behind = 0u64;
        let mut promote: BTreeSet<String> = BTreeSet::new();
        for (_, _, cell) in applied_cells(plan) {
            let protected = self.view.service(&cell.service).is_none_or(|s| s.protected);
            if !protected {
                promote.insert(cell.service.clone());
            }
            self.view.for_each_instance(&cell.service, &mut |i| {
                if !cell.covers(i) || !seen.insert(i.id.clone()) {
                    return;
                }
                let version = i.sidecars.iter().find(|s| s.name == plan.sidecar).map(|s| s.version.as_str());
                let reason = if i.gone {
                    "gone"
                } else if protected {
                    "protected service"
                } else if version == Some(plan.target_version.as_str()) {
                    return;
                } else if version.is_some_and(|v| !from.is_empty() && !from.iter().any(|m| m.matches(v))) {
                    "not in from_versions"
                } else {
                    behind += 1;
                    return;
                };
                *accounted.entry(reason.to_owned()).or_default() += 1;
            });
        }
        let reason = format!(
            "every batch passed; {behind} instances in scope do not run {} yet ({} await a deploy)",
            plan.target_version, plan.counts.awaiting_deploy
        );
        self.plan.accounted = accounted;
        let plan = &self.plan;
        if behind > 0 {
            if self.plan.state == PlanState::Running && self.plan.reason != reason {
                self.plan.reason = reason;
            }
            return;
        }
        let mut writes = Vec::new();
        let targets = self.view.targets_of_plan(&plan.id);
        for service in &promote {
            let base = targets.iter().find(|(c, _)| &c.service == service).map(|(_, t)| t.base_version.as_str());
            let Some(binding) = self.view.binding(service, &plan.sidecar) else { continue };
            // A binding changed since the plan moved the service is the operator's: it stays.
            if base == Some(binding.version.as_str()) {
                let value = Binding { version: plan.target_version.clone(), ..binding.clone() };
                writes.push(Write::Binding { service: service.clone(), sidecar: plan.sidecar.clone(), value });
            }
        }
        let promoted = writes.len();
        writes.extend(targets.into_iter().map(|(cell, _)| Write::DeleteTarget { cell }));
        for (service, instance, _) in self.view.overrides_of_plan(&plan.id) {
            writes.push(Write::DeleteOverride {
                service: service.to_owned(),
                instance: instance.to_owned(),
                sidecar: plan.sidecar.clone(),
            });
        }
        self.writes.extend(writes);
        let reason = format!(
            "every batch passed and every instance in scope runs {}; {promoted} bindings now name it",
            self.plan.target_version
        );
        self.transition(PlanState::Completed, reason);
    }

    /// A rollback under way ends once every instance the plan changed (and that is still
    /// here) runs its previous version again.
    pub(super) fn follow_rollback(&mut self) {
        let plan = &self.plan;
        let mut by_service: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for (svc, inst, o) in self.view.overrides_of_plan(&plan.id) {
            by_service.entry(svc).or_default().insert(inst, o.version.as_str());
        }
        let (mut total, mut behind) = (0u64, 0u64);
        for (svc, wanted) in &by_service {
            self.view.for_each_instance(svc, &mut |i| {
                let Some(want) = wanted.get(i.id.as_str()) else { return };
                if !is_present(i) {
                    return;
                }
                total += 1;
                if !i.sidecars.iter().any(|s| s.name == plan.sidecar && s.version == *want) {
                    behind += 1;
                }
            });
        }
        if behind > 0 {
            let reason = format!("rolling back: {behind} of {total} changed instances are not back yet");
            if self.plan.reason != reason {
                self.plan.reason = reason;
            }
            return;
        }
        for b in self.plan.phases.iter_mut().flat_map(|p| &mut p.batches) {
            b.state = match b.state {
                BatchState::Pending => BatchState::Skipped,
                BatchState::Applying | BatchState::Baking | BatchState::Passed | BatchState::Failed => {
                    BatchState::RolledBack
                }
                other => other,
            };
            if b.state == BatchState::RolledBack && b.verdict.is_none() {
                b.verdict = Some(Verdict::Inconclusive);
            }
        }
        self.plan.rolling_back = false;
        let reason = format!("every instance the plan changed ({total} here) runs its previous version again");
        self.transition(PlanState::RolledBack, reason);
    }
}
