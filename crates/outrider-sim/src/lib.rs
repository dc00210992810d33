//! Outrider's simulated fleet, for tests, demos and benchmarks (PRODUCT.md §5).
//!
//! - [`FleetSpec::generate`] builds a realistic fleet (services with priorities and traits,
//!   instances with regions, envs and stages) from a seed, as plain data.
//! - [`seed_catalog`] writes its services (and optionally a bound sidecar version) to a
//!   manager over the REST API.
//! - [`SimFleet::start`] runs one real agent sync loop per instance, each with a
//!   [`SimRuntime`] that "applies" desired state after a short simulated delay and reports
//!   synthetic processes with health figures and metrics. The agents share a few HTTP/2
//!   connections.
//! - [`Defect`]s (`--defect version=1.3.0,trait=protocol:http,effect=crash`,
//!   `effect=errors:0.02`) make the instances they select misbehave once they run the
//!   defective version.
//! - [`SimFleet::serve_metrics`] serves the figures of the agents' last reports on a
//!   Prometheus endpoint (`GET /metrics`, text format 0.0.4), one series set per instance
//!   and sidecar labelled `instance`, `service`, `sidecar`, `version`, `region`, `env`,
//!   `stage`: the gauges `outrider_sim_error_ratio`, `outrider_sim_latency_p99_seconds`,
//!   `outrider_sim_cpu_percent`, `outrider_sim_rss_bytes` and the counters
//!   `outrider_sim_requests_total`, `outrider_sim_errors_total`.
//! - A [`Profile`] per service gives healthy sidecars their base levels, a daily load curve
//!   and random spikes, seeded, so that a judge sees realistic noise.
//!
//! Architecture invariant: the simulation speaks only the public protocols (REST through
//! `outrider-client`, agent sync through `outrider-agent`); it knows nothing of the
//! manager's internals, so what it measures is what real agents see.

mod defect;
mod fleet;
mod metrics;
mod profile;
mod runtime;
mod seed;
mod spec;
pub mod stats;

use std::{net::SocketAddr, time::Duration};

pub use defect::{Defect, Effect};
pub use fleet::{Arrivals, SimAgent, SimFleet, SimFleetOptions};
pub use profile::Profile;
pub use runtime::{SimRuntime, SimRuntimeOptions};
pub use seed::{
    SEED_PARALLELISM, SeedReport, SidecarRef, binding_mode, ensure_service, ensure_sidecar, ensure_version,
    seed_catalog, sim_version,
};
pub use spec::{FleetParams, FleetSpec, OFFLINE_REGION, ONLINE_REGIONS, SimInstance};

/// Why a simulation step failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A parameter was refused before anything was done.
    #[error("{0}")]
    Invalid(String),
    /// The manager URL cannot be used for agent sync.
    #[error("invalid manager URL {url:?}")]
    ManagerUrl {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A REST call failed.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: outrider_client::ClientError,
    },
    /// The metrics endpoint cannot listen.
    #[error("cannot serve metrics on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Some agents did not receive an expected desired state in time.
    #[error("{missing} of {total} agents did not receive the desired state within {waited:?}")]
    Missing {
        /// Agents without it.
        missing: usize,
        /// Agents watched.
        total: usize,
        /// How long they were waited for.
        waited: Duration,
    },
}
