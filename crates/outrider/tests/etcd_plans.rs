//! Plans whose steps write more than one etcd transaction takes (etcd's default
//! `--max-txn-ops`): a manager on a real etcd (Debian's `etcd-server`, started on loopback and
//! stopped afterwards) and a simulated fleet of 300 services. Applying the one batch writes a
//! cell target per cell and a record per instance, completing writes a binding per service and
//! deletes those; a defective mark rewrites every cell target naming it, a rollback every
//! record and target — far over the limit, so each such write is written in chunks. Skipped with a
//! note when etcd is not installed, unless `OUTRIDER_REQUIRE_ETCD` is set (as in CI).

mod common;

use std::{collections::BTreeMap, time::Duration};

use outrider_manager::{ManagerConfig, RunningManager};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions};
use outrider_store::test_etcd::{TestEtcd, etcd_or_skip};
use serde_json::{Value, json};

use common::TenantApi;

const SERVICES: usize = 300;
const INSTANCES: usize = 600;

struct Env {
    manager: RunningManager,
    api: TenantApi,
    fleet: SimFleet,
    _etcd: TestEtcd,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Versions of `mesh` the instances report running, with counts.
    async fn running(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for i in self.api.get("/instances").await.as_array().unwrap() {
            for s in i["sidecars"].as_array().unwrap() {
                if s["name"] == "mesh" && s["state"] == "running" {
                    *out.entry(s["version"].as_str().unwrap().to_owned()).or_default() += 1;
                }
            }
        }
        out
    }

    async fn wait_running(&self, version: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while self.running().await.get(version) != Some(&INSTANCES) {
            assert!(tokio::time::Instant::now() < deadline, "not all on {version}: {:?}", self.running().await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_plan(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let plan = self.api.get(&format!("/plans/{id}")).await;
            if plan["state"] == state {
                return plan;
            }
            assert!(tokio::time::Instant::now() < deadline, "plan never {state}: {plan:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The plan's events of `kind`.
    async fn events(&self, id: &str, kind: &str) -> Vec<Value> {
        let all = self.api.get(&format!("/events?plan={id}&limit=10000")).await;
        all.as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
    }
}

async fn setup(etcd: TestEtcd) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = ManagerConfig {
        store: Some(etcd.url("outrider")),
        ..ManagerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    };
    let manager = outrider_manager::start(config).await.unwrap();
    let base = format!("http://{}", manager.addr);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = outrider_client::Client::new(&base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: SERVICES, instances: INSTANCES, seed: 5 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    let api = TenantApi::new(base.clone(), token.clone());
    for v in ["1.1.0", "1.2.0"] {
        outrider_sim::ensure_version(&client, "default", "mesh", v).await.unwrap();
        api.post(&format!("/sidecars/mesh/versions/{v}/admit"), json!({"evidence": "test"})).await;
    }
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(500),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::from_millis(10) },
        service_traits: spec.service_traits(),
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&base, &token, "default", &spec.instances, &options).unwrap();
    let env = Env { manager, api, fleet, _etcd: etcd, _dir: dir };
    env.wait_running("1.0.0").await;
    env
}

/// Every service in one batch of one phase.
fn one_batch(from: &str, target: &str, bake: &str) -> Value {
    json!({
        "sidecar": "mesh", "target_version": target, "from_versions": [from],
        "analysis": {"metrics": []},
        "phases": [{"name": "all", "stage": "all", "mode": "restart",
                    "batching": {"strategy": "linear", "size": 100_000}, "region_parallelism": 1,
                    "bake": bake, "batch_timeout": "60s"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_300_services_completes_and_a_defective_mark_and_rollback_that_large_work_on_etcd() {
    let Some(binary) = etcd_or_skip() else { return };
    let env = setup(TestEtcd::start(&binary).await.unwrap()).await;

    let plan = env.api.post("/plans", one_batch("1.0.0", "1.1.0", "300ms")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let cells = plan["phases"][0]["batches"][0]["cells"].as_array().unwrap().len();
    assert!(cells >= SERVICES, "one batch of every cell: {cells}");
    assert_eq!(plan["counts"]["total"], INSTANCES);
    let done = env.wait_plan(&id, "completed").await;
    assert_eq!(done["counts"]["done"], INSTANCES, "{:#}", done["counts"]);
    env.wait_running("1.1.0").await;
    let applying = env.events(&id, "batch.state").await;
    let applying: Vec<&Value> = applying.iter().filter(|e| e["detail"]["state"] == "applying").collect();
    assert_eq!(applying.len(), 1, "the batch was applied once: {applying:?}");
    let completed: Vec<Value> =
        env.events(&id, "plan.state").await.into_iter().filter(|e| e["detail"]["to"] == "completed").collect();
    assert_eq!(completed.len(), 1, "completed once");
    // Completing promoted every service's binding (the plan's records and targets are gone).
    let services = env.api.get("/services").await;
    for s in services.as_array().unwrap().iter().take(SERVICES) {
        let name = s["name"].as_str().unwrap();
        let bindings = env.api.get(&format!("/services/{name}/sidecars")).await;
        let mesh = bindings.as_array().unwrap().iter().find(|b| b["sidecar"] == "mesh");
        assert_eq!(mesh.map(|b| &b["version"]), Some(&json!("1.1.0")), "{name}: {bindings}");
    }

    // A defective mark that withdraws a target per cell, then a rollback of a batch that large.
    let plan = env.api.post("/plans", one_batch("1.1.0", "1.2.0", "10m")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    env.wait_running("1.2.0").await;
    let marked = env.api.post("/sidecars/mesh/versions/1.2.0/defective", json!({"reason": "test"})).await;
    assert_eq!((&marked["state"], &marked["recall_to"]), (&json!("defective"), &json!("1.1.0")), "{marked:#}");
    let all = env.api.get("/events?limit=10000").await;
    let mark = all.as_array().unwrap().iter().find(|e| e["kind"] == "version.defective").expect("the mark's event");
    let withdrawn = mark["detail"]["withdrawn"]["targets"].as_u64().unwrap();
    assert!(withdrawn >= SERVICES as u64, "every cell target withdrawn with the mark: {mark}");
    env.wait_plan(&id, "blocked").await;
    env.api.post(&format!("/plans/{id}/rollback"), json!({"reason": "test"})).await;
    env.wait_plan(&id, "rolled_back").await;
    env.wait_running("1.1.0").await;
    assert_eq!(env.events(&id, "plan.action").await.len(), 1, "one rollback recorded");

    env.fleet.shutdown().await;
    env.manager.shutdown().await;
}
