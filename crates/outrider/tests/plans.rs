//! Upgrade plans end to end: a real manager (in process, real sockets) and a simulated fleet
//! speaking the real sync protocol, with an injected defect.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use outrider_devtools::harness::{Child, free_ports, spawn_manager, wait_manager_ready};
use outrider_manager::{InstanceRetention, ManagerConfig, RunningManager};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimInstance, SimRuntimeOptions};
use serde_json::{Value, json};

use common::TenantApi;

struct Env {
    manager: RunningManager,
    api: TenantApi,
    fleet: SimFleet,
    spec: FleetSpec,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = TenantApi;

    fn deref(&self) -> &TenantApi {
        &self.api
    }
}

impl Env {
    /// Versions of `mesh` the instances (not gone) report running, with counts.
    async fn running(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for i in self.get("/instances").await.as_array().unwrap().iter().filter(|i| i["gone"] != true) {
            for s in i["sidecars"].as_array().unwrap() {
                if s["name"] == "mesh" && s["state"] == "running" {
                    *out.entry(s["version"].as_str().unwrap().to_owned()).or_default() += 1;
                }
            }
        }
        out
    }

    async fn wait_plan(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let plan = self.get(&format!("/plans/{id}")).await;
            if done(&plan) {
                return plan;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {plan:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shutdown(self) {
        self.fleet.shutdown().await;
        self.manager.shutdown().await;
    }
}

/// A manager, 24 services / 240 instances running mesh 1.0.0, versions 1.1.0 (healthy) and
/// 1.2.0 (crashes on services whose protocol is http), both admitted.
async fn setup() -> Env {
    setup_with(InstanceRetention::default()).await
}

/// Like [`setup`], with instances of absent agents gone and removed as `retention` says.
async fn setup_with(instances: InstanceRetention) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = ManagerConfig { instances, ..ManagerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap()) };
    let manager = outrider_manager::start(config).await.unwrap();
    let base = format!("http://{}", manager.addr);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = outrider_client::Client::new(&base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: 24, instances: 240, seed: 11 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    for v in ["1.1.0", "1.2.0"] {
        outrider_sim::ensure_version(&client, "default", "mesh", v).await.unwrap();
    }
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(500),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::from_millis(10) },
        defects: vec!["version=1.2.0,trait=protocol:http,effect=crash".parse().unwrap()],
        service_traits: spec.service_traits(),
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&base, &token, "default", &spec.instances, &options).unwrap();
    let env = Env { manager, api: TenantApi::new(base, token), fleet, spec, _dir: dir };
    for v in ["1.1.0", "1.2.0"] {
        env.post(&format!("/sidecars/mesh/versions/{v}/admit"), json!({"evidence": "test"})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.running().await.get("1.0.0") != Some(&240) {
        assert!(tokio::time::Instant::now() < deadline, "fleet never came up: {:?}", env.running().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env
}

fn plan_body(target: &str) -> Value {
    plan_body_baking(target, "150ms")
}

/// A two-phase plan whose batches bake for `bake`, judged on process signals only (these tests
/// are about the rollout's mechanics; bakes this short hold too few reports for metrics).
fn plan_body_baking(target: &str, bake: &str) -> Value {
    json!({
        "sidecar": "mesh", "target_version": target, "from_versions": ["1.0.0"],
        "analysis": {"metrics": []},
        "feature_services": {"per_trait_value": 1},
        "phases": [
            {"name": "gray", "stage": "canary", "mode": "hot",
             "batching": {"strategy": "exponential", "start": 1, "factor": 2},
             "max_per_batch": {"cells": 4}, "bake": bake, "batch_timeout": "10s"},
            {"name": "full", "stage": "all", "mode": "restart",
             "batching": {"strategy": "linear", "size": 8}, "bake": bake, "region_parallelism": 2,
             "batch_timeout": "10s"}
        ]
    })
}

/// Events of a plan, in order.
async fn plan_events(env: &Env, id: &str) -> Vec<Value> {
    env.get(&format!("/events?plan={id}&limit=10000")).await.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_version_completes_both_phases_in_order() {
    let env = setup().await;
    let plan = env.post("/plans", plan_body("1.1.0")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    assert_eq!(plan["counts"]["total"], 240, "each instance counted once (canaries in gray only)");
    let done = env.wait_plan(&id, "completion", |p| p["state"] == "completed").await;
    assert_eq!((done["counts"]["done"].as_u64(), done["counts"]["pending"].as_u64()), (Some(240), Some(0)));
    assert_eq!(env.running().await.get("1.1.0"), Some(&240), "every instance runs the target");
    assert_eq!(done["blast_radius"], 240);
    for phase in done["phases"].as_array().unwrap() {
        for b in phase["batches"].as_array().unwrap() {
            assert_eq!(b["state"], "passed", "{b}");
            assert!(
                b["cells"].as_array().unwrap().len() <= if phase["name"] == "gray" { 4 } else { 8 },
                "cap held: {b}"
            );
        }
    }
    // Each batch was applied exactly once, and gray finished before full started.
    let events = plan_events(&env, &id).await;
    let applying: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["kind"] == "batch.state" && e["detail"]["state"] == "applying")
        .map(|e| (e["detail"]["phase"].as_str().unwrap().to_owned(), e["detail"]["batch"].as_u64().unwrap()))
        .collect();
    let mut unique = applying.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), applying.len(), "a batch was applied twice: {applying:?}");
    let first_full = applying.iter().position(|(p, _)| p == "full").unwrap();
    assert!(applying[first_full..].iter().all(|(p, _)| p == "full"), "phases interleaved: {applying:?}");
    assert!(events.iter().any(|e| e["kind"] == "phase.completed"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defect_blocks_the_plan_where_it_first_shows_and_rollback_restores_everything() {
    let env = setup().await;
    let http_services: Vec<&str> = env
        .spec
        .services
        .iter()
        .filter(|s| s.traits.get("protocol").map(String::as_str) == Some("http"))
        .map(|s| s.name.as_str())
        .collect();
    assert!(!http_services.is_empty(), "the generated fleet has http services");
    // The simulated crash shows ~0.5 s after the upgrade: the bake must outlast that.
    let plan = env.post("/plans", plan_body_baking("1.2.0", "1500ms")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let blocked = env.wait_plan(&id, "the block", |p| p["state"] == "blocked").await;
    let incident = &blocked["incidents"][0];
    assert!(["crash_loop", "sidecar_exits"].contains(&incident["metric"].as_str().unwrap()), "{incident}");
    // The failed batch is the first one that holds an http service.
    let batches: Vec<&Value> =
        blocked["phases"].as_array().unwrap().iter().flat_map(|p| p["batches"].as_array().unwrap()).collect();
    let has_http = |b: &Value| {
        b["cells"].as_array().unwrap().iter().any(|c| http_services.contains(&c["service"].as_str().unwrap()))
    };
    let failed = batches.iter().position(|b| b["state"] == "failed").expect("a failed batch");
    assert!(has_http(batches[failed]), "the failed batch holds an http service");
    assert!(batches[..failed].iter().all(|b| !has_http(b)), "no earlier batch held an http service");
    assert!(batches[failed + 1..].iter().all(|b| b["state"] == "pending"), "nothing after the failed batch started");
    let radius = blocked["blast_radius"].as_u64().unwrap();
    assert!(radius >= 1, "the defect reached at least one instance");
    let applied: u64 = batches[..=failed]
        .iter()
        .flat_map(|b| b["cells"].as_array().unwrap())
        .map(|c| c["instances"].as_u64().unwrap())
        .sum();
    assert!(radius <= applied, "blast radius {radius} is within the applied batches ({applied})");

    let rolled = env.post(&format!("/plans/{id}/rollback"), json!({"reason": "defect"})).await;
    assert_eq!(rolled["state"], "running", "rolled_back only once every changed instance is back");
    assert_eq!(rolled["rolling_back"], true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let plan = env.get(&format!("/plans/{id}")).await;
        let running = env.running().await;
        if plan["state"] == "rolled_back" {
            // Reported only when true of the fleet (the plan was read first).
            assert_eq!(running.get("1.0.0"), Some(&240), "rolled_back while {running:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rollback incomplete: {running:?}, plan {}", plan["reason"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kinds: Vec<String> =
        plan_events(&env, &id).await.iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect();
    assert!(kinds.contains(&"incident.opened".to_owned()) && kinds.contains(&"plan.action".to_owned()), "{kinds:?}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_makes_the_plan_wait_and_lifting_it_lets_it_finish() {
    let env = setup().await;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let freeze = env
        .post("/freezes", json!({"from": fmt(now - time::Duration::minutes(1)), "to": fmt(now + time::Duration::hours(1)), "reason": "big promotion"}))
        .await;
    let plan = env.post("/plans", plan_body("1.1.0")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let waiting = env.wait_plan(&id, "waiting", |p| p["state"] == "waiting").await;
    assert!(waiting["reason"].as_str().unwrap().contains("big promotion"), "{}", waiting["reason"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.running().await.get("1.0.0"), Some(&240), "nothing changes during a freeze");
    let (s, _) = env.call(reqwest::Method::DELETE, &format!("/freezes/{}", freeze["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 204);
    env.wait_plan(&id, "completion", |p| p["state"] == "completed").await;
    assert_eq!(env.running().await.get("1.1.0"), Some(&240));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_bad_plans_with_the_reason() {
    let env = setup().await;
    outrider_sim::ensure_version(
        &outrider_client::Client::new(&env.base, Some(env.token.clone())).unwrap(),
        "default",
        "mesh",
        "1.3.0",
    )
    .await
    .unwrap();
    for (body, status, needle) in [
        (json!({"sidecar": "mesh", "target_version": "1.3.0"}), 409, "not admitted"),
        (json!({"sidecar": "mesh", "target_version": "9.9.9"}), 404, "9.9.9"),
        (json!({"sidecar": "nope", "target_version": "1.1.0"}), 404, "nope"),
        (json!({"sidecar": "mesh", "target_version": "1.1"}), 400, "target_version"),
        (json!({"sidecar": "mesh", "target_version": "1.1.0", "colour": "red"}), 422, "colour"),
    ] {
        let (s, v) = env.call(reqwest::Method::POST, "/plans", Some(body.clone())).await;
        assert_eq!(s, status, "{body} → {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{body} → {v}");
    }
    let first = env.post("/plans", plan_body("1.1.0")).await;
    let (s, v) = env.call(reqwest::Method::POST, "/plans", Some(plan_body("1.1.0"))).await;
    assert_eq!(s, 409, "an overlapping plan is refused: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(first["id"].as_str().unwrap()));
    // Simulation changes nothing.
    let before = env.get("/plans").await.as_array().unwrap().len();
    let sim = env.post("/plans/simulate", plan_body("1.1.0")).await;
    assert!(sim["days"].as_f64().unwrap() >= 0.0);
    assert_eq!(env.get("/plans").await.as_array().unwrap().len(), before);
    // On-deploy phases last as long as the deploys they wait for take.
    let mut on_deploy = plan_body("1.1.0");
    on_deploy["phases"][1]["mode"] = json!("on-deploy");
    on_deploy["phases"][1]["batch_timeout"] = json!("10m");
    let often = env.post("/plans/simulate?deploys_per_day=24", on_deploy.clone()).await;
    let rarely = env.post("/plans/simulate?deploys_per_day=0.1", on_deploy.clone()).await;
    let (often, rarely) = (often["days"].as_f64().unwrap(), rarely["days"].as_f64().unwrap());
    assert!(often < 2.0 && rarely > 100.0 * often / 24.0, "{often} days vs {rarely} days");
    for bad in ["-1", "abc", "1e9"] {
        let (s, v) = env
            .call(reqwest::Method::POST, &format!("/plans/simulate?deploys_per_day={bad}"), Some(on_deploy.clone()))
            .await;
        assert_eq!(s, 400, "deploys_per_day={bad}: {v}");
    }
    env.shutdown().await;
}

/// Runs `outrider server` as a separate process, so that it can be killed with SIGKILL, and
/// waits until it is ready; its output goes to the `n`th log file in `dir`.
async fn start_server(dir: &Path, port: u16, n: usize) -> Child {
    let exe = Path::new(env!("CARGO_BIN_EXE_outrider"));
    let mut server = spawn_manager(exe, dir, port, dir.join(format!("server-{n}.log"))).expect("spawn outrider server");
    let url = format!("http://127.0.0.1:{port}");
    wait_manager_ready(&mut server, &url, dir, Duration::from_secs(5)).await.expect("manager not ready");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_manager_mid_rollout_changes_nothing_in_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0];
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start_server(dir.path(), port, 0).await;
    let http = reqwest::Client::new();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = outrider_client::Client::new(&base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: 16, instances: 160, seed: 5 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    outrider_sim::ensure_version(&client, "default", "mesh", "1.1.0").await.unwrap();
    client.admit_version("default", "mesh", "1.1.0", &json!("test")).await.unwrap();
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(500),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::from_millis(10) },
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&base, &token, "default", &spec.instances, &options).unwrap();
    let api = |path: String| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let r = http.get(format!("{base}/api/v1/tenants/default{path}")).bearer_auth(&token).send().await.ok()?;
            r.json::<Value>().await.ok()
        }
    };
    let at = |v: &'static str| async move {
        let list = api("/instances".into()).await.unwrap_or(Value::Null);
        list.as_array().map_or(0, |l| {
            l.iter()
                .filter(|i| {
                    i["sidecars"].as_array().unwrap().iter().any(|s| s["version"] == v && s["state"] == "running")
                })
                .count()
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while at("1.0.0").await != 160 {
        assert!(tokio::time::Instant::now() < deadline, "fleet never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = http
        .post(format!("{base}/api/v1/tenants/default/plans"))
        .bearer_auth(&token)
        .json(&plan_body_baking("1.1.0", "400ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // Kill the manager three times while the plan moves, restarting it each time.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        server.kill().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        server = start_server(dir.path(), port, round + 1).await;
        eprintln!("manager killed and restarted ({round})");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let plan = loop {
        let plan = api(format!("/plans/{id}")).await.unwrap_or(Value::Null);
        if plan["state"] == "completed" {
            break plan;
        }
        assert!(plan["state"] != "blocked" && plan["state"] != "failed", "{plan:#}");
        assert!(tokio::time::Instant::now() < deadline, "plan did not complete: {plan:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while at("1.1.0").await != 160 {
        assert!(tokio::time::Instant::now() < deadline, "not every instance reached 1.1.0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = api(format!("/events?plan={id}&limit=10000")).await.unwrap();
    let mut applying: Vec<(String, u64)> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "batch.state" && e["detail"]["state"] == "applying")
        .map(|e| (e["detail"]["phase"].as_str().unwrap().to_owned(), e["detail"]["batch"].as_u64().unwrap()))
        .collect();
    let batches: usize =
        plan["phases"].as_array().unwrap().iter().map(|p| p["batches"].as_array().unwrap().len()).sum();
    let n = applying.len();
    applying.sort();
    applying.dedup();
    assert_eq!((n, applying.len()), (batches, batches), "every batch applied exactly once");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_a_version_defective_blocks_its_plans_and_drafts_a_recall() {
    let env = setup().await;
    let plan = env.post("/plans", plan_body_baking("1.1.0", "30s")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    // Let the first batch reach some instances, then declare the version defective.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.running().await.get("1.1.0").copied().unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the first batch never landed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 1.0.0, what the instances ran before, is admitted: it is the last known good version.
    env.post("/sidecars/mesh/versions/1.0.0/admit", json!({"evidence": "test"})).await;
    env.post("/sidecars/mesh/versions/1.1.0/defective", json!({"reason": "leaks file descriptors"})).await;
    let blocked = env.get(&format!("/plans/{id}")).await;
    assert_eq!(blocked["state"], "blocked", "{blocked:#}");
    assert!(blocked["reason"].as_str().unwrap().contains("defective"));
    // A defective version can no longer be a target.
    let (s, v) =
        env.call(reqwest::Method::POST, "/plans", Some(json!({"sidecar": "mesh", "target_version": "1.1.0"}))).await;
    assert_eq!(s, 409);
    assert!(v["error"]["message"].as_str().unwrap().contains("Defective"), "{v}");
    // The recall plan is drafted (paused) for everything on 1.1.0, towards the version they
    // ran before — not 1.2.0, newer but never grayed.
    let plans = env.get("/plans").await;
    let recall = plans.as_array().unwrap().iter().find(|p| p["id"] != id.as_str()).expect("a recall plan").clone();
    assert_eq!((recall["state"].as_str(), recall["target_version"].as_str()), (Some("paused"), Some("1.0.0")));
    assert_eq!(recall["spec"]["from_versions"], json!(["1.1.0"]));
    let on_defective = env.running().await.get("1.1.0").copied().unwrap_or(0) as u64;
    assert_eq!(recall["counts"]["total"].as_u64().unwrap(), on_defective, "the recall covers every instance on 1.1.0");
    env.shutdown().await;
}

/// The instance `id` as listed, if it is.
async fn instance(env: &Env, id: &str) -> Option<Value> {
    env.get("/instances").await.as_array().unwrap().iter().find(|i| i["id"] == id).cloned()
}

fn mesh_version(i: &Value) -> Option<&str> {
    i["sidecars"].as_array()?.iter().find(|s| s["name"] == "mesh" && s["state"] == "running")?["version"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_join_or_leave_follow_the_plan_and_completion_promotes_the_bindings() {
    let env = setup_with(InstanceRetention { ttl: Duration::from_secs(1), keep_gone: Duration::from_secs(3600) }).await;
    let plan = env.post("/plans", plan_body_baking("1.1.0", "2s")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let baking = env
        .wait_plan(&id, "the first canary batch baking", |p| p["phases"][0]["batches"][0]["state"] == "baking")
        .await;
    let cell = baking["phases"][0]["batches"][0]["cells"][0].clone();
    let (service, region, env_name) =
        (cell["service"].as_str().unwrap(), cell["region"].as_str().unwrap(), cell["env"].as_str().unwrap());

    // A new canary of that cell registers mid-plan (a rescheduled pod): it starts on the target.
    let pod = SimInstance::new("rescheduled-canary", service, region, env_name, "canary");
    let options = SimFleetOptions { report_interval: Duration::from_millis(500), ..SimFleetOptions::default() };
    let newcomer = SimFleet::start(&env.base, &env.token, "default", std::slice::from_ref(&pod), &options).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = instance(&env, "rescheduled-canary").await;
        if listed.as_ref().and_then(mesh_version) == Some("1.1.0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the newcomer never ran the target: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected_delete = env.call(reqwest::Method::DELETE, "/instances/rescheduled-canary", None).await;
    assert_eq!(connected_delete.0, 409, "a connected instance is not deleted: {}", connected_delete.1);

    // Its agent leaves for good: past the TTL it is gone and does not hold the plan back.
    newcomer.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while instance(&env, "rescheduled-canary").await.is_none_or(|i| i["gone"] != true) {
        assert!(tokio::time::Instant::now() < deadline, "the instance never became gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = env.wait_plan(&id, "completed", |p| p["state"] == "completed").await;
    assert_eq!(done["accounted"]["gone"], 1, "{done:#}");
    assert_eq!(env.running().await.get("1.1.0"), Some(&240), "every instance in scope runs the target");

    // Completion promoted the target into every service's binding: a scale-up after the plan
    // starts on it too.
    for s in &env.spec.services {
        let bindings = env.get(&format!("/services/{}/sidecars", s.name)).await;
        let mesh = bindings.as_array().unwrap().iter().find(|b| b["sidecar"] == "mesh").unwrap();
        assert_eq!(mesh["version"], "1.1.0", "binding of {}", s.name);
    }

    // The operator removes the gone instance.
    let (status, removed) = env.call(reqwest::Method::DELETE, "/instances/rescheduled-canary", None).await;
    assert_eq!((status, removed["id"].as_str()), (200, Some("rescheduled-canary")), "{removed}");
    assert!(instance(&env, "rescheduled-canary").await.is_none());
    let (status, _) = env.call(reqwest::Method::DELETE, "/instances/rescheduled-canary", None).await;
    assert_eq!(status, 404);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_deploy_phase_waits_for_deploys_and_the_converge_phase_moves_the_rest() {
    let env = setup().await;
    let body = json!({
        "sidecar": "mesh", "target_version": "1.1.0", "from_versions": ["1.0.0"],
        "feature_services": {"per_trait_value": 0}, "analysis": {"metrics": []},
        "phases": [
            {"name": "gray", "stage": "canary", "mode": "hot",
             "batching": {"strategy": "linear", "size": 1000}, "bake": "150ms", "batch_timeout": "10s"},
            {"name": "full", "stage": "all", "mode": "on-deploy",
             "batching": {"strategy": "linear", "size": 1000}, "bake": "150ms", "deadline": "6s"},
            {"name": "converge", "stage": "all", "mode": "restart",
             "batching": {"strategy": "linear", "size": 1000}, "bake": "150ms", "batch_timeout": "10s"}
        ]
    });
    let plan = env.post("/plans", body).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let applying = env
        .wait_plan(&id, "the on-deploy batch applying", |p| p["phases"][1]["batches"][0]["state"] == "applying")
        .await;
    let canaries = env.spec.instances.iter().filter(|i| i.labels.stage == "canary").count();
    let others = 240 - canaries;
    // Nothing switches until it deploys.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.running().await.get("1.0.0"), Some(&others), "on-deploy instances wait for their deploy");
    let plan = env.get(&format!("/plans/{id}")).await;
    assert_eq!(plan["counts"]["awaiting_deploy"], others as u64, "{}", plan["counts"]);
    assert_eq!(plan["phases"][1]["batches"][0]["state"], "applying", "not done before its instances deploy");
    assert_eq!(plan["state"], "running", "{}", applying["reason"]);

    // Five of them deploy: they come up on the target.
    let deployed: Vec<usize> = env
        .fleet
        .agents()
        .iter()
        .enumerate()
        .filter(|(_, a)| a.instance().labels.stage != "canary")
        .map(|(i, _)| i)
        .take(5)
        .collect();
    for &i in &deployed {
        env.fleet.deploy(i).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let running = env.running().await;
        if running.get("1.1.0") == Some(&(canaries + 5)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the deployed instances did not switch: {running:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = (others - 5) as u64;
    env.wait_plan(&id, "the deployed ones no longer awaited", |p| p["counts"]["awaiting_deploy"] == left).await;

    // At the deadline the batch is done; the converge phase forces the long tail.
    let done = env.wait_plan(&id, "completed", |p| p["state"] == "completed").await;
    assert_eq!(done["phases"][2]["batches"][0]["state"], "passed");
    assert_eq!(env.running().await.get("1.1.0"), Some(&240));
    env.shutdown().await;
}

/// A plan to the bad 1.2.0 (crashes on http services), blocked by the crash.
async fn blocked_plan(env: &Env) -> String {
    let plan = env.post("/plans", plan_body_baking("1.2.0", "1500ms")).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    env.wait_plan(&id, "the block", |p| p["state"] == "blocked").await;
    id
}

/// A fix-forward to 1.1.0 that takes over `old`: any version but the target, `body` otherwise.
fn fix_forward(mut body: Value, old: &str) -> Value {
    body["from_versions"] = json!([]);
    body["supersedes"] = json!(old);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_forward_plan_supersedes_a_blocked_one_and_completes() {
    let env = setup().await;
    let bad = blocked_plan(&env).await;
    let fix = fix_forward(plan_body("1.1.0"), &bad);
    let mut plain = fix.clone();
    plain.as_object_mut().unwrap().remove("supersedes");
    let (s, v) = env.call(reqwest::Method::POST, "/plans", Some(plain)).await;
    assert_eq!(s, 409, "without supersedes the blocked plan is in the way: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&bad), "{v}");
    let sim = env.post("/plans/simulate", fix.clone()).await;
    assert!(sim["days"].as_f64().is_some(), "simulate takes the field too: {sim}");
    let plan = env.post("/plans", fix.clone()).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    assert_eq!(plan["supersedes"], bad.as_str());
    let old = env.get(&format!("/plans/{bad}")).await;
    // The same body shape plans the same order: the cells the bad plan changed come first.
    let cells = |p: &Value, applied_only: bool| -> Vec<Value> {
        let batches = p["phases"][0]["batches"].as_array().unwrap().iter();
        let batches: Vec<&Value> =
            batches.filter(|b| !applied_only || ["passed", "failed"].contains(&b["state"].as_str().unwrap())).collect();
        batches
            .iter()
            .flat_map(|b| b["cells"].as_array().unwrap().iter().map(|c| json!([c["service"], c["region"]])))
            .collect()
    };
    let changed = cells(&old, true);
    assert_eq!(cells(&plan, false)[..changed.len()], changed[..], "the fix starts where the bad version runs");
    assert_eq!((old["state"].as_str(), old["superseded_by"].as_str()), (Some("aborted"), Some(id.as_str())));
    assert_eq!(old["reason"], format!("superseded by plan {id}"));
    let event = plan_events(&env, &bad).await.into_iter().find(|e| e["detail"]["superseded_by"] == id.as_str());
    assert!(
        event.is_some_and(|e| e["actor"] != "executor" && e["detail"]["to"] == "aborted"),
        "recorded with its actor"
    );
    // The superseded plan can be taken over only once.
    let (s, v) = env.call(reqwest::Method::POST, "/plans", Some(fix)).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("only a blocked plan"), "{v}");
    let done = env.wait_plan(&id, "completion", |p| p["state"] == "completed").await;
    assert_eq!(done["counts"]["done"], 240, "{done:#}");
    assert_eq!(env.running().await, BTreeMap::from([("1.1.0".to_owned(), 240)]), "every instance runs the fix");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_a_fix_forward_never_returns_instances_to_the_version_it_replaced() {
    let env = setup().await;
    let bad = blocked_plan(&env).await;
    // One batch over every cell, baking long enough to be rolled back while it bakes.
    let mut body = plan_body("1.1.0");
    body["phases"] = json!([{"name": "all", "stage": "all", "mode": "hot",
        "batching": {"strategy": "linear", "size": 1000}, "bake": "60s", "batch_timeout": "10s"}]);
    let id = env.post("/plans", fix_forward(body, &bad)).await["id"].as_str().unwrap().to_owned();
    env.wait_plan(&id, "the bake", |p| p["phases"][0]["batches"][0]["state"] == "baking").await;
    assert_eq!(env.running().await, BTreeMap::from([("1.1.0".to_owned(), 240)]));
    env.post(&format!("/plans/{id}/rollback"), json!({"reason": "test"})).await;
    env.wait_plan(&id, "the rollback", |p| p["state"] == "rolled_back").await;
    assert_eq!(env.running().await, BTreeMap::from([("1.0.0".to_owned(), 240)]), "back before the bad version");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_of_one_sidecar_over_disjoint_services_run_side_by_side() {
    let env = setup().await;
    let services: Vec<String> = env.spec.services.iter().map(|s| s.name.clone()).collect();
    let (left, right) = services.split_at(services.len() / 2);
    let body = |svcs: &[String]| {
        let mut b = plan_body_baking("1.1.0", "1s");
        b["selector"] = json!({"services": svcs});
        b["feature_services"] = json!({"per_trait_value": 0});
        b
    };
    let a = env.post("/plans", body(left)).await["id"].as_str().unwrap().to_owned();
    let b = env.post("/plans", body(right)).await["id"].as_str().unwrap().to_owned();
    // Overlapping plans are still refused: one service in common, or every service.
    for overlapping in [body(&[left[0].clone()]), plan_body("1.1.0")] {
        let (s, v) = env.call(reqwest::Method::POST, "/plans", Some(overlapping)).await;
        assert_eq!(s, 409, "{v}");
    }
    let moving = |p: &Value| {
        p["state"] == "running"
            && p["phases"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|ph| ph["batches"].as_array().unwrap())
                .any(|b| b["state"] != "pending")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (pa, pb) = (env.get(&format!("/plans/{a}")).await, env.get(&format!("/plans/{b}")).await);
        if moving(&pa) && moving(&pb) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never both moving: {} / {}", pa["reason"], pb["reason"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&a, &b] {
        env.wait_plan(id, "completion", |p| p["state"] == "completed").await;
    }
    assert_eq!(env.running().await, BTreeMap::from([("1.1.0".to_owned(), 240)]));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_on_fail_rollback_rolls_back_by_itself_on_a_failed_verdict() {
    let env = setup().await;
    let mut body = plan_body_baking("1.2.0", "1500ms");
    body["on_fail"] = json!("rollback");
    let id = env.post("/plans", body).await["id"].as_str().unwrap().to_owned();
    let done = env.wait_plan(&id, "the rollback", |p| p["state"] == "rolled_back").await;
    assert_eq!(done["spec"]["on_fail"], "rollback");
    assert!(!done["incidents"].as_array().unwrap().is_empty(), "the failed verdict is on record");
    assert_eq!(env.running().await, BTreeMap::from([("1.0.0".to_owned(), 240)]), "back on the previous version");
    let events = plan_events(&env, &id).await;
    let action: Vec<&Value> = events.iter().filter(|e| e["kind"] == "plan.action").collect();
    assert_eq!(action.len(), 1, "{action:?}");
    assert_eq!(
        (action[0]["actor"].as_str(), action[0]["detail"]["action"].as_str()),
        (Some("executor"), Some("rollback"))
    );
    assert!(action[0]["reason"].as_str().unwrap().contains("on_fail: rollback"), "{}", action[0]["reason"]);
    env.shutdown().await;
}

/// Waits until the instance `id` is listed running mesh, and returns that version.
async fn runs_mesh(env: &Env, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = instance(env, id).await;
        if let Some(v) = listed.as_ref().and_then(mesh_version) {
            return v.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never ran mesh: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defective_version_reaches_no_new_instance_and_is_recalled_to_the_last_good_one() {
    let env = setup().await;
    // 1.1.0 goes through a whole plan: known good, and every binding names it.
    let first = env.post("/plans", plan_body("1.1.0")).await;
    let first = first["id"].as_str().unwrap().to_owned();
    env.wait_plan(&first, "completed", |p| p["state"] == "completed").await;
    assert_eq!(env.get("/sidecars/mesh/versions/1.1.0").await["completed_plan"], first.as_str());
    // 1.2.0 is admitted but never grayed; 1.3.0 is grayed on the canaries, and waits for the
    // other instances' deploys.
    let client = outrider_client::Client::new(&env.base, Some(env.token.clone())).unwrap();
    outrider_sim::ensure_version(&client, "default", "mesh", "1.3.0").await.unwrap();
    env.post("/sidecars/mesh/versions/1.3.0/admit", json!({"evidence": "test"})).await;
    let body = json!({
        "sidecar": "mesh", "target_version": "1.3.0", "from_versions": ["1.1.0"],
        "feature_services": {"per_trait_value": 0}, "analysis": {"metrics": []},
        "phases": [
            {"name": "gray", "stage": "canary", "mode": "hot",
             "batching": {"strategy": "linear", "size": 1000}, "bake": "150ms", "batch_timeout": "10s"},
            {"name": "full", "stage": "all", "mode": "on-deploy",
             "batching": {"strategy": "linear", "size": 1000}, "bake": "150ms", "deadline": "10m"},
            {"name": "converge", "stage": "all", "mode": "restart",
             "batching": {"strategy": "linear", "size": 1000}, "bake": "150ms", "batch_timeout": "10s"}
        ]
    });
    let plan = env.post("/plans", body).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let applying = env
        .wait_plan(&id, "the on-deploy batch applying", |p| p["phases"][1]["batches"][0]["state"] == "applying")
        .await;
    let canaries = env.spec.instances.iter().filter(|i| i.labels.stage == "canary").count();
    assert_eq!(env.running().await.get("1.3.0"), Some(&canaries), "{}", applying["reason"]);

    let marked = env.post("/sidecars/mesh/versions/1.3.0/defective", json!({"reason": "corrupts headers"})).await;
    assert_eq!(marked["recall_to"], "1.1.0", "{marked:#}");
    assert!(
        env.get("/sidecars/mesh/versions/1.2.0").await["completed_plan"].is_null(),
        "1.2.0 never went through gray"
    );
    let blocked = env.get(&format!("/plans/{id}")).await;
    assert_eq!(blocked["state"], "blocked", "{blocked:#}");
    let (status, refused) = env.call(reqwest::Method::POST, &format!("/plans/{id}/approve"), Some(json!({}))).await;
    assert!(status == 409 || status == 412, "a plan to a defective version does not go on: {status} {refused}");

    // Pending on-deploy targets are withdrawn: instances deployed now stay on 1.1.0.
    let deployed: Vec<usize> = env
        .fleet
        .agents()
        .iter()
        .enumerate()
        .filter(|(_, a)| a.instance().labels.stage != "canary")
        .map(|(i, _)| i)
        .take(5)
        .collect();
    for &i in &deployed {
        env.fleet.deploy(i).await;
    }
    // A new canary in a cell grayed on 1.3.0, and a new instance elsewhere, start on 1.1.0.
    let cell = &applying["phases"][0]["batches"][0]["cells"][0];
    let (service, region, env_name) =
        (cell["service"].as_str().unwrap(), cell["region"].as_str().unwrap(), cell["env"].as_str().unwrap());
    let pods = [
        SimInstance::new("new-canary", service, region, env_name, "canary"),
        SimInstance::new("new-full", service, region, env_name, "full"),
    ];
    let options = SimFleetOptions { report_interval: Duration::from_millis(500), ..SimFleetOptions::default() };
    let newcomers = SimFleet::start(&env.base, &env.token, "default", &pods, &options).unwrap();
    for pod in &pods {
        assert_eq!(runs_mesh(&env, &pod.id).await, "1.1.0", "{} starts on the last good version", pod.id);
    }
    // Instances already on 1.3.0 wait for the recall; no other instance ever gets it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let running = env.running().await;
        assert!(running.get("1.3.0").is_none_or(|n| *n <= canaries), "1.3.0 spread: {running:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let running = env.running().await;
    assert_eq!(running.get("1.3.0"), Some(&canaries), "{running:?}");
    assert_eq!(running.get("1.1.0"), Some(&(240 - canaries + pods.len())), "{running:?}");
    for &i in &deployed {
        let id = &env.fleet.agents()[i].instance().id;
        assert_eq!(instance(&env, id).await.as_ref().and_then(mesh_version), Some("1.1.0"), "{id} after its deploy");
    }

    // One recall plan, drafted, to the last good version (never 1.2.0), even when marked twice.
    env.post("/sidecars/mesh/versions/1.3.0/defective", json!({"reason": "corrupts headers"})).await;
    let plans = env.get("/plans").await;
    let recalls: Vec<&Value> =
        plans.as_array().unwrap().iter().filter(|p| p["spec"]["from_versions"] == json!(["1.3.0"])).collect();
    assert_eq!(recalls.len(), 1, "{plans:#}");
    let recall = recalls[0];
    assert_eq!((recall["state"].as_str(), recall["target_version"].as_str()), (Some("paused"), Some("1.1.0")));
    assert_eq!(recall["counts"]["total"].as_u64(), Some(canaries as u64), "the recall covers every instance on 1.3.0");
    newcomers.shutdown().await;
    env.shutdown().await;
}
