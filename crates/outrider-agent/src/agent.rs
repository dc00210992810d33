//! Assembles a real agent: the process supervisor, the last persisted desired state applied
//! at once (static stability), the sync loop, and the local HTTP endpoint.

use std::{io, net::SocketAddr, path::PathBuf, sync::Arc};

use outrider_model::InstanceLabels;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::{
    Runtime,
    supervisor::{Supervisor, SupervisorConfig, SupervisorError},
    sync::{self, SyncConfig, SyncStatus},
};

/// Everything `outrider agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Manager URL (`http://host:port`), or several managers of one store, comma-separated.
    pub manager: String,
    /// Bearer token.
    pub token: String,
    /// Data dir: desired state, sidecar records, artifacts, logs.
    pub data_dir: PathBuf,
    /// Tenant.
    pub tenant: String,
    /// Service.
    pub service: String,
    /// Instance id.
    pub instance: String,
    /// Labels.
    pub labels: InstanceLabels,
    /// Deploy id.
    pub deploy_id: String,
    /// Local HTTP endpoint.
    pub listen: Option<SocketAddr>,
    /// Status reports on change and at least this often (`outrider agent` defaults to 5 s).
    pub report_interval: std::time::Duration,
}

/// Why the agent could not start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The data dir cannot be created.
    #[error("cannot create data dir {}: {error}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The instance claim cannot be read or written.
    #[error("cannot keep the instance claim in {}: {error}", path.display())]
    Claim {
        /// The data dir.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The HTTP client for artifacts cannot be built.
    #[error("http client: {0}")]
    HttpClient(reqwest::Error),
    /// The process supervisor cannot start.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The local HTTP endpoint cannot listen.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        error: io::Error,
    },
    /// The manager URL is not one.
    #[error("invalid manager URL {url:?}: {error}")]
    ManagerUrl {
        /// The URL.
        url: String,
        /// Why.
        error: tonic::transport::Error,
    },
}

/// Runs the agent until `cancel`. Sidecars keep running when it returns: they are stopped
/// only when the desired state says so.
pub async fn run(config: AgentConfig, cancel: CancellationToken) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|error| AgentError::DataDir { path: config.data_dir.clone(), error })?;
    let http = reqwest::Client::builder().build().map_err(AgentError::HttpClient)?;
    let supervisor = Supervisor::start(SupervisorConfig::new(
        config.data_dir.clone(),
        config.instance.clone(),
        config.service.clone(),
        config.labels.clone(),
        http,
    ))?;
    let runtime: Arc<dyn Runtime> = supervisor;
    let persisted = sync::load_persisted(&config.data_dir);
    if let Some(d) = &persisted {
        tracing::info!(revision = d.revision, sidecars = d.sidecars.len(), "running the last desired state");
        runtime.apply(&d.sidecars);
    }
    let (status_tx, status_rx) =
        watch::channel(SyncStatus { desired: persisted.map(Arc::new), ..SyncStatus::default() });

    if let Some(addr) = config.listen {
        let listen_failed = |error| AgentError::Listen { addr, error };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen_failed)?;
        tracing::info!(addr = %listener.local_addr().map_err(listen_failed)?, "agent endpoint listening");
        let app = crate::http::router(config.instance.clone(), runtime.clone(), status_rx.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "agent endpoint failed");
            }
        });
    }

    let channels = config
        .manager
        .split(',')
        .map(|url| {
            Ok(Endpoint::from_shared(url.trim().to_owned())
                .map_err(|error| AgentError::ManagerUrl { url: url.to_owned(), error })?
                .connect_timeout(std::time::Duration::from_secs(5))
                .http2_keep_alive_interval(std::time::Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .connect_lazy())
        })
        .collect::<Result<Vec<_>, AgentError>>()?;
    let mut sync_config = SyncConfig::new(
        config.token.clone(),
        config.tenant.clone(),
        config.instance.clone(),
        config.service.clone(),
        config.labels.clone(),
    );
    sync_config.deploy_id = config.deploy_id.clone();
    sync_config.state_dir = Some(config.data_dir.clone());
    sync_config.claim = Some(
        crate::claim::load_or_create(&config.data_dir)
            .map_err(|error| AgentError::Claim { path: config.data_dir.clone(), error })?,
    );
    sync_config.report_interval = config.report_interval;
    sync::run(sync_config, channels, runtime, status_tx, cancel).await;
    Ok(())
}
