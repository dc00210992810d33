//! What several end-to-end test files share: the default tenant's API as the tests call it.

use reqwest::Method;
use serde_json::Value;

/// The `default` tenant's API of a running manager, called with its admin token.
pub struct TenantApi {
    /// Connection pool.
    pub http: reqwest::Client,
    /// `http://host:port` of the manager.
    pub base: String,
    /// The admin token.
    pub token: String,
}

impl TenantApi {
    /// The API of the manager at `base`.
    pub fn new(base: String, token: String) -> Self {
        Self { http: reqwest::Client::new(), base, token }
    }

    /// `method path` under `/api/v1/tenants/default`: the status and the JSON answer (or the
    /// text, as a JSON string, when it is not JSON).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method, format!("{}/api/v1/tenants/default{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Like [`Self::call`], asserting a 2xx answer.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        let (s, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&s), "{what}: {s} {v}");
        v
    }

    /// `POST path`, asserting a 2xx answer.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.ok(Method::POST, path, Some(body)).await
    }

    /// `GET path`, asserting a 200 answer.
    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }
}
