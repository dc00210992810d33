use std::{fmt, path::Path, pin::Pin, time::Duration};

use futures::Stream;
use outrider_model::{
    Binding, BindingChange, Event, Freeze, Instance, IssuedToken, NewFreeze, NewToken, NewVersion, NewWebhook, Plan,
    PlanSpec, Service, ServiceUpdate, Sidecar, Simulation, Tenant, Token, Version, Webhook, WebhookDetail,
};
use reqwest::{Method, RequestBuilder, Url};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::{ClientError, Distribution, EventQuery, InstanceFilter, PlanAction, ndjson, path::push_segments};

/// A stream of events from [`Client::follow_events`]. It ends only when the connection does
/// (after yielding the transport error, if any); a line that does not decode yields an error
/// and the stream goes on.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>>;

/// Prefix of every REST path.
const API_PREFIX: &str = "/api/v1";
/// Time to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before TCP keep-alive probes start.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Time one request/answer exchange may take (not applied to event streams).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A typed client of the manager's REST API (`{manager}/api/v1`). Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Manager URL without a trailing slash (it may carry a path prefix).
    base: String,
    token: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the manager at `base_url` (`http://host:port` or `https://host:port`,
    /// optionally with a path prefix), sending `token` as `Authorization: Bearer <token>` when
    /// given. `https://` managers are verified against the system's roots.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_ca(base_url, token, None)
    }

    /// Like [`Client::new`], also trusting the CA certificates in `ca_pem` (PEM) for an
    /// `https://` manager (a lab CA from `outrider cert ca`).
    pub fn with_ca(base_url: &str, token: Option<String>, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::InvalidInput(format!("manager URL {base_url:?} {why}"));
        let url = Url::parse(base_url.trim()).map_err(|e| bad(&format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must start with http:// or https://"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not carry credentials, a query or a fragment"));
        }
        if let Some(t) = &token
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ClientError::InvalidInput("the token must be non-empty printable ASCII without spaces".into()));
        }
        let roots = match ca_pem {
            Some(pem) => match reqwest::Certificate::from_pem_bundle(pem) {
                Ok(certs) if !certs.is_empty() => certs,
                Ok(_) => return Err(ClientError::InvalidInput("the CA file holds no PEM certificate".into())),
                Err(e) => return Err(ClientError::InvalidInput(format!("the CA file is unusable: {e}"))),
            },
            None => Vec::new(),
        };
        let http = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .connect_timeout(CONNECT_TIMEOUT)
            // Notices a manager that vanished under a long-lived event stream.
            .tcp_keepalive(TCP_KEEPALIVE)
            .user_agent(concat!("outrider-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base: url.as_str().trim_end_matches('/').to_owned(), token })
    }

    /// The API token to use: the trimmed content of `token_file` when given (an error when it
    /// cannot be read or is empty), else `env_token` when non-empty (trimmed), else none.
    pub fn token_from(token_file: Option<&Path>, env_token: Option<String>) -> Result<Option<String>, ClientError> {
        if let Some(path) = token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ClientError::TokenFile { path: path.to_owned(), source })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(ClientError::InvalidInput(format!("the token file {} is empty", path.display())));
            }
            return Ok(Some(token.to_owned()));
        }
        Ok(env_token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
    }

    /// The manager URL this client talks to (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`: succeeds when the manager answers 2xx.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.probe("healthz").await
    }

    /// `GET /readyz`: succeeds when the manager is ready to serve (2xx).
    pub async fn readyz(&self) -> Result<(), ClientError> {
        self.probe("readyz").await
    }

    /// `GET /tenants`.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ClientError> {
        self.get(self.api_url(&["tenants"], &[])?).await
    }

    /// `POST /tenants`: creates tenant `name`.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, ClientError> {
        self.send(Method::POST, self.api_url(&["tenants"], &[])?, &json!({ "name": name })).await
    }

    /// `POST /tokens`: a new token; the answer holds its secret, shown this once.
    pub async fn create_token(&self, token: &NewToken) -> Result<IssuedToken, ClientError> {
        self.send(Method::POST, self.api_url(&["tokens"], &[])?, token).await
    }

    /// `GET /tokens`: the tokens the caller may manage (never their secrets).
    pub async fn list_tokens(&self) -> Result<Vec<Token>, ClientError> {
        self.get(self.api_url(&["tokens"], &[])?).await
    }

    /// `DELETE /tokens/{name}`: revokes the token; returns what it was.
    pub async fn revoke_token(&self, name: &str) -> Result<Token, ClientError> {
        let url = self.api_url(&["tokens", name], &[])?;
        let what = format!("the answer to DELETE {}", url.path());
        self.exchange(self.authorized(Method::DELETE, url), what).await
    }

    /// `POST /tenants/{tenant}/sidecars`.
    pub async fn create_sidecar(&self, tenant: &str, sidecar: &Sidecar) -> Result<Sidecar, ClientError> {
        self.send(Method::POST, self.tenant_url(tenant, &["sidecars"], &[])?, sidecar).await
    }

    /// `GET /tenants/{tenant}/sidecars`.
    pub async fn list_sidecars(&self, tenant: &str) -> Result<Vec<Sidecar>, ClientError> {
        self.get(self.tenant_url(tenant, &["sidecars"], &[])?).await
    }

    /// `GET /tenants/{tenant}/sidecars/{sidecar}`.
    pub async fn get_sidecar(&self, tenant: &str, sidecar: &str) -> Result<Sidecar, ClientError> {
        self.get(self.tenant_url(tenant, &["sidecars", sidecar], &[])?).await
    }

    /// `POST /tenants/{tenant}/sidecars/{sidecar}/versions`.
    pub async fn create_version(
        &self,
        tenant: &str,
        sidecar: &str,
        version: &NewVersion,
    ) -> Result<Version, ClientError> {
        self.send(Method::POST, self.tenant_url(tenant, &["sidecars", sidecar, "versions"], &[])?, version).await
    }

    /// `GET /tenants/{tenant}/sidecars/{sidecar}/versions`.
    pub async fn list_versions(&self, tenant: &str, sidecar: &str) -> Result<Vec<Version>, ClientError> {
        self.get(self.tenant_url(tenant, &["sidecars", sidecar, "versions"], &[])?).await
    }

    /// `GET /tenants/{tenant}/sidecars/{sidecar}/versions/{version}`.
    pub async fn get_version(&self, tenant: &str, sidecar: &str, version: &str) -> Result<Version, ClientError> {
        self.get(self.tenant_url(tenant, &["sidecars", sidecar, "versions", version], &[])?).await
    }

    /// `POST …/versions/{version}/admit`: marks the version tested, with `evidence`.
    pub async fn admit_version(
        &self,
        tenant: &str,
        sidecar: &str,
        version: &str,
        evidence: &serde_json::Value,
    ) -> Result<Version, ClientError> {
        let url = self.tenant_url(tenant, &["sidecars", sidecar, "versions", version, "admit"], &[])?;
        self.send(Method::POST, url, &json!({ "evidence": evidence })).await
    }

    /// `POST …/versions/{version}/defective`: marks the version defective for `reason`.
    pub async fn mark_defective(
        &self,
        tenant: &str,
        sidecar: &str,
        version: &str,
        reason: &str,
    ) -> Result<Version, ClientError> {
        let url = self.tenant_url(tenant, &["sidecars", sidecar, "versions", version, "defective"], &[])?;
        self.send(Method::POST, url, &json!({ "reason": reason })).await
    }

    /// `GET /tenants/{tenant}/sidecars/{sidecar}/distribution`: instances per running version.
    pub async fn distribution(&self, tenant: &str, sidecar: &str) -> Result<Distribution, ClientError> {
        self.get(self.tenant_url(tenant, &["sidecars", sidecar, "distribution"], &[])?).await
    }

    /// `POST /tenants/{tenant}/services`.
    pub async fn create_service(&self, tenant: &str, service: &Service) -> Result<Service, ClientError> {
        self.send(Method::POST, self.tenant_url(tenant, &["services"], &[])?, service).await
    }

    /// `GET /tenants/{tenant}/services`.
    pub async fn list_services(&self, tenant: &str) -> Result<Vec<Service>, ClientError> {
        self.get(self.tenant_url(tenant, &["services"], &[])?).await
    }

    /// `GET /tenants/{tenant}/services/{service}`.
    pub async fn get_service(&self, tenant: &str, service: &str) -> Result<Service, ClientError> {
        self.get(self.tenant_url(tenant, &["services", service], &[])?).await
    }

    /// `PUT /tenants/{tenant}/services/{service}`: replaces everything but the name.
    pub async fn update_service(
        &self,
        tenant: &str,
        service: &str,
        update: &ServiceUpdate,
    ) -> Result<Service, ClientError> {
        self.send(Method::PUT, self.tenant_url(tenant, &["services", service], &[])?, update).await
    }

    /// `PUT /tenants/{tenant}/services/{service}/sidecars/{binding.sidecar}`: enables (or
    /// disables) a sidecar for a service. The body is `{"enabled", "version", "mode"}`.
    pub async fn set_binding(&self, tenant: &str, service: &str, binding: &Binding) -> Result<Binding, ClientError> {
        self.change_binding(tenant, service, &BindingChange::from(binding.clone())).await
    }

    /// Like [`Self::set_binding`], with `force` and `reason` (sent only when set): a forced
    /// change is made despite binding admission, the reason kept in the event log.
    pub async fn change_binding(
        &self,
        tenant: &str,
        service: &str,
        change: &BindingChange,
    ) -> Result<Binding, ClientError> {
        let url = self.tenant_url(tenant, &["services", service, "sidecars", &change.sidecar], &[])?;
        let mut body = json!({ "enabled": change.enabled, "version": change.version, "mode": change.mode });
        if change.force {
            body["force"] = json!(true);
        }
        if !change.reason.is_empty() {
            body["reason"] = json!(change.reason);
        }
        self.send(Method::PUT, url, &body).await
    }

    /// `GET /tenants/{tenant}/services/{service}/sidecars`.
    pub async fn list_bindings(&self, tenant: &str, service: &str) -> Result<Vec<Binding>, ClientError> {
        self.get(self.tenant_url(tenant, &["services", service, "sidecars"], &[])?).await
    }

    /// `GET /tenants/{tenant}/instances` with the filters that are set.
    pub async fn list_instances(&self, tenant: &str, filter: &InstanceFilter) -> Result<Vec<Instance>, ClientError> {
        self.get(self.tenant_url(tenant, &["instances"], &crate::types::filter_pairs(filter))?).await
    }

    /// `DELETE /tenants/{tenant}/instances/{id}`: removes an instance whose agent is gone;
    /// the removed record.
    pub async fn delete_instance(&self, tenant: &str, id: &str) -> Result<Instance, ClientError> {
        let url = self.tenant_url(tenant, &["instances", id], &[])?;
        let what = format!("the answer to DELETE {}", url.path());
        self.exchange(self.authorized(Method::DELETE, url), what).await
    }

    /// `POST /tenants/{tenant}/plans`: creates (and starts) a plan.
    pub async fn create_plan(&self, tenant: &str, spec: &PlanSpec) -> Result<Plan, ClientError> {
        self.send(Method::POST, self.tenant_url(tenant, &["plans"], &[])?, spec).await
    }

    /// `GET /tenants/{tenant}/plans`: every plan, newest first.
    pub async fn list_plans(&self, tenant: &str) -> Result<Vec<Plan>, ClientError> {
        self.get(self.tenant_url(tenant, &["plans"], &[])?).await
    }

    /// `GET /tenants/{tenant}/plans/{id}`.
    pub async fn get_plan(&self, tenant: &str, id: &str) -> Result<Plan, ClientError> {
        self.get(self.tenant_url(tenant, &["plans", id], &[])?).await
    }

    /// `POST /tenants/{tenant}/plans/{id}/{action}` with `{"reason": …}` when a reason is
    /// given (`{}` otherwise). The manager refuses an action the plan's state does not allow
    /// (409 `failed_precondition`).
    pub async fn plan_action(
        &self,
        tenant: &str,
        id: &str,
        action: PlanAction,
        reason: Option<&str>,
    ) -> Result<Plan, ClientError> {
        let url = self.tenant_url(tenant, &["plans", id, action.as_str()], &[])?;
        let body = match reason {
            Some(reason) => json!({ "reason": reason }),
            None => json!({}),
        };
        self.send(Method::POST, url, &body).await
    }

    /// `POST /tenants/{tenant}/plans/simulate`: the schedule `spec` would follow; nothing
    /// changes.
    pub async fn simulate_plan(&self, tenant: &str, spec: &PlanSpec) -> Result<Simulation, ClientError> {
        self.simulate_plan_with(tenant, spec, None).await
    }

    /// Like [`Client::simulate_plan`], assuming `deploys_per_day` deploys per instance and day
    /// for on-deploy phases (`None`: the manager's default).
    pub async fn simulate_plan_with(
        &self,
        tenant: &str,
        spec: &PlanSpec,
        deploys_per_day: Option<f64>,
    ) -> Result<Simulation, ClientError> {
        let rate = deploys_per_day.map(|r| r.to_string());
        let query = [("deploys_per_day", rate.as_deref())];
        self.send(Method::POST, self.tenant_url(tenant, &["plans", "simulate"], &query)?, spec).await
    }

    /// `POST /tenants/{tenant}/freezes`.
    pub async fn create_freeze(&self, tenant: &str, freeze: &NewFreeze) -> Result<Freeze, ClientError> {
        self.send(Method::POST, self.tenant_url(tenant, &["freezes"], &[])?, freeze).await
    }

    /// `GET /tenants/{tenant}/freezes`.
    pub async fn list_freezes(&self, tenant: &str) -> Result<Vec<Freeze>, ClientError> {
        self.get(self.tenant_url(tenant, &["freezes"], &[])?).await
    }

    /// `DELETE /tenants/{tenant}/freezes/{id}`.
    pub async fn delete_freeze(&self, tenant: &str, id: &str) -> Result<(), ClientError> {
        let url = self.tenant_url(tenant, &["freezes", id], &[])?;
        let resp = self.authorized(Method::DELETE, url).timeout(REQUEST_TIMEOUT).send().await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await?;
        Err(ClientError::from_response(status.as_u16(), &body))
    }

    /// `POST /tenants/{tenant}/webhooks`.
    pub async fn create_webhook(&self, tenant: &str, webhook: &NewWebhook) -> Result<Webhook, ClientError> {
        self.send(Method::POST, self.tenant_url(tenant, &["webhooks"], &[])?, webhook).await
    }

    /// `GET /tenants/{tenant}/webhooks`.
    pub async fn list_webhooks(&self, tenant: &str) -> Result<Vec<Webhook>, ClientError> {
        self.get(self.tenant_url(tenant, &["webhooks"], &[])?).await
    }

    /// `GET /tenants/{tenant}/webhooks/{id}`: the webhook and its latest delivery attempts.
    pub async fn get_webhook(&self, tenant: &str, id: &str) -> Result<WebhookDetail, ClientError> {
        self.get(self.tenant_url(tenant, &["webhooks", id], &[])?).await
    }

    /// `DELETE /tenants/{tenant}/webhooks/{id}`.
    pub async fn delete_webhook(&self, tenant: &str, id: &str) -> Result<(), ClientError> {
        let url = self.tenant_url(tenant, &["webhooks", id], &[])?;
        let resp = self.authorized(Method::DELETE, url).timeout(REQUEST_TIMEOUT).send().await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await?;
        Err(ClientError::from_response(status.as_u16(), &body))
    }

    /// `GET /tenants/{tenant}/events`: the event log (after `query.since`, of `query.plan`).
    pub async fn list_events(&self, tenant: &str, query: &EventQuery) -> Result<Vec<Event>, ClientError> {
        self.get(self.events_url(tenant, query, false)?).await
    }

    /// `GET /tenants/{tenant}/events?follow=true`: the events after `query.since` as they
    /// happen. Fails at once if the manager refuses the request; then yields one item per
    /// NDJSON line, however the lines are cut into chunks.
    pub async fn follow_events(&self, tenant: &str, query: &EventQuery) -> Result<EventStream, ClientError> {
        let url = self.events_url(tenant, query, true)?;
        let what = format!("an event of GET {}", url.path());
        let resp = self.authorized(Method::GET, url).send().await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await?;
            return Err(ClientError::from_response(status.as_u16(), &body));
        }
        Ok(Box::pin(ndjson::decode_lines(resp.bytes_stream(), what)))
    }

    /// The URL of the events endpoint.
    fn events_url(&self, tenant: &str, query: &EventQuery, follow: bool) -> Result<Url, ClientError> {
        let since = query.since.map(|s| s.to_string());
        let params =
            [("since", since.as_deref()), ("plan", query.plan.as_deref()), ("follow", follow.then_some("true"))];
        self.tenant_url(tenant, &["events"], &params)
    }

    /// `{base}/api/v1/tenants/{tenant}/{segments…}?{query}`.
    fn tenant_url(&self, tenant: &str, segments: &[&str], query: &[(&str, Option<&str>)]) -> Result<Url, ClientError> {
        let mut all = vec!["tenants", tenant];
        all.extend_from_slice(segments);
        self.api_url(&all, query)
    }

    /// `{base}/api/v1/{segments…}?{query}`, each segment percent-encoded; query parameters
    /// that are `None` or empty are left out.
    fn api_url(&self, segments: &[&str], query: &[(&str, Option<&str>)]) -> Result<Url, ClientError> {
        let mut path = format!("{}{API_PREFIX}", self.base);
        push_segments(&mut path, segments)?;
        let mut url =
            Url::parse(&path).map_err(|e| ClientError::InvalidInput(format!("bad request URL {path:?}: {e}")))?;
        let set: Vec<(&str, &str)> =
            query.iter().filter_map(|&(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v))).collect();
        if !set.is_empty() {
            url.query_pairs_mut().extend_pairs(set);
        }
        Ok(url)
    }

    /// A request carrying the bearer token, if any.
    fn authorized(&self, method: Method, url: Url) -> RequestBuilder {
        tracing::debug!(%method, %url, "manager request");
        let req = self.http.request(method, url);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let what = format!("the answer to GET {}", url.path());
        self.exchange(self.authorized(Method::GET, url), what).await
    }

    async fn send<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: &B,
    ) -> Result<T, ClientError> {
        let what = format!("the answer to {method} {}", url.path());
        self.exchange(self.authorized(method, url).json(body), what).await
    }

    /// Sends `req` and decodes a 2xx JSON answer, or turns the answer into an API error.
    async fn exchange<T: DeserializeOwned>(&self, req: RequestBuilder, what: String) -> Result<T, ClientError> {
        let resp = req.timeout(REQUEST_TIMEOUT).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            return Err(ClientError::from_response(status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { what, source })
    }

    /// A cluster-level probe (`/healthz`, `/readyz`): no token, any 2xx body.
    async fn probe(&self, name: &str) -> Result<(), ClientError> {
        let url = Url::parse(&format!("{}/{name}", self.base))
            .map_err(|e| ClientError::InvalidInput(format!("bad probe URL: {e}")))?;
        let resp = self.http.get(url).timeout(REQUEST_TIMEOUT).send().await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await?;
        Err(ClientError::from_response(status.as_u16(), &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(Client::new("http://127.0.0.1:7070/", None).unwrap().base_url(), "http://127.0.0.1:7070");
        assert_eq!(Client::new("http://h/prefix/", None).unwrap().base_url(), "http://h/prefix");
        assert_eq!(Client::new("https://h:7070", None).unwrap().base_url(), "https://h:7070");
        let garbage = Client::with_ca("https://h", None, Some(b"not a certificate"));
        assert!(matches!(garbage, Err(ClientError::InvalidInput(_))));
        for bad in ["127.0.0.1:7070", "localhost:7070", "ftp://h", "http://u:p@h", "http://h/?q=1", ""] {
            assert!(matches!(Client::new(bad, None), Err(ClientError::InvalidInput(_))), "{bad:?} accepted");
        }
        assert!(matches!(Client::new("http://h", Some("a b".into())), Err(ClientError::InvalidInput(_))));
    }

    #[test]
    fn urls_encode_names_and_skip_unset_filters() {
        let c = Client::new("http://h:1/p", None).unwrap();
        let filter = InstanceFilter { service: Some("a&b=c".into()), env: Some(String::new()), ..Default::default() };
        let url = c.tenant_url("t 1", &["instances"], &crate::types::filter_pairs(&filter)).unwrap();
        assert_eq!(url.as_str(), "http://h:1/p/api/v1/tenants/t%201/instances?service=a%26b%3Dc");
        let q = EventQuery { since: Some(7), plan: None };
        assert_eq!(c.events_url("default", &q, true).unwrap().query(), Some("since=7&follow=true"));
        assert!(c.tenant_url("..", &["sidecars"], &[]).is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new("http://h", Some("s3cret".into())).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn tokens_come_from_the_file_first() {
        let dir = std::env::temp_dir().join(format!("outrider-client-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("admin.token");
        std::fs::write(&file, "  abc123\n").unwrap();
        assert_eq!(Client::token_from(Some(&file), Some("env".into())).unwrap().as_deref(), Some("abc123"));
        assert_eq!(Client::token_from(None, Some(" env \n".into())).unwrap().as_deref(), Some("env"));
        assert_eq!(Client::token_from(None, Some("  ".into())).unwrap(), None);
        assert_eq!(Client::token_from(None, None).unwrap(), None);
        std::fs::write(&file, "\n").unwrap();
        assert!(
            matches!(Client::token_from(Some(&file), None), Err(ClientError::InvalidInput(m)) if m.contains("empty"))
        );
        let missing = dir.join("missing.token");
        let err = Client::token_from(Some(&missing), None).unwrap_err();
        assert!(matches!(&err, ClientError::TokenFile { path, .. } if *path == missing));
        assert!(err.to_string().contains("missing.token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
