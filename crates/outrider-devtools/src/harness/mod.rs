//! Outrider on this machine, for `outrider demo`, `outrider bench upgrade` and the end-to-end
//! tests: the binaries, free loopback ports, a manager and agents as child processes in their
//! own process groups (killed if dropped), the demo sidecar as an artifact, the clean-up of
//! sidecar processes the agents leave behind, HTTP load on a sidecar, and a real Prometheus
//! server scraping given targets ([`Prometheus`]).
//!
//! [`Fleet`] assembles these for tests: a manager and agents of one service under one
//! temporary directory, with REST helpers and polling assertions that panic.

mod cleanup;
mod error;
mod fleet;
pub mod load;
mod probe;
mod process;
mod prometheus;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

pub use cleanup::{alive, kill_leftover_sidecars, kill_now_running_from, kill9, processes_running_from, runs_from};
pub use error::HarnessError;
pub use fleet::{AgentSpec, Fleet, Sidecar, demo_sidecar_body};
pub use probe::{AgentStatus, Hello, agent_status, fetch_hello, file_artifact, sha256_file};
pub use process::{
    AgentFlags, Child, Ended, Interrupted, PROCESS_GRACE, interrupt, manager_leads, spawn_manager, wait_manager_ready,
};
pub use prometheus::{Prometheus, REQUIRE_ENV, prometheus_binary, prometheus_or_skip};

/// The `outrider` executable and the demo sidecar next to it.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `outrider`.
    pub outrider: PathBuf,
    /// `outrider-demo-sidecar`, built by its own crate into the same directory.
    pub demo_sidecar: PathBuf,
}

impl Binaries {
    /// `outrider` at `outrider`, and the demo sidecar beside it (which must exist).
    pub fn beside(outrider: &Path) -> Result<Self, HarnessError> {
        let demo_sidecar = outrider.with_file_name("outrider-demo-sidecar");
        if !demo_sidecar.is_file() {
            return Err(HarnessError::MissingSidecar(demo_sidecar));
        }
        Ok(Self { outrider: outrider.to_owned(), demo_sidecar })
    }

    /// The running executable (`outrider` itself), and the demo sidecar beside it.
    pub fn current() -> Result<Self, HarnessError> {
        let exe = std::env::current_exe().map_err(HarnessError::io("cannot find the outrider binary itself"))?;
        Self::beside(&exe)
    }
}

/// `n` distinct free loopback ports: all are bound at once, then released. A port handed
/// out by this process is never handed out again, so that parallel tests do not share one.
pub fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut ports = Vec::with_capacity(n);
    let mut listeners = Vec::new();
    while ports.len() < n {
        let bind = HarnessError::io("cannot bind a free port on 127.0.0.1");
        let listener = TcpListener::bind("127.0.0.1:0").map_err(bind)?;
        let port = listener.local_addr().map_err(HarnessError::io("cannot read a bound port"))?.port();
        if GIVEN.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
            ports.push(port);
        }
        // Held until all are chosen, so the system gives a new one each time.
        listeners.push(listener);
    }
    Ok(ports)
}
