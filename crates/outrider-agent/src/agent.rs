//! Assembles a real agent: the process supervisor, the last persisted desired state applied
//! at once (static stability), the sync loop, and the local HTTP endpoint.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use outrider_model::InstanceLabels;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::{
    Runtime,
    supervisor::{Supervisor, SupervisorConfig},
    sync::{self, SyncConfig, SyncStatus},
};

/// Everything `outrider agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Manager URL (`http://host:port`).
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
}

/// Runs the agent until `cancel`. Sidecars keep running when it returns: they are stopped
/// only when the desired state says so.
pub async fn run(config: AgentConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let http = reqwest::Client::builder().build().context("http client")?;
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
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "agent endpoint listening");
        let app = crate::http::router(config.instance.clone(), runtime.clone(), status_rx.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "agent endpoint failed");
            }
        });
    }

    let channel = Endpoint::from_shared(config.manager.clone())
        .with_context(|| format!("invalid manager URL {:?}", config.manager))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let mut sync_config = SyncConfig::new(
        config.token.clone(),
        config.tenant.clone(),
        config.instance.clone(),
        config.service.clone(),
        config.labels.clone(),
    );
    sync_config.deploy_id = config.deploy_id.clone();
    sync_config.state_dir = Some(config.data_dir.clone());
    sync_config.report_interval = std::time::Duration::from_secs(5);
    sync::run(sync_config, channel, runtime, status_tx, cancel).await;
    Ok(())
}
