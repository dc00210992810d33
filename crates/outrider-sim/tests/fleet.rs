//! A simulated fleet against a real manager in-process: seeding, registration, reported
//! versions, and a binding change that reaches exactly its service's instances.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};
use support::until;

use outrider_client::Client;
use outrider_manager::{ManagerConfig, RunningManager, start};
use outrider_model::{Binding, Instance, SidecarState, UpgradeMode};
use outrider_sim::{
    FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, ensure_version, seed_catalog,
};

const TENANT: &str = "default";
const SIDECAR: &str = "mesh-proxy";

async fn boot(dir: &std::path::Path) -> (RunningManager, Client, String) {
    let m = start(ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let client = Client::new(&format!("http://{}", m.addr), Some(token.clone())).unwrap();
    (m, client, token)
}

/// The version of [`SIDECAR`] an instance reports running, if it runs it.
fn running(i: &Instance) -> Option<&str> {
    i.sidecars.iter().find(|s| s.name == SIDECAR && s.state == SidecarState::Running).map(|s| s.version.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_simulated_fleet_registers_runs_and_follows_a_binding_change() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, client, token) = boot(dir.path()).await;
    let spec = FleetSpec::generate(FleetParams { services: 20, instances: 200, seed: 3 }).unwrap();
    let sidecar = SidecarRef { name: SIDECAR.into(), version: "1.0.0".into() };

    let report = seed_catalog(&client, TENANT, &spec, Some(&sidecar)).await.unwrap();
    assert_eq!((report.services_created, report.services_existing, report.bound), (20, 0, 20));
    // Seeding again is harmless: services exist, bindings are unchanged.
    let again = seed_catalog(&client, TENANT, &spec, Some(&sidecar)).await.unwrap();
    assert_eq!((again.services_created, again.services_existing), (0, 20));

    let options = SimFleetOptions {
        agents_per_connection: 50,
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::from_millis(10) },
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options).unwrap();
    assert_eq!(fleet.connections(), 4);

    let ids: HashSet<&str> = spec.instances.iter().map(|i| i.id.as_str()).collect();
    let list = until(&client, Duration::from_secs(10), "every instance connected and running 1.0.0", |list| {
        list.len() == ids.len() && list.iter().all(|i| i.connected && running(i) == Some("1.0.0"))
    })
    .await;
    for i in &list {
        assert!(ids.contains(i.id.as_str()), "unexpected instance {}", i.id);
        let generated = spec.instances.iter().find(|g| g.id == i.id).unwrap();
        assert_eq!((&i.service, &i.labels), (&generated.service, &generated.labels));
        let sc = i.sidecars.iter().find(|s| s.name == SIDECAR).unwrap();
        assert!(sc.pid.is_some(), "{} runs {SIDECAR} without a pid", i.id);
    }
    assert_eq!(fleet.connected(), 200);
    assert_eq!(fleet.holding(SIDECAR, "1.0.0"), 200);

    // Move the service with the most instances to 1.1.0; nothing else may change.
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for i in &spec.instances {
        *sizes.entry(i.service.as_str()).or_default() += 1;
    }
    let (target, &count) = sizes.iter().max_by_key(|(_, n)| **n).unwrap();
    ensure_version(&client, TENANT, SIDECAR, "1.1.0").await.unwrap();
    client.admit_version(TENANT, SIDECAR, "1.1.0", &serde_json::json!({"tests": "passed"})).await.unwrap();
    let arrivals = fleet.watch_arrivals(SIDECAR, "1.1.0").await;
    let binding =
        Binding { sidecar: SIDECAR.into(), enabled: true, version: "1.1.0".into(), mode: UpgradeMode::Restart };
    client.set_binding(TENANT, target, &binding).await.unwrap();

    let list = until(&client, Duration::from_secs(10), "the target service on 1.1.0", |list| {
        list.iter().filter(|i| i.service == *target).all(|i| running(i) == Some("1.1.0"))
    })
    .await;
    for i in &list {
        let expected = if i.service == *target { "1.1.0" } else { "1.0.0" };
        assert_eq!(running(i), Some(expected), "{} of {}", i.id, i.service);
        assert!(i.connected);
    }
    let moved: Vec<_> =
        fleet.agents().iter().filter(|a| a.runtime().running().get(SIDECAR).is_some_and(|v| v == "1.1.0")).collect();
    assert_eq!(moved.len(), count);
    assert!(moved.iter().all(|a| a.instance().service == *target));
    assert_eq!(fleet.holding(SIDECAR, "1.1.0"), count);

    // Only the target's agents get the new desired state: the others time out.
    match arrivals.wait(Duration::from_millis(300)).await {
        Err(outrider_sim::SimError::Missing { missing, total, .. }) => assert_eq!((missing, total), (200 - count, 200)),
        other => panic!("expected missing arrivals, got {other:?}"),
    }

    fleet.shutdown().await;
    let list = until(&client, Duration::from_secs(10), "every instance disconnected", |list| {
        list.iter().all(|i| !i.connected)
    })
    .await;
    assert_eq!(list.len(), 200);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_time_every_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, client, token) = boot(dir.path()).await;
    let spec = FleetSpec::generate(FleetParams { services: 2, instances: 10, seed: 1 }).unwrap();
    seed_catalog(&client, TENANT, &spec, Some(&SidecarRef { name: SIDECAR.into(), version: "1.0.0".into() }))
        .await
        .unwrap();
    let fleet =
        SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &SimFleetOptions::default()).unwrap();
    fleet.watch_arrivals(SIDECAR, "1.0.0").await.wait(Duration::from_secs(10)).await.unwrap();

    ensure_version(&client, TENANT, SIDECAR, "2.0.0").await.unwrap();
    client.admit_version(TENANT, SIDECAR, "2.0.0", &serde_json::json!({"tests": "passed"})).await.unwrap();
    let arrivals = fleet.watch_arrivals(SIDECAR, "2.0.0").await;
    let binding = Binding { sidecar: SIDECAR.into(), enabled: true, version: "2.0.0".into(), mode: UpgradeMode::Hot };
    for svc in &spec.services {
        client.set_binding(TENANT, &svc.name, &binding).await.unwrap();
    }
    let at = arrivals.wait(Duration::from_secs(10)).await.unwrap();
    assert_eq!(at.len(), 10);
    fleet.shutdown().await;
    manager.shutdown().await;
}
