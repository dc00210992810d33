//! Webhooks end to end: a real manager (in process, real sockets), a simulated fleet speaking
//! the real sync protocol, and loopback receivers — one that answers, one that is down, one
//! that is too slow. Owners get signed deliveries of the kinds they asked for, and receivers
//! that fail get retries while plans move on at their normal speed.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use hmac::{Hmac, Mac};
use outrider_manager::{ManagerConfig, RunningManager, Tuning, WebhookDelivery};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions};
use serde_json::{Value, json};
use sha2::Sha256;

const GOOD_SECRET: &str = "good-receiver-secret";

use common::TenantApi;

struct Env {
    manager: RunningManager,
    api: TenantApi,
    fleet: SimFleet,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = TenantApi;

    fn deref(&self) -> &TenantApi {
        &self.api
    }
}

impl Env {
    /// Versions of `mesh` the instances report running, with counts.
    async fn running(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for i in self.get("/instances").await.as_array().unwrap() {
            for s in i["sidecars"].as_array().unwrap() {
                if s["name"] == "mesh" && s["state"] == "running" {
                    *out.entry(s["version"].as_str().unwrap().to_owned()).or_default() += 1;
                }
            }
        }
        out
    }

    async fn wait_plan(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let plan = self.get(&format!("/plans/{id}")).await;
            if plan["state"] == state {
                return plan;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {state}: {plan:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a plan from `from` to `target` until `state`; how long it took.
    async fn run_plan(&self, from: &str, target: &str, bake: &str, state: &str) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        let plan = self.post("/plans", plan_body(from, target, bake)).await;
        let id = plan["id"].as_str().unwrap().to_owned();
        self.wait_plan(&id, state).await;
        (id, started.elapsed())
    }

    /// Runs `outrider ARGS` against the manager; its standard output. Fails the test when it
    /// fails.
    async fn cli(&self, args: &[&str]) -> String {
        let token = self.dir.path().join("admin.token");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outrider"))
            .args(args)
            .arg("--manager")
            .arg(&self.base)
            .arg("--token-file")
            .arg(token)
            .output()
            .await
            .expect("run outrider");
        assert!(out.status.success(), "outrider {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    async fn shutdown(self) {
        self.fleet.shutdown().await;
        self.manager.shutdown().await;
    }
}

/// A two-phase plan judged on process signals only, its batches baking for `bake`.
fn plan_body(from: &str, target: &str, bake: &str) -> Value {
    json!({
        "sidecar": "mesh", "target_version": target, "from_versions": [from],
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

/// A manager delivering with short timeouts and backoff, 12 services / 48 instances running
/// mesh 1.0.0, versions 1.1.0 and 1.3.0 (healthy) and 1.2.0 (crashes on http services).
async fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = ManagerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let webhooks = WebhookDelivery {
        timeout: Duration::from_millis(300),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        attempts: 4,
        queue: 64,
    };
    let tuning = Tuning { webhooks, ..Tuning::default() };
    let manager =
        outrider_manager::start_with(config, Arc::new(outrider_manager::executor::SystemClock), tuning).await.unwrap();
    let base = format!("http://{}", manager.addr);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = outrider_client::Client::new(&base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: 12, instances: 48, seed: 11 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    for v in ["1.1.0", "1.2.0", "1.3.0"] {
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
    let env = Env { manager, api: TenantApi::new(base, token), fleet, dir };
    for v in ["1.1.0", "1.2.0", "1.3.0"] {
        env.post(&format!("/sidecars/mesh/versions/{v}/admit"), json!({"evidence": "test"})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.running().await.get("1.0.0") != Some(&48) {
        assert!(tokio::time::Instant::now() < deadline, "fleet never came up: {:?}", env.running().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback HTTP receiver that records every POST and answers 200 after `delay`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(delay: Duration) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/hook",
                post(move |State(got): State<Arc<Mutex<Vec<Received>>>>, headers: HeaderMap, body: Bytes| async move {
                    tokio::time::sleep(delay).await;
                    got.lock().unwrap().push(Received { headers, body });
                    "ok"
                }),
            )
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, got, task }
    }

    /// The bodies received so far whose signature `secret` verifies; panics on a bad one.
    fn verified(&self, secret: &str) -> Vec<Value> {
        let got = self.got.lock().unwrap().clone();
        got.iter()
            .map(|r| {
                let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(&r.body);
                let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                assert_eq!(header("x-outrider-signature"), expected, "signature of {:?}", r.body);
                assert_eq!(header("content-type"), "application/json");
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(header("x-outrider-event"), body["kind"], "{body}");
                assert_eq!(header("x-outrider-delivery"), body["id"], "{body}");
                body
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A URL on a loopback port nothing listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}/hook", listener.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_get_signed_deliveries_and_receivers_down_or_slow_never_slow_plans() {
    let env = setup().await;
    // How long a plan takes with no webhook at all.
    let (_, baseline) = env.run_plan("1.0.0", "1.1.0", "150ms", "completed").await;

    // Bad bodies are refused and change nothing.
    for (body, status) in [
        (json!({"url": "http://127.0.0.1:1/", "events": ["plan.blocked"], "secret": "s3cret-key", "colour": 1}), 422),
        (json!({"url": "ftp://127.0.0.1/", "events": ["plan.blocked"], "secret": "s3cret-key"}), 400),
        (json!({"url": "http://127.0.0.1:1/", "events": ["plan.created"], "secret": "s3cret-key"}), 400),
        (json!({"url": "http://127.0.0.1:1/", "events": ["plan.blocked"]}), 422),
    ] {
        let (s, v) = env.call(reqwest::Method::POST, "/webhooks", Some(body.clone())).await;
        assert_eq!(s, status, "{body} → {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    assert_eq!(env.get("/webhooks").await, json!([]));

    let good = Receiver::start(Duration::ZERO).await;
    let slow = Receiver::start(Duration::from_secs(2)).await;
    let all =
        ["plan.blocked", "plan.waiting", "plan.completed", "plan.rolled_back", "incident.opened", "version.defective"];
    let good_hook = env.post("/webhooks", json!({"url": good.url, "events": all, "secret": GOOD_SECRET})).await;
    assert_eq!(good_hook["secret_set"], true);
    assert!(good_hook.get("secret").is_none(), "the secret is never shown: {good_hook}");
    let down_url = closed_url().await;
    let down_hook = env.post("/webhooks", json!({"url": down_url, "events": all, "secret": "down-secret"})).await;
    let slow_hook = env.post("/webhooks", json!({"url": slow.url, "events": all, "secret": "slow-secret"})).await;
    let listed = env.get("/webhooks").await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(!listed.to_string().contains(GOOD_SECRET), "{listed}");

    // A defective version blocks its plan; rolling back returns the fleet.
    let (blocked, _) = env.run_plan("1.1.0", "1.2.0", "1500ms", "blocked").await;
    env.post(&format!("/plans/{blocked}/rollback"), json!({"reason": "defect"})).await;
    env.wait_plan(&blocked, "rolled_back").await;

    // With the down and slow receivers still retrying, a plan takes its normal time.
    let (completed, with_hooks) = env.run_plan("1.1.0", "1.3.0", "150ms", "completed").await;
    assert!(
        with_hooks < baseline * 2 + Duration::from_secs(2),
        "a plan took {with_hooks:?} with failing webhooks, {baseline:?} without"
    );
    env.post("/sidecars/mesh/versions/1.2.0/defective", json!({"reason": "crashes on http"})).await;

    // The good receiver got each kind, signed, about the right objects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wanted = ["plan.blocked", "incident.opened", "plan.rolled_back", "plan.completed", "version.defective"];
    let bodies = loop {
        let bodies = good.verified(GOOD_SECRET);
        let kinds: Vec<&str> = bodies.iter().filter_map(|b| b["kind"].as_str()).collect();
        if wanted.iter().all(|k| kinds.contains(k)) {
            break bodies;
        }
        assert!(tokio::time::Instant::now() < deadline, "good receiver got only {kinds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let of_kind = |k: &str| bodies.iter().find(|b| b["kind"] == k).unwrap().clone();
    assert_eq!(of_kind("plan.blocked")["plan"], blocked.as_str());
    assert_eq!(of_kind("plan.blocked")["detail"]["to"], "blocked");
    assert_eq!(of_kind("plan.blocked")["tenant"], "default");
    assert_eq!(of_kind("plan.rolled_back")["plan"], blocked.as_str());
    assert_eq!(of_kind("plan.completed")["plan"], completed.as_str());
    assert_eq!(of_kind("version.defective")["target"], "sidecar/mesh/version/1.2.0");
    assert_eq!(of_kind("version.defective")["actor"], "admin");
    // The deliveries match the event log.
    let events = env.get(&format!("/events?plan={blocked}")).await;
    let logged = events.as_array().unwrap().iter().find(|e| e["detail"]["to"] == "blocked").unwrap();
    assert_eq!(of_kind("plan.blocked")["seq"], logged["seq"]);
    let ids: std::collections::BTreeSet<&str> = bodies.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), bodies.len(), "each delivery once to a receiver that answers");
    let attempts = env.get(&format!("/webhooks/{}", good_hook["id"].as_str().unwrap())).await;
    let attempts = attempts["attempts"].as_array().unwrap();
    assert!(attempts.iter().all(|a| a["ok"] == true && a["status"] == 200 && a["attempt"] == 1), "{attempts:?}");

    // The down receiver's deliveries were tried again and again, then given up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let detail = env.get(&format!("/webhooks/{}", down_hook["id"].as_str().unwrap())).await;
        let attempts = detail["attempts"].as_array().unwrap();
        assert!(attempts.iter().all(|a| a["ok"] == false && a["error"].is_string()), "{attempts:?}");
        let first = attempts.first().map(|a| a["delivery"].clone());
        let tries: Vec<u64> = attempts
            .iter()
            .filter(|a| Some(&a["delivery"]) == first.as_ref())
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect();
        if tries == [1, 2, 3, 4] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the down receiver's attempts: {attempts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The slow receiver's attempts time out.
    let detail = env.get(&format!("/webhooks/{}", slow_hook["id"].as_str().unwrap())).await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty() && attempts.iter().all(|a| a["ok"] == false), "{attempts:?}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("no answer within"), "{attempts:?}");

    let metrics = env.http.get(format!("{}/metrics", env.base)).send().await.unwrap().text().await.unwrap();
    for outcome in ["delivered", "retried", "failed"] {
        assert!(metrics.contains(&format!("outrider_webhook_deliveries_total{{outcome=\"{outcome}\"}}")), "{metrics}");
    }

    // Deleting stops the deliveries; creation and deletion are in the event log with the actor.
    let id = down_hook["id"].as_str().unwrap();
    let (s, _) = env.call(reqwest::Method::DELETE, &format!("/webhooks/{id}"), None).await;
    assert_eq!(s, 204);
    let (s, v) = env.call(reqwest::Method::GET, &format!("/webhooks/{id}"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let log = env.get("/events?limit=10000").await;
    let webhook_events: Vec<(&str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object"] == format!("webhook/{id}"))
        .map(|e| (e["kind"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(webhook_events, [("webhook.created", "admin"), ("webhook.deleted", "admin")]);

    // The CLI: create (secret from a file), list, get, delete.
    let secret_file = env.dir.path().join("hook.secret");
    std::fs::write(&secret_file, "cli-secret-key\n").unwrap();
    let secret_file = secret_file.to_str().unwrap();
    let created = env
        .cli(&[
            "webhook",
            "create",
            "--url",
            &good.url,
            "--event",
            "plan.completed",
            "--secret-file",
            secret_file,
            "-o",
            "json",
        ])
        .await;
    let created: Value = serde_json::from_str(&created).unwrap();
    let cli_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!((created["events"].clone(), created["secret_set"].clone()), (json!(["plan.completed"]), json!(true)));
    let listed: Value = serde_json::from_str(&env.cli(&["webhook", "list", "-o", "json"]).await).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|w| w["id"] == cli_id.as_str()), "{listed}");
    let shown = env.cli(&["webhook", "get", good_hook["id"].as_str().unwrap()]).await;
    assert!(shown.contains("plan.completed") && shown.contains("ATTEMPT"), "{shown}");
    let deleted = env.cli(&["webhook", "delete", &cli_id]).await;
    assert!(deleted.contains("deleted"), "{deleted}");

    // At most 100 webhooks per tenant.
    for _ in 0..98 {
        env.post("/webhooks", json!({"url": closed_url().await, "events": ["plan.waiting"], "secret": "s3cret-key"}))
            .await;
    }
    let extra = json!({"url": good.url, "events": ["plan.waiting"], "secret": "s3cret-key"});
    let (s, v) = env.call(reqwest::Method::POST, "/webhooks", Some(extra)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("failed_precondition")), "{v}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_a_restart_and_deliver_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let config = ManagerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        let m = outrider_manager::start(config).await.unwrap();
        let base = format!("http://{}", m.addr);
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
        (m, base, token)
    };
    let good = Receiver::start(Duration::ZERO).await;
    let (m, base, token) = start().await;
    let http = reqwest::Client::new();
    let url = |base: &str, path: &str| format!("{base}/api/v1/tenants/default{path}");
    let body = json!({"url": good.url, "events": ["version.defective"], "secret": GOOD_SECRET});
    let created: Value =
        http.post(url(&base, "/webhooks")).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
    let client = outrider_client::Client::new(&base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: 1, instances: 1, seed: 1 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    outrider_sim::ensure_version(&client, "default", "mesh", "1.1.0").await.unwrap();
    m.shutdown().await;

    let (m, base, token) = start().await;
    let listed: Value =
        http.get(url(&base, "/webhooks")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed[0]["id"], created["id"], "{listed}");
    let defect = json!({"reason": "found after the restart"});
    let resp = http
        .post(url(&base, "/sidecars/mesh/versions/1.1.0/defective"))
        .bearer_auth(&token)
        .json(&defect)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let bodies = good.verified(GOOD_SECRET);
        if let Some(b) = bodies.iter().find(|b| b["kind"] == "version.defective") {
            assert_eq!(
                (b["target"].as_str(), b["reason"].as_str()),
                (Some("sidecar/mesh/version/1.1.0"), Some("found after the restart"))
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no delivery after the restart: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.shutdown().await;
}
