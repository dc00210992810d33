use std::collections::BTreeMap;

use outrider_model::{Priority, Service};

use super::*;
use crate::{fleet_view::InstanceView, hash::stable_hash};

fn svc(name: &str, priority: Priority, traits: &[(&str, &str)]) -> Service {
    Service {
        name: name.into(),
        priority,
        traits: traits.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        protected: false,
        protected_periods: Vec::new(),
    }
}

/// `(service, region, env, stage, version)`.
type Inst<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>);

fn fleet(services: Vec<Service>, instances: &[Inst<'_>]) -> FleetView {
    FleetView::from_instances(
        services,
        instances.iter().map(|&(service, region, env, stage, version)| InstanceView {
            service,
            region,
            env,
            stage,
            version,
        }),
    )
}

/// A body to 1.1.0 with the given extra fields (JSON object members).
fn spec(extra: &str) -> PlanSpec {
    let sep = if extra.is_empty() { "" } else { "," };
    serde_json::from_str(&format!(r#"{{"sidecar":"mesh","target_version":"1.1.0"{sep}{extra}}}"#)).unwrap()
}

/// One phase over every stage, with the given batching and no feature service.
fn one_phase(batching: &str, parallelism: u32, extra: &str) -> PlanSpec {
    let sep = if extra.is_empty() { "" } else { "," };
    spec(&format!(
        r#""feature_services":{{"per_trait_value":0}},
           "phases":[{{"name":"all","batching":{batching},"region_parallelism":{parallelism}}}]{sep}{extra}"#
    ))
}

const ONE_BY_ONE: &str = r#"{"strategy":"linear","size":1}"#;

/// Batches of a phase as `(lane, ["service/region/env:n", …])`.
fn batches(phase: &Phase) -> Vec<(u32, Vec<String>)> {
    phase
        .batches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            assert_eq!(b.index as usize, i);
            assert_eq!(b.state, outrider_model::BatchState::Pending);
            let cells =
                b.cells.iter().map(|c| format!("{}/{}/{}:{}", c.service, c.region, c.env, c.instances)).collect();
            (b.lane, cells)
        })
        .collect()
}

/// The cells of a phase in order, flattened.
fn order(phase: &Phase) -> Vec<String> {
    batches(phase).into_iter().flat_map(|(_, c)| c).collect()
}

#[test]
fn scope_follows_selector_protection_and_versions() {
    let mut protected = svc("p", Priority::P2, &[("lang", "go")]);
    protected.protected = true;
    let services =
        vec![svc("a", Priority::P2, &[("lang", "go")]), svc("b", Priority::P2, &[("lang", "java")]), protected];
    let f = fleet(
        services,
        &[
            ("a", "r1", "prod", "full", Some("1.0.0")),
            ("a", "r1", "prod", "full", Some("1.1.0")), // on the target
            ("a", "r1", "prod", "full", None),          // no sidecar
            ("a", "r1", "prod", "full", Some("0.9.0")), // outside from_versions
            ("a", "r2", "prod", "full", Some("1.0.0")), // region not selected
            ("a", "r1", "preview", "full", Some("1.0.0")),
            ("b", "r1", "prod", "full", Some("1.0.0")), // trait mismatch
            ("p", "r1", "prod", "full", Some("1.0.0")), // protected
            ("ghost", "r1", "prod", "full", Some("1.0.0")),
        ],
    );
    let s =
        one_phase(ONE_BY_ONE, 1, r#""from_versions":["1.0.0"],"selector":{"traits":{"lang":"go"},"regions":["r1"]}"#);
    let planned = plan(&s, &f).unwrap();
    assert_eq!(order(&planned.phases[0]), ["a/r1/preview:1", "a/r1/prod:1"]);

    // Without from_versions, any version but the target is in; with envs, only those.
    let s = one_phase(ONE_BY_ONE, 1, r#""selector":{"services":["a"],"envs":["prod"]}"#);
    assert_eq!(order(&plan(&s, &f).unwrap().phases[0]), ["a/r1/prod:2", "a/r2/prod:1"]);
}

#[test]
fn phases_take_their_stage_and_cells_merge_stages_and_versions() {
    let f = fleet(
        vec![svc("a", Priority::P2, &[])],
        &[
            ("a", "r1", "prod", "canary", Some("1.0.0")),
            ("a", "r1", "prod", "full", Some("1.0.0")),
            ("a", "r1", "prod", "full", Some("0.9.0")),
            ("a", "r1", "prod", "single-dc", Some("1.0.0")),
        ],
    );
    let planned = plan(&spec(""), &f).unwrap();
    let names: Vec<&str> = planned.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["gray", "full"]);
    assert_eq!(order(&planned.phases[0]), ["a/r1/prod:1"], "gray: the canary only");
    assert_eq!(order(&planned.phases[1]), ["a/r1/prod:3"], "full: the other stages and versions, in one cell");
    assert_eq!(planned.phases[0].mode, outrider_model::UpgradeMode::Hot);
    assert_eq!(planned.instance_count(), 4, "each instance counted once");
}

#[test]
fn order_is_region_env_feature_priority_name() {
    let services = vec![
        svc("p0", Priority::P0, &[]),
        svc("p1", Priority::P1, &[]),
        svc("p2-b", Priority::P2, &[]),
        svc("p2-a", Priority::P2, &[]),
        svc("feat", Priority::P0, &[]),
    ];
    let mut instances = Vec::new();
    for s in ["p0", "p1", "p2-b", "p2-a", "feat"] {
        for region in ["sg", "boe", "cn-north"] {
            for env in ["prod", "preview"] {
                instances.push((s, region, env, "full", Some("1.0.0")));
            }
        }
    }
    let f = fleet(services, &instances);
    let s = spec(
        r#""feature_services":{"per_trait_value":0,"services":["feat"]},
           "phases":[{"name":"all","batching":{"strategy":"linear","size":1}}]"#,
    );
    let planned = plan(&s, &f).unwrap();
    assert_eq!(planned.feature_services, ["feat"]);
    let mut expected = Vec::new();
    for region in ["boe", "cn-north", "sg"] {
        for env in ["preview", "prod"] {
            for s in ["feat", "p2-a", "p2-b", "p1", "p0"] {
                expected.push(format!("{s}/{region}/{env}:1"));
            }
        }
    }
    assert_eq!(order(&planned.phases[0]), expected);
}

#[test]
fn region_order_lists_first_then_the_rest_by_name() {
    let instances: Vec<Inst<'_>> =
        ["boe", "cn-east", "sg", "ap-1"].iter().map(|r| ("a", *r, "prod", "full", Some("1.0.0"))).collect();
    let f = fleet(vec![svc("a", Priority::P2, &[])], &instances);
    let s = one_phase(ONE_BY_ONE, 1, r#""region_order":["sg","nowhere","boe"]"#);
    let regions: Vec<String> =
        plan(&s, &f).unwrap().phases[0].batches.iter().map(|b| b.cells[0].region.clone()).collect();
    assert_eq!(regions, ["sg", "boe", "ap-1", "cn-east"]);
}

#[test]
fn exponential_batches_are_cut_by_max_per_batch() {
    let services: Vec<Service> = (0..10).map(|i| svc(&format!("s{i}"), Priority::P2, &[])).collect();
    let mut instances = Vec::new();
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        // s3 has 30 instances, the others 2.
        for _ in 0..if i == 3 { 30 } else { 2 } {
            instances.push((name.as_str(), "r1", "prod", "full", Some("1.0.0")));
        }
    }
    let f = fleet(services, &instances);
    let s = spec(
        r#""feature_services":{"per_trait_value":0},"phases":[{"name":"g",
            "batching":{"strategy":"exponential","start":1,"factor":2},
            "max_per_batch":{"cells":3,"instances":10}}]"#,
    );
    let got = batches(&plan(&s, &f).unwrap().phases[0]);
    let sizes: Vec<Vec<String>> = got.into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        sizes,
        [
            vec!["s0/r1/prod:2"],
            vec!["s1/r1/prod:2", "s2/r1/prod:2"],
            vec!["s3/r1/prod:30"], // over the instance cap: alone, never split
            vec!["s4/r1/prod:2", "s5/r1/prod:2", "s6/r1/prod:2"], // nominal 8, capped at 3 cells
            vec!["s7/r1/prod:2", "s8/r1/prod:2", "s9/r1/prod:2"],
        ]
    );
}

#[test]
fn lanes_are_bounded_by_the_regions_not_the_body() {
    let instances: Vec<Inst<'_>> =
        ["boe", "r1", "r2"].iter().map(|&r| ("a", r, "prod", "full", Some("1.0.0"))).collect();
    let f = fleet(vec![svc("a", Priority::P2, &[])], &instances);
    let three = plan(&one_phase(ONE_BY_ONE, 3, ""), &f).unwrap();
    let started = std::time::Instant::now();
    let most = plan(&one_phase(ONE_BY_ONE, outrider_model::plan_limits::REGION_PARALLELISM, ""), &f).unwrap();
    assert_eq!(most, three, "lanes past the last region are empty");
    assert!(started.elapsed() < std::time::Duration::from_millis(100));
    let e = plan(&one_phase(ONE_BY_ONE, u32::MAX, ""), &f).unwrap_err();
    assert!(e.to_string().contains("region_parallelism"), "{e}");
}

#[test]
fn regions_share_lanes_and_lanes_interleave() {
    let mut instances = Vec::new();
    for region in ["boe", "r1", "r2"] {
        for s in ["a", "b", "c"] {
            instances.push((s, region, "prod", "full", Some("1.0.0")));
        }
    }
    let services = ["a", "b", "c"].iter().map(|n| svc(n, Priority::P2, &[])).collect();
    let f = fleet(services, &instances);
    let s = one_phase(r#"{"strategy":"linear","size":2}"#, 2, "");
    let got = batches(&plan(&s, &f).unwrap().phases[0]);
    let lane = |l: u32, cells: &[&str]| (l, cells.iter().map(|c| format!("{c}:1")).collect::<Vec<_>>());
    assert_eq!(
        got,
        [
            lane(0, &["a/boe/prod", "b/boe/prod"]),
            lane(1, &["a/r1/prod", "b/r1/prod"]),
            // Lane 0 goes on from boe into r2 (region 3 of 3 → lane 2 mod 2 = 0).
            lane(0, &["c/boe/prod", "a/r2/prod"]),
            lane(1, &["c/r1/prod"]),
            lane(0, &["b/r2/prod", "c/r2/prod"]),
        ]
    );
}

#[test]
fn feature_services_are_picked_per_trait_value() {
    let go: Vec<String> = (0..6).map(|i| format!("go-{i}")).collect();
    let mut services: Vec<Service> = go.iter().map(|n| svc(n, Priority::P2, &[("lang", "go")])).collect();
    services.push(svc("go-important", Priority::P0, &[("lang", "go")]));
    services.push(svc("java-1", Priority::P1, &[("lang", "java")]));
    services.push(svc("java-0", Priority::P0, &[("lang", "java")]));
    let mut shy = svc("named-protected", Priority::P2, &[("lang", "rust")]);
    shy.protected = true;
    services.push(shy);
    services.push(svc("named", Priority::P0, &[]));
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let instances: Vec<Inst<'_>> = names.iter().map(|n| (n.as_str(), "r1", "prod", "full", Some("1.0.0"))).collect();
    let f = fleet(services, &instances);
    let s = spec(r#""feature_services":{"per_trait_value":2,"services":["named","named-protected"]}"#);
    let planned = plan(&s, &f).unwrap();

    // The go picks: the two P2 services with the smallest name hash (P0 comes after P2).
    let mut by_hash = go.clone();
    by_hash.sort_by_key(|n| stable_hash(n));
    let mut expected = vec![by_hash[0].clone(), by_hash[1].clone(), "java-0".into(), "java-1".into(), "named".into()];
    expected.sort();
    assert_eq!(planned.feature_services, expected);
    assert_ne!(by_hash[..2], go[..2], "this fleet shows the pick is not alphabetical");
    // The feature services come first in the cell order.
    let first: Vec<String> =
        order(&planned.phases[1]).into_iter().take(5).map(|c| c.split('/').next().unwrap().to_owned()).collect();
    let mut first_sorted = first.clone();
    first_sorted.sort();
    assert_eq!(first_sorted, expected);

    let none = spec(r#""feature_services":{"per_trait_value":0}"#);
    assert!(plan(&none, &f).unwrap().feature_services.is_empty());
}

#[test]
fn unknown_services_are_errors() {
    let f = fleet(vec![svc("a", Priority::P2, &[])], &[]);
    let err = plan(&spec(r#""selector":{"services":["a","zz"]}"#), &f).unwrap_err();
    assert_eq!(err, PlanError::UnknownService { field: "selector.services", name: "zz".into() });
    let err = plan(&spec(r#""feature_services":{"services":["yy"]}"#), &f).unwrap_err();
    assert_eq!(err, PlanError::UnknownService { field: "feature_services.services", name: "yy".into() });
    let err = plan(&spec(r#""phases":[]"#), &f).unwrap_err();
    assert!(matches!(&err, PlanError::Invalid(v) if v.field == "phases"), "{err}");
}

#[test]
fn empty_scope_gives_empty_phases() {
    let f = fleet(vec![svc("a", Priority::P2, &[])], &[("a", "r1", "prod", "full", Some("1.1.0"))]);
    let planned = plan(&spec(""), &f).unwrap();
    assert_eq!(planned.phases.len(), 2);
    assert!(planned.phases.iter().all(|p| p.batches.is_empty()));
    assert!(planned.feature_services.is_empty());
}

#[test]
fn same_input_same_plan_whatever_the_push_order() {
    let services: Vec<Service> = (0..20)
        .map(|i| {
            svc(&format!("s{i:02}"), [Priority::P0, Priority::P1, Priority::P2][i % 3], &[("k", ["x", "y"][i % 2])])
        })
        .collect();
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let mut instances = Vec::new();
    for (i, n) in names.iter().enumerate() {
        for r in ["boe", "r1", "r2"].iter().take(1 + i % 3) {
            instances.push((n.as_str(), *r, ["prod", "preview"][i % 2], ["canary", "full"][i % 2], Some("1.0.0")));
        }
    }
    let forward = fleet(services.clone(), &instances);
    instances.reverse();
    let backward = fleet(services, &instances);
    let s = spec(r#""feature_services":{"per_trait_value":1}"#);
    let a = plan(&s, &forward).unwrap();
    assert_eq!(a, plan(&s, &forward).unwrap());
    assert_eq!(a, plan(&s, &backward).unwrap());
    let by_service: BTreeMap<&str, u64> =
        a.phases.iter().flat_map(|p| &p.batches).flat_map(|b| &b.cells).fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.service.as_str()).or_default() += c.instances;
            m
        });
    assert_eq!(by_service.values().sum::<u64>(), instances.len() as u64);
}
