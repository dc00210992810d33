//! Assembles a real agent: the process supervisor, the last persisted desired state applied
//! at once (static stability), the sync loop, and the local HTTP endpoint.

use std::{io, net::SocketAddr, path::PathBuf, sync::Arc};

use outrider_model::InstanceLabels;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{
    Runtime,
    supervisor::{Supervisor, SupervisorConfig, SupervisorError},
    sync::{self, SyncConfig, SyncStatus},
};

/// Everything `outrider agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Manager URL (`http://host:port` or `https://host:port`), or several managers of one
    /// store, comma-separated.
    pub manager: String,
    /// Bearer token (none: the client certificate authenticates the agent).
    pub token: Option<String>,
    /// TLS to the manager and to `https://` artifacts.
    pub tls: AgentTls,
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

/// The agent's TLS material, in PEM.
#[derive(Clone, Default)]
pub struct AgentTls {
    /// A CA trusted besides the system's roots, for the manager and `https://` artifacts.
    pub ca: Option<Vec<u8>>,
    /// The agent's client certificate chain and its key (mTLS to the manager).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls").field("ca", &self.ca.is_some()).field("identity", &self.identity.is_some()).finish()
    }
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
    /// The CA file holds no usable certificate.
    #[error("CA certificate: {0}")]
    Ca(String),
    /// The TLS settings of the manager connection are refused.
    #[error("TLS to the manager: {0}")]
    Tls(tonic::transport::Error),
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
    let roots = match &config.tls.ca {
        Some(pem) => match reqwest::Certificate::from_pem_bundle(pem) {
            Ok(certs) if !certs.is_empty() => certs,
            Ok(_) => return Err(AgentError::Ca("no PEM certificate in the CA file".into())),
            Err(e) => return Err(AgentError::Ca(e.to_string())),
        },
        None => Vec::new(),
    };
    let http = reqwest::Client::builder().tls_certs_merge(roots).build().map_err(AgentError::HttpClient)?;
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
            let url = url.trim();
            let mut endpoint = Endpoint::from_shared(url.to_owned())
                .map_err(|error| AgentError::ManagerUrl { url: url.to_owned(), error })?;
            if url.starts_with("https://") {
                endpoint = endpoint.tls_config(client_tls(&config.tls)).map_err(AgentError::Tls)?;
            }
            Ok(endpoint
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

/// The TLS side of the manager connection: the system's roots and the CA, and the client
/// certificate if there is one.
fn client_tls(tls: &AgentTls) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}
