//! Several managers on one etcd (Debian's `etcd-server`, started on loopback and stopped
//! afterwards): every manager sees the whole fleet, one leader runs the executor, and when
//! the leader is killed in the middle of a rollout another manager takes the plan on — no
//! batch applied twice, none skipped — while the agents move to the managers left. Skipped
//! with a note when etcd is not installed, unless `OUTRIDER_REQUIRE_ETCD` is set (as in CI).

mod common;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::Path,
    time::{Duration, Instant},
};

use outrider_devtools::harness::{Child, free_ports, manager_leads, wait_manager_ready};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions};
use outrider_store::test_etcd::{TestEtcd, etcd_or_skip};
use serde_json::{Value, json};

use common::TenantApi;

const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

struct Manager {
    child: Child,
    api: TenantApi,
}

/// Starts manager `name` on `store` in `root/name`, with the admin token of the first
/// manager (`token`: none for the first, which creates it).
async fn start_manager(root: &Path, name: &str, store: &str, token: Option<&str>) -> Manager {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(t) = token {
        std::fs::write(dir.join("admin.token"), t).unwrap();
    }
    let port = free_ports(1).unwrap()[0];
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<OsString> =
        ["server", "--store", store, "--listen", &listen, "--name", name, "--leader-lease", "2s", "--data-dir"]
            .map(OsString::from)
            .into_iter()
            .chain([dir.clone().into()])
            .collect();
    let log = root.join(format!("{name}.log"));
    let mut child = Child::spawn(name, Path::new(OUTRIDER), args, log).unwrap();
    let url = format!("http://{listen}");
    let (_, token) = wait_manager_ready(&mut child, &url, &dir, Duration::from_secs(30)).await.unwrap();
    Manager { child, api: TenantApi::new(url, token.unwrap()) }
}

/// Whether the manager at `api` says it leads.
async fn leads(api: &TenantApi) -> bool {
    manager_leads(&api.http, &api.base).await
}

/// Versions of `mesh` running on the instances `api`'s manager knows, with counts.
async fn running(api: &TenantApi) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let (status, list) = api.call(reqwest::Method::GET, "/instances", None).await;
    if status != 200 {
        return out;
    }
    for i in list.as_array().unwrap().iter().filter(|i| i["gone"] != true) {
        for s in i["sidecars"].as_array().unwrap() {
            if s["name"] == "mesh" && s["state"] == "running" {
                *out.entry(s["version"].as_str().unwrap().to_owned()).or_default() += 1;
            }
        }
    }
    out
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_rollout_hands_the_plan_over_without_a_batch_twice_or_skipped() {
    let Some(binary) = etcd_or_skip() else { return };
    let etcd = TestEtcd::start(&binary).await.unwrap();
    let store = etcd.url("ha");
    let root = tempfile::tempdir().unwrap();
    let first = start_manager(root.path(), "m1", &store, None).await;
    let token = first.api.token.clone();
    let mut managers = vec![first];
    for name in ["m2", "m3"] {
        managers.push(start_manager(root.path(), name, &store, Some(&token)).await);
    }
    let leaders = eventually("one leader", Duration::from_secs(10), async || {
        let mut n = Vec::new();
        for (i, m) in managers.iter().enumerate() {
            if leads(&m.api).await {
                n.push(i);
            }
        }
        (n.len() == 1).then_some(n)
    })
    .await;
    let leader = leaders[0];

    // A fleet spread over the three managers.
    let client = outrider_client::Client::new(&managers[0].api.base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: 12, instances: 48, seed: 5 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    outrider_sim::ensure_version(&client, "default", "mesh", "1.1.0").await.unwrap();
    managers[0].api.post("/sidecars/mesh/versions/1.1.0/admit", json!({"evidence": "test"})).await;
    let urls: Vec<String> = managers.iter().map(|m| m.api.base.clone()).collect();
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(500),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::from_millis(10) },
        agents_per_connection: 4,
        service_traits: spec.service_traits(),
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&urls.join(","), &token, "default", &spec.instances, &options).unwrap();
    // Every manager sees every instance, whichever manager its agent talks to.
    for m in &managers {
        eventually("every manager to see the whole fleet", Duration::from_secs(30), async || {
            (running(&m.api).await.get("1.0.0") == Some(&48)).then_some(())
        })
        .await;
    }

    // A plan of many small batches, created through a manager that does not lead.
    let follower = (leader + 1) % managers.len();
    let body = json!({
        "sidecar": "mesh", "target_version": "1.1.0", "from_versions": ["1.0.0"],
        "analysis": {"metrics": []},
        "phases": [{"name": "all", "stage": "all", "mode": "restart",
                    "batching": {"strategy": "linear", "size": 4}, "bake": "500ms",
                    "batch_timeout": "30s"}]
    });
    let plan = managers[follower].api.post("/plans", body).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let batches = plan["phases"][0]["batches"].as_array().unwrap().len();
    assert!(batches >= 6, "enough batches to kill the leader in the middle: {plan:#}");
    let watcher = TenantApi::new(managers[follower].api.base.clone(), token.clone());
    eventually("two batches passed", Duration::from_secs(60), async || {
        let p = watcher.get(&format!("/plans/{id}")).await;
        let passed = p["phases"][0]["batches"].as_array().unwrap().iter().filter(|b| b["state"] == "passed").count();
        (passed >= 2).then_some(())
    })
    .await;

    // kill -9 of the leader in the middle of the rollout.
    let killed_at = time::OffsetDateTime::now_utc();
    managers[leader].child.kill().await;
    let done = eventually("the plan to complete under another leader", Duration::from_secs(90), async || {
        let p = watcher.get(&format!("/plans/{id}")).await;
        (p["state"] == "completed").then_some(p)
    })
    .await;
    let survivors: Vec<&Manager> = managers.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m).collect();
    let mut new_leaders = 0;
    for m in &survivors {
        new_leaders += usize::from(leads(&m.api).await);
    }
    assert_eq!(new_leaders, 1, "exactly one of the managers left leads");

    // From the events: each batch applied exactly once, none skipped, and the plan moved again
    // after the kill.
    let events = watcher.get(&format!("/events?plan={id}&limit=10000")).await;
    let events = events.as_array().unwrap();
    let mut applying: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "batch.state" && e["detail"]["state"] == "applying")
        .map(|e| e["detail"]["batch"].as_u64().unwrap())
        .collect();
    let order = applying.clone();
    applying.sort_unstable();
    applying.dedup();
    assert_eq!(applying.len(), order.len(), "a batch was applied twice: {order:?}");
    assert_eq!(applying.len(), batches, "a batch was skipped: {order:?}");
    assert!(done["phases"][0]["batches"].as_array().unwrap().iter().all(|b| b["state"] == "passed"), "{done:#}");
    let after: Vec<&Value> = events
        .iter()
        .filter(|e| {
            time::OffsetDateTime::parse(e["time"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| t > killed_at)
        })
        .collect();
    assert!(!after.is_empty(), "the plan moved after the leader died");
    let moved =
        time::OffsetDateTime::parse(after[0]["time"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    eprintln!("leader m{} killed; the plan moved again {:.1}s later", leader + 1, (moved - killed_at).as_seconds_f64());
    // The agents of the dead manager moved on: the whole fleet runs the new version.
    eventually("the whole fleet on 1.1.0", Duration::from_secs(30), async || {
        (running(&survivors[0].api).await.get("1.1.0") == Some(&48)).then_some(())
    })
    .await;
    fleet.shutdown().await;
    for mut m in managers {
        m.child.stop(Duration::from_secs(5)).await;
    }
}
