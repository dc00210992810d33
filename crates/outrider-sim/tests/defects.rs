//! Injected defects against a real manager in-process: instances that a defect selects report
//! its fault once they run the defective version, the others stay healthy, and what they
//! report reaches the manager (state, exits, metrics).

mod support;

use std::time::Duration;
use support::until;

use outrider_client::Client;
use outrider_manager::{ManagerConfig, start};
use outrider_model::{Binding, Instance, SidecarState, SidecarStatus, UpgradeMode};
use outrider_sim::{
    FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, ensure_version, seed_catalog,
};

const TENANT: &str = "default";
const SIDECAR: &str = "mesh-proxy";

fn sidecar(i: &Instance) -> Option<&SidecarStatus> {
    i.sidecars.iter().find(|s| s.name == SIDECAR)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defective_version_crashes_only_the_instances_it_selects() {
    let dir = tempfile::tempdir().unwrap();
    let manager = start(ManagerConfig::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = Client::new(&format!("http://{}", manager.addr), Some(token.clone())).unwrap();

    let spec = FleetSpec::generate(FleetParams { services: 12, instances: 60, seed: 4 }).unwrap();
    let protocol = |service: &str| spec.services.iter().find(|s| s.name == service).unwrap().traits["protocol"].clone();
    assert!(spec.services.iter().any(|s| s.traits["protocol"] == "http"), "the fleet needs an http service");
    assert!(spec.services.iter().any(|s| s.traits["protocol"] != "http"), "the fleet needs another service");
    seed_catalog(&client, TENANT, &spec, Some(&SidecarRef { name: SIDECAR.into(), version: "1.2.0".into() }))
        .await
        .unwrap();
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(500),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::ZERO },
        defects: vec!["version=1.3.0,trait=protocol:http,effect=crash".parse().unwrap()],
        service_traits: spec.service_traits(),
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options).unwrap();

    // Healthy on 1.2.0, with metrics.
    let list = until(&client, Duration::from_secs(15), "every instance running 1.2.0 with metrics", |list| {
        list.len() == 60
            && list.iter().all(|i| {
                sidecar(i).is_some_and(|s| {
                    s.state == SidecarState::Running && s.version == "1.2.0" && s.metrics.contains_key("error_ratio")
                })
            })
    })
    .await;
    assert!(list.iter().all(|i| sidecar(i).unwrap().exits == 0));

    // Everything moves to 1.3.0: the http services crash, the others run it.
    ensure_version(&client, TENANT, SIDECAR, "1.3.0").await.unwrap();
    client.admit_version(TENANT, SIDECAR, "1.3.0", &serde_json::json!({"tests": "passed"})).await.unwrap();
    let binding =
        Binding { sidecar: SIDECAR.into(), enabled: true, version: "1.3.0".into(), mode: UpgradeMode::Restart };
    for s in &spec.services {
        client.set_binding(TENANT, &s.name, &binding).await.unwrap();
    }
    let list =
        until(&client, Duration::from_secs(15), "http instances in crash_loop, the others running 1.3.0", |list| {
            list.iter().all(|i| {
                let s = sidecar(i).unwrap();
                let want = if protocol(&i.service) == "http" { SidecarState::CrashLoop } else { SidecarState::Running };
                s.version == "1.3.0" && s.state == want
            })
        })
        .await;
    for i in &list {
        let s = sidecar(i).unwrap();
        if protocol(&i.service) == "http" {
            assert!(s.exits >= 3 && s.restarts >= 3, "{} reports {s:?}", i.id);
        } else {
            assert_eq!(s.exits, 0, "{} reports {s:?}", i.id);
        }
    }
    fleet.shutdown().await;
    manager.shutdown().await;
}
