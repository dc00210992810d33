//! The client against a real local HTTP server that plays the manager.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, RawQuery, Request},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use futures::StreamExt;
use outrider_model::{Binding, UpgradeMode};
use serde_json::{Value, json};

use crate::{Client, ClientError, EventQuery, InstanceFilter};

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
