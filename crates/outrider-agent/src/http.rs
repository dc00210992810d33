//! The agent's own HTTP endpoint (`--listen`): `/healthz`, `/metrics` (Prometheus text) and
//! `/status` (JSON: instance, connection, desired revision, sidecars).

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::get};
use outrider_model::SidecarState;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;
use tokio::sync::watch;

use crate::{Runtime, sync::SyncStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SidecarLabels {
    sidecar: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabels {
    sidecar: String,
    series: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScrapeLabels {
    sidecar: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    sidecar: String,
    state: String,
}

#[derive(Clone)]
struct AgentHttp {
    instance: String,
    runtime: Arc<dyn Runtime>,
    sync: watch::Receiver<SyncStatus>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn status(State(s): State<AgentHttp>) -> impl IntoResponse {
    let sync = s.sync.borrow().clone();
    Json(json!({
        "instance": s.instance,
        "connected": sync.connected,
        "desired_revision": sync.desired.as_ref().map(|d| d.revision),
        "last_error": sync.last_error,
        "sidecars": s.runtime.status(),
    }))
}

/// Renders the agent's metrics from the runtime's current status.
fn render(runtime: &dyn Runtime, sync: &SyncStatus) -> String {
    let mut registry = Registry::with_prefix("outrider_agent");
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(sync.connected));
    registry.register("connected", "Whether the sync stream to the manager is open", connected);
    let revision = Gauge::<i64>::default();
    revision.set(sync.desired.as_ref().map_or(0, |d| i64::try_from(d.revision).unwrap_or(i64::MAX)));
    registry.register("desired_revision", "Revision of the desired state applied", revision);
    let restarts = Family::<SidecarLabels, Gauge>::default();
    let exits = Family::<SidecarLabels, Gauge>::default();
    let rss = Family::<SidecarLabels, Gauge>::default();
    let cpu = Family::<SidecarLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let state = Family::<StateLabels, Gauge>::default();
    let series = Family::<SeriesLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for s in runtime.status() {
        for (name, value) in &s.metrics {
            series.get_or_create(&SeriesLabels { sidecar: s.name.clone(), series: name.clone() }).set(*value);
        }
        let l = SidecarLabels { sidecar: s.name.clone(), version: s.version.clone() };
        restarts.get_or_create(&l).set(i64::from(s.restarts));
        exits.get_or_create(&l).set(i64::from(s.exits));
        rss.get_or_create(&l).set(i64::try_from(s.rss_bytes).unwrap_or(i64::MAX));
        cpu.get_or_create(&l).set(s.cpu_percent);
        for st in [
            SidecarState::Starting,
            SidecarState::Running,
            SidecarState::Upgrading,
            SidecarState::Draining,
            SidecarState::Stopped,
            SidecarState::CrashLoop,
            SidecarState::Failed,
        ] {
            let v = i64::from(st == s.state);
            state.get_or_create(&StateLabels { sidecar: s.name.clone(), state: st.to_string() }).set(v);
        }
    }
    registry.register("sidecar_restarts", "Restarts after unexpected exits", restarts);
    registry.register("sidecar_exits", "Unexpected exits", exits);
    registry.register("sidecar_resident_memory_bytes", "Resident memory of the sidecar", rss);
    registry.register("sidecar_cpu_percent", "CPU use in percent of one core", cpu);
    registry.register("sidecar_state", "1 for the sidecar's current state", state);
    registry.register("sidecar_series", "A series derived from the sidecar's own metrics (its scrape setting)", series);
    let scrapes = Family::<ScrapeLabels, Counter>::default();
    let failures = Family::<ScrapeLabels, Counter>::default();
    let breaches = Family::<SeriesLabels, Counter>::default();
    for c in runtime.scrape_counters() {
        let l = ScrapeLabels { sidecar: c.sidecar.clone() };
        scrapes.get_or_create(&l).inc_by(c.scrapes);
        failures.get_or_create(&l).inc_by(c.failures);
        for (name, n) in &c.breaches {
            breaches.get_or_create(&SeriesLabels { sidecar: c.sidecar.clone(), series: name.clone() }).inc_by(*n);
        }
    }
    registry.register("sidecar_scrapes", "Scrapes of the sidecar's own metrics", scrapes);
    registry.register("sidecar_scrape_failures", "Scrapes of the sidecar's own metrics that failed", failures);
    registry.register(
        "sidecar_series_breaches",
        "Times a derived series stayed out of its bounds for its `for` scrapes",
        breaches,
    );
    outrider_promtext::encode(&registry)
}

async fn metrics(State(s): State<AgentHttp>) -> impl IntoResponse {
    let sync = s.sync.borrow().clone();
    ([(header::CONTENT_TYPE, outrider_promtext::CONTENT_TYPE)], render(s.runtime.as_ref(), &sync))
}

/// The router of the agent's endpoint.
pub fn router(instance: String, runtime: Arc<dyn Runtime>, sync: watch::Receiver<SyncStatus>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(AgentHttp { instance, runtime, sync })
}
