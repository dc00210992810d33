//! Property tests of the planner and the simulator on random fleets and plan bodies, against
//! a direct count and an independent statement of the order.

use std::collections::{BTreeMap, BTreeSet};

use outrider_model::{
    Batching, Caps, FeatureServices, HumanDuration, Phase, PhaseSpec, PlanSpec, Priority, Selector, Service,
    UpgradeMode, VersionMatch,
};
use outrider_rollout::{FleetView, InstanceView, Planned, SimAssumptions, Windows, plan, simulate};
use proptest::{prelude::*, sample::subsequence, test_runner::FileFailurePersistence};
use time::{OffsetDateTime, UtcOffset, macros::datetime};

const REGIONS: [&str; 4] = ["boe", "cn-north", "cn-east", "sg"];
const ENVS: [&str; 2] = ["preview", "prod"];
const STAGES: [&str; 3] = ["canary", "single-dc", "full"];
const VERSIONS: [Option<&str>; 4] = [None, Some("1.0.0"), Some("1.1.0"), Some("0.9.0")];
const TARGET: &str = "1.1.0";
const LANGS: [&str; 3] = ["go", "java", "rust"];
const PROTOCOLS: [&str; 2] = ["http", "grpc"];

#[derive(Debug, Clone)]
struct Inst {
    service: String,
    region: &'static str,
    env: &'static str,
    stage: &'static str,
    version: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Case {
    services: Vec<Service>,
    instances: Vec<Inst>,
    spec: PlanSpec,
}

impl Case {
    fn view(&self, reversed: bool) -> FleetView {
        fn view(i: &Inst) -> InstanceView<'_> {
            InstanceView { service: &i.service, region: i.region, env: i.env, stage: i.stage, version: i.version }
        }
        let services = self.services.clone();
        if reversed {
            FleetView::from_instances(services, self.instances.iter().rev().map(view))
        } else {
            FleetView::from_instances(services, self.instances.iter().map(view))
        }
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

fn name(i: usize) -> String {
    format!("svc-{i:02}")
}

fn service(i: usize) -> impl Strategy<Value = Service> {
    let prio = prop::sample::select(vec![Priority::P0, Priority::P1, Priority::P2]);
    let lang = prop::option::of(prop::sample::select(LANGS.to_vec()));
    let proto = prop::option::of(prop::sample::select(PROTOCOLS.to_vec()));
    (prio, lang, proto, prop::bool::weighted(0.15)).prop_map(move |(priority, lang, proto, protected)| {
        let mut traits = BTreeMap::new();
        traits.extend(lang.map(|l| ("lang".to_owned(), l.to_owned())));
        traits.extend(proto.map(|p| ("protocol".to_owned(), p.to_owned())));
        Service { name: name(i), priority, traits, protected, protected_periods: Vec::new() }
    })
}

fn phase(i: usize) -> impl Strategy<Value = PhaseSpec> {
    let stage = prop::sample::select(vec!["all", "canary", "single-dc", "full"]);
    let batching = prop_oneof![
        (1u64..4, 1u64..4).prop_map(|(start, factor)| Batching::Exponential { start, factor }),
        (1u64..6).prop_map(|size| Batching::Linear { size }),
    ];
    let caps = || {
        (prop::option::of(1u64..6), prop::option::of(1u64..25)).prop_map(|(cells, instances)| Caps { cells, instances })
    };
    (stage, batching, caps(), caps(), 1u32..5, 0u64..90).prop_map(
        move |(stage, batching, max_per_batch, max_per_day, k, bake)| PhaseSpec {
            name: format!("phase-{i}"),
            stage: stage.to_owned(),
            mode: UpgradeMode::Hot,
            batching,
            max_per_batch,
            max_per_day,
            bake: HumanDuration::from_secs(bake * 60),
            region_parallelism: k,
            batch_timeout: HumanDuration::from_secs(600),
            deadline: None,
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..12).prop_flat_map(|n| {
        let names: Vec<String> = (0..n).map(name).collect();
        let services: Vec<_> = (0..n).map(service).collect();
        // Service index n is a service the fleet does not know.
        let instance = (
            0..=n,
            prop::sample::select(REGIONS.to_vec()),
            prop::sample::select(ENVS.to_vec()),
            prop::sample::select(STAGES.to_vec()),
            prop::sample::select(VERSIONS.to_vec()),
        )
            .prop_map(|(s, region, env, stage, version)| Inst {
                service: name(s),
                region,
                env,
                stage,
                version,
            });
        let selector = (
            prop::option::of(subsequence(names.clone(), 1..=n)),
            prop::option::of((prop::sample::select(LANGS.to_vec()), any::<bool>())),
            prop::option::of(subsequence(REGIONS.to_vec(), 1..=4)),
            prop::option::of(subsequence(ENVS.to_vec(), 1..=2)),
        )
            .prop_map(|(services, lang, regions, envs)| Selector {
                services: services.unwrap_or_default(),
                traits: lang
                    .filter(|(_, on)| *on)
                    .map(|(l, _)| ("lang".to_owned(), l.to_owned()))
                    .into_iter()
                    .collect(),
                regions: regions.unwrap_or_default().into_iter().map(String::from).collect(),
                envs: envs.unwrap_or_default().into_iter().map(String::from).collect(),
            });
        let mut order_pool: Vec<&str> = REGIONS.to_vec();
        order_pool.push("nowhere");
        let region_order = subsequence(order_pool, 0..=5).prop_shuffle();
        let features = (0u32..3, subsequence(names, 0..=n.min(2)))
            .prop_map(|(per_trait_value, services)| FeatureServices { per_trait_value, services });
        let from = prop::sample::select(vec![vec![], vec!["1.0.0"], vec!["<1.0.0"], vec!["0.9.0", "1.0.0"]]);
        let phases = (1usize..4).prop_flat_map(|p| (0..p).map(phase).collect::<Vec<_>>());
        (services, prop::collection::vec(instance, 0..120), selector, region_order, features, from, phases).prop_map(
            |(services, instances, selector, region_order, feature_services, from, phases)| Case {
                services,
                instances,
                spec: PlanSpec {
                    name: "prop".into(),
                    sidecar: "mesh".into(),
                    target_version: TARGET.into(),
                    from_versions: from.into_iter().map(String::from).collect(),
                    selector,
                    region_order: region_order.into_iter().map(String::from).collect(),
                    feature_services,
                    windows: Vec::new(),
                    phases,
                    analysis: None,
                    supersedes: None,
                    on_fail: Default::default(),
                },
            },
        )
    })
}

/// The direct statement of the scope, instance by instance.
fn in_scope(case: &Case, i: &Inst) -> bool {
    let spec = &case.spec;
    let sel = &spec.selector;
    let listed = |list: &[String], s: &str| list.is_empty() || list.iter().any(|x| x == s);
    let Some(svc) = case.service(&i.service) else { return false };
    let version_ok = i.version.is_some_and(|v| {
        v != TARGET
            && (spec.from_versions.is_empty()
                || spec.from_versions.iter().any(|m| VersionMatch::parse(m).unwrap().matches(v)))
    });
    listed(&sel.services, &svc.name)
        && sel.traits.iter().all(|(k, v)| svc.traits.get(k) == Some(v))
        && !svc.protected
        && listed(&sel.regions, i.region)
        && listed(&sel.envs, i.env)
        && version_ok
}

type CellId = (String, String, String);

/// Instances per cell of each phase, counted directly.
fn expected_cells(case: &Case) -> Vec<BTreeMap<CellId, u64>> {
    let takes = |p: &PhaseSpec, i: &Inst| p.stage == "all" || p.stage == i.stage;
    let mut out = vec![BTreeMap::new(); case.spec.phases.len()];
    for i in case.instances.iter().filter(|i| in_scope(case, i)) {
        // Each instance belongs to the first phase whose stage takes it, and to later phases
        // with the same stage filter.
        let Some(first) = case.spec.phases.iter().position(|p| takes(p, i)) else { continue };
        for (pi, p) in case.spec.phases.iter().enumerate().skip(first) {
            if takes(p, i) && p.stage == case.spec.phases[first].stage {
                *out[pi].entry((i.service.clone(), i.region.to_owned(), i.env.to_owned())).or_insert(0) += 1;
            }
        }
    }
    out
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn prio_rank(p: Priority) -> u8 {
    match p {
        Priority::P2 => 0,
        Priority::P1 => 1,
        Priority::P0 => 2,
    }
}

/// The feature services, stated directly.
fn expected_features(case: &Case, cells: &[BTreeMap<CellId, u64>]) -> Vec<String> {
    let used: BTreeSet<&str> = cells.iter().flat_map(|c| c.keys()).map(|(s, _, _)| s.as_str()).collect();
    let mut by_value: BTreeMap<(&str, &str), Vec<&Service>> = BTreeMap::new();
    for s in case.services.iter().filter(|s| used.contains(s.name.as_str())) {
        for (k, v) in &s.traits {
            by_value.entry((k, v)).or_default().push(s);
        }
    }
    let mut out = BTreeSet::new();
    for list in by_value.values_mut() {
        list.sort_by_key(|s| (prio_rank(s.priority), fnv(&s.name), s.name.clone()));
        out.extend(list.iter().take(case.spec.feature_services.per_trait_value as usize).map(|s| s.name.clone()));
    }
    out.extend(case.spec.feature_services.services.iter().filter(|n| used.contains(n.as_str())).cloned());
    out.into_iter().collect()
}

/// The order key, stated directly: region, env, feature first, P2 → P0, name.
fn key(case: &Case, features: &[String], c: &outrider_model::Cell) -> ((u8, usize, String), u8, u8, u8, String) {
    let order = &case.spec.region_order;
    let region = if order.is_empty() {
        (u8::from(c.region != "boe"), 0, c.region.clone())
    } else {
        match order.iter().position(|r| *r == c.region) {
            Some(p) => (0, p, String::new()),
            None => (1, 0, c.region.clone()),
        }
    };
    let env = u8::from(c.env != "preview");
    let feature = u8::from(!features.contains(&c.service));
    let prio = prio_rank(case.service(&c.service).unwrap().priority);
    (region, env, feature, prio, c.service.clone())
}

fn nominal(batching: &Batching, k: usize) -> u64 {
    match *batching {
        Batching::Linear { size } => size,
        Batching::Exponential { start, factor } => (0..k).fold(start, |s, _| s.saturating_mul(factor)),
    }
}

fn check_phase(case: &Case, spec: &PhaseSpec, phase: &Phase, expected: &BTreeMap<CellId, u64>, features: &[String]) {
    // Every in-scope cell exactly once, with its direct count; nothing else.
    let mut seen: BTreeMap<CellId, u64> = BTreeMap::new();
    for c in phase.batches.iter().flat_map(|b| &b.cells) {
        let id = (c.service.clone(), c.region.clone(), c.env.clone());
        assert!(seen.insert(id.clone(), c.instances).is_none(), "cell {id:?} twice in {}", phase.name);
    }
    assert_eq!(&seen, expected, "phase {}", phase.name);

    // Regions → lanes: position in the order mod k.
    let k = spec.region_parallelism as usize;
    let mut regions: Vec<&outrider_model::Cell> = phase.batches.iter().flat_map(|b| &b.cells).collect();
    regions.sort_by_key(|c| key(case, features, c));
    let mut region_list: Vec<&str> = regions.iter().map(|c| c.region.as_str()).collect();
    region_list.dedup();
    let lane_of = |r: &str| (region_list.iter().position(|x| *x == r).unwrap() % k) as u32;

    let mut lanes: BTreeMap<u32, Vec<&outrider_model::Batch>> = BTreeMap::new();
    for (i, b) in phase.batches.iter().enumerate() {
        assert_eq!(b.index as usize, i);
        assert!(!b.cells.is_empty());
        assert!(b.cells.iter().all(|c| lane_of(&c.region) == b.lane), "batch {i} mixes lanes");
        // max_per_batch holds, but a single cell is never split.
        let cap = spec.max_per_batch;
        assert!(cap.cells.is_none_or(|m| b.cells.len() as u64 <= m));
        assert!(b.cells.len() == 1 || cap.instances.is_none_or(|m| b.instance_count() <= m), "batch {i} over the cap");
        lanes.entry(b.lane).or_default().push(b);
    }
    // Lanes interleave: the n-th batch of a lane comes after the (n-1)-th of every other lane
    // that has one.
    let mut rank_in_lane = BTreeMap::new();
    let mut last_round = 0;
    for b in &phase.batches {
        let r = rank_in_lane.entry(b.lane).or_insert(0usize);
        assert!(*r >= last_round, "lanes do not interleave");
        last_round = *r;
        *r += 1;
    }

    for batches in lanes.values() {
        // The order key increases along a lane.
        let keys: Vec<_> = batches.iter().flat_map(|b| &b.cells).map(|c| key(case, features, c)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "order broken in a lane of {}: {keys:?}", phase.name);
        // Each batch is as big as the batching and the caps allow.
        let cells: Vec<u64> = batches.iter().flat_map(|b| &b.cells).map(|c| c.instances).collect();
        let mut at = 0;
        for (n, b) in batches.iter().enumerate() {
            let limit = nominal(&spec.batching, n).min(spec.max_per_batch.cells.unwrap_or(u64::MAX)) as usize;
            let len = b.cells.len();
            assert!(len <= limit);
            at += len;
            let full = len == limit
                || at == cells.len()
                || spec.max_per_batch.instances.is_some_and(|m| b.instance_count() + cells[at] > m);
            assert!(full, "batch {n} of a lane stopped early");
        }
    }
}

fn check(case: &Case) {
    let view = case.view(false);
    let planned = plan(&case.spec, &view).unwrap();
    let expected = expected_cells(case);
    let features = expected_features(case, &expected);
    assert_eq!(planned.feature_services, features);
    assert_eq!(planned.phases.len(), case.spec.phases.len());
    for ((spec, phase), exp) in case.spec.phases.iter().zip(&planned.phases).zip(&expected) {
        assert_eq!((&phase.name, &phase.stage), (&spec.name, &spec.stage));
        check_phase(case, spec, phase, exp, &features);
    }
    let total: u64 = expected.iter().flat_map(|c| c.values()).sum();
    assert_eq!(planned.instance_count(), total);
    // Deterministic, whatever order the instances come in.
    assert_eq!(plan(&case.spec, &view).unwrap(), planned);
    assert_eq!(plan(&case.spec, &case.view(true)).unwrap(), planned);
}

const START: OffsetDateTime = datetime!(2026-03-02 09:30 UTC);

fn check_simulation(case: &Case, planned: &Planned) {
    let assumptions = SimAssumptions::default();
    let sim = simulate(planned, &case.spec, &Windows::default(), &[], START, assumptions);
    let apply = time::Duration::try_from(assumptions.apply_time).unwrap();
    let mut phase_start = START;
    for (spec, phase) in case.spec.phases.iter().zip(&sim.phases) {
        let took = apply + time::Duration::try_from(spec.bake.0).unwrap();
        let mut lane_free: BTreeMap<u32, OffsetDateTime> = BTreeMap::new();
        let mut per_day: BTreeMap<time::Date, (u64, u64, usize)> = BTreeMap::new();
        let mut phase_end = phase_start;
        for b in &phase.batches {
            let start = b.predicted_start.expect("every batch has a start");
            assert!(start >= *lane_free.get(&b.lane).unwrap_or(&phase_start), "batch {} starts too early", b.index);
            lane_free.insert(b.lane, start + took);
            phase_end = phase_end.max(start + took);
            let day = per_day.entry(start.to_offset(UtcOffset::UTC).date()).or_default();
            *day = (day.0 + b.cells.len() as u64, day.1 + b.instance_count(), day.2 + 1);
        }
        for (cells, instances, batches) in per_day.values() {
            let cap = spec.max_per_day;
            let within = cap.cells.is_none_or(|c| *cells <= c) && cap.instances.is_none_or(|c| *instances <= c);
            assert!(within || *batches == 1, "max_per_day broken: {cells} cells, {instances} instances");
        }
        phase_start = phase_end;
    }
    assert_eq!(sim.finish, phase_start);
    assert_eq!(sim.counts.total, planned.instance_count());
    assert_eq!(sim.counts.pending, sim.counts.total);
}

proptest! {
    // Integration tests have no lib.rs beside them: keep failures next to this file.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn plans_cover_the_scope_once_in_order_within_caps(case in case()) {
        check(&case);
    }

    #[test]
    fn simulations_respect_lanes_phases_and_daily_caps(case in case()) {
        let planned = plan(&case.spec, &case.view(false)).unwrap();
        check_simulation(&case, &planned);
    }
}
