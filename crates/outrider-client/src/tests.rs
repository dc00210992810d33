//! The client against a real local HTTP server that plays the manager.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, RawQuery, Request},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use futures::StreamExt;
use outrider_model::{Binding, NewFreeze, PlanSpec, PlanState, UpgradeMode};
use serde_json::{Value, json};

use crate::{Client, ClientError, EventQuery, InstanceFilter, PlanAction};

const TOKEN: &str = "t0ken";

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn require_token(headers: HeaderMap, req: Request, next: Next) -> Response {
    let want = format!("Bearer {TOKEN}");
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong token");
    }
    next.run(req).await
}

fn event(seq: u64, reason: &str) -> Value {
    json!({"seq": seq, "time": "2026-01-01T00:00:00Z", "tenant": "default", "kind": "binding.updated",
           "actor": "admin", "object": "service/checkout/sidecar/mesh", "reason": reason, "detail": {}})
}

async fn sidecar(Path((tenant, sidecar)): Path<(String, String)>) -> Response {
    if sidecar == "missing" {
        return api_error(StatusCode::NOT_FOUND, "not_found", "no sidecar \"missing\"");
    }
    // Echo both path parameters, as the server decoded them, in the name.
    Json(json!({"name": format!("{tenant}|{sidecar}")})).into_response()
}

async fn sidecars(Path(tenant): Path<String>) -> Response {
    match tenant.as_str() {
        "plain" => (StatusCode::BAD_GATEWAY, "upstream exploded").into_response(),
        "garbage" => (StatusCode::OK, "this is not json").into_response(),
        _ => Json(json!([{"name": "mesh"}])).into_response(),
    }
}

async fn binding(Path((_, _, sidecar)): Path<(String, String, String)>, Json(body): Json<Value>) -> Response {
    let mut keys: Vec<&String> = body.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    keys.sort();
    if keys != ["enabled", "mode", "version"] {
        return api_error(StatusCode::BAD_REQUEST, "invalid", &format!("unexpected body {body}"));
    }
    let mut answer = body.clone();
    answer["sidecar"] = json!(sidecar);
    Json(answer).into_response()
}

async fn instances(RawQuery(query): RawQuery) -> Json<Value> {
    Json(json!([{"id": query.unwrap_or_default(), "service": "checkout", "region": "boe", "env": "prod",
                 "stage": "canary", "last_seen": "2026-01-01T00:00:00Z"}]))
}

async fn events(Query(q): Query<HashMap<String, String>>) -> Response {
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let all = [event(1, "first"), event(2, "café ☕ two"), event(3, "日本語 three")];
    let after: Vec<&Value> = all.iter().filter(|e| e["seq"].as_u64() > Some(since)).collect();
    if q.get("follow").map(String::as_str) != Some("true") {
        return Json(after).into_response();
    }
    // NDJSON with a keep-alive blank line and a CRLF, cut every 7 bytes (through multi-byte
    // characters), each piece flushed on its own.
    let mut text = String::from("\n");
    for e in after {
        text.push_str(&e.to_string());
        text.push_str("\r\n");
    }
    let chunks: Vec<Bytes> = text.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect();
    let body = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, Infallible>(c)
    });
    Body::from_stream(body).into_response()
}

/// A plan in `state` made from `spec` (one phase, one batch of one cell).
fn plan(id: &str, state: &str, reason: &str, spec: &Value) -> Value {
    json!({
        "id": id, "name": spec["name"], "sidecar": spec["sidecar"], "target_version": spec["target_version"],
        "state": state, "reason": reason, "feature_services": ["checkout"],
        "phases": [{"name": "gray", "stage": "canary", "mode": "hot", "bake": "10m", "batches": [
            {"index": 0, "lane": 0, "cells": [{"service": "checkout", "region": "boe", "env": "prod", "instances": 3}],
             "state": "pending"}
        ]}],
        "counts": {"total": 3, "done": 0, "failed": 0, "pending": 3},
        "blast_radius": 0, "incidents": [], "cursor_phase": 0, "spec": spec,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    })
}

fn spec_json() -> Value {
    json!({"name": "mesh to 1.1.0", "sidecar": "mesh", "target_version": "1.1.0"})
}

async fn create_plan(Json(spec): Json<Value>) -> Response {
    // The body must be a whole plan body (defaults filled in by the client's model type).
    if serde_json::from_value::<PlanSpec>(spec.clone()).is_err() || spec.get("phases").is_none() {
        return api_error(StatusCode::BAD_REQUEST, "invalid", &format!("not a plan body: {spec}"));
    }
    (StatusCode::CREATED, Json(plan("p-1", "pending", "", &spec))).into_response()
}

async fn plans() -> Json<Value> {
    Json(json!([plan("p-2", "running", "", &spec_json()), plan("p-1", "completed", "", &spec_json())]))
}

async fn one_plan(Path((_, id)): Path<(String, String)>) -> Response {
    if id == "missing" {
        return api_error(StatusCode::NOT_FOUND, "not_found", "no plan \"missing\"");
    }
    Json(plan(&id, "running", "", &spec_json())).into_response()
}

/// Echoes the action and the body it got: the state it leads to, the body as the reason.
async fn plan_action(Path((_, id, action)): Path<(String, String, String)>, body: Bytes) -> Response {
    if id == "done" {
        return api_error(StatusCode::CONFLICT, "failed_precondition", "plan \"done\" is completed");
    }
    let state = match action.as_str() {
        "pause" => "paused",
        "resume" | "approve" => "running",
        "abort" => "aborted",
        "rollback" => "rolled_back",
        _ => return api_error(StatusCode::NOT_FOUND, "not_found", "no such action"),
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    Json(plan(&id, state, &body, &spec_json())).into_response()
}

async fn simulate(Json(spec): Json<Value>) -> Json<Value> {
    let mut phases = plan("sim", "pending", "", &spec)["phases"].clone();
    phases[0]["batches"][0]["predicted_start"] = json!("2026-01-02T10:00:00Z");
    Json(json!({
        "feature_services": ["checkout"], "phases": phases,
        "counts": {"total": 3, "done": 0, "failed": 0, "pending": 3},
        "start": "2026-01-01T00:00:00Z", "finish": "2026-01-02T10:10:00Z", "days": 1.42,
        "notes": ["no window before 2026-01-02T10:00:00Z"]
    }))
}

fn freeze(id: &str, body: &Value) -> Value {
    json!({"id": id, "from": body["from"], "to": body["to"], "reason": body["reason"], "services": body["services"]})
}

async fn create_freeze(Json(body): Json<Value>) -> Response {
    if serde_json::from_value::<NewFreeze>(body.clone()).is_err() {
        return api_error(StatusCode::BAD_REQUEST, "invalid", &format!("not a freeze: {body}"));
    }
    (StatusCode::CREATED, Json(freeze("f-1", &body))).into_response()
}

async fn freezes() -> Json<Value> {
    let body = json!({"from": "2026-02-01T00:00:00Z", "to": "2026-02-08T00:00:00Z", "reason": "new year",
                      "services": []});
    Json(json!([freeze("f-1", &body)]))
}

async fn delete_freeze(Path((_, id)): Path<(String, String)>) -> Response {
    if id == "missing" {
        return api_error(StatusCode::NOT_FOUND, "not_found", "no freeze \"missing\"");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Starts the fake manager on 127.0.0.1:0 and returns its base URL.
async fn serve() -> String {
    let api = Router::new()
        .route(
            "/api/v1/tenants",
            get(|| async { Json(json!([{"name": "default", "created_at": "2026-01-01T00:00:00Z"}])) }),
        )
        .route("/api/v1/tenants/{tenant}/sidecars", get(sidecars))
        .route("/api/v1/tenants/{tenant}/sidecars/{sidecar}", get(sidecar))
        .route("/api/v1/tenants/{tenant}/services/{service}/sidecars/{sidecar}", put(binding))
        .route("/api/v1/tenants/{tenant}/instances", get(instances))
        .route("/api/v1/tenants/{tenant}/events", get(events))
        .route("/api/v1/tenants/{tenant}/plans", get(plans).post(create_plan))
        .route("/api/v1/tenants/{tenant}/plans/simulate", post(simulate))
        .route("/api/v1/tenants/{tenant}/plans/{id}", get(one_plan))
        .route("/api/v1/tenants/{tenant}/plans/{id}/{action}", post(plan_action))
        .route("/api/v1/tenants/{tenant}/freezes", get(freezes).post(create_freeze))
        .route("/api/v1/tenants/{tenant}/freezes/{id}", axum::routing::delete(delete_freeze))
        .route_layer(middleware::from_fn(require_token));
    let app = api
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { api_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "store opening") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn client() -> Client {
    Client::new(&serve().await, Some(TOKEN.into())).unwrap()
}

#[tokio::test]
async fn typed_answers_decode() {
    let c = client().await;
    let tenants = c.list_tenants().await.unwrap();
    assert_eq!(tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["default"]);
    assert_eq!(c.list_sidecars("default").await.unwrap()[0].name, "mesh");
    assert_eq!(c.get_sidecar("default", "mesh").await.unwrap().name, "default|mesh");
}

#[tokio::test]
async fn names_stay_in_their_segment() {
    let c = client().await;
    for name in ["a/b", "x?y=1#z", "100%", "sp ace", "é+", "...", "%2e%2e"] {
        let got = c.get_sidecar("ten/ant", name).await.unwrap();
        assert_eq!(got.name, format!("ten/ant|{name}"));
    }
    assert!(matches!(c.get_sidecar("default", "..").await, Err(ClientError::InvalidInput(_))));
}

#[tokio::test]
async fn api_errors_carry_code_and_message() {
    let c = client().await;
    let err = c.get_sidecar("default", "missing").await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 404, code, .. } if code == "not_found"));
    assert_eq!(err.to_string(), "not_found: no sidecar \"missing\"");

    let anonymous = Client::new(c.base_url(), None).unwrap();
    let err = anonymous.list_sidecars("default").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(401), Some("unauthorized")));
}

#[tokio::test]
async fn other_error_bodies_become_http_codes() {
    let err = client().await.list_sidecars("plain").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 502, code, message } if code == "http_502" && message == "upstream exploded")
    );
}

#[tokio::test]
async fn a_bad_answer_is_a_decode_error() {
    let err = client().await.list_sidecars("garbage").await.unwrap_err();
    assert!(matches!(&err, ClientError::Decode { what, .. } if what.contains("GET /api/v1/tenants/garbage/sidecars")));
}

#[tokio::test]
async fn an_unreachable_manager_is_a_transport_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = Client::new(&format!("http://{addr}"), None).unwrap();
    assert!(matches!(c.list_tenants().await, Err(ClientError::Transport(_))));
}

#[tokio::test]
async fn probes_need_no_token() {
    let c = Client::new(&serve().await, None).unwrap();
    c.healthz().await.unwrap();
    let err = c.readyz().await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("not_ready")));
}

#[tokio::test]
async fn binding_body_has_the_contract_shape() {
    let c = client().await;
    let b = Binding { sidecar: "mesh".into(), enabled: true, version: "1.2.0".into(), mode: UpgradeMode::Hot };
    assert_eq!(c.set_binding("default", "checkout", &b).await.unwrap(), b);
}

#[tokio::test]
async fn instance_filters_become_query_parameters() {
    let c = client().await;
    let f = InstanceFilter {
        service: Some("checkout".into()),
        version: Some("1.0.0+b&1".into()),
        stage: Some(String::new()),
        ..Default::default()
    };
    let got = c.list_instances("default", &f).await.unwrap();
    assert_eq!(got[0].id, "service=checkout&version=1.0.0%2Bb%261");
    assert_eq!(c.list_instances("default", &InstanceFilter::default()).await.unwrap()[0].id, "");
}

#[tokio::test]
async fn events_list_and_follow() {
    let c = client().await;
    let listed = c.list_events("default", &EventQuery { since: Some(1), plan: None }).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);

    let stream = c.follow_events("default", &EventQuery::default()).await.unwrap();
    let got: Vec<_> = stream.map(Result::unwrap).collect().await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(got[1].reason, "café ☕ two");
    assert_eq!(got[2].reason, "日本語 three");

    let refused = Client::new(c.base_url(), None).unwrap().follow_events("default", &EventQuery::default()).await;
    assert!(matches!(refused, Err(ClientError::Api { status: 401, .. })));
}

#[tokio::test]
async fn plans_create_list_get_and_simulate() {
    let c = client().await;
    let spec: PlanSpec = serde_json::from_value(spec_json()).unwrap();
    let created = c.create_plan("default", &spec).await.unwrap();
    assert_eq!((created.id.as_str(), created.state), ("p-1", PlanState::Pending));
    assert_eq!(created.spec, spec);
    assert_eq!(created.phases[0].batches[0].instance_count(), 3);

    let list = c.list_plans("default").await.unwrap();
    assert_eq!(list.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p-2", "p-1"]);
    assert_eq!(c.get_plan("default", "p-9").await.unwrap().id, "p-9");
    let err = c.get_plan("default", "missing").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(404), Some("not_found")));

    let sim = c.simulate_plan("default", &spec).await.unwrap();
    assert_eq!(sim.days, 1.42);
    assert!(sim.phases[0].batches[0].predicted_start.is_some());
    assert_eq!(sim.notes.len(), 1);
}

#[tokio::test]
async fn plan_actions_post_to_their_path_with_an_optional_reason() {
    let c = client().await;
    let want = [
        (PlanAction::Pause, PlanState::Paused),
        (PlanAction::Resume, PlanState::Running),
        (PlanAction::Abort, PlanState::Aborted),
        (PlanAction::Rollback, PlanState::RolledBack),
        (PlanAction::Approve, PlanState::Running),
    ];
    for (action, state) in want {
        let plan = c.plan_action("default", "p-1", action, Some("false alarm: \"quoted\"")).await.unwrap();
        assert_eq!(plan.state, state, "{action}");
        let body: Value = serde_json::from_str(&plan.reason).unwrap();
        assert_eq!(body, json!({"reason": "false alarm: \"quoted\""}));
    }
    let plan = c.plan_action("default", "p-1", PlanAction::Pause, None).await.unwrap();
    assert_eq!(plan.reason, "{}");

    let err = c.plan_action("default", "done", PlanAction::Resume, None).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(409), Some("failed_precondition")));
    assert_eq!(err.to_string(), "failed_precondition: plan \"done\" is completed");

    assert_eq!("rollback".parse::<PlanAction>().unwrap(), PlanAction::Rollback);
    assert!("explode".parse::<PlanAction>().unwrap_err().contains("explode"));
}

#[tokio::test]
async fn freezes_create_list_and_delete() {
    let c = client().await;
    let body = NewFreeze {
        from: time::macros::datetime!(2026-02-01 00:00 UTC),
        to: time::macros::datetime!(2026-02-08 00:00 UTC),
        reason: "new year".into(),
        services: vec!["checkout".into()],
    };
    let created = c.create_freeze("default", &body).await.unwrap();
    assert_eq!((created.id.as_str(), created.from, created.to), ("f-1", body.from, body.to));
    assert_eq!(created.services, ["checkout"]);
    let list = c.list_freezes("default").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason, "new year");

    c.delete_freeze("default", "f-1").await.unwrap();
    let err = c.delete_freeze("default", "missing").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(404), Some("not_found")));
    let anonymous = Client::new(c.base_url(), None).unwrap();
    assert_eq!(anonymous.delete_freeze("default", "f-1").await.unwrap_err().status(), Some(401));
}
