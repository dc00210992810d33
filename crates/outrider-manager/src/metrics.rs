//! The manager's own metrics, served at `/metrics` in the Prometheus text format.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// Counters and gauges of one manager (explicit registry: no global state).
pub struct Metrics {
    registry: Registry,
    /// Agents with an open sync stream.
    pub agents_connected: Gauge,
    /// Desired-state snapshots pushed to agents.
    pub desired_pushes: Counter,
    /// Store revision last applied to the catalog.
    pub catalog_revision: Gauge,
    /// API requests answered.
    pub http_requests: Counter,
    /// Open client connections.
    pub connections_open: Gauge,
    /// Connections closed at once because a connection cap was reached.
    pub connections_refused: Counter,
    resident_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let agents_connected = Gauge::default();
        let desired_pushes = Counter::default();
        let catalog_revision = Gauge::default();
        let http_requests = Counter::default();
        let resident_memory = Gauge::default();
        registry.register("outrider_agents_connected", "Agents with an open sync stream", agents_connected.clone());
        registry.register(
            "outrider_desired_pushes",
            "Desired-state snapshots pushed to agents",
            desired_pushes.clone(),
        );
        registry.register(
            "outrider_catalog_revision",
            "Store revision applied to the catalog",
            catalog_revision.clone(),
        );
        registry.register("outrider_http_requests", "REST API requests answered", http_requests.clone());
        registry.register("process_resident_memory_bytes", "Resident memory of the manager", resident_memory.clone());
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        registry.register("outrider_connections_open", "Open client connections", connections_open.clone());
        registry.register(
            "outrider_connections_refused",
            "Connections closed at once because a connection cap was reached",
            connections_refused.clone(),
        );
        Self {
            registry,
            agents_connected,
            desired_pushes,
            catalog_revision,
            http_requests,
            connections_open,
            connections_refused,
            resident_memory,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.resident_memory.set(resident_memory_bytes().try_into().unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Resident memory of this process (Linux; 0 when it cannot be read).
pub fn resident_memory_bytes() -> u64 {
    outrider_procfs::rss_bytes(std::process::id()).unwrap_or(0)
}
