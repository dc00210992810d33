//! The HTTP routes: `GET /`, `GET /healthz`, `GET /metrics`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use serde::Serialize;

use crate::{fault::Faults, metrics::Metrics};

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) version: String,
    pub(crate) instance: String,
    pub(crate) pid: u32,
    pub(crate) faults: Faults,
    pub(crate) metrics: Metrics,
    /// Set once shutdown has begun: `/healthz` answers 503 from then on.
    pub(crate) draining: AtomicBool,
}

impl AppState {
    pub(crate) fn new(version: String, instance: String, faults: Faults) -> Self {
        Self {
            metrics: Metrics::new(&version),
            version,
            instance,
            pid: std::process::id(),
            faults,
            draining: AtomicBool::new(false),
        }
    }
}

/// The body of `GET /`.
#[derive(Debug, Serialize)]
struct Hello<'a> {
    service: &'static str,
    version: &'a str,
    instance: &'a str,
    pid: u32,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn root(State(state): State<Arc<AppState>>) -> Response {
    if let Some(latency) = state.faults.latency {
        tokio::time::sleep(latency).await;
    }
    let rate = state.faults.error_rate;
    if rate > 0.0 && rand::rng().random::<f64>() < rate {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "injected fault (DEMO_FAULT error-rate)" })),
        )
            .into_response();
    }
    Json(Hello { service: "demo", version: &state.version, instance: &state.instance, pid: state.pid }).into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state.faults.fail_health {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy (DEMO_FAULT fail-health)")
    } else if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.encode())
}

/// Decrements the in-flight gauge however the request ends (even if the client goes away).
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts and times the served traffic; probes and scrapes are left out so they do not
/// dilute the error ratio.
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(request).await;
    }
    let m = &state.metrics;
    m.in_flight.inc();
    let _in_flight = InFlight(m.in_flight.clone());
    let start = Instant::now();
    let response = next.run(request).await;
    m.latency.observe(start.elapsed().as_secs_f64());
    m.requests.inc();
    if response.status().is_server_error() {
        m.errors.inc();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_reports_draining_and_fail_health() {
        let state = Arc::new(AppState::new("1".into(), "i".into(), Faults::default()));
        assert_eq!(healthz(State(state.clone())).await.0, StatusCode::OK);
        state.draining.store(true, Ordering::SeqCst);
        assert_eq!(healthz(State(state)).await.0, StatusCode::SERVICE_UNAVAILABLE);

        let faults = Faults { fail_health: true, ..Faults::default() };
        let state = Arc::new(AppState::new("1".into(), "i".into(), faults));
        assert_eq!(healthz(State(state)).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
