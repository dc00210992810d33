//! The sidecar's Prometheus metrics, in an explicit registry.

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// The content type of [`Metrics::encode`]'s output: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = outrider_promtext::CONTENT_TYPE;

/// Counters for the served traffic (every request except `/healthz` and `/metrics`).
///
/// Exposed as `requests_total`, `errors_total` (answers with a 5xx status),
/// `request_duration_seconds` (histogram), `requests_in_flight` and
/// `demo_info{version="..."} 1`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Counter,
    /// Requests answered with a 5xx status.
    pub errors: Counter,
    /// Time to answer a request, in seconds.
    pub latency: Histogram,
    /// Requests being handled right now.
    pub in_flight: Gauge,
}

impl Metrics {
    /// A fresh set of metrics for a sidecar running `version`.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::default();
        let requests = Counter::default();
        registry.register("requests", "Requests answered", requests.clone());
        let errors = Counter::default();
        registry.register("errors", "Requests answered with a 5xx status", errors.clone());
        // 1ms .. ~33s.
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("request_duration_seconds", "Time to answer a request, in seconds", latency.clone());
        let in_flight = Gauge::default();
        registry.register("requests_in_flight", "Requests being handled", in_flight.clone());
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![("version".to_owned(), version.to_owned())]).set(1);
        registry.register("demo_info", "The running demo sidecar's version", info);
        Self { registry, requests, errors, latency, in_flight }
    }

    /// The metrics in the Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        outrider_promtext::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new("1.2.3");
        m.requests.inc();
        m.errors.inc();
        m.latency.observe(0.25);
        let text = m.encode();
        for line in [
            "requests_total 1",
            "errors_total 1",
            "request_duration_seconds_count 1",
            "request_duration_seconds_sum 0.25",
            "requests_in_flight 0",
            "demo_info{version=\"1.2.3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
        }
    }
}
