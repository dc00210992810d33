//! The manager's own metrics, served at `/metrics` in the Prometheus text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
    /// Plan steps the executor computed (each a call of the reconciler).
    pub executor_steps: Counter,
    /// Plan steps the executor committed (a plan that changed).
    pub executor_commits: Counter,
    /// Open client connections.
    pub connections_open: Gauge,
    /// Connections closed at once because a connection cap was reached.
    pub connections_refused: Counter,
    /// Webhook delivery attempts by `outcome`: `delivered`, `retried` (failed, tried again),
    /// `failed` (the last attempt failed), `dropped` (the webhook's queue was full).
    pub webhook_deliveries: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// 1 while this manager leads (its executor runs), else 0.
    pub leader: Gauge,
    /// Leaderships this manager took.
    pub leader_terms: Counter,
    resident_memory: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let agents_connected = Gauge::default();
        let desired_pushes = Counter::default();
        let catalog_revision = Gauge::default();
        let http_requests = Counter::default();
        let resident_memory = Gauge::default();
        let executor_steps = Counter::default();
        let executor_commits = Counter::default();
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
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
        registry.register("outrider_executor_steps", "Plan steps the executor computed", executor_steps.clone());
        registry.register("outrider_executor_commits", "Plan steps the executor committed", executor_commits.clone());
        registry.register("process_resident_memory_bytes", "Resident memory of the manager", resident_memory.clone());
        registry.register("process_cpu_seconds", "User and system CPU time of the manager", cpu_seconds.clone());
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        registry.register("outrider_connections_open", "Open client connections", connections_open.clone());
        registry.register(
            "outrider_connections_refused",
            "Connections closed at once because a connection cap was reached",
            connections_refused.clone(),
        );
        let webhook_deliveries = Family::default();
        registry.register(
            "outrider_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            webhook_deliveries.clone(),
        );
        let leader = Gauge::default();
        let leader_terms = Counter::default();
        registry.register("outrider_leader", "1 while this manager leads (its executor runs)", leader.clone());
        registry.register("outrider_leader_terms", "Leaderships this manager took", leader_terms.clone());
        Self {
            registry,
            webhook_deliveries,
            leader,
            leader_terms,
            agents_connected,
            desired_pushes,
            catalog_revision,
            http_requests,
            executor_steps,
            executor_commits,
            resident_memory,
            cpu_seconds,
            connections_open,
            connections_refused,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition (0.0.4) of every metric.
    pub fn render(&self) -> String {
        self.resident_memory.set(resident_memory_bytes().try_into().unwrap_or(i64::MAX));
        let cpu = cpu_seconds();
        let counted = self.cpu_seconds.get();
        if cpu > counted {
            self.cpu_seconds.inc_by(cpu - counted);
        }
        outrider_promtext::encode(&self.registry)
    }
}

/// Resident memory of this process (Linux; 0 when it cannot be read).
pub fn resident_memory_bytes() -> u64 {
    outrider_procfs::rss_bytes(std::process::id()).unwrap_or(0)
}

/// User and system CPU time of this process so far, in seconds (0 when it cannot be read).
pub fn cpu_seconds() -> f64 {
    let ticks = outrider_procfs::stat(std::process::id()).map_or(0, |s| s.cpu_ticks());
    ticks as f64 / outrider_procfs::clock_ticks_per_second().max(1) as f64
}
