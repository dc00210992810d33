//! The hostile input suite: generated malformed and extreme requests against every route and
//! method of a real manager on 127.0.0.1. Each answer must be a JSON error or a correct
//! success, never a 5xx or a dropped connection; a refused request must change nothing; the
//! server must be back near idle afterwards.
//!
//! Requests go through an HTTP client, or as raw bytes on a socket for the malformed heads a
//! client will not send. The normal test run sends a few hundred requests. For a long run:
//!
//! ```text
//! HOSTILE_CASES=20000 cargo test --release -p outrider-manager --test hostile -- --nocapture
//! ```

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use outrider_manager::{ManagerConfig, RunningManager, ServeLimits, Tuning, executor::SystemClock, start_with};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Route templates: `{t}` a tenant, `{s}` a sidecar, `{v}` a version, `{svc}` a service,
/// `{p}` a plan, `{f}` a freeze, `{a}` an action.
const ROUTES: &[&str] = &[
    "/api/v1/tenants",
    "/api/v1/tenants/{t}/sidecars",
    "/api/v1/tenants/{t}/sidecars/{s}",
    "/api/v1/tenants/{t}/sidecars/{s}/versions",
    "/api/v1/tenants/{t}/sidecars/{s}/versions/{v}",
    "/api/v1/tenants/{t}/sidecars/{s}/versions/{v}/admit",
    "/api/v1/tenants/{t}/sidecars/{s}/versions/{v}/defective",
    "/api/v1/tenants/{t}/sidecars/{s}/distribution",
    "/api/v1/tenants/{t}/services",
    "/api/v1/tenants/{t}/services/{svc}",
    "/api/v1/tenants/{t}/services/{svc}/sidecars",
    "/api/v1/tenants/{t}/services/{svc}/sidecars/{s}",
    "/api/v1/tenants/{t}/instances",
    "/api/v1/tenants/{t}/events",
    "/api/v1/tenants/{t}/plans",
    "/api/v1/tenants/{t}/plans/simulate",
    "/api/v1/tenants/{t}/plans/{p}",
    "/api/v1/tenants/{t}/plans/{p}/{a}",
    "/api/v1/tenants/{t}/freezes",
    "/api/v1/tenants/{t}/freezes/{f}",
    "/api/v1/tokens",
    "/api/v1/tokens/{s}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v2/tenants",
    "//api/v1/tenants",
    "/outrider.sync.v1.AgentSync/Sync",
];

/// Path segments: real names, missing ones and hostile ones (percent-encoded).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["default", "mesh", "checkout", "1.0.0", "1.1.0", "pause", "abort"]).prop_map(String::from),
        2 => prop::sample::select(vec!["ghost", "p123", "f123", "9.9.9", "rollback", "approve", "resume"]).prop_map(String::from),
        1 => prop::sample::select(vec![
            "%00", "..", "%2e%2e", "a%2Fb", "%E2%80%AE", "%0d%0a", "UPPER", "-x-", "a b", "%ff%fe", "",
            "1.0.0%00", "99999999999999999999.0.0",
        ])
        .prop_map(String::from),
        1 => (1usize..400).prop_map(|n| "a".repeat(n)),
    ]
}

/// JSON values that break bounds, types and characters.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(4294967295u64)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!(0)),
        Just(json!("")),
        Just(json!("a\u{0}b")),
        Just(json!("a\r\nb")),
        Just(json!("a\u{202e}b")),
        Just(json!("9999999999d")),
        Just(json!("0s")),
        Just(json!("0000-01-01T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        (1usize..200_000).prop_map(|n| json!("x".repeat(n))),
        "[a-z0-9.-]{1,20}".prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// Plausible bodies, in the order of [`WELL_FORMED`]'s body indexes.
fn templates() -> Vec<Value> {
    vec![
        json!({"name": "mesh2", "upgrade_modes": ["restart", "hot"], "description": "d"}),
        json!({"version": "1.2.0", "artifact": {"url": "file:///bin/sh", "sha256": SHA}, "command": ["${artifact}"]}),
        json!({"name": "svc2", "priority": "P1", "protected": false, "traits": {"lang": "go"}}),
        json!({"version": "1.0.0", "mode": "restart"}),
        json!({"sidecar": "mesh", "target_version": "1.1.0", "phases": [{"name": "all", "region_parallelism": 2}]}),
        json!({"from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z", "reason": "x", "services": ["checkout"]}),
        json!({"reason": "because"}),
        json!({"evidence": {"ci": "green"}}),
        json!({"name": "t2"}),
        json!({"priority": "P0", "protected": true}),
    ]
}

/// Requests each route expects: method, path, index of its body in [`templates`].
const WELL_FORMED: &[(&str, &str, Option<usize>)] = &[
    ("POST", "/api/v1/tenants", Some(8)),
    ("POST", "/api/v1/tenants/default/sidecars", Some(0)),
    ("POST", "/api/v1/tenants/default/sidecars/mesh/versions", Some(1)),
    ("POST", "/api/v1/tenants/default/sidecars/mesh/versions/1.0.0/admit", Some(7)),
    ("POST", "/api/v1/tenants/default/sidecars/mesh/versions/1.1.0/defective", Some(6)),
    ("POST", "/api/v1/tenants/default/services", Some(2)),
    ("PUT", "/api/v1/tenants/default/services/checkout", Some(9)),
    ("PUT", "/api/v1/tenants/default/services/checkout/sidecars/mesh", Some(3)),
    ("POST", "/api/v1/tenants/default/plans", Some(4)),
    ("POST", "/api/v1/tenants/default/plans/simulate", Some(4)),
    ("POST", "/api/v1/tenants/default/freezes", Some(5)),
    ("GET", "/api/v1/tenants/default/events", None),
    ("GET", "/api/v1/tenants/default/instances", None),
    ("GET", "/api/v1/tenants/default/sidecars/mesh/distribution", None),
];

/// A well-formed request, or one with one body field replaced by a hostile value.
fn well_formed() -> impl Strategy<Value = HostileRequest> {
    (prop::sample::select(WELL_FORMED.to_vec()), hostile_value(), any::<prop::sample::Index>(), any::<bool>()).prop_map(
        |((method, path, body), v, i, mutate)| {
            let body = body.map(|b| {
                let mut t = templates()[b].clone();
                if mutate && let Some(obj) = t.as_object_mut() {
                    let keys: Vec<String> = obj.keys().cloned().collect();
                    obj.insert(keys[i.index(keys.len())].clone(), v);
                }
                serde_json::to_vec(&t).unwrap()
            });
            HostileRequest {
                method: method.parse().unwrap(),
                path: path.to_owned(),
                query: None,
                content_type: body.as_ref().map(|_| "application/json"),
                body,
                auth: Auth::Valid,
                raw: None,
            }
        },
    )
}

/// Plausible bodies of every route, one field replaced by a hostile value.
fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    let templates = templates();
    let plain = prop::sample::select(templates.clone()).prop_map(|t| Some(serde_json::to_vec(&t).unwrap()));
    let mutated =
        (prop::sample::select(templates), hostile_value(), any::<prop::sample::Index>()).prop_map(|(mut t, v, i)| {
            // Replace one field, nested phases included.
            let target = if t.get("phases").is_some() && i.index(2) == 0 { &mut t["phases"][0] } else { &mut t };
            if let Some(obj) = target.as_object_mut() {
                let keys: Vec<String> = obj.keys().cloned().collect();
                let extra = ["bake", "batch_timeout", "batching", "max_per_batch", "unknown_field"];
                let key = if i.index(3) == 0 {
                    extra[i.index(extra.len())].to_owned()
                } else {
                    keys[i.index(keys.len())].clone()
                };
                obj.insert(key, v);
            }
            Some(serde_json::to_vec(&t).unwrap())
        });
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Vec::new())),
        6 => mutated,
        2 => plain,
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Some),
        1 => prop::sample::select(vec![
            "{", "}", "[", "nul", "{\"a\":}", "{\"name\":\"a\",\"name\":\"b\"}", "\u{feff}{}", "1e999999",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
        1 => (1usize..20_000).prop_map(|n| Some(format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes())),
        1 => Just(Some(vec![b' '; (1 << 20) + 1])),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Auth {
    Valid,
    Missing,
    Wrong,
    Twice,
}

#[derive(Debug, Clone)]
struct HostileRequest {
    method: Method,
    path: String,
    query: Option<String>,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    auth: Auth,
    /// Sent as these bytes on a socket of its own instead (`TOKEN` is the admin token): the
    /// malformed heads an HTTP client library will not send.
    raw: Option<Vec<u8>>,
}

/// A raw HTTP/1 request: request lines, headers and bodies an HTTP client would refuse to
/// send (control characters, bad or duplicate lengths, oversized heads, unknown versions).
fn raw_request() -> impl Strategy<Value = HostileRequest> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "G\u{1}T", "", "GET GET", "get", "PRI"]);
    let target = prop_oneof![
        4 => prop::sample::select(ROUTES.to_vec()).prop_map(|r| {
            r.replace("{t}", "default").replace("{s}", "mesh").replace("{v}", "1.0.0").replace("{svc}", "checkout")
        }),
        1 => prop::sample::select(vec!["*", "/a\u{7f}b", "/a b", "http://x/api/v1/tenants", "", "/%", "/\u{0}"])
            .prop_map(String::from),
        1 => (1usize..200_000).prop_map(|n| format!("/api/v1/tenants?x={}", "a".repeat(n))),
    ];
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/9.9", "HTTP/1.1x", ""]);
    let header = prop_oneof![
        3 => Just("Authorization: Bearer TOKEN".to_owned()),
        2 => Just("Content-Type: application/json".to_owned()),
        1 => prop::sample::select(vec![
            "Content-Length: abc", "Content-Length: -1", "Content-Length: 1x", "Content-Length: 5, 6",
            "Content-Length: 99999999999999999999999", "Transfer-Encoding: chunked", "Transfer-Encoding: gzip",
            "X-A: a\u{1}b", "X-B: a\rb", "Bad Name: x", ": empty", "X-C", "Host: a\u{0}b", "Authorization: Bearer",
            "Authorization: Basic Zm9vOmJhcg==", "Expect: 100-continue", "Content-Encoding: br",
        ])
        .prop_map(String::from),
        1 => (1usize..200_000).prop_map(|n| format!("X-Long: {}", "b".repeat(n))),
        1 => (1usize..300).prop_map(|n| (0..n).map(|i| format!("X-H{i}: v")).collect::<Vec<_>>().join("\r\n")),
    ];
    let body = prop_oneof![
        2 => Just(Vec::new()),
        1 => Just(b"{\"name\": \"raw1\"}".to_vec()),
        1 => Just(b"zz\r\nnot a chunk\r\n0\r\n\r\n".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    (method, target, version, prop::collection::vec(header, 0..5), body).prop_map(
        |(method, target, version, headers, body)| {
            let mut head = format!("{method} {target} {version}\r\nHost: 127.0.0.1\r\n");
            let chunked = headers.iter().any(|h| h.starts_with("Transfer-Encoding: chunked"));
            for h in &headers {
                head.push_str(h);
                head.push_str("\r\n");
            }
            // A length that matches the body unless a header already gets it wrong, so that no
            // request waits for bytes that never come.
            if !chunked && !headers.iter().any(|h| h.starts_with("Content-Length")) {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("Connection: close\r\n\r\n");
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(if chunked && body.is_empty() { b"0\r\n\r\n" } else { &body });
            HostileRequest {
                method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
                path: target,
                query: None,
                body: None,
                content_type: None,
                auth: Auth::Valid,
                raw: Some(bytes),
            }
        },
    )
}

fn request() -> impl Strategy<Value = HostileRequest> {
    let method = prop_oneof![
        3 => Just(Method::GET),
        4 => Just(Method::POST),
        2 => Just(Method::PUT),
        1 => Just(Method::DELETE),
        1 => prop::sample::select(vec![Method::PATCH, Method::HEAD, Method::OPTIONS]),
    ];
    let route = (prop::sample::select(ROUTES.to_vec()), prop::collection::vec(segment(), 7)).prop_map(|(r, segs)| {
        let mut p = r.to_owned();
        for (name, s) in ["{t}", "{s}", "{v}", "{svc}", "{p}", "{f}", "{a}"].iter().zip(&segs) {
            p = p.replace(name, s);
        }
        p
    });
    let query = prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(vec![
            "since=18446744073709551615", "limit=0", "limit=99999999999", "since=-1", "plan=%00", "x=1", "since=abc",
            "limit=1&since=1", "service=checkout", "region=%E2%80%AE",
        ])
        .prop_map(|q| Some(q.to_owned())),
    ];
    let content_type = prop::sample::select(vec![
        Some("application/json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ]);
    let auth =
        prop_oneof![8 => Just(Auth::Valid), 1 => Just(Auth::Missing), 1 => Just(Auth::Wrong), 1 => Just(Auth::Twice)];
    let any_request = (method, route, query, body(), content_type, auth).prop_map(
        |(method, path, query, body, content_type, auth)| HostileRequest {
            method,
            path,
            query,
            body,
            content_type,
            auth,
            raw: None,
        },
    );
    prop_oneof![3 => any_request, 1 => well_formed(), 1 => raw_request()]
}

struct Server {
    manager: Option<RunningManager>,
    /// Seeds and snapshots.
    http: reqwest::Client,
    /// Hostile requests, each on a connection of its own (a refusal may close it).
    hostile: reqwest::Client,
    base: String,
    token: String,
}

impl Server {
    async fn boot(dir: &Path) -> Self {
        // Short request timeouts: a raw request whose body never ends is answered in seconds.
        let serve = ServeLimits {
            header_read: Duration::from_secs(2),
            request: Duration::from_secs(2),
            ..ServeLimits::default()
        };
        let config = ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap());
        let m = start_with(config, Arc::new(SystemClock), Tuning { serve, ..Tuning::default() }).await.unwrap();
        let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let hostile =
            reqwest::Client::builder().timeout(Duration::from_secs(20)).pool_max_idle_per_host(0).build().unwrap();
        Self { base: format!("http://{}", m.addr), manager: Some(m), http, hostile, token }
    }

    async fn ok(&self, method: Method, path: &str, body: Value) {
        let r = self.http.request(method, format!("{}/api/v1/tenants/default{path}", self.base));
        let resp = r.bearer_auth(&self.token).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    async fn seed(&self) {
        self.ok(Method::POST, "/sidecars", json!({"name": "mesh", "upgrade_modes": ["restart", "on-deploy"]})).await;
        for v in ["1.0.0", "1.1.0"] {
            let body =
                json!({"version": v, "artifact": {"url": "file:///bin/sh", "sha256": SHA}, "command": ["${artifact}"]});
            self.ok(Method::POST, "/sidecars/mesh/versions", body).await;
        }
        for v in ["1.0.0", "1.1.0"] {
            self.ok(Method::POST, &format!("/sidecars/mesh/versions/{v}/admit"), json!({})).await;
        }
        self.ok(Method::POST, "/services", json!({"name": "checkout", "priority": "P1"})).await;
        self.ok(Method::PUT, "/services/checkout/sidecars/mesh", json!({"version": "1.0.0"})).await;
    }

    /// What the API shows of the stored state, written by the operator (the executor's own
    /// progress and writes are left out: they happen on their own).
    async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for path in [
            "/tenants",
            "/tokens",
            "/tenants/default/sidecars",
            "/tenants/default/sidecars/mesh/versions",
            "/tenants/default/services",
            "/tenants/default/services/checkout/sidecars",
            "/tenants/default/freezes",
            "/tenants/default/plans",
            "/tenants/default/events?limit=10000",
        ] {
            let r = self.http.get(format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
            let mut v: Value = r.json().await.unwrap();
            if path.ends_with("/plans") {
                v = v.as_array().unwrap().iter().map(|p| p["id"].clone()).collect();
            }
            if path.contains("/events") {
                v = v.as_array().unwrap().iter().filter(|e| e["actor"] != "executor").cloned().collect();
            }
            out.insert(path.to_owned(), v);
        }
        Value::Object(out)
    }

    /// Sends `bytes` on a new connection and reads the answer to the close.
    async fn send_raw(&self, bytes: &[u8]) -> Result<(StatusCode, String, Vec<u8>), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bytes = String::from_utf8_lossy(bytes).replace("TOKEN", &self.token);
        let addr = self.base.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut rx, mut tx) = s.split();
        let read = async {
            let mut out = Vec::new();
            let mut buf = [0u8; 16 << 10];
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return out,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        };
        let write = async {
            // The server may answer and close before it read everything: not an error.
            let _ = tx.write_all(bytes.as_bytes()).await;
        };
        let (answer, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(read, write) })
            .await
            .map_err(|_| "the server kept the connection open".to_owned())?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (mut head, mut body) =
            text.split_once("\r\n\r\n").ok_or_else(|| format!("no complete answer: {text:?}"))?;
        // Past `100 Continue`.
        while head.starts_with("HTTP/1.1 1") || head.starts_with("HTTP/1.0 1") {
            (head, body) = body.split_once("\r\n\r\n").ok_or_else(|| format!("no complete answer: {text:?}"))?;
        }
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("no status line: {head:?}"))?;
        let ct = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
            .unwrap_or_default();
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        Ok((status, ct, if chunked { dechunk(body) } else { body.as_bytes().to_vec() }))
    }

    async fn send(&self, r: &HostileRequest) -> Result<(StatusCode, String, Vec<u8>), String> {
        if let Some(raw) = &r.raw {
            return self.send_raw(raw).await;
        }
        self.send_http(r).await.map_err(|e| e.to_string())
    }

    async fn send_http(&self, r: &HostileRequest) -> Result<(StatusCode, String, Vec<u8>), reqwest::Error> {
        let mut url = format!("{}{}", self.base, r.path);
        if let Some(q) = &r.query {
            url = format!("{url}?{q}");
        }
        let mut req = self.hostile.request(r.method.clone(), url);
        match r.auth {
            Auth::Valid => req = req.bearer_auth(&self.token),
            Auth::Missing => {}
            Auth::Wrong => req = req.header("authorization", "Bearer otr_wrong"),
            Auth::Twice => {
                req = req.header("authorization", format!("Bearer {}", self.token)).header("authorization", "Bearer x")
            }
        }
        if let Some(ct) = r.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = &r.body {
            req = req.body(b.clone());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok((status, ct, resp.bytes().await?.to_vec()))
    }
}

/// The body of a chunked answer.
fn dechunk(mut body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest.as_bytes()[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Counts of one run.
#[derive(Debug, Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    server_errors: u64,
    drops: u64,
    changed_on_refusal: u64,
}

/// Checks one answer; `Err` describes what is wrong.
fn judge(r: &HostileRequest, status: StatusCode, ct: &str, body: &[u8]) -> Result<(), String> {
    if status.is_server_error() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(body)));
    }
    let grpc = r.path.starts_with("/outrider.sync.v1.AgentSync/") && r.raw.is_none();
    if status.is_client_error() && r.method != Method::HEAD && !grpc {
        let v: Value = serde_json::from_slice(body)
            .map_err(|_| format!("{status} is not JSON ({ct}): {}", String::from_utf8_lossy(body)))?;
        let e = &v["error"];
        if !e["code"].is_string() || !e["message"].is_string() {
            return Err(format!("{status} is not an API error: {v}"));
        }
    }
    if status.is_success()
        && r.path.starts_with("/api/v1/")
        && r.method != Method::HEAD
        && status != StatusCode::NO_CONTENT
    {
        serde_json::from_slice::<Value>(body).map_err(|_| format!("{status} answer is not JSON"))?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

fn cpu_ticks() -> u64 {
    outrider_procfs::stat(std::process::id()).map(|s| s.cpu_ticks()).unwrap_or(0)
}

#[test]
fn hostile_requests_get_json_errors_or_correct_successes_and_refusals_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(rt.block_on(async {
        let s = Server::boot(dir.path()).await;
        s.seed().await;
        s
    }));
    let rss_before = outrider_manager::metrics::resident_memory_bytes();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let snapshot = Arc::new(Mutex::new(rt.block_on(server.snapshot())));
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let outcome = runner.run(&request(), |r| {
        let count = |f: &dyn Fn(&mut Tally)| f(&mut tally.lock().unwrap_or_else(|p| p.into_inner()));
        let (status, ct, body) = match rt.block_on(server.send(&r)) {
            Ok(a) => a,
            Err(e) => {
                count(&|t| t.drops += 1);
                return Err(TestCaseError::fail(format!("{r:?}: connection dropped: {e}")));
            }
        };
        count(&|t| {
            *t.by_status.entry(status.as_u16()).or_default() += 1;
            t.server_errors += u64::from(status.is_server_error());
        });
        let what = || match &r.raw {
            Some(raw) => format!("raw {:?}", String::from_utf8_lossy(&raw[..raw.len().min(300)])),
            None => format!("{:?} {}", r.method, r.path),
        };
        judge(&r, status, &ct, &body).map_err(|e| TestCaseError::fail(format!("{} → {e}", what())))?;
        let after = rt.block_on(server.snapshot());
        let mut before = snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if !status.is_success() && *before != after {
            count(&|t| t.changed_on_refusal += 1);
            return Err(TestCaseError::fail(format!(
                "{:?} {} refused with {status} but changed the state",
                r.method, r.path
            )));
        }
        *before = after;
        Ok(())
    });
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let total: u64 = t.by_status.values().sum();
    eprintln!(
        "hostile: {total} requests, by status {:?}, 5xx {}, drops {}, state changes on refusal {}",
        t.by_status, t.server_errors, t.drops, t.changed_on_refusal
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }

    // Back near idle: little CPU over a second, memory not grown without bound.
    std::thread::sleep(Duration::from_millis(500));
    let ticks = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_ticks() - ticks;
    assert!(busy < 30, "{busy} CPU ticks in the idle second after the run");
    let rss_after = outrider_manager::metrics::resident_memory_bytes();
    assert!(rss_after < rss_before + (256 << 20), "RSS grew from {rss_before} to {rss_after}");
    let mut server = Arc::try_unwrap(server).ok().expect("the runner is done");
    rt.block_on(server.manager.take().unwrap().shutdown());
}
