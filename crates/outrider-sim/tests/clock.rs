//! The executor reads time from the clock it is given: a manager whose clock says Saturday
//! holds a Mon–Fri plan until that clock says Monday, whatever the machine's date.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use outrider_client::Client;
use outrider_manager::{ManagerConfig, executor::Clock, start_with_clock};
use outrider_model::{BatchState, NewFreeze, Plan, PlanSpec, PlanState};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, ensure_version, seed_catalog};
use support::until;
use time::{OffsetDateTime, macros::datetime};

const TENANT: &str = "default";
const SIDECAR: &str = "mesh-proxy";

/// A clock that runs at the machine's pace from a time the test sets.
#[derive(Debug)]
struct TestClock {
    at: Mutex<(OffsetDateTime, Instant)>,
}

impl TestClock {
    fn new(t: OffsetDateTime) -> Self {
        Self { at: Mutex::new((t, Instant::now())) }
    }

    fn set(&self, t: OffsetDateTime) {
        *self.at.lock().unwrap() = (t, Instant::now());
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        let (t, since) = *self.at.lock().unwrap();
        t + since.elapsed()
    }
}

async fn plan_until(client: &Client, id: &str, what: &str, done: impl Fn(&Plan) -> bool) -> Plan {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let plan = client.get_plan(TENANT, id).await.unwrap();
        if done(&plan) {
            return plan;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {} ({})", plan.state, plan.reason);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_waits_for_its_window_on_the_managers_clock() {
    let saturday = datetime!(2027-03-06 12:00 UTC);
    let monday = datetime!(2027-03-08 09:00 UTC);
    let clock = Arc::new(TestClock::new(saturday));
    let dir = tempfile::tempdir().unwrap();
    let config = ManagerConfig::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap());
    let manager = start_with_clock(config, clock.clone()).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = Client::new(&format!("http://{}", manager.addr), Some(token.clone())).unwrap();

    let spec = FleetSpec::generate(FleetParams { services: 3, instances: 6, seed: 7 }).unwrap();
    let current = SidecarRef { name: SIDECAR.into(), version: "1.2.0".into() };
    seed_catalog(&client, TENANT, &spec, Some(&current)).await.unwrap();
    ensure_version(&client, TENANT, SIDECAR, "1.3.0").await.unwrap();
    client.admit_version(TENANT, SIDECAR, "1.3.0", &serde_json::json!({"tests": "passed"})).await.unwrap();
    let options = SimFleetOptions { service_traits: spec.service_traits(), ..SimFleetOptions::default() };
    let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options).unwrap();
    until(&client, Duration::from_secs(15), "every instance on 1.2.0", |list| {
        list.len() == 6 && list.iter().all(|i| i.sidecars.iter().any(|s| s.version == "1.2.0"))
    })
    .await;

    let body: PlanSpec = serde_json::from_value(serde_json::json!({
        "sidecar": SIDECAR, "target_version": "1.3.0",
        "windows": [{"days": "mon-fri", "from": "09:00", "to": "17:00", "tz": "UTC"}],
        "phases": [{"name": "all", "batching": {"strategy": "linear", "size": 10}, "bake": "1s"}],
        "analysis": {"metrics": []}
    }))
    .unwrap();
    let plan = client.create_plan(TENANT, &body).await.unwrap();
    let waiting = plan_until(&client, &plan.id, "waiting for Monday", |p| p.state == PlanState::Waiting).await;
    assert!(waiting.reason.contains("next opens 2027-03-08 9:00"), "{}", waiting.reason);
    assert!(waiting.phases[0].batches.iter().all(|b| b.state == BatchState::Pending));

    // Monday on the manager's clock; a catalog change (a freeze long after) wakes the executor.
    clock.set(monday);
    let later = NewFreeze {
        from: datetime!(2030-01-01 00:00 UTC),
        to: datetime!(2030-01-02 00:00 UTC),
        reason: "wake-up".into(),
        services: Vec::new(),
    };
    client.create_freeze(TENANT, &later).await.unwrap();
    let done = plan_until(&client, &plan.id, "completed", |p| p.state == PlanState::Completed).await;
    let started = done.phases[0].batches[0].started_at.unwrap();
    assert!(started >= monday && started < monday + Duration::from_secs(60), "started at {started}");

    fleet.shutdown().await;
    manager.shutdown().await;
}
