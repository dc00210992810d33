//! The agent's side of the sync protocol: register, receive desired-state snapshots, hand
//! them to the runtime, acknowledge, report status; reconnect with jittered exponential
//! backoff; keep running the last desired state while the manager is away.

use std::{path::PathBuf, sync::Arc, time::Duration};

use outrider_model::{DesiredState, InstanceLabels};
use outrider_proto::v1::{
    self, AgentMessage, agent_message::Body, agent_sync_client::AgentSyncClient, manager_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Runtime, atomic_file::write_atomic, backoff::Backoff};

/// Status changes within this time of the first one go into one report.
const REPORT_COALESCE: Duration = Duration::from_millis(100);

/// Completes at `due`, or never when nothing is due.
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// File in the agent's data dir holding the last desired state applied.
pub const DESIRED_FILE: &str = "desired.json";

/// Who this agent is and how it reaches the manager.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Bearer token (none: the channel's client certificate authenticates the agent).
    pub token: Option<String>,
    /// Tenant of the instance.
    pub tenant: String,
    /// Instance id.
    pub instance: String,
    /// Service.
    pub service: String,
    /// Region, env, stage and other labels.
    pub labels: InstanceLabels,
    /// Deploy id (a new one is a deploy).
    pub deploy_id: String,
    /// Where to persist the last desired state (None: not persisted, as in `outrider sim`).
    pub state_dir: Option<PathBuf>,
    /// The instance claim sent in `Register` (see [`crate::claim`]; none: `outrider sim`).
    pub claim: Option<String>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Status reports are sent on change and at least this often.
    pub report_interval: Duration,
}

impl SyncConfig {
    /// A configuration with default backoff (250 ms doubling to 30 s) and reports every 10 s.
    pub fn new(
        token: Option<String>,
        tenant: String,
        instance: String,
        service: String,
        labels: InstanceLabels,
    ) -> Self {
        Self {
            token,
            tenant,
            instance,
            service,
            labels,
            deploy_id: String::new(),
            state_dir: None,
            claim: None,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 2),
            report_interval: Duration::from_secs(10),
        }
    }
}

/// What the sync loop shows to the rest of the agent.
#[derive(Debug, Clone, Default)]
pub struct SyncStatus {
    /// Whether a sync stream is open.
    pub connected: bool,
    /// Whether a desired state arrived on the open stream (the manager has taken the agent
    /// back after a reconnect).
    pub synced: bool,
    /// The desired state last received (or loaded from disk).
    pub desired: Option<Arc<DesiredState>>,
    /// The last error talking to the manager.
    pub last_error: Option<String>,
}

/// Loads the desired state persisted by an earlier run, if any.
pub fn load_persisted(state_dir: &std::path::Path) -> Option<DesiredState> {
    let raw = std::fs::read(state_dir.join(DESIRED_FILE)).ok()?;
    match serde_json::from_slice(&raw) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable persisted desired state");
            None
        }
    }
}

fn register_message(config: &SyncConfig, runtime: &dyn Runtime, applied: u64) -> AgentMessage {
    let l = &config.labels;
    AgentMessage {
        body: Some(Body::Register(v1::Register {
            tenant: config.tenant.clone(),
            instance_id: config.instance.clone(),
            service: config.service.clone(),
            region: l.region.clone(),
            env: l.env.clone(),
            stage: l.stage.clone(),
            color: l.color.clone(),
            lane: l.lane.clone(),
            labels: l.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            deploy_id: config.deploy_id.clone(),
            applied_revision: applied,
            sidecars: runtime.status().iter().map(Into::into).collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            claim: config.claim.clone(),
        })),
    }
}

fn report_message(runtime: &dyn Runtime) -> AgentMessage {
    AgentMessage {
        body: Some(Body::Report(v1::Report { sidecars: runtime.status().iter().map(Into::into).collect() })),
    }
}

/// Runs the sync loop until `cancel`, with one of `managers` at a time: it stays with a
/// manager while its stream lasts and moves to the next one when the stream is refused or
/// lost (several managers share one store: any of them serves the same desired state, so the
/// sidecars never notice). A channel may be shared by many agents (HTTP/2 multiplexes their
/// streams). Status changes are published on `status`.
pub async fn run(
    config: SyncConfig,
    managers: Vec<Channel>,
    runtime: Arc<dyn Runtime>,
    status: watch::Sender<SyncStatus>,
    cancel: CancellationToken,
) {
    if managers.is_empty() {
        status.send_modify(|s| s.last_error = Some("no manager to sync with".into()));
        return;
    }
    let mut attempt: u32 = 0;
    let mut current = 0;
    let mut applied = status.borrow().desired.as_ref().map_or(0, |d| d.revision);
    let auth: Option<tonic::metadata::MetadataValue<_>> =
        match config.token.as_ref().map(|t| format!("Bearer {t}").parse()) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                status.send_modify(|s| s.last_error = Some("the token is not a valid header value".into()));
                return;
            }
        };
    loop {
        let (tx, rx) = mpsc::channel(16);
        // Cannot fail: the receiver is alive and the channel empty.
        let _ = tx.try_send(register_message(&config, runtime.as_ref(), applied));
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(auth) = &auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let mut client = AgentSyncClient::new(managers[current].clone());
        let result = tokio::select! {
            r = client.sync(request) => r,
            () = cancel.cancelled() => return,
        };
        match result {
            Err(e) => {
                tracing::warn!(code = ?e.code(), message = e.message(), "sync refused or unreachable");
                status.send_modify(|s| s.last_error = Some(format!("{:?}: {}", e.code(), e.message())));
            }
            Ok(response) => {
                attempt = 0;
                status.send_modify(|s| {
                    s.connected = true;
                    s.last_error = None;
                });
                let end =
                    follow(&config, response.into_inner(), &tx, runtime.as_ref(), &status, &mut applied, &cancel).await;
                status.send_modify(|s| {
                    s.connected = false;
                    s.synced = false;
                });
                match end {
                    StreamEnd::Cancelled => return,
                    StreamEnd::Lost(why) => {
                        tracing::warn!(%why, "sync stream lost; reconnecting");
                        status.send_modify(|s| s.last_error = Some(why));
                    }
                }
            }
        }
        // The next manager; the backoff grows once every manager failed in a row.
        current = (current + 1) % managers.len();
        let delay = Backoff::jittered(
            config.backoff.delay(attempt / u32::try_from(managers.len()).unwrap_or(u32::MAX)),
            &mut rand::rng(),
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
    }
}

enum StreamEnd {
    Cancelled,
    Lost(String),
}

async fn follow(
    config: &SyncConfig,
    mut inbound: tonic::Streaming<v1::ManagerMessage>,
    tx: &mpsc::Sender<AgentMessage>,
    runtime: &dyn Runtime,
    status: &watch::Sender<SyncStatus>,
    applied: &mut u64,
    cancel: &CancellationToken,
) -> StreamEnd {
    let mut changes = runtime.changes();
    let mut tick = tokio::time::interval(config.report_interval);
    tick.tick().await;
    let mut report_due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(v1::ManagerMessage { body: Some(manager_message::Body::Desired(d)) })) => {
                    let desired = match DesiredState::try_from(d) {
                        Ok(d) => d,
                        Err(e) => return StreamEnd::Lost(format!("unusable desired state: {e}")),
                    };
                    if let Some(dir) = &config.state_dir {
                        persist(dir, &desired).await;
                    }
                    runtime.apply(&desired.sidecars);
                    *applied = desired.revision;
                    let revision = desired.revision;
                    status.send_modify(|s| {
                        s.desired = Some(Arc::new(desired));
                        s.synced = true;
                    });
                    if tx.send(AgentMessage { body: Some(Body::Ack(v1::Ack { revision })) }).await.is_err() {
                        return StreamEnd::Lost("sync stream closed".into());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return StreamEnd::Lost("manager closed the stream".into()),
                Err(e) => return StreamEnd::Lost(format!("{:?}: {}", e.code(), e.message())),
            },
            changed = changes.changed(), if report_due.is_none() => {
                if changed.is_err() {
                    return StreamEnd::Lost("runtime stopped".into());
                }
                // Changes come in bursts (upgrading, then running): report once for the burst.
                report_due = Some(tokio::time::Instant::now() + REPORT_COALESCE);
            }
            () = sleep_until_due(report_due) => {
                report_due = None;
                // This report covers every change so far.
                changes.borrow_and_update();
                if tx.send(report_message(runtime)).await.is_err() {
                    return StreamEnd::Lost("sync stream closed".into());
                }
            }
            _ = tick.tick() => {
                if tx.send(report_message(runtime)).await.is_err() {
                    return StreamEnd::Lost("sync stream closed".into());
                }
            }
            () = cancel.cancelled() => return StreamEnd::Cancelled,
        }
    }
}

async fn persist(dir: &std::path::Path, desired: &DesiredState) {
    let path = dir.join(DESIRED_FILE);
    let bytes = match serde_json::to_vec_pretty(desired) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode desired state");
            return;
        }
    };
    let written = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::error!("cannot persist the desired state; it is applied but will not survive a restart");
    }
}
