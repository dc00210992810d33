//! The fleet's figures on a Prometheus endpoint: `GET /metrics` in the text format 0.0.4, one
//! series set per simulated instance and sidecar, with the figures of each agent's last
//! report ([`SimRuntime::last_report`](crate::SimRuntime::last_report)), so that what
//! Prometheus scrapes and what the manager received never disagree.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use outrider_model::SidecarStatus;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{SimAgent, SimError, SimInstance};

/// Time open scrapes get to finish once the fleet stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;
type CounterFamily = Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>;

/// The metric families of one exposition.
#[derive(Default)]
struct Families {
    error_ratio: GaugeFamily,
    latency_p99: GaugeFamily,
    cpu: GaugeFamily,
    rss: GaugeFamily,
    requests: CounterFamily,
    errors: CounterFamily,
}

impl Families {
    /// Adds the figures of one sidecar of `instance`, as last reported. A sidecar without a
    /// process (starting, or between restarts of a crash loop) has none.
    fn add(&self, instance: &SimInstance, status: &SidecarStatus) {
        if status.pid.is_none() {
            return;
        }
        let labels: Labels = vec![
            ("instance".into(), instance.id.clone()),
            ("service".into(), instance.service.clone()),
            ("sidecar".into(), status.name.clone()),
            ("version".into(), status.version.clone()),
            ("region".into(), instance.labels.region.clone()),
            ("env".into(), instance.labels.env.clone()),
            ("stage".into(), instance.labels.stage.clone()),
        ];
        self.cpu.get_or_create(&labels).set(status.cpu_percent);
        self.rss.get_or_create(&labels).set(status.rss_bytes as f64);
        let metric = |name: &str| status.metrics.get(name).copied().filter(|v| v.is_finite());
        if let Some(v) = metric("error_ratio") {
            self.error_ratio.get_or_create(&labels).set(v);
        }
        if let Some(ms) = metric("latency_p99_ms") {
            self.latency_p99.get_or_create(&labels).set(ms / 1000.0);
        }
        if let Some(v) = metric("requests_total").filter(|v| *v >= 0.0) {
            self.requests.get_or_create(&labels).inc_by(v);
        }
        if let Some(v) = metric("errors_total").filter(|v| *v >= 0.0) {
            self.errors.get_or_create(&labels).inc_by(v);
        }
    }

    fn register(self) -> Registry {
        let mut r = Registry::with_prefix("outrider_sim");
        r.register("error_ratio", "Share of the requests that failed, as last reported", self.error_ratio);
        r.register(
            "latency_p99_seconds",
            "99th percentile of the request latency, as last reported (latency_p99_ms / 1000)",
            self.latency_p99,
        );
        r.register("cpu_percent", "CPU use of the sidecar in percent of one core, as last reported", self.cpu);
        r.register("rss_bytes", "Resident memory of the sidecar, as last reported", self.rss);
        r.register("requests", "Requests served by the sidecar process, as last reported", self.requests);
        r.register("errors", "Failed requests of the sidecar process, as last reported", self.errors);
        r
    }
}

/// The exposition of `agents`' last reports, in the text format 0.0.4, samples in label
/// order. Work and size are proportional to the agents and their sidecars.
pub(crate) fn exposition(agents: &[SimAgent]) -> String {
    let families = Families::default();
    for agent in agents {
        for status in agent.runtime().last_report() {
            families.add(agent.instance(), &status);
        }
    }
    in_order(&outrider_promtext::encode(&families.register()))
}

/// `text` with the samples of each family sorted (by instance first: the first label), so
/// that the same figures always give the same text; a family keeps its samples in a hash map.
fn in_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_unstable();
        for s in samples.drain(..) {
            out.push_str(s);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

async fn metrics(State(agents): State<Arc<[SimAgent]>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || exposition(&agents)).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, outrider_promtext::CONTENT_TYPE)], text)
}

/// Binds `addr` and serves `GET /metrics` of `agents` until `cancel`; returns the bound
/// address.
pub(crate) async fn serve(
    addr: SocketAddr,
    agents: Arc<[SimAgent]>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, SimError> {
    let listen = |source| SimError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    let router = Router::new().route("/metrics", get(metrics)).with_state(agents);
    let stop = cancel.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).into_future();
    tasks.spawn(async move {
        tokio::pin!(server);
        tokio::select! {
            ended = &mut server => if let Err(e) = ended {
                tracing::warn!(error = %e, "the metrics endpoint stopped");
            },
            () = cancel.cancelled() => {
                // A scrape that does not finish in time is cut off.
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
            }
        }
    });
    tracing::info!(%bound, "serving the simulated instances' metrics at /metrics");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_sorted_within_their_family() {
        let text = "# HELP a A.\n# TYPE a gauge\na{instance=\"b\"} 1\na{instance=\"a\"} 2\n\
                    # HELP c C.\n# TYPE c counter\nc{instance=\"z\"} 1\nc{instance=\"y\"} 1\n";
        assert_eq!(
            in_order(text),
            "# HELP a A.\n# TYPE a gauge\na{instance=\"a\"} 2\na{instance=\"b\"} 1\n\
             # HELP c C.\n# TYPE c counter\nc{instance=\"y\"} 1\nc{instance=\"z\"} 1\n"
        );
    }
}
