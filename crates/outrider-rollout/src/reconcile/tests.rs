//! The reconciler on a fake clock: a fake world (catalog, fleet, freezes) whose agents follow
//! the overrides at once, and a loop that jumps from one due time to the next. Days of plan
//! time run in milliseconds.

use std::collections::BTreeMap;

use outrider_model::{
    BatchState, Binding, CellTarget, Freeze, Instance, Override, Plan, PlanSpec, PlanState, Service, SidecarState,
    SidecarStatus, UpgradeMode, Version, VersionState,
};
use serde_json::json;
use time::{OffsetDateTime, macros::datetime};

use super::{CellRef, Step, View, Write, reconcile};
use crate::{FleetView, InstanceView, plan};

/// A Friday afternoon.
const FRIDAY: OffsetDateTime = datetime!(2026-03-06 16:00 UTC);

/// How the fake agents answer an override.
#[derive(Clone, Copy, PartialEq)]
enum Agents {
    /// They run the target at once.
    Follow,
    /// They never report the target.
    Stall,
    /// They run the target, which crash-loops.
    Crash,
}

struct World {
    versions: BTreeMap<(String, String), Version>,
    services: BTreeMap<String, Service>,
    bindings: BTreeMap<(String, String), Binding>,
    overrides: BTreeMap<(String, String, String), Override>,
    targets: BTreeMap<CellRef, CellTarget>,
    freezes: Vec<Freeze>,
    instances: Vec<Instance>,
    agents: Agents,
    /// The time the agents' answers are stamped with.
    now: OffsetDateTime,
    /// When each instance started running each version: (time, version), oldest first.
    timeline: BTreeMap<String, Vec<(OffsetDateTime, String)>>,
    /// When instances deployed.
    deployed: BTreeMap<String, OffsetDateTime>,
    /// How the agents' sidecars behave.
    signals: Signals,
}

/// What the fake agents report: every `every`, healthy figures with a little noise, plus
/// `effect` on instances of the `affected` services while they run 1.1.0.
#[derive(Clone)]
struct Signals {
    every: time::Duration,
    /// Metric and what 1.1.0 adds to it (for `rss_mib`: MiB a second since the version started).
    effect: Option<(&'static str, f64)>,
    affected: Vec<String>,
    /// Metric and what an instance's deploy adds to it from then on (a business change).
    deploy_effect: Option<(&'static str, f64)>,
}

impl Signals {
    fn healthy() -> Self {
        Self { every: time::Duration::seconds(5), effect: None, affected: Vec::new(), deploy_effect: None }
    }
}

/// A deterministic noise in [-1, 1] of an instance, a metric and a time.
fn noise(instance: &str, metric: &str, at: OffsetDateTime) -> f64 {
    let bytes = instance.bytes().chain(metric.bytes()).chain(at.unix_timestamp().to_le_bytes());
    let h = bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

impl World {
    /// Instance `i` deploys now, onto `version`.
    fn deploy(&mut self, i: usize, version: &str) {
        let inst = &mut self.instances[i];
        inst.sidecars[0].version = version.into();
        self.timeline.entry(inst.id.clone()).or_default().push((self.now, version.into()));
        self.deployed.insert(inst.id.clone(), self.now);
    }

    /// The version `instance` ran at `at` and since when.
    fn version_at(&self, instance: &str, at: OffsetDateTime) -> (OffsetDateTime, &str) {
        let changes = self.timeline.get(instance).map_or(&[][..], Vec::as_slice);
        changes
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map_or((FRIDAY - time::Duration::days(1), "1.0.0"), |(t, v)| (*t, v))
    }

    /// The figure `metric` of `instance` at `at` while it runs `version` (started at `since`).
    fn figure(
        &self,
        instance: &str,
        metric: &str,
        at: OffsetDateTime,
        version: &str,
        since: OffsetDateTime,
    ) -> Option<f64> {
        let base = match metric {
            "cpu_percent" => 5.0,
            "rss_mib" => 50.0,
            "error_ratio" => 0.002,
            "latency_p99_ms" => 20.0,
            _ => return None,
        };
        let mut v = base * (1.0 + 0.1 * noise(instance, metric, at));
        if let Some((m, size)) = self.signals.effect
            && m == metric
            && version == "1.1.0"
            && self.instances.iter().any(|i| i.id == instance && self.signals.affected.contains(&i.service))
        {
            v += if m == "rss_mib" { size * (at - since).as_seconds_f64() } else { size };
        }
        if let Some((m, size)) = self.signals.deploy_effect
            && m == metric
            && self.deployed.get(instance).is_some_and(|t| *t <= at)
        {
            v += size;
        }
        Some(v)
    }
}

impl View for World {
    fn version(&self, sidecar: &str, version: &str) -> Option<&Version> {
        self.versions.get(&(sidecar.to_owned(), version.to_owned()))
    }
    fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }
    fn binding(&self, service: &str, sidecar: &str) -> Option<&Binding> {
        self.bindings.get(&(service.to_owned(), sidecar.to_owned()))
    }
    fn overrides_of_plan(&self, plan: &str) -> Vec<(&str, &str, &Override)> {
        let of_plan = self.overrides.iter().filter(|(_, o)| o.plan == plan);
        of_plan.map(|((s, i, _), o)| (s.as_str(), i.as_str(), o)).collect()
    }
    fn targets_of_plan(&self, plan: &str) -> Vec<(CellRef, &CellTarget)> {
        self.targets.iter().filter(|(_, t)| t.plan == plan).map(|(c, t)| (c.clone(), t)).collect()
    }
    fn freezes(&self) -> &[Freeze] {
        &self.freezes
    }
    fn for_each_instance(&self, service: &str, f: &mut dyn FnMut(&Instance)) {
        self.instances.iter().filter(|i| i.service == service).for_each(f);
    }
    fn sidecar(&self, _: &str) -> Option<&outrider_model::Sidecar> {
        None
    }
    fn versions(
        &self,
        instance: &str,
        _: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str),
    ) {
        self.samples(instance, "mesh", "cpu_percent", from, to, &mut |at, v, _| f(at, v));
    }
    fn samples(
        &self,
        instance: &str,
        _: &str,
        metric: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str, f64),
    ) {
        let every = self.signals.every.whole_seconds().max(1);
        let mut t = OffsetDateTime::from_unix_timestamp((from.unix_timestamp() + every - 1).div_euclid(every) * every)
            .unwrap_or(from);
        while t <= to {
            let (since, version) = self.version_at(instance, t);
            if let Some(v) = self.figure(instance, metric, t, version, since) {
                f(t, version, v);
            }
            t += self.signals.every;
        }
    }
    fn deployed_at(&self, instance: &str) -> Option<OffsetDateTime> {
        self.deployed.get(instance).copied()
    }
}

/// Services `s0`… with `per_service` prod instances each in region `r1`, stage `full`, all on
/// mesh 1.0.0; versions 1.0.0 and 1.1.0 (active, admitted).
fn world(services: usize, per_service: usize) -> World {
    let mut w = World {
        versions: BTreeMap::new(),
        services: BTreeMap::new(),
        bindings: BTreeMap::new(),
        overrides: BTreeMap::new(),
        targets: BTreeMap::new(),
        freezes: Vec::new(),
        instances: Vec::new(),
        agents: Agents::Follow,
        now: FRIDAY,
        timeline: BTreeMap::new(),
        deployed: BTreeMap::new(),
        signals: Signals::healthy(),
    };
    for v in ["1.0.0", "1.1.0"] {
        let version: Version = serde_json::from_value(json!({
            "sidecar": "mesh", "version": v, "artifact": {"url": "file:///bin/true", "sha256": "0".repeat(64)},
            "command": [], "env": {}, "notes": "", "admitted": true, "state": "active",
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        w.versions.insert(("mesh".into(), v.into()), version);
    }
    for s in 0..services {
        let name = format!("s{s}");
        let service: Service = serde_json::from_value(json!({"name": name, "priority": "P2"})).unwrap();
        w.services.insert(name.clone(), service);
        let binding = Binding {
            sidecar: "mesh".into(),
            enabled: true,
            version: "1.0.0".into(),
            mode: outrider_model::UpgradeMode::Restart,
        };
        w.bindings.insert((name.clone(), "mesh".into()), binding);
        for i in 0..per_service {
            w.instances.push(Instance {
                id: format!("{name}-i{i}"),
                service: name.clone(),
                labels: serde_json::from_value(json!({"region": "r1", "env": "prod", "stage": "full"})).unwrap(),
                deploy_id: String::new(),
                connected: true,
                gone: false,
                last_seen: FRIDAY,
                desired_revision: 0,
                acked_revision: 0,
                sidecars: vec![SidecarStatus {
                    name: "mesh".into(),
                    version: "1.0.0".into(),
                    state: SidecarState::Running,
                    ..Default::default()
                }],
            });
        }
    }
    w
}

impl World {
    /// What the agents do with the records and targets written so far (as the manager's
    /// desired state would tell them; on-deploy ones wait for a deploy); whether anything
    /// changed.
    fn converge(&mut self) -> bool {
        let before = self.instances.clone();
        for inst in &mut self.instances {
            let (version, mode) = match self.overrides.get(&(inst.service.clone(), inst.id.clone(), "mesh".into())) {
                Some(o) => (o.version.clone(), o.mode),
                None => {
                    match self.targets.iter().filter(|(c, _)| c.covers(inst)).map(|(_, t)| t).max_by_key(|t| t.phase) {
                        Some(t) => (t.version.clone(), t.mode),
                        None => continue,
                    }
                }
            };
            if mode == UpgradeMode::OnDeploy || !inst.connected {
                continue;
            }
            let st = &mut inst.sidecars[0];
            let ran = st.version.clone();
            match self.agents {
                Agents::Stall => {}
                Agents::Follow => (st.version, st.state) = (version, SidecarState::Running),
                Agents::Crash => (st.version, st.state) = (version, SidecarState::CrashLoop),
            }
            if st.version != ran {
                self.timeline.entry(inst.id.clone()).or_default().push((self.now, st.version.clone()));
            }
        }
        self.instances != before
    }

    /// Commits a step's writes.
    fn apply(&mut self, step: &Step) {
        for w in step.writes.clone() {
            match w {
                Write::Override { service, instance, sidecar, value } => {
                    self.overrides.insert((service, instance, sidecar), value);
                }
                Write::Target { cell, value } => {
                    self.targets.insert(cell, value);
                }
                Write::Binding { service, sidecar, value } => {
                    self.bindings.insert((service, sidecar), value);
                }
                Write::DeleteOverride { service, instance, sidecar } => {
                    self.overrides.remove(&(service, instance, sidecar));
                }
                Write::DeleteTarget { cell } => {
                    self.targets.remove(&cell);
                }
            }
        }
    }
}

/// A plan over `w` from a body (`sidecar` and `target_version` are filled in).
fn new_plan(w: &World, body: serde_json::Value, now: OffsetDateTime) -> Plan {
    let mut body = body;
    body["sidecar"] = json!("mesh");
    body["target_version"] = json!("1.1.0");
    let spec: PlanSpec = serde_json::from_value(body).unwrap();
    spec.validate().unwrap();
    let view = FleetView::from_instances(
        w.services.values().cloned().collect(),
        w.instances.iter().map(|i| InstanceView {
            service: &i.service,
            region: &i.labels.region,
            env: &i.labels.env,
            stage: &i.labels.stage,
            version: Some(&i.sidecars[0].version),
        }),
    );
    let planned = plan(&spec, &view).unwrap();
    Plan::new("p1".into(), spec, planned.feature_services, planned.phases, now)
}

/// A one-phase body: one cell per batch, `bake`, and `extra` phase fields.
fn one_phase(bake: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut phase = json!({"name": "p", "batching": {"strategy": "linear", "size": 1}, "bake": bake});
    for (k, v) in extra.as_object().unwrap() {
        phase[k] = v.clone();
    }
    json!({"feature_services": {"per_trait_value": 0}, "phases": [phase]})
}

/// What a run saw.
struct Run {
    plan: Plan,
    /// Steps taken.
    steps: usize,
    /// When each batch started.
    starts: Vec<Option<OffsetDateTime>>,
    /// The time of the last step.
    end: OffsetDateTime,
    /// Every (time, plan state) the plan went through.
    states: Vec<(OffsetDateTime, PlanState)>,
}

/// Steps `plan` from `now`, jumping to each due time, until it is due no more or `limit` is
/// passed. The world's agents answer every step's overrides before the next step; when what
/// they report changes, the plan is looked at again at once (the executor's wake-up).
fn run(w: &mut World, mut plan: Plan, mut now: OffsetDateTime, limit: OffsetDateTime) -> Run {
    let mut steps = 0;
    let mut states = vec![(now, plan.state)];
    loop {
        let step = reconcile(&plan, w, now);
        steps += 1;
        assert!(steps < 100_000, "the plan never settles");
        if step.changed {
            w.apply(&step);
            plan = step.plan;
            if states.last().map(|s| s.1) != Some(plan.state) {
                states.push((now, plan.state));
            }
        } else {
            assert!(step.writes.is_empty() && step.events.is_empty(), "an unchanged plan writes nothing");
        }
        w.now = now;
        if w.converge() {
            continue;
        }
        match step.next {
            Some(next) if next <= limit => {
                assert!(next >= now, "due times never go back");
                now = next;
            }
            _ => break,
        }
    }
    let starts = plan.phases.iter().flat_map(|p| &p.batches).map(|b| b.started_at).collect();
    Run { plan, steps, starts, end: now, states }
}

fn timed<T>(f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let out = f();
    assert!(t.elapsed() < std::time::Duration::from_secs(3), "took {:?}", t.elapsed());
    out
}

#[test]
fn a_mon_fri_window_holds_the_plan_over_the_weekend() {
    timed(|| {
        let mut w = world(3, 2);
        let mut body = one_phase("30m", json!({}));
        body["windows"] = json!([{"days": "mon-fri", "from": "09:00", "to": "17:00", "tz": "UTC"}]);
        let plan = new_plan(&w, body, FRIDAY);
        let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::days(7));
        // Friday 16:00 and 16:30 are in the window; at 17:00 it closes until Monday 09:00.
        let monday = datetime!(2026-03-09 09:00 UTC);
        assert_eq!(
            r.starts,
            [Some(FRIDAY), Some(FRIDAY + time::Duration::minutes(30)), Some(monday)],
            "the third batch waits for Monday"
        );
        assert!(r.states.contains(&(FRIDAY + time::Duration::hours(1), PlanState::Waiting)), "{:?}", r.states);
        assert_eq!(r.plan.state, PlanState::Completed);
        assert_eq!(r.end, monday + time::Duration::minutes(30));
        // Nothing polls: each batch costs an apply, a look when its instances arrive and one
        // at the end of its bake; the weekend costs one step.
        assert!(r.steps <= 3 * 3 + 3, "{} steps", r.steps);
    });
}

#[test]
fn a_waiting_plan_is_due_when_its_window_opens() {
    let w = world(1, 1);
    let mut body = one_phase("1m", json!({}));
    body["windows"] = json!([{"days": "mon-fri", "from": "09:00", "to": "17:00", "tz": "UTC"}]);
    let saturday = datetime!(2026-03-07 12:00 UTC);
    let step = reconcile(&new_plan(&w, body, saturday), &w, saturday);
    assert_eq!(step.plan.state, PlanState::Waiting);
    assert_eq!(step.next, Some(datetime!(2026-03-09 09:00 UTC)));
    assert!(step.writes.is_empty());
    // Looked at again before then (a wake-up), it changes nothing.
    let again = reconcile(&step.plan, &w, saturday + time::Duration::hours(5));
    assert!(!again.changed);
    assert_eq!(again.next, step.next);
}

#[test]
fn daily_caps_spread_a_phase_over_several_days() {
    timed(|| {
        let mut w = world(6, 3);
        let body = one_phase("1h", json!({"max_per_day": {"cells": 2}}));
        let start = datetime!(2026-03-02 08:00 UTC);
        let plan = new_plan(&w, body, start);
        let r = run(&mut w, plan, start, start + time::Duration::days(10));
        let day = |d: i64, h: i64, m: i64| {
            Some(
                datetime!(2026-03-02 00:00 UTC)
                    + time::Duration::days(d)
                    + time::Duration::hours(h)
                    + time::Duration::minutes(m),
            )
        };
        assert_eq!(
            r.starts,
            [day(0, 8, 0), day(0, 9, 0), day(1, 0, 0), day(1, 1, 0), day(2, 0, 0), day(2, 1, 0)],
            "two cells a day, each day from midnight UTC"
        );
        assert_eq!(r.plan.state, PlanState::Completed);
        assert_eq!(r.plan.counts.done, 18);
    });
}

#[test]
fn a_batch_passes_when_its_bake_is_over_and_not_before() {
    let mut w = world(1, 2);
    let plan = new_plan(&w, one_phase("10m", json!({})), FRIDAY);
    let applied = reconcile(&plan, &w, FRIDAY);
    let records = applied.writes.iter().filter(|w| matches!(w, Write::Override { .. })).count();
    let targets = applied.writes.iter().filter(|w| matches!(w, Write::Target { .. })).count();
    assert_eq!((records, targets), (2, 1), "a target for the cell, a record per instance in it");
    assert_eq!(applied.plan.phases[0].batches[0].state, BatchState::Applying);
    w.apply(&applied);
    w.converge();
    let t1 = FRIDAY + time::Duration::seconds(1);
    let baking = reconcile(&applied.plan, &w, t1);
    assert_eq!(baking.plan.phases[0].batches[0].state, BatchState::Baking);
    assert_eq!(baking.next, Some(t1 + time::Duration::minutes(10)), "due at the end of the bake");
    let early = reconcile(&baking.plan, &w, t1 + time::Duration::minutes(10) - time::Duration::milliseconds(1));
    assert!(!early.changed);
    let done = reconcile(&baking.plan, &w, t1 + time::Duration::minutes(10));
    assert_eq!(done.plan.phases[0].batches[0].state, BatchState::Passed);
    assert_eq!(done.plan.blast_radius, 2);
    // The pass and the plan's completion are one step; nothing is applied twice; the
    // completion promotes the target into the binding and retires the plan's writes.
    assert_eq!(done.plan.state, PlanState::Completed);
    assert!(done.writes.iter().any(|w| matches!(w, Write::Binding { value, .. } if value.version == "1.1.0")));
    assert!(!done.writes.iter().any(|w| matches!(w, Write::Override { .. } | Write::Target { .. })));
    assert_eq!(done.next, None);
}

#[test]
fn a_batch_that_never_reports_the_target_fails_at_its_timeout() {
    timed(|| {
        let mut w = world(2, 2);
        w.agents = Agents::Stall;
        let plan = new_plan(&w, one_phase("5m", json!({"batch_timeout": "3m"})), FRIDAY);
        let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::days(1));
        assert_eq!(r.plan.state, PlanState::Blocked);
        let incident = &r.plan.incidents[0];
        assert_eq!(incident.metric, "version_missing");
        assert_eq!(incident.instances.len(), 2);
        assert_eq!(r.end, FRIDAY + time::Duration::minutes(3), "failed at the timeout, not later");
        assert_eq!(r.starts[1], None, "the next batch never starts");
    });
}

#[test]
fn a_crash_loop_on_the_target_blocks_the_plan_in_its_first_batch() {
    let mut w = world(4, 2);
    w.agents = Agents::Crash;
    let plan = new_plan(&w, one_phase("10m", json!({})), FRIDAY);
    let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::days(1));
    assert_eq!(r.plan.state, PlanState::Blocked);
    assert_eq!(r.plan.incidents[0].metric, "crash_loop");
    assert_eq!(r.plan.blast_radius, 2);
    assert_eq!(r.plan.phases[0].batches[0].state, BatchState::Failed);
    assert!(r.starts[1..].iter().all(Option::is_none));
    assert_eq!(r.end, FRIDAY, "blocked at the first look after the crash");
}

#[test]
fn a_freeze_holds_the_plan_until_it_ends() {
    let mut w = world(2, 1);
    let to = FRIDAY + time::Duration::hours(3);
    w.freezes.push(Freeze { id: "f1".into(), from: FRIDAY, to, reason: "sale".into(), services: Vec::new() });
    let step = reconcile(&new_plan(&w, one_phase("1m", json!({})), FRIDAY), &w, FRIDAY);
    assert_eq!(step.plan.state, PlanState::Waiting);
    assert!(step.plan.reason.starts_with("freeze f1"), "{}", step.plan.reason);
    assert_eq!(step.next, Some(to));
    let r = run(&mut w, step.plan, to, to + time::Duration::days(1));
    assert_eq!(r.starts[0], Some(to));
    assert_eq!(r.plan.state, PlanState::Completed);
}

#[test]
fn paused_blocked_and_finished_plans_are_not_due() {
    let w = world(2, 1);
    let mut plan = new_plan(&w, one_phase("1m", json!({})), FRIDAY);
    for state in [PlanState::Paused, PlanState::Blocked, PlanState::Completed, PlanState::RolledBack] {
        plan.state = state;
        let step = reconcile(&plan, &w, FRIDAY);
        assert!(!step.changed && step.writes.is_empty(), "{state}");
        assert_eq!(step.next, None, "{state}");
    }
}

#[test]
fn a_target_that_lost_its_admission_blocks_before_the_next_batch() {
    let mut w = world(2, 1);
    let plan = new_plan(&w, one_phase("1m", json!({})), FRIDAY);
    if let Some(v) = w.versions.get_mut(&("mesh".into(), "1.1.0".into())) {
        v.state = VersionState::Defective;
    }
    let step = reconcile(&plan, &w, FRIDAY);
    assert_eq!(step.plan.state, PlanState::Blocked);
    assert_eq!(step.plan.reason, "mesh 1.1.0 was marked defective");
    assert!(step.writes.is_empty());
}

#[test]
fn the_same_inputs_give_the_same_step() {
    let w = world(3, 2);
    let plan = new_plan(&w, one_phase("1m", json!({})), FRIDAY);
    let (a, b) = (reconcile(&plan, &w, FRIDAY), reconcile(&plan, &w, FRIDAY));
    assert_eq!((a.plan, a.writes, a.events, a.next), (b.plan, b.writes, b.events, b.next));
}

/// A step at `now`, committed to `w`, whose agents then answer.
fn step_at(w: &mut World, plan: &Plan, now: OffsetDateTime) -> Plan {
    let step = reconcile(plan, w, now);
    w.apply(&step);
    w.now = now;
    w.converge();
    step.plan
}

#[test]
fn an_instance_that_joins_an_upgraded_cell_runs_the_target_and_is_judged() {
    let mut w = world(2, 2);
    let mut plan = new_plan(&w, one_phase("10m", json!({})), FRIDAY);
    plan = step_at(&mut w, &plan, FRIDAY);
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(1));
    assert_eq!(plan.phases[0].batches[0].state, BatchState::Baking);
    // A rescheduled pod of s0 registers: it follows the cell's target at once.
    let mut pod = w.instances[0].clone();
    pod.id = "s0-new".into();
    pod.sidecars[0].version = "1.0.0".into();
    w.instances.push(pod);
    w.converge();
    assert_eq!(w.instances.last().map(|i| i.sidecars[0].version.as_str()), Some("1.1.0"));
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(2));
    let record = &w.overrides[&("s0".to_owned(), "s0-new".to_owned(), "mesh".to_owned())];
    assert_eq!((record.phase, record.batch, record.previous.as_str()), (0, 0, "1.0.0"), "taken into its cell's batch");
    // It crashes on the target: the batch fails for it.
    if let Some(i) = w.instances.last_mut() {
        i.sidecars[0].state = SidecarState::CrashLoop;
    }
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(3));
    assert_eq!(plan.state, PlanState::Blocked);
    assert_eq!(plan.incidents[0].instances, ["s0-new"]);
}

#[test]
fn an_on_deploy_phase_waits_for_deploys_until_its_deadline_and_converge_moves_the_rest() {
    timed(|| {
        let mut w = world(1, 4);
        let body = json!({"feature_services": {"per_trait_value": 0}, "phases": [
            {"name": "full", "mode": "on-deploy", "batching": {"strategy": "linear", "size": 1},
             "bake": "1m", "deadline": "1h"},
            {"name": "converge", "mode": "restart", "batching": {"strategy": "linear", "size": 1}, "bake": "1m"}
        ]});
        let plan = new_plan(&w, body, FRIDAY);
        let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::minutes(30));
        assert_eq!(r.plan.state, PlanState::Running, "nothing deployed: not done");
        assert_eq!(r.plan.phases[0].batches[0].state, BatchState::Applying);
        assert_eq!(r.plan.counts.awaiting_deploy, 4);
        // Two instances deploy onto the target.
        w.now = FRIDAY + time::Duration::minutes(31);
        for i in 0..2 {
            w.deploy(i, "1.1.0");
        }
        let plan = step_at(&mut w, &r.plan, FRIDAY + time::Duration::minutes(31));
        assert_eq!(plan.counts.awaiting_deploy, 2);
        assert_eq!(plan.phases[0].batches[0].state, BatchState::Applying, "the deadline has not passed");
        // The deadline passes; the converge phase forces the other two.
        let r = run(&mut w, plan, FRIDAY + time::Duration::minutes(32), FRIDAY + time::Duration::days(1));
        assert_eq!(r.plan.state, PlanState::Completed, "{}", r.plan.reason);
        assert!(r.plan.phases[0].batches[0].started_at.is_some());
        assert_eq!(r.plan.phases[1].batches[0].started_at.map(|t| t >= FRIDAY + time::Duration::hours(1)), Some(true));
        assert!(w.instances.iter().all(|i| i.sidecars[0].version == "1.1.0"));
        assert_eq!(w.bindings[&("s0".to_owned(), "mesh".to_owned())].version, "1.1.0", "completion promotes");
        assert!(w.overrides.is_empty() && w.targets.is_empty(), "and retires the plan's writes");
    });
}

#[test]
fn a_plan_completes_only_when_every_instance_in_scope_runs_the_target_or_is_gone() {
    let mut w = world(1, 3);
    let plan = new_plan(&w, one_phase("1m", json!({})), FRIDAY);
    let mut plan = step_at(&mut w, &plan, FRIDAY);
    // One agent goes away before reaching the target.
    w.instances[2].connected = false;
    w.instances[2].sidecars[0].version = "1.0.0".into();
    let r = run(&mut w, plan.clone(), FRIDAY + time::Duration::seconds(1), FRIDAY + time::Duration::hours(1));
    assert_eq!(r.plan.state, PlanState::Running, "an away instance is not on the target");
    assert!(r.plan.reason.contains("1 instances in scope do not run 1.1.0"), "{}", r.plan.reason);
    assert_eq!(w.bindings[&("s0".to_owned(), "mesh".to_owned())].version, "1.0.0", "no promotion yet");
    // Past the TTL it is gone: accounted for, no longer waited for.
    w.instances[2].gone = true;
    plan = step_at(&mut w, &r.plan, FRIDAY + time::Duration::hours(2));
    assert_eq!(plan.state, PlanState::Completed, "{}", plan.reason);
    assert_eq!(plan.accounted.get("gone"), Some(&1));
    assert_eq!(w.bindings[&("s0".to_owned(), "mesh".to_owned())].version, "1.1.0");
}

#[test]
fn a_rollback_ends_only_when_every_changed_instance_is_back() {
    let mut w = world(1, 2);
    let plan = new_plan(&w, one_phase("10m", json!({})), FRIDAY);
    let mut plan = step_at(&mut w, &plan, FRIDAY);
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(1));
    assert!(w.instances.iter().all(|i| i.sidecars[0].version == "1.1.0"));
    // The operator's rollback (plans::actions): records and targets back, the plan follows.
    for o in w.overrides.values_mut() {
        o.version = o.previous.clone();
    }
    for t in w.targets.values_mut() {
        t.version = t.base_version.clone();
    }
    plan.rolling_back = true;
    w.agents = Agents::Stall;
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(2));
    assert_eq!(plan.state, PlanState::Running);
    assert_eq!(plan.reason, "rolling back: 2 of 2 changed instances are not back yet");
    w.instances[0].sidecars[0].version = "1.0.0".into();
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(3));
    assert_eq!(plan.reason, "rolling back: 1 of 2 changed instances are not back yet");
    w.instances[1].sidecars[0].version = "1.0.0".into();
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(4));
    assert_eq!(plan.state, PlanState::RolledBack);
    assert!(!plan.rolling_back);
    assert_eq!(plan.phases[0].batches[0].state, BatchState::RolledBack);
}

/// `services` services of `per_service` instances, the first `canaries` of each in stage
/// `canary`; a plan whose `gray` phase moves one service's canaries per batch, then `full`.
fn staged(services: usize, per_service: usize, canaries: usize, bake: &str) -> (World, Plan) {
    let mut w = world(services, per_service);
    for i in &mut w.instances {
        let n: usize = i.id.rsplit('i').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        if n < canaries {
            i.labels.stage = "canary".into();
        }
    }
    let body = json!({"feature_services": {"per_trait_value": 0}, "phases": [
        {"name": "gray", "stage": "canary", "batching": {"strategy": "linear", "size": 1}, "bake": bake},
        {"name": "full", "batching": {"strategy": "linear", "size": 2}, "bake": bake}
    ]});
    let plan = new_plan(&w, body, FRIDAY);
    (w, plan)
}

/// The position of the first gray batch holding `service`.
fn first_batch_of(plan: &Plan, service: &str) -> usize {
    plan.phases[0].batches.iter().position(|b| b.cells.iter().any(|c| c.service == service)).unwrap()
}

#[test]
fn each_effect_blocks_the_first_batch_that_holds_an_affected_service_with_its_evidence() {
    for (metric, size, expect) in [
        ("error_ratio", 0.01, "error_ratio"),
        ("latency_p99_ms", 10.0, "latency_p99_ms"),
        ("cpu_percent", 30.0, "cpu_percent"),
        ("rss_mib", 2.0, "rss"),
    ] {
        let (mut w, plan) = staged(4, 8, 2, "5m");
        w.signals.effect = Some((metric, size));
        w.signals.affected = vec!["s2".into()];
        let expected = first_batch_of(&plan, "s2");
        let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::days(1));
        assert_eq!(r.plan.state, PlanState::Blocked, "{metric}: {}", r.plan.reason);
        let gray = &r.plan.phases[0].batches;
        assert_eq!(gray[expected].state, BatchState::Failed, "{metric}: the batch of s2 fails");
        assert!(
            gray[..expected]
                .iter()
                .all(|b| b.state == BatchState::Passed && b.verdict == Some(outrider_model::Verdict::Pass))
        );
        assert!(gray[expected..].iter().skip(1).all(|b| b.started_at.is_none()), "{metric}: nothing after it starts");
        let incident = &r.plan.incidents[0];
        assert!(incident.metric.starts_with(expect), "{metric}: incident on {}", incident.metric);
        assert_eq!(incident.service.as_deref(), Some("s2"));
        assert!(incident.p_value.is_some_and(|p| p < 0.01), "{metric}: {:?}", incident.p_value);
        assert!(incident.effect.is_some_and(|e| e.absolute > 0.0));
        assert_eq!(incident.instances.len(), 2, "{metric}: the two canaries of s2");
        assert!(
            incident.canary.is_some_and(|c| c.instances == 2) && incident.baseline.is_some_and(|b| b.instances > 0)
        );
        assert!(incident.test.contains("mann-whitney"), "{}", incident.test);
        assert_eq!(r.plan.blast_radius, 2 * (expected as u64 + 1), "{metric}: only the canaries judged so far ran it");
        let analysis = gray[expected].analysis.as_ref().unwrap();
        assert_eq!(analysis.outcome, outrider_model::Outcome::Fail);
        assert!(
            analysis
                .metrics
                .iter()
                .any(|e| e.verdict.metric == incident.metric && e.verdict.outcome == outrider_model::Outcome::Fail)
        );
    }
}

#[test]
fn a_healthy_version_under_noise_completes_with_every_batch_judged() {
    let (mut w, plan) = staged(4, 8, 2, "5m");
    let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::days(1));
    assert_eq!(r.plan.state, PlanState::Completed, "{}", r.plan.reason);
    for b in r.plan.phases.iter().flat_map(|p| &p.batches) {
        let a = b.analysis.as_ref().unwrap();
        assert_eq!(a.outcome, outrider_model::Outcome::Pass, "{}", a.reason);
        assert!(a.metrics.iter().any(|e| e.verdict.metric == "cpu_percent"), "every verdict lists what was compared");
    }
}

#[test]
fn too_little_evidence_extends_the_bake_then_blocks_for_a_human() {
    let (mut w, plan) = staged(1, 3, 1, "1m");
    w.signals.every = time::Duration::seconds(30);
    let r = run(&mut w, plan, FRIDAY, FRIDAY + time::Duration::days(1));
    assert_eq!(r.plan.state, PlanState::Blocked);
    assert!(r.plan.reason.starts_with("not enough evidence"), "{}", r.plan.reason);
    let b = &r.plan.phases[0].batches[0];
    assert_eq!(
        (b.state, b.verdict, b.extensions),
        (BatchState::Baking, Some(outrider_model::Verdict::Inconclusive), 2)
    );
    assert_eq!(r.end - b.applied_at.unwrap(), time::Duration::minutes(3), "three bakes in all");
    assert!(r.plan.incidents.is_empty(), "no harm was seen");
    // A human approves: the plan goes on.
    let mut plan = r.plan;
    super::approve(&mut plan, r.end);
    plan.state = PlanState::Running;
    let step = reconcile(&plan, &w, r.end);
    assert_eq!(step.plan.phases[0].batches[0].state, BatchState::Passed);
    assert_eq!(step.plan.phases[1].batches[0].state, BatchState::Applying, "the next batch starts");
}

#[test]
fn a_canary_that_deployed_counts_again_one_bake_after_its_deploy() {
    let (mut w, plan) = staged(1, 8, 1, "5m");
    let mut plan = step_at(&mut w, &plan, FRIDAY);
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(1));
    assert_eq!(plan.phases[0].batches[0].state, BatchState::Baking);
    // The batch's only canary deploys its service a minute into the bake.
    w.now = FRIDAY + time::Duration::minutes(1);
    w.deploy(0, "1.1.0");
    // At the bake's end it has no samples that count: the bake is extended, not blocked.
    let r = run(
        &mut w,
        plan,
        FRIDAY + time::Duration::minutes(1),
        FRIDAY + time::Duration::minutes(6) + time::Duration::seconds(1),
    );
    let b = &r.plan.phases[0].batches[0];
    assert_eq!((b.state, b.extensions), (BatchState::Baking, 1), "{}", r.plan.reason);
    // One bake after the deploy its samples count again, and the extended bake passes on them.
    let r = run(
        &mut w,
        r.plan,
        FRIDAY + time::Duration::minutes(6) + time::Duration::seconds(1),
        FRIDAY + time::Duration::minutes(12),
    );
    let b = &r.plan.phases[0].batches[0];
    assert_eq!(b.state, BatchState::Passed, "{}", r.plan.reason);
    let latency = b.analysis.as_ref().unwrap().metrics.iter().find(|e| e.verdict.metric == "latency_p99_ms").unwrap();
    assert_eq!(latency.verdict.canary.instances, 1, "{latency:?}");
}

#[test]
fn a_business_deploy_during_the_bake_does_not_fail_the_batch() {
    let (mut w, plan) = staged(1, 8, 3, "5m");
    // The service's own new build is much slower: whoever deploys it shows three times the
    // latency, whatever the sidecar runs.
    w.signals.deploy_effect = Some(("latency_p99_ms", 40.0));
    let mut plan = step_at(&mut w, &plan, FRIDAY);
    plan = step_at(&mut w, &plan, FRIDAY + time::Duration::seconds(1));
    assert_eq!(plan.phases[0].batches[0].state, BatchState::Baking);
    // A minute into the bake, two of the three canaries and two baselines deploy it.
    w.now = FRIDAY + time::Duration::minutes(1);
    for i in [0, 1] {
        w.deploy(i, "1.1.0");
    }
    for i in [5, 6] {
        w.deploy(i, "1.0.0");
    }
    let r = run(&mut w, plan, FRIDAY + time::Duration::minutes(1), FRIDAY + time::Duration::minutes(6));
    let b = &r.plan.phases[0].batches[0];
    assert_eq!(b.state, BatchState::Passed, "{}", r.plan.reason);
    let a = b.analysis.as_ref().unwrap();
    let latency = a.metrics.iter().find(|e| e.verdict.metric == "latency_p99_ms").unwrap();
    assert_eq!(latency.verdict.canary.instances, 1, "the deployed canaries are left out");
    assert_eq!(latency.verdict.baseline.instances, 3, "and so are the deployed baselines");
}

#[test]
fn a_fix_forward_records_what_instances_ran_before_the_plan_it_supersedes() {
    // Plan p0 moved s0's instances from 1.0.0 to the bad 1.2.0, then was superseded.
    let mut w = world(1, 2);
    for i in &mut w.instances {
        i.sidecars[0].version = "1.2.0".into();
        let bad = Override {
            plan: "p0".into(),
            phase: 0,
            batch: 0,
            version: "1.2.0".into(),
            mode: UpgradeMode::Hot,
            previous: "1.0.0".into(),
            base_version: "1.0.0".into(),
            exits_before: 0,
        };
        w.overrides.insert((i.service.clone(), i.id.clone(), "mesh".into()), bad);
    }
    let cell = |stage: &str| CellRef {
        service: "s0".into(),
        sidecar: "mesh".into(),
        region: "r1".into(),
        env: "prod".into(),
        stage: stage.into(),
    };
    let bad = CellTarget {
        plan: "p0".into(),
        phase: 0,
        batch: 0,
        version: "1.2.0".into(),
        mode: UpgradeMode::Hot,
        base_version: "1.0.0".into(),
    };
    w.targets.insert(cell("full"), bad);
    let previous = |w: &World| w.overrides.values().map(|o| (o.plan.clone(), o.previous.clone())).collect::<Vec<_>>();
    let p1 = ("p1".to_owned(), "1.0.0".to_owned());
    let mut body = one_phase("10m", json!({}));
    body["supersedes"] = json!("p0");
    let fix = new_plan(&w, body, FRIDAY);
    let mut fixed = World {
        overrides: w.overrides.clone(),
        targets: w.targets.clone(),
        instances: w.instances.clone(),
        ..world(1, 2)
    };
    step_at(&mut fixed, &fix, FRIDAY);
    assert_eq!(previous(&fixed), [p1.clone(), p1], "a rollback of the fix returns to 1.0.0, not to 1.2.0");
    let targets: Vec<_> = fixed.targets.iter().map(|(c, t)| (c.stage.as_str(), t.plan.as_str())).collect();
    assert_eq!(targets, [("all", "p1")], "the superseded plan's target of the cell is retired");
    // Without `supersedes`, a plan records what the instances run now.
    let plain = new_plan(&w, one_phase("10m", json!({})), FRIDAY);
    step_at(&mut w, &plain, FRIDAY);
    assert!(previous(&w).iter().all(|(plan, prev)| plan == "p1" && prev == "1.2.0"), "{:?}", previous(&w));
}
