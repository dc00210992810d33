//! Binding changes obey admission end to end: a real manager (in process, real sockets) and
//! a simulated fleet speaking the real sync protocol. A change to a version that is not
//! admitted, under a freeze, in the service's protected period or on a protected service is
//! refused with the reason and changes nothing; forced with a reason it is made, and the event
//! log keeps why and who.

mod common;

use std::time::Duration;

use outrider_manager::{ManagerConfig, RunningManager};
use outrider_model::{NewFreeze, ProtectedPeriod};
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions};
use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;

use common::TenantApi;

struct Env {
    manager: RunningManager,
    api: TenantApi,
    fleet: SimFleet,
    /// The service the tests change (the others are left alone).
    service: String,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = TenantApi;

    fn deref(&self) -> &TenantApi {
        &self.api
    }
}

impl Env {
    fn binding_path(&self) -> String {
        format!("/services/{}/sidecars/mesh", self.service)
    }

    /// `PUT` of the service's mesh binding.
    async fn bind(&self, body: Value) -> (u16, Value) {
        self.call(Method::PUT, &self.binding_path(), Some(body)).await
    }

    /// The service's stored mesh binding.
    async fn binding(&self) -> Value {
        let list = self.get(&format!("/services/{}/sidecars", self.service)).await;
        list.as_array().unwrap().iter().find(|b| b["sidecar"] == "mesh").expect("a mesh binding").clone()
    }

    /// The mesh versions the service's instances run (one entry per instance).
    async fn running(&self) -> Vec<String> {
        let list = self.get(&format!("/instances?service={}", self.service)).await;
        let sidecars = list.as_array().unwrap().iter().flat_map(|i| i["sidecars"].as_array().unwrap().clone());
        sidecars.filter(|s| s["name"] == "mesh").map(|s| s["version"].as_str().unwrap().to_owned()).collect()
    }

    /// Waits until every instance of the service runs `version`.
    async fn wait_running(&self, version: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running = self.running().await;
            if !running.is_empty() && running.iter().all(|v| v == version) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "instances never ran {version}: {running:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `binding.updated` events of the service's mesh binding, in order.
    async fn binding_events(&self) -> Vec<Value> {
        let object = format!("service/{}/sidecar/mesh", self.service);
        let events = self.get("/events?limit=10000").await;
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "binding.updated" && e["object"] == object.as_str())
            .cloned()
            .collect()
    }

    /// Replaces the service with `edit` applied to it.
    async fn edit_service(&self, edit: impl FnOnce(&mut Value)) {
        let path = format!("/services/{}", self.service);
        let mut svc = self.get(&path).await;
        edit(&mut svc);
        self.ok(Method::PUT, &path, Some(svc)).await;
    }

    async fn shutdown(self) {
        self.fleet.shutdown().await;
        self.manager.shutdown().await;
    }
}

/// A manager and 3 services / 12 instances running mesh 1.0.0; version 1.1.0 exists, not
/// admitted; 1.2.0 was admitted, then marked defective.
async fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let manager =
        outrider_manager::start(ManagerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let base = format!("http://{}", manager.addr);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
    let client = outrider_client::Client::new(&base, Some(token.clone())).unwrap();
    let spec = FleetSpec::generate(FleetParams { services: 3, instances: 12, seed: 3 }).unwrap();
    let mesh = SidecarRef { name: "mesh".into(), version: "1.0.0".into() };
    outrider_sim::seed_catalog(&client, "default", &spec, Some(&mesh)).await.unwrap();
    for v in ["1.1.0", "1.2.0"] {
        outrider_sim::ensure_version(&client, "default", "mesh", v).await.unwrap();
    }
    client.admit_version("default", "mesh", "1.2.0", &json!("test")).await.unwrap();
    client.mark_defective("default", "mesh", "1.2.0", "leaks memory").await.unwrap();
    let options = SimFleetOptions {
        report_interval: Duration::from_millis(200),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(10), jitter: Duration::ZERO },
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(&base, &token, "default", &spec.instances, &options).unwrap();
    let service = spec.instances[0].service.clone();
    let env = Env { manager, api: TenantApi::new(base, token), fleet, service, _dir: dir };
    env.wait_running("1.0.0").await;
    env
}

/// A period from an hour ago to an hour from now.
fn now_period() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::hours(1))
}

/// Creates a freeze in force now covering `services` (empty: the tenant); returns its id.
async fn freeze_now(env: &Env, services: &[&str]) -> String {
    let (from, to) = now_period();
    let services = services.iter().map(|s| (*s).to_owned()).collect();
    let body = serde_json::to_value(NewFreeze { from, to, reason: "release week".into(), services }).unwrap();
    env.post("/freezes", body).await["id"].as_str().unwrap().to_owned()
}

/// Asserts a refusal: 409 `failed_precondition` whose message holds each of `needles`.
fn assert_refused(answer: &(u16, Value), needles: &[&str]) {
    let (status, body) = answer;
    assert_eq!((*status, body["error"]["code"].as_str()), (409, Some("failed_precondition")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for n in needles {
        assert!(message.contains(n), "{n:?} not in {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_binding_changes_name_the_check_and_change_nothing() {
    let env = setup().await;
    let before = env.binding().await;
    let events_before = env.binding_events().await.len();
    let to_1_1 = json!({"version": "1.1.0"});

    // Not admitted.
    assert_refused(&env.bind(to_1_1.clone()).await, &["not_admitted", "1.1.0 of sidecar \"mesh\" is not admitted"]);
    env.post("/sidecars/mesh/versions/1.1.0/admit", json!({"evidence": "ci"})).await;

    // A freeze of this service, in force now (even a change of mode only is a change).
    let id = freeze_now(&env, &[&env.service]).await;
    assert_refused(&env.bind(to_1_1.clone()).await, &["freeze", &id, "release week"]);
    assert_refused(&env.bind(json!({"version": "1.0.0", "mode": "hot"})).await, &["freeze: freeze"]);
    env.ok(Method::DELETE, &format!("/freezes/{id}"), None).await;

    // The service's protected period, in force now.
    let (from, to) = now_period();
    let period = serde_json::to_value(ProtectedPeriod { from, to, reason: "big sale".into() }).unwrap();
    env.edit_service(|s| s["protected_periods"] = json!([period])).await;
    assert_refused(&env.bind(to_1_1.clone()).await, &["protected_period", "big sale"]);
    env.edit_service(|s| s["protected_periods"] = json!([])).await;

    // A protected service.
    env.edit_service(|s| s["protected"] = json!(true)).await;
    let refused = env.bind(to_1_1.clone()).await;
    assert_refused(&refused, &["protected_service", &format!("service {} is protected", env.service)]);
    assert!(refused.1["error"]["message"].as_str().unwrap().contains("\"force\": true"), "{refused:?}");
    // Re-putting the stored binding is no change: it stays a no-op 200.
    let (s, same) = env.bind(before.clone()).await;
    assert_eq!((s, &same), (200, &before));

    // Nothing changed: the binding, the instances, the event log.
    assert_eq!(env.binding().await, before);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.running().await.iter().all(|v| v == "1.0.0"), "{:?}", env.running().await);
    assert_eq!(env.binding_events().await.len(), events_before);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_change_is_made_and_the_event_log_keeps_why_who_and_what_it_overrode() {
    let env = setup().await;
    let id = freeze_now(&env, &[]).await;

    // Force needs a reason.
    let (s, body) = env.bind(json!({"version": "1.1.0", "force": true})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (400, Some("invalid_argument")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("reason"), "{body}");
    // A defective version is never bound, not even with force.
    let defective = env.bind(json!({"version": "1.2.0", "force": true, "reason": "try"})).await;
    assert_refused(&defective, &["1.2.0", "Defective", "not even with force"]);
    assert_eq!(env.binding().await["version"], "1.0.0");

    // Forced with a reason: made despite the version not admitted and the freeze.
    let (s, set) = env.bind(json!({"version": "1.1.0", "force": true, "reason": "CVE-2026-1 hotfix"})).await;
    assert_eq!(s, 200, "{set}");
    let stored = json!({"sidecar": "mesh", "enabled": true, "version": "1.1.0", "mode": "restart"});
    assert_eq!(set, stored, "force and reason are not part of the binding");
    assert_eq!(env.binding().await, stored);
    env.wait_running("1.1.0").await;
    let events = env.binding_events().await;
    let forced = events.last().unwrap();
    assert_eq!(forced["actor"], "admin", "{forced}");
    assert_eq!(forced["reason"], "CVE-2026-1 hotfix", "{forced}");
    assert_eq!(forced["detail"]["forced"], true, "{forced}");
    assert_eq!(forced["detail"]["reason"], "CVE-2026-1 hotfix", "{forced}");
    assert_eq!(forced["detail"]["to"]["version"], "1.1.0", "{forced}");
    assert_eq!(forced["detail"]["from"]["version"], "1.0.0", "{forced}");
    let overridden: Vec<&str> =
        forced["detail"]["overridden"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(overridden, ["not_admitted", "freeze"], "{forced}");
    assert!(forced["detail"]["overridden"][1]["reason"].as_str().unwrap().contains(&id), "{forced}");

    // A change that breaks nothing may say why too: the reason is recorded, nothing forced.
    env.ok(Method::DELETE, &format!("/freezes/{id}"), None).await;
    let (s, _) = env.bind(json!({"version": "1.0.0", "reason": "back to the fleet's version"})).await;
    assert_eq!(s, 200);
    env.wait_running("1.0.0").await;
    let events = env.binding_events().await;
    let plain = events.last().unwrap();
    assert_eq!(plain["reason"], "back to the fleet's version", "{plain}");
    assert_eq!(
        (plain["detail"]["forced"].as_bool(), plain["detail"]["overridden"].as_array().map(Vec::len)),
        (Some(false), Some(0))
    );
    env.shutdown().await;
}
