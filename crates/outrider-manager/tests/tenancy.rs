//! Tenants and roles over real sockets: the tenant matrix over every REST route of the router
//! (its authorization table, `api::ROUTES`), revocation (REST and agent streams, on every
//! manager sharing the store), and agent identity on the sync stream (tenant, instance claims).

use std::{path::Path, time::Duration};

use outrider_manager::{ManagerConfig, RunningManager, api::ROUTES, start};
use outrider_proto::v1::{self, AgentMessage, agent_message::Body, agent_sync_client::AgentSyncClient};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Calls the REST API under `/api/v1` with one token.
#[derive(Clone)]
struct Caller {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Caller {
    fn with(&self, token: &str) -> Self {
        Self { token: token.to_owned(), ..self.clone() }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        let (s, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&s), "{what}: {s} {v}");
        v
    }

    async fn token(&self, name: &str, tenant: Option<&str>, role: &str) -> String {
        let v = self.ok(Method::POST, "/tokens", Some(json!({"name": name, "tenant": tenant, "role": role}))).await;
        v["token"].as_str().unwrap().to_owned()
    }
}

async fn boot(dir: &Path, store: Option<String>) -> (RunningManager, Caller) {
    let mut config = ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap());
    // Managers sharing one store need names of their own (the default is the host's).
    config.name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    config.store = store;
    let m = start(config).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).map(|t| t.trim().to_owned()).unwrap_or_default();
    let base = format!("http://{}", m.addr);
    (m, Caller { http: reqwest::Client::new(), base, token })
}

fn register(tenant: &str, id: &str, stage: &str, claim: Option<&str>) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Register(v1::Register {
            tenant: tenant.into(),
            instance_id: id.into(),
            service: "checkout".into(),
            region: "boe".into(),
            env: "prod".into(),
            stage: stage.into(),
            deploy_id: "d1".into(),
            claim: claim.map(str::to_owned),
            ..Default::default()
        })),
    }
}

/// An agent's sync stream: what the manager sends, and the agent's half, open until dropped.
#[derive(Debug)]
struct Stream {
    inbound: tonic::Streaming<v1::ManagerMessage>,
    _outbound: tokio::sync::mpsc::Sender<AgentMessage>,
}

impl Stream {
    /// The first desired state.
    async fn first(&mut self) {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.inbound.next()).await.expect("desired in time");
        msg.expect("a message").expect("not an error");
    }

    /// Waits for the manager to end the stream (panics if it does not).
    async fn ends(&mut self) {
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.inbound.next().await {}
        })
        .await;
        assert!(end.is_ok(), "the stream was not closed");
    }
}

/// Opens a sync stream with `token`, registering with `reg`.
async fn sync(base: &str, token: &str, reg: AgentMessage) -> Result<Stream, tonic::Status> {
    let mut client = AgentSyncClient::connect(base.to_owned()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(reg).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let inbound = client.sync(req).await?.into_inner();
    Ok(Stream { inbound, _outbound: tx })
}

/// What tenant `t` holds: one of everything a route can touch. Returns the plan's,
/// freeze's and webhook's ids and the instance's open stream.
async fn seed(admin: &Caller, t: &str) -> (Ids, Stream) {
    admin.ok(Method::POST, "/tenants", Some(json!({"name": t}))).await;
    let p = format!("/tenants/{t}");
    admin
        .ok(
            Method::POST,
            &format!("{p}/sidecars"),
            Some(json!({"name": "mesh", "upgrade_modes": ["restart", "on-deploy"]})),
        )
        .await;
    for v in ["1.0.0", "1.1.0"] {
        let body = json!({"version": v, "artifact": {"url": "file:///bin/sh", "sha256": SHA}, "command": ["x"]});
        admin.ok(Method::POST, &format!("{p}/sidecars/mesh/versions"), Some(body)).await;
        admin.ok(Method::POST, &format!("{p}/sidecars/mesh/versions/{v}/admit"), Some(json!({}))).await;
    }
    admin.ok(Method::POST, &format!("{p}/services"), Some(json!({"name": "checkout", "priority": "P1"}))).await;
    admin.ok(Method::PUT, &format!("{p}/services/checkout/sidecars/mesh"), Some(json!({"version": "1.0.0"}))).await;
    let stream = sync(&admin.base, &admin.token, register(t, &format!("i-{t}"), "canary", Some("claim-0123456789")))
        .await
        .unwrap();
    let plan = admin
        .ok(
            Method::POST,
            &format!("{p}/plans"),
            Some(json!({"sidecar": "mesh", "target_version": "1.1.0", "phases": [{"name": "all", "mode": "restart"}]})),
        )
        .await;
    let freeze = admin
        .ok(
            Method::POST,
            &format!("{p}/freezes"),
            Some(json!({"from": "2099-01-01T00:00:00Z", "to": "2099-01-02T00:00:00Z", "reason": "x"})),
        )
        .await;
    let hook = json!({"url": "http://127.0.0.1:9/hook", "events": ["plan.blocked"], "secret": "0123456789"});
    let webhook = admin.ok(Method::POST, &format!("{p}/webhooks"), Some(hook)).await;
    let ids = Ids {
        plan: plan["id"].as_str().unwrap().to_owned(),
        freeze: freeze["id"].as_str().unwrap().to_owned(),
        webhook: webhook["id"].as_str().unwrap().to_owned(),
    };
    (ids, stream)
}

struct Ids {
    plan: String,
    freeze: String,
    webhook: String,
}

/// A route template with its placeholders filled for tenant `t`.
fn concrete(template: &str, t: &str, ids: &Ids) -> String {
    template
        .replace("{tenant}", t)
        .replace("{sidecar}", "mesh")
        .replace("{version}", "1.1.0")
        .replace("{service}", "checkout")
        .replace("{instance}", &format!("i-{t}"))
        .replace("{plan}", &ids.plan)
        .replace("{action}", "pause")
        .replace("{freeze}", &ids.freeze)
        .replace("{webhook}", &ids.webhook)
        .replace("{token}", "no-such-token")
}

fn method(m: &str) -> Method {
    m.parse().unwrap()
}

/// What the API shows of tenant `t`, written by operators and agents (the executor's own
/// progress is left out: it happens by itself).
async fn snapshot(admin: &Caller, t: &str) -> Value {
    let mut out = serde_json::Map::new();
    for path in ["sidecars", "sidecars/mesh/versions", "services", "services/checkout/sidecars", "freezes", "webhooks"]
    {
        out.insert(path.to_owned(), admin.ok(Method::GET, &format!("/tenants/{t}/{path}"), None).await);
    }
    let ids = |v: Value| -> Value { v.as_array().unwrap().iter().map(|x| x["id"].clone()).collect() };
    out.insert("plans".into(), ids(admin.ok(Method::GET, &format!("/tenants/{t}/plans"), None).await));
    let instances = admin.ok(Method::GET, &format!("/tenants/{t}/instances"), None).await;
    let instances: Value =
        instances.as_array().unwrap().iter().map(|i| json!([i["id"], i["stage"], i["connected"]])).collect();
    out.insert("instances".into(), instances);
    let events = admin.ok(Method::GET, &format!("/tenants/{t}/events?limit=10000"), None).await;
    let events: Value = events.as_array().unwrap().iter().filter(|e| e["actor"] != "executor").cloned().collect();
    out.insert("events".into(), events);
    Value::Object(out)
}

#[tokio::test]
async fn tenant_matrix_every_route_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let (m, admin) = boot(dir.path(), None).await;
    let (ids_a, _stream_a) = seed(&admin, "a").await;
    let (ids_b, _stream_b) = seed(&admin, "b").await;
    let roles = ["viewer", "operator", "admin", "agent"];
    let mut callers = Vec::new();
    for role in roles {
        callers.push((role, admin.with(&admin.token(&format!("{role}-a"), Some("a"), role).await)));
    }
    // Let the instance records and their events reach the store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = snapshot(&admin, "b").await;

    for rule in ROUTES {
        let body = matches!(rule.method, "POST" | "PUT").then(|| json!({}));
        for (role, caller) in &callers {
            if rule.path.starts_with("/tenants/{tenant}") {
                let path = concrete(rule.path, "b", &ids_b);
                let (s, v) = caller.call(method(rule.method), &path, body.clone()).await;
                assert_eq!(s, 403, "{role} of a: {} {path}: {v}", rule.method);
                assert_eq!(v["error"]["code"], "forbidden", "{v}");
            }
            let path = concrete(rule.path, "a", &ids_a);
            let (s, v) = caller.call(method(rule.method), &path, body.clone()).await;
            let need = match rule.need {
                outrider_manager::api::Need::Viewer => "viewer",
                outrider_manager::api::Need::Operator => "operator",
                outrider_manager::api::Need::Admin => "admin",
                outrider_manager::api::Need::AllTenantAdmin => "all-tenant admin",
            };
            let rank = |r: &str| roles.iter().position(|x| *x == r);
            let allowed = *role != "agent" && need != "all-tenant admin" && rank(role) >= rank(need);
            if allowed {
                assert!(s != 401 && s != 403, "{role} of a: {} {path} needs {need}: {s} {v}", rule.method);
            } else {
                assert_eq!(s, 403, "{role} of a: {} {path} needs {need}: {v}", rule.method);
                assert_eq!(v["error"]["code"], "forbidden", "{v}");
            }
        }
    }
    // A tenant that does not exist is no different from one that does.
    let (viewer, operator) = (&callers[0].1, &callers[1].1);
    let (s, _) = viewer.call(Method::GET, "/tenants/nope/sidecars", None).await;
    assert_eq!(s, 403);
    let (s, _) = operator.call(Method::POST, "/tenants/nope/plans", Some(json!({}))).await;
    assert_eq!(s, 403);
    // The event stream too: a viewer follows its tenant's, not another's.
    for (t, status) in [("a", 200), ("b", 403)] {
        let url = format!("{}/api/v1/tenants/{t}/events?follow=true", viewer.base);
        let resp = viewer.http.get(url).bearer_auth(&viewer.token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "follow the events of {t}");
    }
    let tenants = viewer.ok(Method::GET, "/tenants", None).await;
    assert_eq!(tenants.as_array().unwrap().iter().map(|t| &t["name"]).collect::<Vec<_>>(), ["a"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(snapshot(&admin, "b").await, before, "nothing of b changed");
    m.shutdown().await;
}

#[tokio::test]
async fn the_router_serves_no_method_outside_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (m, admin) = boot(dir.path(), None).await;
    let ids = Ids { plan: "p1".into(), freeze: "f1".into(), webhook: "w1".into() };
    let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
    paths.dedup();
    for template in paths {
        let path = concrete(template, "default", &ids);
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if ROUTES.iter().any(|r| r.path == template && r.method == m) {
                continue;
            }
            let (s, v) = admin.call(method(m), &path, None).await;
            assert_eq!(s, 405, "{m} {path}: {v}");
        }
    }
    m.shutdown().await;
}

#[tokio::test]
async fn tokens_are_shown_once_listed_by_scope_and_revoked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (m, admin) = boot(dir.path(), None).await;
    admin.ok(Method::POST, "/tenants", Some(json!({"name": "a"}))).await;
    admin.ok(Method::POST, "/tenants", Some(json!({"name": "b"}))).await;
    let admin_a = admin.with(&admin.token("admin-a", Some("a"), "admin").await);
    let viewer_b = admin.token("viewer-b", Some("b"), "viewer").await;

    // Bad input changes nothing.
    for (body, status) in [
        (json!({"name": "x", "tenant": null, "role": "root"}), 422),
        (json!({"name": "x", "role": "viewer"}), 422),
        (json!({"name": "x", "tenant": null, "role": "viewer", "extra": 1}), 422),
        (json!({"name": "Bad Name", "tenant": null, "role": "viewer"}), 400),
        (json!({"name": "executor", "tenant": null, "role": "viewer"}), 400),
        (json!({"name": "x", "tenant": "nope", "role": "viewer"}), 404),
        (json!({"name": "admin-a", "tenant": "a", "role": "viewer"}), 409),
        (json!({"name": "admin", "tenant": null, "role": "viewer"}), 409),
    ] {
        let (s, v) = admin.call(Method::POST, "/tokens", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    // A tenant's admin issues and sees its tenant's tokens only.
    for tenant in [json!(null), json!("b")] {
        let (s, v) =
            admin_a.call(Method::POST, "/tokens", Some(json!({"name": "y", "tenant": tenant, "role": "viewer"}))).await;
        assert_eq!(s, 403, "{v}");
    }
    let op_a = admin_a.token("op-a", Some("a"), "operator").await;
    let names = |v: Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
    };
    let listed = admin_a.ok(Method::GET, "/tokens", None).await;
    assert_eq!(names(listed.clone()), ["admin-a", "op-a"]);
    assert!(listed.as_array().unwrap().iter().all(|t| t.get("token").is_none() && t.get("hash").is_none()));
    assert_eq!(names(admin.ok(Method::GET, "/tokens", None).await), ["admin", "admin-a", "op-a", "viewer-b"]);
    let (s, _) = admin_a.call(Method::DELETE, "/tokens/viewer-b", None).await;
    assert_eq!(s, 404, "another tenant's token is not even seen");
    // The operator's actions carry its name; once revoked it is refused at once.
    let op = admin.with(&op_a);
    let freeze = json!({"from": "2099-01-01T00:00:00Z", "to": "2099-01-02T00:00:00Z", "reason": "x"});
    op.ok(Method::POST, "/tenants/a/freezes", Some(freeze)).await;
    let revoked = admin_a.ok(Method::DELETE, "/tokens/op-a", None).await;
    assert_eq!(revoked["name"], "op-a");
    let (s, v) = op.call(Method::GET, "/tenants/a/freezes", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthenticated")));
    let events = admin.ok(Method::GET, "/tenants/a/events", None).await;
    let by = |kind: &str| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| format!("{} {}", e["actor"].as_str().unwrap(), e["object"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(by("token.created"), ["admin token/admin-a", "admin-a token/op-a"]);
    assert_eq!(by("token.revoked"), ["admin-a token/op-a"]);
    assert_eq!(by("freeze.created").len(), 1);
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "freeze.created" && e["actor"] == "op-a"));
    // Only hashes are stored: the secret appears nowhere in the data dir.
    let stored = std::fs::read(dir.path().join("outrider.redb")).unwrap_or_default();
    assert!(!stored.windows(viewer_b.len()).any(|w| w == viewer_b.as_bytes()));
    m.shutdown().await;
}

#[tokio::test]
async fn a_revoked_token_s_event_stream_gets_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (m, admin) = boot(dir.path(), None).await;
    let viewer = admin.with(&admin.token("viewer", Some("default"), "viewer").await);
    let url = format!("{}/api/v1/tenants/default/events?follow=true", viewer.base);
    let mut resp = viewer.http.get(url).bearer_auth(&viewer.token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let freeze = |reason: &str| json!({"from": "2099-01-01T00:00:00Z", "to": "2099-01-02T00:00:00Z", "reason": reason});
    admin.ok(Method::POST, "/tenants/default/freezes", Some(freeze("seen"))).await;
    let mut seen = String::new();
    while !seen.contains("\"seen\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    admin.ok(Method::DELETE, "/tokens/viewer", None).await;
    admin.ok(Method::POST, "/tenants/default/freezes", Some(freeze("secret"))).await;
    let mut rest = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends");
    assert!(!rest.contains("secret"), "nothing after the revocation: {rest}");
    m.shutdown().await;
}

#[tokio::test]
async fn agents_register_only_in_their_tenant_and_a_revoked_agent_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (m, admin) = boot(dir.path(), None).await;
    for t in ["a", "b"] {
        admin.ok(Method::POST, "/tenants", Some(json!({"name": t}))).await;
        admin.ok(Method::POST, &format!("/tenants/{t}/services"), Some(json!({"name": "checkout"}))).await;
    }
    let agent_a = admin.token("agent-a", Some("a"), "agent").await;
    let viewer = admin.token("viewer", None, "viewer").await;
    let err = sync(&admin.base, &agent_a, register("b", "i-1", "canary", None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = sync(&admin.base, &viewer, register("a", "i-1", "canary", None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let (s, _) = admin.with(&agent_a).call(Method::GET, "/tenants/a/instances", None).await;
    assert_eq!(s, 403, "an agent token may not call REST");

    let mut stream =
        sync(&admin.base, &agent_a, register("a", "i-1", "canary", Some("claim-0123456789"))).await.unwrap();
    stream.first().await;
    admin.ok(Method::DELETE, "/tokens/agent-a", None).await;
    stream.ends().await;
    let err = sync(&admin.base, &agent_a, register("a", "i-1", "canary", Some("claim-0123456789"))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    m.shutdown().await;
}

#[tokio::test]
async fn a_live_instance_is_not_taken_over_and_is_free_again_once_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (m, admin) = boot(dir.path(), None).await;
    admin.ok(Method::POST, "/tenants/default/services", Some(json!({"name": "checkout"}))).await;
    let agent = admin.token("agent", Some("default"), "agent").await;
    let mine = Some("claim-of-the-first-agent");
    let mut first = sync(&admin.base, &agent, register("default", "i-1", "canary", mine)).await.unwrap();
    first.first().await;
    let labels = || async {
        let v = admin.ok(Method::GET, "/tenants/default/instances", None).await;
        (v[0]["stage"].clone(), v[0]["connected"].clone())
    };
    // Another agent (another claim, or none) is refused; the instance is untouched.
    for claim in [Some("claim-of-an-impostor-agent"), None] {
        let err = sync(&admin.base, &agent, register("default", "i-1", "full", claim)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        assert!(err.message().contains("delete the instance"), "{err}");
        assert_eq!(labels().await, (json!("canary"), json!(true)));
    }
    // The same agent (a restart on its data dir, a half-open connection) gets it back at once.
    let mut second = sync(&admin.base, &agent, register("default", "i-1", "single-dc", mine)).await.unwrap();
    second.first().await;
    first.ends().await;
    assert_eq!(labels().await, (json!("single-dc"), json!(true)));
    // Gone but recorded: still refused to others, until the operator deletes the instance.
    drop(second);
    for _ in 0..50 {
        if labels().await.1 == json!(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = sync(&admin.base, &agent, register("default", "i-1", "full", Some("a-new-data-dir-claim"))).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::PermissionDenied);
    admin.ok(Method::DELETE, "/tenants/default/instances/i-1", None).await;
    let mut third =
        sync(&admin.base, &agent, register("default", "i-1", "full", Some("a-new-data-dir-claim"))).await.unwrap();
    third.first().await;
    assert_eq!(labels().await, (json!("full"), json!(true)));
    m.shutdown().await;
}

#[tokio::test]
async fn claims_and_tokens_hold_across_managers_sharing_one_store() {
    let Some(binary) = outrider_store::test_etcd::etcd_or_skip() else { return };
    let etcd = outrider_store::test_etcd::TestEtcd::start(&binary).await.unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m1, one) = boot(d1.path(), Some(etcd.url("outrider"))).await;
    let (m2, two) = boot(d2.path(), Some(etcd.url("outrider"))).await;
    let two = two.with(&one.token);
    one.ok(Method::POST, "/tenants/default/services", Some(json!({"name": "checkout"}))).await;
    let viewer = one.token("viewer", None, "viewer").await;
    let agent = one.token("agent", None, "agent").await;
    // Both come to the second manager through its store watch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while two.with(&viewer).call(Method::GET, "/tenants", None).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the token never reached the second manager");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An instance held through the first manager is refused on the second to another claim.
    let mut held =
        sync(&one.base, &agent, register("default", "i-1", "canary", Some("claim-one-0123456"))).await.unwrap();
    held.first().await;
    // Its record (with the claim's hash) reaches the other manager through the store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let instances = two.ok(Method::GET, "/tenants/default/instances", None).await;
        if instances.as_array().unwrap().iter().any(|i| i["id"] == "i-1" && i["connected"] == true) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the record never reached the second manager");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = sync(&two.base, &agent, register("default", "i-1", "canary", Some("claim-two-0123456"))).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::PermissionDenied);
    // Revoked on the first, refused on the second at once (its watch), its streams closed.
    let mut on_two =
        sync(&two.base, &agent, register("default", "i-2", "canary", Some("claim-i2-0123456"))).await.unwrap();
    on_two.first().await;
    one.ok(Method::DELETE, "/tokens/viewer", None).await;
    one.ok(Method::DELETE, "/tokens/agent", None).await;
    on_two.ends().await;
    let (s, _) = two.with(&viewer).call(Method::GET, "/tenants", None).await;
    assert_eq!(s, 401);
    m2.shutdown().await;
    m1.shutdown().await;
    drop(etcd);
    drop(two);
}
