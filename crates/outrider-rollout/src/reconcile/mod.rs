//! The rollout reconciler: one step of a plan, as a pure function. Given the plan, what it
//! needs to see of the world (a [`View`]: catalog, live fleet, freezes) and the time, it
//! decides the next steps — start, gate, apply a batch, judge, bake, block, complete — and
//! returns the plan as it should be written, the overrides and events to write with it (in one
//! transaction), and when the plan is next due. It is level-triggered and idempotent: the
//! same inputs give the same step, and a step computed again after a crash writes nothing new.

mod evidence;
mod gate;
mod judge;
mod progress;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use outrider_analysis::{BatchVerdict, Outcome, Test};
use outrider_model::{
    AnalysisSpec, BatchAnalysis, BatchState, Binding, CellTarget, Freeze, Incident, Instance, Judging, Override, Plan,
    PlanState, Service, Sidecar, SidecarState, SidecarStatus, UpgradeMode, Verdict, Version, VersionMatch,
};
use time::OffsetDateTime;

use judge::{InstanceObs, observe};
pub use progress::needs_observations;

/// A batch's default time to report the target when its phase spec is missing.
const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// What a step reads of the world besides the plan: one tenant's catalog, its live fleet and
/// its freezes.
pub trait View {
    /// A version of a sidecar.
    fn version(&self, sidecar: &str, version: &str) -> Option<&Version>;
    /// A service.
    fn service(&self, name: &str) -> Option<&Service>;
    /// The binding of `sidecar` on `service`.
    fn binding(&self, service: &str, sidecar: &str) -> Option<&Binding>;
    /// Every override `plan` wrote: (service, instance, override).
    fn overrides_of_plan(&self, plan: &str) -> Vec<(&str, &str, &Override)>;
    /// Every cell target `plan` wrote.
    fn targets_of_plan(&self, plan: &str) -> Vec<(CellRef, &CellTarget)>;
    /// The tenant's freezes.
    fn freezes(&self) -> &[Freeze];
    /// Calls `f` with every live instance of `service`.
    fn for_each_instance(&self, service: &str, f: &mut dyn FnMut(&Instance));
    /// A sidecar.
    fn sidecar(&self, name: &str) -> Option<&Sidecar>;
    /// Calls `f`, oldest first, with the time and version of each report of `sidecar` that
    /// `instance` made between `from` and `to`.
    fn versions(
        &self,
        instance: &str,
        sidecar: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str),
    );
    /// Calls `f`, oldest first, with the time, the version then running (empty: unknown) and
    /// the value of each sample of `metric` of `sidecar` on `instance` between `from` and `to`.
    fn samples(
        &self,
        instance: &str,
        sidecar: &str,
        metric: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str, f64),
    );
    /// When `instance` last deployed (registered first, or with a new deploy id), if known.
    fn deployed_at(&self, instance: &str) -> Option<OffsetDateTime>;
    /// Why the samples of `metric` could not be read this time (its Prometheus query failed),
    /// if they could not: the judge then cannot pass the batch on the others alone.
    fn unreadable(&self, metric: &str) -> Option<&str> {
        let _ = metric;
        None
    }
}

/// An event a step records, about its plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanEvent {
    /// Kind (`plan.state`, `batch.state`, `batch.verdict`, `incident.opened`, `phase.completed`).
    pub kind: &'static str,
    /// Why, for humans.
    pub reason: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// A cell of one service for one sidecar, as a target's address: its instances in `region`
/// and `env`, of `stage` unless it is `all`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CellRef {
    /// Service.
    pub service: String,
    /// Sidecar.
    pub sidecar: String,
    /// Region.
    pub region: String,
    /// Env.
    pub env: String,
    /// Stage filter.
    pub stage: String,
}

impl CellRef {
    /// Whether `i` is a member of the cell.
    pub fn covers(&self, i: &Instance) -> bool {
        i.service == self.service
            && i.labels.region == self.region
            && i.labels.env == self.env
            && (self.stage == "all" || i.labels.stage == self.stage)
    }
}

/// A write a step commits with the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The plan's record of one instance it moves.
    Override {
        /// Service of the instance.
        service: String,
        /// Instance.
        instance: String,
        /// Sidecar.
        sidecar: String,
        /// The record.
        value: Override,
    },
    /// The target of one cell: its instances, present and future, run the version.
    Target {
        /// The cell.
        cell: CellRef,
        /// The target.
        value: CellTarget,
    },
    /// A service's binding (a completed plan promotes its target into it).
    Binding {
        /// Service.
        service: String,
        /// Sidecar.
        sidecar: String,
        /// The binding.
        value: Binding,
    },
    /// A record retired (the plan completed).
    DeleteOverride {
        /// Service of the instance.
        service: String,
        /// Instance.
        instance: String,
        /// Sidecar.
        sidecar: String,
    },
    /// A cell target retired (the plan completed).
    DeleteTarget {
        /// The cell.
        cell: CellRef,
    },
}

/// The outcome of one step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The plan as it should be written (equal to the input when nothing changed).
    pub plan: Plan,
    /// Whether the plan changed (and so must be written, with `writes` and `events`).
    pub changed: bool,
    /// What to write in the same transaction as the plan.
    pub writes: Vec<Write>,
    /// Events to record in the same transaction.
    pub events: Vec<PlanEvent>,
    /// When the plan must be looked at again if nothing else changes; `None`: only when its
    /// inputs change (an operator action, the catalog, a freeze).
    pub next: Option<OffsetDateTime>,
}

/// Moves `plan` to `to` and returns the event that records it.
pub fn transition(plan: &mut Plan, to: PlanState, reason: String) -> PlanEvent {
    let from = plan.state;
    plan.state = to;
    plan.reason = reason.clone();
    PlanEvent { kind: "plan.state", reason, detail: serde_json::json!({"from": from, "to": to}) }
}

/// An operator's approval of a blocked plan (a false alarm, or enough evidence seen by a
/// human): failed batches count as passed and a batch blocked for want of evidence passes;
/// their verdicts and incidents stay on record.
pub fn approve(plan: &mut Plan, now: OffsetDateTime) {
    for b in plan.phases.iter_mut().flat_map(|p| &mut p.batches) {
        let undecided = b.state == BatchState::Baking && b.verdict == Some(Verdict::Inconclusive);
        if b.state == BatchState::Failed || undecided {
            b.state = BatchState::Passed;
            b.finished_at.get_or_insert(now);
        }
    }
}

/// The settings `plan`'s batches are judged with, from its body and its `sidecar`.
pub fn judging(plan: &Plan, sidecar: Option<&Sidecar>) -> Judging {
    AnalysisSpec::resolve(
        plan.spec.analysis.as_ref(),
        sidecar.and_then(|s| s.analysis.as_ref()),
        sidecar.map_or(&[][..], |s| &s.metrics),
    )
}

/// The batches of `plan` whose bake is over at `now` and that a step would judge on metrics:
/// (phase, batch). The caller reads what the judge needs from slow sources (Prometheus) for
/// these before the step.
pub fn due_for_judgment(plan: &Plan, now: OffsetDateTime) -> Vec<(usize, usize)> {
    if !is_live(plan.state) || plan.rolling_back {
        return Vec::new();
    }
    let pi = plan.cursor_phase as usize;
    let Some(phase) = plan.phases.get(pi) else { return Vec::new() };
    let baked = |b: &outrider_model::Batch| {
        b.state == BatchState::Baking
            && b.verdict.is_none()
            && b.applied_at.is_none_or(|t| now - t >= bake_of(b, phase.bake.0))
    };
    phase.batches.iter().enumerate().filter(|(_, b)| baked(b)).map(|(bi, _)| (pi, bi)).collect()
}

/// The services whose instances a live plan may judge soon: those of its current phase and the
/// next (their samples before their own batch are its "before" reference). None when the
/// plan is not live.
pub fn judged_services(plan: &Plan) -> impl Iterator<Item = &str> {
    let live = is_live(plan.state);
    let pi = plan.cursor_phase as usize;
    let phases = plan.phases.iter().skip(pi).take(if live { 2 } else { 0 });
    phases.flat_map(|p| &p.batches).flat_map(|b| &b.cells).map(|c| c.service.as_str())
}

/// Whether the executor has anything to do for a plan in this state.
pub fn is_live(state: PlanState) -> bool {
    !state.is_terminal() && state != PlanState::Blocked
}

/// One step of `plan` at `now`.
pub fn reconcile(plan: &Plan, view: &dyn View, now: OffsetDateTime) -> Step {
    let mut s =
        Stepper { view, now, plan: plan.clone(), writes: Vec::new(), events: Vec::new(), until: None, applied: false };
    if is_live(plan.state) {
        if s.plan.state == PlanState::Pending {
            let e = transition(&mut s.plan, PlanState::Running, "started".into());
            s.events.push(e);
        }
        s.advance();
    }
    let changed = s.plan != *plan;
    if changed {
        s.plan.updated_at = now;
        s.plan.recount();
    }
    let next = s.next_due();
    Step { plan: s.plan, changed, writes: s.writes, events: s.events, next }
}

/// The state of one step in progress.
struct Stepper<'a> {
    view: &'a dyn View,
    now: OffsetDateTime,
    plan: Plan,
    writes: Vec<Write>,
    events: Vec<PlanEvent>,
    /// When the gate that held the plan back lifts, if it does by itself.
    until: Option<OffsetDateTime>,
    /// Whether this step applied a batch.
    applied: bool,
}

impl Stepper<'_> {
    fn event(&mut self, kind: &'static str, reason: String, detail: serde_json::Value) {
        self.events.push(PlanEvent { kind, reason, detail });
    }

    fn transition(&mut self, to: PlanState, reason: String) {
        let e = transition(&mut self.plan, to, reason);
        self.events.push(e);
    }

    /// When the plan is next due, from its state after the step, if nothing else changes: a
    /// batch just applied at once (its instances may already be there), a batch applying at
    /// its timeout, a baking one at the end of its bake, a waiting plan when its hold lifts.
    /// The judge also needs a look whenever the batch's instances report: that is the
    /// caller's wake-up, not a due time.
    fn next_due(&self) -> Option<OffsetDateTime> {
        let plan = &self.plan;
        if !is_live(plan.state) {
            return None;
        }
        let pi = plan.cursor_phase as usize;
        let deadline = plan.spec.phases.get(pi).and_then(|p| p.deadline);
        let in_flight = plan.phases.get(pi).into_iter().flat_map(|p| &p.batches).filter_map(|b| match b.state {
            BatchState::Applying if self.applied => Some(self.now),
            BatchState::Applying if plan.phases[pi].mode == UpgradeMode::OnDeploy => {
                deadline.map(|d| b.started_at.unwrap_or(self.now) + d.0)
            }
            BatchState::Applying => Some(b.started_at.unwrap_or(self.now) + batch_timeout(plan, pi)),
            BatchState::Baking if b.verdict == Some(Verdict::Inconclusive) => None,
            BatchState::Baking => Some(b.applied_at.map_or(self.now, |t| t + bake_of(b, plan.phases[pi].bake.0))),
            _ => None,
        });
        let held = if plan.state == PlanState::Waiting { self.until } else { None };
        in_flight.chain(held).min()
    }

    fn advance(&mut self) {
        self.update_blast_radius();
        if self.plan.rolling_back {
            self.follow_rollback();
            return;
        }
        self.adopt_newcomers();
        self.count_awaiting_deploy();
        while (self.plan.cursor_phase as usize) < self.plan.phases.len() {
            let pi = self.plan.cursor_phase as usize;
            for bi in 0..self.plan.phases[pi].batches.len() {
                if matches!(self.plan.phases[pi].batches[bi].state, BatchState::Applying | BatchState::Baking) {
                    self.judge_batch(pi, bi);
                    if self.plan.state == PlanState::Blocked {
                        return;
                    }
                }
            }
            let phase_done = self.plan.phases[pi]
                .batches
                .iter()
                .all(|b| matches!(b.state, BatchState::Passed | BatchState::Skipped));
            if phase_done {
                let name = self.plan.phases[pi].name.clone();
                self.event("phase.completed", format!("phase {name} completed"), serde_json::Value::Null);
                self.plan.cursor_phase += 1;
                continue;
            }
            if self.plan.state == PlanState::Paused {
                return;
            }
            self.start_batches(pi);
            return;
        }
        self.finish();
    }

    /// How many instances have run the target under this plan (never decreases).
    fn update_blast_radius(&mut self) {
        let mut by_service: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        let overrides = self.view.overrides_of_plan(&self.plan.id);
        for (svc, inst, _) in &overrides {
            by_service.entry(svc).or_default().insert(inst);
        }
        let (sidecar, target) = (&self.plan.sidecar, &self.plan.target_version);
        let mut ran = 0u64;
        for (svc, ids) in by_service {
            self.view.for_each_instance(svc, &mut |i| {
                if ids.contains(i.id.as_str()) && i.sidecars.iter().any(|s| &s.name == sidecar && &s.version == target)
                {
                    ran += 1;
                }
            });
        }
        self.plan.blast_radius = self.plan.blast_radius.max(ran);
    }

    fn judge_batch(&mut self, pi: usize, bi: usize) {
        let plan = &self.plan;
        let members: Vec<(&str, &str, &Override)> = self
            .view
            .overrides_of_plan(&plan.id)
            .into_iter()
            .filter(|(_, _, o)| o.phase as usize == pi && o.batch as usize == bi && o.version == plan.target_version)
            .collect();
        let member_ids: BTreeSet<&str> = members.iter().map(|(_, i, _)| *i).collect();
        let services: BTreeSet<&str> = members.iter().map(|(s, _, _)| *s).collect();
        // One look at each service's instances: the members' status, and the baseline's health.
        // Members whose agent is away (disconnected, gone, deleted) are left out: they cannot
        // report, and an instance that left is no evidence either way.
        let mut status: HashMap<String, SidecarStatus> = HashMap::new();
        let mut live: BTreeSet<String> = BTreeSet::new();
        let (mut baseline, mut baseline_bad) = (0usize, 0usize);
        for svc in services {
            self.view.for_each_instance(svc, &mut |i| {
                let st = i.sidecars.iter().find(|s| s.name == plan.sidecar);
                if member_ids.contains(i.id.as_str()) {
                    if is_present(i) {
                        live.insert(i.id.clone());
                    }
                    if let Some(st) = st {
                        status.insert(i.id.clone(), st.clone());
                    }
                } else if is_present(i) {
                    baseline += 1;
                    baseline_bad += usize::from(
                        st.is_some_and(|s| matches!(s.state, SidecarState::CrashLoop | SidecarState::Failed)),
                    );
                }
            });
        }
        let members: Vec<_> = members.into_iter().filter(|(_, id, _)| live.contains(*id)).collect();
        let obs: Vec<InstanceObs<'_>> = members
            .iter()
            .map(|(_, id, o)| InstanceObs { id, status: status.get(*id), exits_before: o.exits_before })
            .collect();
        let seen = observe(&obs, &plan.target_version);
        let count = members.len();
        let phase = &plan.phases[pi];
        let (phase_name, mode, bake, index) = (phase.name.clone(), phase.mode, phase.bake.0, phase.batches[bi].index);
        if let Some((metric, ids)) = seen.harm {
            let incident = Incident {
                opened_at: self.now,
                phase: phase_name,
                batch: index,
                metric: metric.to_owned(),
                canary_value: ids.len() as f64 / count.max(1) as f64,
                baseline_value: baseline_bad as f64 / baseline.max(1) as f64,
                test: "threshold: any upgraded instance with this signal fails the batch".into(),
                summary: format!(
                    "{} of {count} upgraded instances show {metric} on {} {} (baseline: {baseline_bad} of {baseline} not upgraded)",
                    ids.len(),
                    plan.sidecar,
                    plan.target_version,
                ),
                instances: ids,
                ..Incident::opened(self.now)
            };
            self.fail_batch(pi, bi, incident);
            return;
        }
        let timeout = batch_timeout(plan, pi);
        let deadline =
            plan.spec.phases.get(pi).and_then(|p| p.deadline).and_then(|d| time::Duration::try_from(d.0).ok());
        let timeout_text = plan.spec.phases.get(pi).map_or_else(|| "10m".to_owned(), |p| p.batch_timeout.to_string());
        let target = plan.target_version.clone();
        let now = self.now;
        let b = &mut self.plan.phases[pi].batches[bi];
        match b.state {
            BatchState::Applying => {
                let started = b.started_at.unwrap_or(now);
                // An on-deploy batch is done when its instances have deployed onto the target,
                // or at the phase's deadline; it never times out.
                let deadline_passed = deadline.is_some_and(|d| now - started >= d);
                if seen.missing.is_empty() || (mode == UpgradeMode::OnDeploy && deadline_passed) {
                    b.state = BatchState::Baking;
                    b.applied_at = Some(now);
                    let waiting = seen.missing.len();
                    let detail = serde_json::json!({"phase": phase_name, "batch": bi, "state": "baking",
                        "instances": count, "awaiting_deploy": waiting});
                    let reason = if waiting == 0 {
                        format!("batch {bi} of {phase_name} reached {target}")
                    } else {
                        format!("batch {bi} of {phase_name}: deadline passed, {waiting} instances await a deploy")
                    };
                    self.event("batch.state", reason, detail);
                } else if mode != UpgradeMode::OnDeploy && now - started >= timeout {
                    let incident = Incident {
                        opened_at: now,
                        phase: phase_name,
                        batch: index,
                        metric: "version_missing".into(),
                        canary_value: seen.missing.len() as f64,
                        baseline_value: 0.0,
                        test: format!("deadline: every instance reports the target within {timeout_text}"),
                        summary: format!(
                            "{} of {count} instances did not report {target} running in time",
                            seen.missing.len()
                        ),
                        instances: seen.missing,
                        ..Incident::opened(now)
                    };
                    self.fail_batch(pi, bi, incident);
                }
            }
            BatchState::Baking if b.verdict.is_none() && b.applied_at.is_none_or(|t| now - t >= bake_of(b, bake)) => {
                let judged: Vec<(&str, &str, &Override)> = members.clone();
                self.judge_metrics(pi, bi, &judged, seen.reached.len());
            }
            _ => {}
        }
    }

    /// The end of a bake: the metrics of the batch's canaries against their references. Pass
    /// and the batch is done; fail and the plan blocks with an incident; not enough evidence
    /// and the bake is extended, a bounded number of times, before the plan blocks for a human.
    fn judge_metrics(&mut self, pi: usize, bi: usize, members: &[(&str, &str, &Override)], reached: usize) {
        let plan = &self.plan;
        let judging = judging(plan, self.view.sidecar(&plan.sidecar));
        let phase = &plan.phases[pi];
        let b = &phase.batches[bi];
        let phase_name = phase.name.clone();
        // Nothing ran the target (an on-deploy batch whose instances have not deployed yet):
        // there is nothing to judge here; the phase that forces them judges them.
        if !judging.judges_metrics() || reached == 0 {
            let verdict = if reached == 0 { Verdict::Inconclusive } else { Verdict::Pass };
            self.pass_batch(pi, bi, verdict, None);
            return;
        }
        let Some(applied) = b.applied_at else {
            self.pass_batch(pi, bi, Verdict::Inconclusive, None);
            return;
        };
        let started = b.started_at.unwrap_or(applied);
        let window = evidence::Window {
            sidecar: &plan.sidecar,
            target: &plan.target_version,
            mode: phase.mode,
            started,
            from: applied + time::Duration::try_from(judging.warmup).unwrap_or(time::Duration::ZERO),
            to: self.now,
            lookback: time::Duration::try_from(phase.bake.0).unwrap_or(time::Duration::ZERO),
        };
        let canaries: Vec<evidence::Canary<'_>> =
            members.iter().map(|&(service, id, record)| evidence::Canary { service, id, record }).collect();
        let samples = evidence::gather(self.view, &judging, &window, &canaries);
        let mut verdict = outrider_analysis::analyze(&samples, &judging.policy);
        // A metric whose source could not be read leaves the batch undecided unless another
        // metric already fails it.
        let unread: Vec<String> = judging
            .policy
            .metrics
            .iter()
            .filter_map(|m| self.view.unreadable(&m.metric).map(|why| format!("{}: {why}", m.metric)))
            .collect();
        // A metric that could not be read never lets the batch pass; what was read may fail it.
        if !unread.is_empty() && verdict.outcome != Outcome::Fail {
            verdict.outcome = Outcome::Inconclusive;
            verdict.reason = format!("cannot read {}; the rest: {}", unread.join("; "), verdict.reason);
        }
        let summary = BatchAnalysis::of(&verdict);
        let extensions = b.extensions;
        match verdict.outcome {
            Outcome::Pass => self.pass_batch(pi, bi, Verdict::Pass, Some(summary)),
            Outcome::Fail => {
                let incident = self.metric_incident(pi, bi, &verdict);
                let b = &mut self.plan.phases[pi].batches[bi];
                b.analysis = Some(summary);
                self.fail_batch(pi, bi, incident);
            }
            Outcome::Inconclusive if extensions < judging.max_extensions => {
                let b = &mut self.plan.phases[pi].batches[bi];
                b.extensions += 1;
                b.analysis = Some(summary);
                let detail = serde_json::json!({"phase": phase_name, "batch": bi, "verdict": Verdict::Inconclusive,
                    "extension": extensions + 1, "max_extensions": judging.max_extensions, "reason": verdict.reason});
                let reason = format!(
                    "batch {bi} of {phase_name} is inconclusive, bake extended ({} of {}): {}",
                    extensions + 1,
                    judging.max_extensions,
                    verdict.reason
                );
                self.event("batch.verdict", reason, detail);
            }
            Outcome::Inconclusive => {
                let b = &mut self.plan.phases[pi].batches[bi];
                b.verdict = Some(Verdict::Inconclusive);
                b.analysis = Some(summary);
                let reason = format!(
                    "not enough evidence in batch {bi} of {phase_name} after {} bake extensions: {}; approve to go on \
                     or roll back",
                    extensions, verdict.reason
                );
                let detail = serde_json::json!({"phase": phase_name, "batch": bi, "verdict": Verdict::Inconclusive,
                    "extensions": extensions, "reason": verdict.reason});
                self.event("batch.verdict", reason.clone(), detail);
                self.transition(PlanState::Blocked, reason);
            }
        }
    }

    fn pass_batch(&mut self, pi: usize, bi: usize, verdict: Verdict, analysis: Option<BatchAnalysis>) {
        let now = self.now;
        let phase_name = self.plan.phases[pi].name.clone();
        let b = &mut self.plan.phases[pi].batches[bi];
        b.state = BatchState::Passed;
        b.verdict = Some(verdict);
        b.finished_at = Some(now);
        let reason = analysis.as_ref().map_or_else(String::new, |a| format!(": {}", a.reason));
        b.analysis = analysis;
        let detail = serde_json::json!({"phase": phase_name, "batch": bi, "verdict": verdict, "analysis": b.analysis});
        self.event("batch.verdict", format!("batch {bi} of {phase_name} passed{reason}"), detail);
    }

    /// The incident of a failed metric verdict: its first deciding failure, with the evidence.
    fn metric_incident(&self, pi: usize, bi: usize, verdict: &BatchVerdict) -> Incident {
        let phase = &self.plan.phases[pi];
        let failure = verdict.failures().next();
        let (service, v) = match failure {
            Some((s, v)) => (s.map(str::to_owned), Some(v)),
            None => (None, None),
        };
        let test = v.and_then(|v| v.test).map_or_else(|| "none".to_owned(), |t| describe_test(&t));
        let summary = match (v, &service) {
            (Some(v), Some(s)) => format!(
                "{} regressed on {s} with {} {}: {}",
                v.metric, self.plan.sidecar, self.plan.target_version, v.reason
            ),
            (Some(v), None) => format!(
                "{} regressed over the batch with {} {}: {}",
                v.metric, self.plan.sidecar, self.plan.target_version, v.reason
            ),
            (None, _) => verdict.reason.clone(),
        };
        Incident {
            opened_at: self.now,
            phase: phase.name.clone(),
            batch: phase.batches[bi].index,
            metric: v.map_or_else(|| "analysis".to_owned(), |v| v.metric.clone()),
            instances: v.map(|v| v.instances.clone()).unwrap_or_default(),
            canary_value: v.and_then(|v| v.canary.value).unwrap_or_default(),
            baseline_value: v.and_then(|v| v.baseline.value).unwrap_or_default(),
            test,
            summary,
            service,
            comparison: v.map(|v| v.comparison),
            p_value: v.and_then(|v| v.p_value),
            effect: v.and_then(|v| v.effect),
            canary: v.map(|v| v.canary),
            baseline: v.map(|v| v.baseline),
        }
    }

    fn fail_batch(&mut self, pi: usize, bi: usize, incident: Incident) {
        let b = &mut self.plan.phases[pi].batches[bi];
        b.state = BatchState::Failed;
        b.verdict = Some(Verdict::Fail);
        b.finished_at = Some(self.now);
        let summary = incident.summary.clone();
        let detail = serde_json::to_value(&incident).unwrap_or_default();
        self.plan.incidents.push(incident);
        self.event("incident.opened", summary.clone(), detail);
        self.transition(PlanState::Blocked, summary);
    }

    fn start_batches(&mut self, pi: usize) {
        let lanes: BTreeSet<u32> = self.plan.phases[pi].batches.iter().map(|b| b.lane).collect();
        let mut started = false;
        let mut held: Option<gate::Hold> = None;
        for lane in lanes {
            let batches = &self.plan.phases[pi].batches;
            let in_lane = || batches.iter().enumerate().filter(move |(_, b)| b.lane == lane);
            if in_lane().any(|(_, b)| matches!(b.state, BatchState::Applying | BatchState::Baking | BatchState::Failed))
            {
                continue;
            }
            let Some(bi) = in_lane().find(|(_, b)| b.state == BatchState::Pending).map(|(i, _)| i) else { continue };
            if let Some(hold) = gate::check(self.view, &self.plan, pi, &self.plan.phases[pi].batches[bi], self.now) {
                held = Some(hold);
                break;
            }
            self.apply_batch(pi, bi);
            started = true;
        }
        match held {
            Some(hold) if !started => {
                self.until = hold.until;
                if self.plan.state != hold.state || self.plan.reason != hold.reason {
                    self.transition(hold.state, hold.reason);
                }
            }
            _ if self.plan.state == PlanState::Waiting && started => {
                self.transition(PlanState::Running, "resumed".into());
            }
            _ => {}
        }
    }

    fn apply_batch(&mut self, pi: usize, bi: usize) {
        let plan = &self.plan;
        let from: Vec<VersionMatch> = plan.spec.from_matches().unwrap_or_default();
        let stage = plan.phases[pi].stage.as_str();
        let mode = plan.phases[pi].mode;
        let inherited = inherited_previous(self.view, plan);
        let mut writes = taken_over_targets(self.view, plan, pi, bi);
        for cell in &plan.phases[pi].batches[bi].cells {
            let Some(service) = self.view.service(&cell.service) else { continue };
            let Some(binding) = self.view.binding(&cell.service, &plan.sidecar) else { continue };
            if service.protected {
                continue;
            }
            // Every instance of the cell from now on, those that register later included.
            writes.push(Write::Target {
                cell: CellRef {
                    service: cell.service.clone(),
                    sidecar: plan.sidecar.clone(),
                    region: cell.region.clone(),
                    env: cell.env.clone(),
                    stage: stage.to_owned(),
                },
                value: CellTarget {
                    plan: plan.id.clone(),
                    phase: pi as u32,
                    batch: bi as u32,
                    version: plan.target_version.clone(),
                    mode,
                    base_version: binding.version.clone(),
                },
            });
            self.view.for_each_instance(&cell.service, &mut |inst| {
                let l = &inst.labels;
                if l.region != cell.region || l.env != cell.env || (stage != "all" && l.stage != stage) {
                    return;
                }
                let Some(st) = inst.sidecars.iter().find(|s| s.name == plan.sidecar) else { return };
                if st.version == plan.target_version
                    || !(from.is_empty() || from.iter().any(|m| m.matches(&st.version)))
                {
                    return;
                }
                let at = Placed { plan, phase: pi, batch: bi, mode, base: &binding.version };
                let previous =
                    inherited.get(&(inst.service.as_str(), inst.id.as_str())).copied().unwrap_or(&st.version);
                writes.push(at.record(inst, previous.to_owned(), st.exits));
            });
        }
        let count = writes.iter().filter(|w| matches!(w, Write::Override { .. })).count();
        self.writes.extend(writes);
        self.applied = true;
        let b = &mut self.plan.phases[pi].batches[bi];
        b.state = BatchState::Applying;
        b.started_at = Some(self.now);
        let name = self.plan.phases[pi].name.clone();
        let detail =
            serde_json::json!({"phase": name, "batch": bi, "state": "applying", "instances": count, "mode": mode});
        let reason = format!("batch {bi} of {name}: {count} instances to {}", self.plan.target_version);
        self.event("batch.state", reason, detail);
    }
}

/// Where a plan puts an instance: its phase and batch, the mode, the binding's version.
struct Placed<'a> {
    plan: &'a Plan,
    phase: usize,
    batch: usize,
    mode: UpgradeMode,
    base: &'a str,
}

impl Placed<'_> {
    /// The plan's record of `inst`, which ran `previous` and had exited `exits` times.
    fn record(&self, inst: &Instance, previous: String, exits: u32) -> Write {
        Write::Override {
            service: inst.service.clone(),
            instance: inst.id.clone(),
            sidecar: self.plan.sidecar.clone(),
            value: Override {
                plan: self.plan.id.clone(),
                phase: self.phase as u32,
                batch: self.batch as u32,
                version: self.plan.target_version.clone(),
                mode: self.mode,
                previous,
                base_version: self.base.to_owned(),
                exits_before: exits,
            },
        }
    }
}

/// For a fix-forward plan, what each instance the superseded plan moved ran before that plan,
/// by (service, instance): the plan records it as the instance's `previous`, so that rolling
/// the fix back never returns an instance to the version it replaces. Empty for other plans.
fn inherited_previous<'v>(view: &'v dyn View, plan: &Plan) -> HashMap<(&'v str, &'v str), &'v str> {
    let Some(old) = &plan.spec.supersedes else { return HashMap::new() };
    view.overrides_of_plan(old).into_iter().map(|(svc, inst, o)| ((svc, inst), o.previous.as_str())).collect()
}

/// For a fix-forward plan applying batch `bi` of phase `pi` over every stage: the superseded
/// plan's targets of narrower stages in the same cells are retired, so that instances that
/// join later (or return after this plan's rollback) follow this plan, not the version it
/// replaces. A target of the same stage is simply overwritten by this plan's.
fn taken_over_targets(view: &dyn View, plan: &Plan, pi: usize, bi: usize) -> Vec<Write> {
    let (Some(old), Some(phase)) = (&plan.spec.supersedes, plan.phases.get(pi)) else { return Vec::new() };
    if phase.stage != "all" {
        return Vec::new();
    }
    let Some(batch) = phase.batches.get(bi) else { return Vec::new() };
    view.targets_of_plan(old)
        .into_iter()
        .filter(|(c, _)| c.stage != "all")
        .filter(|(c, _)| batch.cells.iter().any(|b| b.service == c.service && b.region == c.region && b.env == c.env))
        .map(|(cell, _)| Write::DeleteTarget { cell })
        .collect()
}

/// Whether an instance's agent is here to report (connected, not gone).
fn is_present(i: &Instance) -> bool {
    i.connected && !i.gone
}

/// A batch's bake with its extensions: one more bake per extension.
fn bake_of(b: &outrider_model::Batch, bake: Duration) -> time::Duration {
    let total = bake.saturating_mul(b.extensions.saturating_add(1));
    time::Duration::try_from(total).unwrap_or(time::Duration::MAX)
}

/// A test, as an incident names it.
fn describe_test(t: &Test) -> String {
    match t {
        Test::MannWhitney { alternative, method } => {
            format!("Mann-Whitney U, one-sided ({alternative:?}), {method:?}").to_lowercase()
        }
        Test::Stouffer { alternative, services } => {
            format!("Stouffer's Z over {services} services' Mann-Whitney p-values ({alternative:?})").to_lowercase()
        }
    }
}

fn batch_timeout(plan: &Plan, pi: usize) -> time::Duration {
    let d = plan.spec.phases.get(pi).map_or(DEFAULT_BATCH_TIMEOUT, |p| p.batch_timeout.0);
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}
