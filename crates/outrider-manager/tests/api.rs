//! The manager over real sockets: REST bad-input handling, persistence across restarts, and
//! desired state pushed to a gRPC sync stream when a binding changes.

use std::{path::Path, time::Duration};

use outrider_manager::{ManagerConfig, RunningManager, start};
use outrider_proto::v1::{
    self, AgentMessage, agent_message::Body, agent_sync_client::AgentSyncClient, manager_message,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, method: Method, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(body)).await;
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }
}

async fn boot(dir: &Path) -> (RunningManager, Api) {
    let m = start(ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let api = Api { http: reqwest::Client::new(), base: format!("http://{}", m.addr), token };
    (m, api)
}

fn version(v: &str) -> Value {
    json!({"version": v, "artifact": {"url": "file:///bin/sh", "sha256": SHA}, "command": ["${artifact}"]})
}

async fn seed(api: &Api) {
    api.ok(
        Method::POST,
        "/tenants/default/sidecars",
        json!({"name": "mesh", "upgrade_modes": ["restart", "on-deploy"]}),
    )
    .await;
    api.ok(Method::POST, "/tenants/default/sidecars/mesh/versions", version("1.0.0")).await;
    api.ok(Method::POST, "/tenants/default/sidecars/mesh/versions", version("1.1.0")).await;
    api.ok(Method::POST, "/tenants/default/services", json!({"name": "checkout", "priority": "P1"})).await;
    admit(api, "1.0.0").await;
    api.ok(Method::PUT, "/tenants/default/services/checkout/sidecars/mesh", json!({"version": "1.0.0"})).await;
}

/// Admits version `v` of mesh (only admitted versions can be bound).
async fn admit(api: &Api, v: &str) {
    api.ok(Method::POST, &format!("/tenants/default/sidecars/mesh/versions/{v}/admit"), json!({})).await;
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

#[tokio::test]
async fn token_file_is_private_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    for token in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let mut req = api.http.get(format!("{}/api/v1/tenants", api.base));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(error_code(&v), "unauthenticated");
    }
    let health = api.http.get(format!("{}/healthz", api.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outrider_agents_connected"), "{metrics}");
    m.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    let (_, before) = api.call(Method::GET, "/tenants/default/events", None).await;

    // Malformed JSON, unknown fields, invalid names and versions, wrong hashes.
    let raw = api
        .http
        .post(format!("{}/api/v1/tenants/default/sidecars", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&raw.json().await.unwrap()), "invalid_json");
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "colour": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "Bad Name"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (Method::POST, "/tenants/default/sidecars", json!({"name": "mesh"}), StatusCode::CONFLICT, "conflict"),
        // Hot and warm settings that cannot work.
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "upgrade_modes": ["hot"]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "upgrade_modes": ["warm"]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "upgrade_modes": ["hot"], "handover": {"kind": "signal", "signal": "SIGKILL"}}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "handover": {"kind": "teleport"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "sockets": [{"name": "http", "listen": "no-port"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars/mesh/versions",
            version("1.2"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars/mesh/versions",
            json!({"version": "2.0.0", "artifact": {"url": "file:///x", "sha256": "abc"}}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (Method::POST, "/tenants/default/sidecars/nope/versions", version("1.0.0"), StatusCode::NOT_FOUND, "not_found"),
        (
            Method::PUT,
            "/tenants/default/services/checkout/sidecars/mesh",
            json!({"version": "9.9.9"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/tenants/default/services/checkout/sidecars/mesh",
            json!({"version": "1.1.0", "mode": "hot"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::PUT,
            "/tenants/default/services/nope/sidecars/mesh",
            json!({"version": "1.1.0"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (Method::POST, "/tenants/ghost/sidecars", json!({"name": "mesh"}), StatusCode::NOT_FOUND, "not_found"),
        (
            Method::PUT,
            "/tenants/default/services/checkout",
            json!({"name": "other"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/sidecars/mesh/versions/1.0.0/defective",
            json!({"reason": " "}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (Method::GET, "/tenants/default/nothing", Value::Null, StatusCode::NOT_FOUND, "not_found"),
        (
            Method::DELETE,
            "/tenants/default/sidecars",
            Value::Null,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = api.call(method.clone(), path, body.clone()).await;
        assert_eq!((s, error_code(&v)), (status, code), "{method} {path} {body:?} → {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, v) = api.call(Method::GET, "/tenants/default/instances?colour=blue", None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::BAD_REQUEST, "invalid_argument"));

    // An oversized body is refused before it is read whole.
    let big = json!({"name": "big", "description": "x".repeat(2 << 20)});
    let (s, v) = api.call(Method::POST, "/tenants/default/sidecars", Some(big)).await;
    assert_eq!((s, error_code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    // Nothing changed: same sidecars, same binding, no new events.
    let (_, sidecars) = api.call(Method::GET, "/tenants/default/sidecars", None).await;
    assert_eq!(sidecars.as_array().unwrap().len(), 1);
    let (_, bindings) = api.call(Method::GET, "/tenants/default/services/checkout/sidecars", None).await;
    assert_eq!(bindings[0]["version"], "1.0.0");
    let (_, after) = api.call(Method::GET, "/tenants/default/events", None).await;
    assert_eq!(before, after);
    m.shutdown().await;
}

#[tokio::test]
async fn version_lifecycle_admit_and_defective() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    let v = api
        .ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/admit", json!({"evidence": {"ci": "green"}}))
        .await;
    assert_eq!(v["admitted"], true);
    let v = api
        .ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/defective", json!({"reason": "leaks"}))
        .await;
    assert_eq!(v["state"], "defective");
    let (s, v) = api
        .call(Method::PUT, "/tenants/default/services/checkout/sidecars/mesh", Some(json!({"version": "1.1.0"})))
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "failed_precondition"));
    let (s, _) = api.call(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/admit", Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, events) = api.call(Method::GET, "/tenants/default/events", None).await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // 1.0.0 is admitted but no instance ran it and no plan completed to it: not known good,
    // so no recall is drafted, and the version says why.
    assert!(kinds.ends_with(&["version.admitted", "version.defective"]), "{kinds:?}");
    let (_, v) = api.call(Method::GET, "/tenants/default/sidecars/mesh/versions/1.1.0", None).await;
    assert!(v["recall_skipped"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    let seqs: Vec<u64> = events.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events ordered by seq: {seqs:?}");
    m.shutdown().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    let token = api.token.clone();
    m.shutdown().await;
    let (m, api) = boot(dir.path()).await;
    assert_eq!(api.token, token, "the admin token is created once");
    let (s, b) = api.call(Method::GET, "/tenants/default/services/checkout/sidecars", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b[0]["version"], "1.0.0");
    m.shutdown().await;
}

fn register(id: &str, deploy: &str) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Register(v1::Register {
            tenant: "default".into(),
            instance_id: id.into(),
            service: "checkout".into(),
            region: "boe".into(),
            env: "prod".into(),
            stage: "canary".into(),
            deploy_id: deploy.into(),
            // What a real agent keeps in its data dir: the same agent on every stream.
            claim: Some(format!("claim-of-{id}-0123456789abcdef")),
            ..Default::default()
        })),
    }
}

async fn next_desired(stream: &mut tonic::Streaming<v1::ManagerMessage>) -> v1::Desired {
    let msg =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("desired in time").unwrap().unwrap();
    let Some(manager_message::Body::Desired(d)) = msg.body else { panic!("not desired") };
    d
}

#[tokio::test]
async fn binding_change_is_pushed_to_connected_agents() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    let mut client = AgentSyncClient::connect(api.base.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(register("i-1", "d1")).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {}", api.token).parse().unwrap());
    let mut stream = client.sync(req).await.unwrap().into_inner();
    let first = next_desired(&mut stream).await;
    assert_eq!(first.sidecars[0].version, "1.0.0");
    tx.send(AgentMessage { body: Some(Body::Ack(v1::Ack { revision: first.revision })) }).await.unwrap();

    admit(&api, "1.1.0").await;
    api.ok(Method::PUT, "/tenants/default/services/checkout/sidecars/mesh", json!({"version": "1.1.0"})).await;
    let second = next_desired(&mut stream).await;
    assert_eq!(second.sidecars[0].version, "1.1.0");
    assert!(second.revision > first.revision);

    // An on-deploy change is recorded but not pushed to a running instance…
    api.ok(
        Method::PUT,
        "/tenants/default/services/checkout/sidecars/mesh",
        json!({"version": "1.0.0", "mode": "on-deploy"}),
    )
    .await;
    let third = next_desired(&mut stream).await;
    assert_eq!(third.sidecars[0].version, "1.1.0", "kept until the next deploy");
    assert_eq!(third.sidecars[0].mode, "on-deploy");

    // …and the instance list shows the live connection and ack.
    let (_, list) = api.call(Method::GET, "/tenants/default/instances?service=checkout", None).await;
    assert_eq!(list[0]["id"], "i-1");
    assert_eq!(list[0]["connected"], true);
    assert_eq!(list[0]["acked_revision"], first.revision);
    m.shutdown().await;
}

#[tokio::test]
async fn registration_for_unknown_service_or_bad_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    let mut client = AgentSyncClient::connect(api.base.clone()).await.unwrap();
    for (token, code) in [(api.token.as_str(), tonic::Code::NotFound), ("nope", tonic::Code::Unauthenticated)] {
        let mut req = tonic::Request::new(tokio_stream::iter([register("i-1", "d1")]));
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let err = client.sync(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    m.shutdown().await;
}

async fn open_stream(api: &Api, id: &str, deploy: &str) -> tonic::Streaming<v1::ManagerMessage> {
    let mut client = AgentSyncClient::connect(api.base.clone()).await.unwrap();
    // The request half stays open for the life of the test, as an agent's would.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(register(id, deploy)).await.unwrap();
    std::mem::forget(tx);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {}", api.token).parse().unwrap());
    client.sync(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_reconnect_replaces_the_old_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    let mut old = open_stream(&api, "i-1", "d1").await;
    next_desired(&mut old).await;
    let mut new = open_stream(&api, "i-1", "d1").await;
    next_desired(&mut new).await;
    let end = tokio::time::timeout(Duration::from_secs(5), old.next()).await.expect("old stream ends");
    assert!(end.is_none(), "the replaced stream is closed by the manager");
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("outrider_agents_connected 1\n"), "{metrics}");
    // The deploy event is written by the fleet's status flush: wait for it, then for any
    // second one a reconnect would (wrongly) add.
    let deploy_count = || async {
        let (_, events) = api.call(Method::GET, "/tenants/default/events", None).await;
        events.as_array().unwrap().iter().filter(|e| e["kind"] == "instance.deployed").count()
    };
    for _ in 0..50 {
        if deploy_count().await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deploys = deploy_count().await;
    assert_eq!(deploys, 1, "reconnecting with the same deploy id is not a deploy");
    m.shutdown().await;
}

#[tokio::test]
async fn on_deploy_target_applies_at_the_next_deploy_only() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    let mut s1 = open_stream(&api, "i-1", "d1").await;
    assert_eq!(next_desired(&mut s1).await.sidecars[0].version, "1.0.0");
    admit(&api, "1.1.0").await;
    api.ok(
        Method::PUT,
        "/tenants/default/services/checkout/sidecars/mesh",
        json!({"version": "1.1.0", "mode": "on-deploy"}),
    )
    .await;
    let kept = next_desired(&mut s1).await;
    assert_eq!((kept.sidecars[0].version.as_str(), kept.sidecars[0].mode.as_str()), ("1.0.0", "on-deploy"));
    // The agent restarts (same deploy id): not a deploy, whether or not the manager has
    // noticed the old stream end.
    let mut s2 = open_stream(&api, "i-1", "d1").await;
    assert_eq!(next_desired(&mut s2).await.sidecars[0].version, "1.0.0");
    drop((s1, s2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s2 = open_stream(&api, "i-1", "d1").await;
    assert_eq!(next_desired(&mut s2).await.sidecars[0].version, "1.0.0");
    // A new deploy id is a deploy: the target applies.
    let mut s3 = open_stream(&api, "i-1", "d2").await;
    assert_eq!(next_desired(&mut s3).await.sidecars[0].version, "1.1.0");
    // A brand-new instance is a deploy too.
    let mut s4 = open_stream(&api, "i-2", "d1").await;
    assert_eq!(next_desired(&mut s4).await.sidecars[0].version, "1.1.0");
    m.shutdown().await;
}

#[tokio::test]
async fn bad_plan_and_freeze_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    api.ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/admit", json!({})).await;
    let (_, before) = api.call(Method::GET, "/tenants/default/events", None).await;
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/tenants/default/freezes",
            json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/freezes",
            json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "reason": " "}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/freezes",
            json!({"from": "yesterday", "to": "2026-01-02T00:00:00Z", "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (Method::DELETE, "/tenants/default/freezes/f123", Value::Null, StatusCode::NOT_FOUND, "not_found"),
        (Method::POST, "/tenants/default/plans/p123/pause", Value::Null, StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/tenants/default/plans/p123", Value::Null, StatusCode::NOT_FOUND, "not_found"),
        (
            Method::POST,
            "/tenants/default/plans",
            json!({"sidecar": "mesh", "target_version": "1.1.0", "phases": [{"name": "g", "mode": "hot"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/plans",
            json!({"sidecar": "mesh", "target_version": "1.1.0", "windows": [{"from": "25:00", "to": "10:00"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/plans",
            json!({"sidecar": "mesh", "target_version": "1.1.0", "windows": [{"from": "10:00", "to": "17:00", "tz": "Mars/Olympus"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/default/plans/simulate",
            json!({"sidecar": "mesh", "target_version": "1.1.0", "windows": [{"days": "funday", "from": "10:00", "to": "17:00"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            Method::POST,
            "/tenants/ghost/plans",
            json!({"sidecar": "mesh", "target_version": "1.1.0"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = api.call(method.clone(), path, body.clone()).await;
        assert_eq!((s, error_code(&v)), (status, code), "{method} {path} {body:?} → {v}");
    }
    let (_, after) = api.call(Method::GET, "/tenants/default/events", None).await;
    assert_eq!(before, after, "nothing was recorded");
    let (_, plans) = api.call(Method::GET, "/tenants/default/plans", None).await;
    assert!(plans.as_array().is_some(), "{plans}");
    assert_eq!(plans, json!([]));
    m.shutdown().await;
}

#[tokio::test]
async fn absurd_or_hidden_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    api.ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/admit", json!({})).await;
    let (_, before) = api.call(Method::GET, "/tenants/default/events", None).await;
    let phase = |p: Value| json!({"sidecar": "mesh", "target_version": "1.1.0", "phases": [p]});
    let freeze =
        |from: &str, to: &str, services: Value| json!({"from": from, "to": to, "reason": "x", "services": services});
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(Method, &str, Value, StatusCode)> = vec![
        (
            Method::POST,
            "/tenants/default/plans/simulate",
            phase(json!({"name": "g", "region_parallelism": 4294967295u32})),
            bad,
        ),
        (Method::POST, "/tenants/default/plans", phase(json!({"name": "g", "region_parallelism": 100_000_000})), bad),
        (Method::POST, "/tenants/default/plans", phase(json!({"name": "g", "bake": "9999999999d"})), bad),
        (Method::POST, "/tenants/default/plans", phase(json!({"name": "g", "batch_timeout": "0s"})), bad),
        (
            Method::POST,
            "/tenants/default/freezes",
            freeze("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", json!(["ghost"])),
            bad,
        ),
        (
            Method::POST,
            "/tenants/default/freezes",
            freeze("0000-01-01T00:00:00Z", "9999-12-31T00:00:00Z", json!([])),
            bad,
        ),
        (Method::PUT, "/tenants/default/services/checkout", json!({}), bad),
        (Method::POST, "/tenants/default/services", json!({"name": "x", "traits": {"k": "a\u{202e}b"}}), bad),
        (Method::POST, "/tenants/default/sidecars", json!({"name": "x", "upgrade_modes": ["hot", "hot"]}), bad),
        (Method::POST, "/tenants/default/sidecars", json!({"name": "x", "description": "d".repeat(600_000)}), bad),
        (Method::POST, "/tenants/default/sidecars/mesh/versions/1.0.0/defective", json!({"reason": "a\r\nb"}), bad),
        (Method::POST, "/tenants/default/plans/p1/pause", json!({"reason": "a\u{0}b"}), bad),
        (Method::POST, "/tenants/default/services", json!({"name": "a\u{0}b", "priority": "P1"}), bad),
        (
            Method::POST,
            "/tenants/default/services",
            json!({"name": "many", "priority": "P1",
                   "traits": (0..30_000).map(|i| (format!("k{i}"), json!("v".repeat(10)))).collect::<serde_json::Map<_, _>>()}),
            bad,
        ),
        (
            Method::POST,
            "/tenants/default/sidecars",
            json!({"name": "x", "upgrade_modes": ["restart"], "startup_probe": {"http": "http://a/\nb"}}),
            bad,
        ),
        (
            Method::POST,
            "/tenants/default/plans",
            json!({"sidecar": "mesh", "target_version": "1.1.0",
                   "phases": (0..4_000).map(|i| json!({"name": format!("p{i}")})).collect::<Vec<_>>()}),
            bad,
        ),
    ];
    for (method, path, body, status) in cases {
        let (s, v) = api.call(method.clone(), path, Some(body)).await;
        assert_eq!(s, status, "{method} {path} → {v}");
        error_code(&v);
    }
    let url = |p: &str| format!("{}/api/v1/tenants/default{p}", api.base);
    let admit = "/sidecars/mesh/versions/1.0.0/admit";
    let raw = |p: &str, ct: &str, body: Vec<u8>| {
        api.http.post(url(p)).bearer_auth(&api.token).header("content-type", ct.to_owned()).body(body)
    };
    for (req, status) in [
        (raw(admit, "text/plain", b"{}".to_vec()), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            raw("/plans/p1/abort", "application/x-www-form-urlencoded", b"{}".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (raw(admit, "application/json", vec![b' '; 2 << 20]), StatusCode::PAYLOAD_TOO_LARGE),
        (
            raw(
                "/services",
                "application/json",
                br#"{"name": "dup", "priority": "P1", "traits": {"k": "a", "k": "b"}}"#.to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            raw(
                "/services",
                "application/json",
                serde_json::to_vec(&json!({"name": "big", "priority": "P1",
                    "traits": (0..60_000).map(|i| (format!("k{i}"), json!("v".repeat(60)))).collect::<serde_json::Map<_, _>>()}))
                .unwrap(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (raw("/plans/p1/abort", "application/json", vec![b' '; 2 << 20]), StatusCode::PAYLOAD_TOO_LARGE),
        (
            api.http
                .get(url("/services"))
                .header("authorization", format!("Bearer {}", api.token))
                .header("authorization", "Bearer other"),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status);
        let v: Value = resp.json().await.expect("a JSON error body");
        error_code(&v);
    }
    let (_, after) = api.call(Method::GET, "/tenants/default/events", None).await;
    assert_eq!(before, after, "nothing was recorded");

    // Marking a version defective twice records it once. 1.0.0 is admitted but no instance
    // ran it and no plan completed it: not known good, so no recall plan, and both the
    // version and its event say why (tests/plans.rs drafts one recall for two marks).
    api.ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.0.0/admit", json!({})).await;
    for _ in 0..2 {
        let v = api
            .ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/defective", json!({"reason": "leaks"}))
            .await;
        assert!(v["recall_skipped"].as_str().unwrap().contains("no version to recall 1.1.0 to"), "{v}");
    }
    let (_, plans) = api.call(Method::GET, "/tenants/default/plans", None).await;
    assert_eq!(plans.as_array().unwrap().len(), 0, "{plans}");
    let (_, events) = api.call(Method::GET, "/tenants/default/events", None).await;
    let marks: Vec<&Value> = events.as_array().unwrap().iter().filter(|e| e["kind"] == "version.defective").collect();
    assert_eq!(marks.len(), 1, "{events}");
    assert!(marks[0]["detail"]["recall_skipped"].is_string(), "{}", marks[0]);
    m.shutdown().await;
}

#[tokio::test]
async fn only_the_grpc_service_path_speaks_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    for (method, path, status) in [
        (Method::GET, "/foo", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v2/tenants", StatusCode::NOT_FOUND),
        (Method::DELETE, "/api/v2/x/y", StatusCode::NOT_FOUND),
        (Method::GET, "//api/v1/tenants", StatusCode::NOT_FOUND),
        (Method::POST, "/", StatusCode::NOT_FOUND),
        (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (Method::DELETE, "/metrics", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let resp = api
            .http
            .request(method.clone(), format!("{}{path}", api.base))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
        let v: Value = resp.json().await.unwrap();
        error_code(&v);
    }
    let resp = api
        .http
        .post(format!("{}/outrider.sync.v1.AgentSync/NoSuchMethod", api.base))
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    m.shutdown().await;
}

#[tokio::test]
async fn data_dir_and_files_are_private_whatever_their_old_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (m, _) = boot(&data).await;
    m.shutdown().await;
    let set = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    let files: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.iter().any(|f| f.ends_with("admin.token")) && files.len() >= 2, "{files:?}");
    for f in &files {
        set(f, 0o666);
    }
    set(&data, 0o777);
    let (m, api) = boot(&data).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&data), 0o700);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let (s, _) = api.call(Method::GET, "/tenants", None).await;
    assert_eq!(s, StatusCode::OK, "the old token still works");
    m.shutdown().await;
}

#[tokio::test]
async fn a_plan_that_is_done_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (m, api) = boot(dir.path()).await;
    seed(&api).await;
    api.ok(Method::POST, "/tenants/default/sidecars/mesh/versions/1.1.0/admit", json!({})).await;
    let body = json!({"sidecar": "mesh", "target_version": "1.1.0", "phases": [{"name": "all"}]});
    let plan = api.ok(Method::POST, "/tenants/default/plans", body).await;
    let path = format!("/tenants/default/plans/{}", plan["id"].as_str().unwrap());
    let (s, v) = api.call(Method::DELETE, &path, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "failed_precondition"), "a live plan stays");
    api.ok(Method::POST, &format!("{path}/abort"), json!({"reason": "test"})).await;
    let (s, _) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.call(Method::GET, &path, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, events) = api.call(Method::GET, "/tenants/default/events", None).await;
    let deleted = events.as_array().unwrap().iter().filter(|e| e["kind"] == "plan.deleted").count();
    assert_eq!(deleted, 1);
    m.shutdown().await;
}
