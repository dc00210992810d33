use outrider_model::{ChangeWindow, Freeze, Priority, Service};
use time::macros::datetime;

use super::*;
use crate::{FleetView, InstanceView, plan};

const MONDAY: OffsetDateTime = datetime!(2026-03-02 00:00 UTC);

fn minutes(n: i64) -> OffsetDateTime {
    MONDAY + time::Duration::minutes(n)
}

/// Services `a`, `b`, … each with `n` instances in region `r1` (or `r1` and `r2`).
fn fleet(services: &[&str], regions: &[&str], n: usize) -> FleetView {
    let svcs = services
        .iter()
        .map(|s| Service {
            name: s.to_string(),
            priority: Priority::P2,
            traits: Default::default(),
            protected: false,
            protected_periods: Vec::new(),
        })
        .collect();
    let mut view = FleetView::new(svcs);
    for s in services {
        for region in regions {
            for _ in 0..n {
                view.push(InstanceView { service: s, region, env: "prod", stage: "full", version: Some("1.0.0") });
            }
        }
    }
    view
}

/// One-by-one batches, `bake` minutes, `parallelism` lanes, and `extra` phase members.
fn spec(bake: u32, parallelism: u32, extra: &str) -> PlanSpec {
    serde_json::from_str(&format!(
        r#"{{"sidecar":"mesh","target_version":"1.1.0","feature_services":{{"per_trait_value":0}},
            "phases":[{{"name":"p","batching":{{"strategy":"linear","size":1}},"bake":"{bake}m",
                        "region_parallelism":{parallelism}{extra}}}]}}"#
    ))
    .unwrap()
}

fn run(f: &FleetView, s: &PlanSpec, windows: &Windows, freezes: &[Freeze]) -> Simulation {
    let planned = plan(s, f).unwrap();
    simulate(&planned, s, windows, freezes, MONDAY, SimAssumptions::default())
}

fn starts(sim: &Simulation) -> Vec<Option<OffsetDateTime>> {
    sim.phases.iter().flat_map(|p| &p.batches).map(|b| b.predicted_start).collect()
}

#[test]
fn batches_follow_each_other_after_apply_and_bake() {
    let f = fleet(&["a", "b", "c"], &["r1"], 2);
    let sim = run(&f, &spec(10, 1, ""), &Windows::default(), &[]);
    assert_eq!(starts(&sim), [Some(minutes(0)), Some(minutes(12)), Some(minutes(24))]);
    assert_eq!(sim.finish, minutes(36));
    assert!((sim.days - 36.0 / 1440.0).abs() < 1e-9);
    assert_eq!(sim.counts, Counts { total: 6, done: 0, failed: 0, pending: 6, awaiting_deploy: 0 });
    assert_eq!(sim.start, MONDAY);
}

#[test]
fn lanes_advance_side_by_side_and_phases_one_after_another() {
    let f = fleet(&["a", "b"], &["r1", "r2"], 1);
    let two: PlanSpec = serde_json::from_str(
        r#"{"sidecar":"mesh","target_version":"1.1.0","phases":[
             {"name":"one","batching":{"strategy":"linear","size":1},"bake":"10m","region_parallelism":2},
             {"name":"two","batching":{"strategy":"linear","size":4},"bake":"1h"}]}"#,
    )
    .unwrap();
    let sim = run(&f, &two, &Windows::default(), &[]);
    // Phase one: lanes r1 and r2, two batches each, side by side; phase two starts at 24m.
    assert_eq!(
        starts(&sim),
        [Some(minutes(0)), Some(minutes(0)), Some(minutes(12)), Some(minutes(12)), Some(minutes(24))]
    );
    assert_eq!(sim.finish, minutes(24 + 62));
}

#[test]
fn batches_wait_for_the_window() {
    let f = fleet(&["a", "b"], &["r1"], 1);
    let windows = Windows::new(&[ChangeWindow {
        days: "mon-fri".into(),
        from: "10:00".into(),
        to: "10:20".into(),
        tz: "UTC".into(),
    }])
    .unwrap();
    let sim = run(&f, &spec(30, 1, ""), &windows, &[]);
    // 10:00 Monday, then 10:32 is past the window: Tuesday 10:00.
    assert_eq!(starts(&sim), [Some(minutes(600)), Some(minutes(24 * 60 + 600))]);
    assert!(sim.notes.iter().any(|n| n.contains("2 batch(es) waited for a change window")), "{:?}", sim.notes);
}

#[test]
fn a_freeze_on_one_service_delays_only_its_batches() {
    let f = fleet(&["a", "b"], &["r1", "r2"], 1);
    // Lane 0 = r1 (a, b), lane 1 = r2 (a, b); `b` is frozen until 01:00.
    let freezes = [Freeze {
        id: "f1".into(),
        from: minutes(0),
        to: minutes(60),
        reason: "release".into(),
        services: vec!["b".into()],
    }];
    let sim = run(&f, &spec(10, 2, ""), &Windows::default(), &freezes);
    assert_eq!(starts(&sim), [Some(minutes(0)), Some(minutes(0)), Some(minutes(60)), Some(minutes(60))]);
    assert!(sim.notes.iter().any(|n| n.contains("2 batch(es) waited for a freeze")), "{:?}", sim.notes);
}

#[test]
fn a_protected_period_of_a_service_delays_its_batches() {
    let mut f = fleet(&["a", "b"], &["r1"], 1);
    let mut planned = plan(&spec(10, 1, ""), &f).unwrap();
    assert!(planned.protected_periods.is_empty());
    // The same fleet where `a` is protected for the first half hour.
    let sale = outrider_model::ProtectedPeriod { from: minutes(-5), to: minutes(30), reason: "sale".into() };
    let mut services = f.services().to_vec();
    services[0].protected_periods.push(sale.clone());
    f = FleetView::new(services);
    for s in ["a", "b"] {
        f.push(InstanceView { service: s, region: "r1", env: "prod", stage: "full", version: Some("1.0.0") });
    }
    planned = plan(&spec(10, 1, ""), &f).unwrap();
    assert_eq!(planned.protected_periods, [("a".to_owned(), vec![sale])].into());
    let sim = simulate(&planned, &spec(10, 1, ""), &Windows::default(), &[], MONDAY, SimAssumptions::default());
    assert_eq!(starts(&sim), [Some(minutes(30)), Some(minutes(42))]);
}

#[test]
fn max_per_day_moves_batches_to_the_next_utc_day() {
    let f = fleet(&["a", "b", "c"], &["r1"], 2);
    let s = spec(1, 1, r#","max_per_day":{"cells":2}"#);
    let sim = run(&f, &s, &Windows::default(), &[]);
    assert_eq!(starts(&sim), [Some(minutes(0)), Some(minutes(3)), Some(minutes(24 * 60))]);
    assert!(sim.notes.iter().any(|n| n.contains("1 batch(es) waited for the next UTC day")), "{:?}", sim.notes);

    // A batch over the daily instance cap on its own runs alone on its day.
    let s = spec(1, 1, r#","max_per_day":{"instances":1}"#);
    let sim = run(&f, &s, &Windows::default(), &[]);
    assert_eq!(starts(&sim), [Some(minutes(0)), Some(minutes(24 * 60)), Some(minutes(48 * 60))]);
    assert!(sim.notes.iter().any(|n| n.contains("3 batch(es) exceed max_per_day")), "{:?}", sim.notes);
}

#[test]
fn nothing_in_scope_finishes_at_once() {
    let f = fleet(&["a"], &["r1"], 0);
    let sim = run(&f, &spec(10, 1, ""), &Windows::default(), &[]);
    assert_eq!((sim.finish, sim.days, sim.counts.total), (MONDAY, 0.0, 0));
    assert!(sim.notes.iter().any(|n| n.contains("nothing in scope")), "{:?}", sim.notes);
}

#[test]
fn running_out_of_clock_is_reported() {
    let f = fleet(&["a", "b"], &["r1"], 1);
    let s = spec(30, 1, "");
    let planned = plan(&s, &f).unwrap();
    let end = datetime!(9999-12-31 23:00 UTC);
    let sim = simulate(&planned, &s, &Windows::default(), &[], end, SimAssumptions::default());
    assert_eq!(starts(&sim), [Some(end), Some(end + time::Duration::minutes(32))]);
    assert!(sim.notes.iter().any(|n| n.contains("cannot go on")), "{:?}", sim.notes);
}

#[test]
fn on_deploy_phases_last_until_their_instances_deploy_or_their_deadline() {
    let f = fleet(&["a"], &["r1"], 4);
    let on_deploy = |extra: &str| spec(0, 1, &format!(r#","mode":"on-deploy"{extra}"#));
    let daily = SimAssumptions { deploys_per_day: 1.0, ..SimAssumptions::default() };
    let planned = plan(&on_deploy(""), &f).unwrap();
    // Four instances deploying once a day on average: the last one after H(4) = 2.083 days.
    let sim = simulate(&planned, &on_deploy(""), &Windows::default(), &[], MONDAY, daily);
    assert!((sim.days - 25.0 / 12.0).abs() < 1e-3, "{} days", sim.days);
    // A deadline cuts it short.
    let capped = on_deploy(r#","deadline":"1d""#);
    let sim = simulate(&plan(&capped, &f).unwrap(), &capped, &Windows::default(), &[], MONDAY, daily);
    assert!((sim.days - 1.0).abs() < 1e-6, "{} days", sim.days);
    // No deploys and no deadline: it never ends, and the simulation says so.
    let never = SimAssumptions { deploys_per_day: 0.0, ..SimAssumptions::default() };
    let sim = simulate(&planned, &on_deploy(""), &Windows::default(), &[], MONDAY, never);
    assert!(sim.phases[0].batches[0].predicted_start.is_some());
    assert!(sim.notes.iter().any(|n| n.contains("cannot go on")), "{:?}", sim.notes);
}
