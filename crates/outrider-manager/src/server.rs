//! Assembles the manager: store, catalog mirror, fleet, REST + gRPC on one port.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use outrider_model::{DEFAULT_TENANT, Tenant};
use outrider_proto::server::SyncServer;
use outrider_store::{Op, Store, StoreError, WatchEvent};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, StartError,
    api::{self, AppState},
    auth::Auth,
    catalog::Catalog,
    executor,
    fleet::{Fleet, InstanceRetention, StoredInstance},
    keys,
    leadership::{self, LeaderWork},
    live_plans,
    metrics::Metrics,
    repo::{NewEvent, Repo, decode, encode},
    retention::{self, Retention},
    serve::{
        self, ServeLimits,
        tls::{self, Tls, TlsFiles},
    },
    sync::SyncService,
    webhooks::{self, Webhooks},
};

/// How long shutdown waits for open connections before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long one analysis query may take.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where the admin token lives, and the embedded store unless [`ManagerConfig::store`]
    /// names another.
    pub data_dir: PathBuf,
    /// The store's URL (`etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`, `redb:PATH`); none: the
    /// embedded store in the data dir.
    pub store: Option<String>,
    /// Address for REST and gRPC.
    pub listen: SocketAddr,
    /// When instances whose agent went away are `gone`, and when they are removed.
    pub instances: InstanceRetention,
    /// The Prometheus server the plans' analysis queries run on (none: plans with queries
    /// cannot pass their batches).
    pub prometheus: Option<String>,
    /// TLS on the port, with mTLS for agents when it names a client CA (none: plain HTTP).
    pub tls: Option<TlsFiles>,
    /// A CA (PEM) that `https://` webhook receivers may be signed by, besides the system's.
    pub webhook_ca: Option<PathBuf>,
    /// This manager's name among the managers sharing the store (none: host name and pid).
    pub name: Option<String>,
    /// How long a dead manager keeps its leadership and presence (with several managers on
    /// etcd: the longest pause of the executor when the leader dies).
    pub leader_lease: Duration,
}

/// The default [`ManagerConfig::leader_lease`].
pub const LEADER_LEASE: Duration = Duration::from_secs(5);

/// A name for this manager: the host's and the process id.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
    format!("{}-{}", if host.is_empty() { "manager" } else { &host }, std::process::id())
}

impl ManagerConfig {
    /// A manager with its data in `data_dir`, listening on `listen`, with the default
    /// instance retention.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            store: None,
            listen,
            instances: InstanceRetention::default(),
            prometheus: None,
            tls: None,
            webhook_ca: None,
            name: None,
            leader_lease: LEADER_LEASE,
        }
    }
}

/// Limits and housekeeping of a manager (the defaults suit production).
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// The listener's timeouts and connection caps.
    pub serve: ServeLimits,
    /// The event log's retention.
    pub retention: Retention,
    /// How webhooks are delivered.
    pub webhooks: webhooks::Delivery,
}

/// A running manager.
pub struct RunningManager {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    cancel: CancellationToken,
    fleet: Arc<Fleet>,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl RunningManager {
    /// Stops serving and waits for the background tasks to finish their last writes.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.fleet.close_all();
        // Agents keep their half of the sync stream open; give connections a moment to end,
        // then stop serving regardless.
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err() {
            task.abort();
        }
        for t in self.background {
            let _ = t.await;
        }
    }
}

/// Sets `path`'s mode to `mode` unless it already is (the umask and old modes do not count).
fn restrict(path: &std::path::Path, mode: u32) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let private = |source| StartError::Private { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(private)?;
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(private)?;
    }
    Ok(())
}

/// Makes every file of the data dir (the store, the admin token) readable by the owner only.
fn restrict_files(data_dir: &std::path::Path) -> Result<(), StartError> {
    let private = |source| StartError::Private { path: data_dir.to_owned(), source };
    for entry in std::fs::read_dir(data_dir).map_err(private)? {
        let entry = entry.map_err(private)?;
        if entry.file_type().map_err(private)?.is_file() {
            restrict(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

async fn ensure_default_tenant(repo: &Repo) -> Result<(), Error> {
    let tenant = Tenant { name: DEFAULT_TENANT.into(), created_at: OffsetDateTime::now_utc() };
    let event = NewEvent::new(DEFAULT_TENANT, "tenant.created", "manager", format!("tenant/{DEFAULT_TENANT}"))
        .reason("first start");
    let key = keys::tenant(DEFAULT_TENANT);
    repo.commit(vec![outrider_store::Compare::absent(&key)], vec![Op::put(&key, encode(&tenant)?)], vec![event])
        .await?;
    Ok(())
}

/// Reads tenants and the catalog; returns it and the revision to watch from.
async fn load_catalog(store: &dyn Store) -> Result<(Catalog, u64), StoreError> {
    let mut catalog = Catalog::default();
    let tenants = store.range(keys::TENANTS).await?;
    let items = store.range(keys::CATALOG).await?;
    let freezes = store.range(keys::FREEZES).await?;
    for kv in tenants.kvs.iter().chain(&items.kvs).chain(&freezes.kvs) {
        catalog.load(kv);
    }
    let revisions = [tenants.revision, items.revision, freezes.revision];
    catalog.revision = revisions.into_iter().max().unwrap_or_default();
    Ok((catalog, revisions.into_iter().min().unwrap_or_default() + 1))
}

/// Applies watched batches until the watch fails (`true`: reload needed) or stops (`false`).
async fn follow(
    state: &AppState,
    mut watch: outrider_store::WatchStream,
    from: &mut u64,
    cancel: &CancellationToken,
) -> bool {
    loop {
        let batch = tokio::select! {
            b = watch.next() => b,
            () = cancel.cancelled() => return false,
        };
        let b = match batch {
            None => return false,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "catalog watch interrupted");
                return true;
            }
            Some(Ok(b)) => b,
        };
        let mut touched = BTreeSet::new();
        let mut c = state.catalog.write().unwrap_or_else(|p| p.into_inner());
        let mut plan_inputs = false;
        for e in &b.events {
            let key = e.key();
            if key.starts_with(keys::CATALOG) || key.starts_with(keys::TENANTS) || key.starts_with(keys::FREEZES) {
                c.apply(e, &mut touched);
                plan_inputs = true;
            } else if key.starts_with(keys::TOKENS) {
                // Tokens created or revoked through any manager count here at once.
                apply_token(state, e);
            } else if key.starts_with(keys::LIVE_PLANS) {
                // A plan created or acted on through another manager.
                plan_inputs = true;
            } else {
                shared_fleet(state, e);
            }
        }
        if plan_inputs {
            // The plans' gates read the catalog and the freezes: let the executor look.
            state.wake.notify_one();
        }
        c.revision = b.revision;
        state.metrics.catalog_revision.set(i64::try_from(b.revision).unwrap_or(i64::MAX));
        if !touched.is_empty() {
            state.fleet.push(&touched, &c);
        }
        *from = b.revision + 1;
    }
}

/// Applies a watched token change; a revoked token's agent streams end.
fn apply_token(state: &AppState, e: &outrider_store::WatchEvent) {
    if let Some(name) = state.auth.apply(e) {
        let closed = state.fleet.close_opened_by(&name);
        tracing::info!(token = %name, closed, "token revoked");
    }
}

/// Rereads the tokens after the watch fell behind; the streams of tokens gone meanwhile end.
async fn reload_tokens(state: &AppState) -> Result<(), Error> {
    for name in state.auth.reload(&state.repo).await? {
        let closed = state.fleet.close_opened_by(&name);
        tracing::info!(token = %name, closed, "token revoked");
    }
    Ok(())
}

/// Takes in what other managers sharing the store wrote of the fleet: their agents' records
/// and the services the leader watches.
fn shared_fleet(state: &AppState, e: &WatchEvent) {
    if !state.fleet.is_shared() {
        return;
    }
    match e {
        WatchEvent::Put(kv) if kv.key.starts_with(keys::INSTANCES) => {
            match decode::<StoredInstance>(&kv.key, &kv.value) {
                Ok(stored) => state.fleet.merge_remote(stored),
                Err(e) => tracing::warn!(error = %e, "unreadable instance record ignored"),
            }
        }
        WatchEvent::Delete { key, .. } if key.starts_with(keys::INSTANCES) => {
            if let Some((tenant, id)) = keys::parse_instance(key) {
                state.fleet.forget_remote(tenant, id);
            }
        }
        WatchEvent::Put(kv) if kv.key == keys::WATCHED => match decode(&kv.key, &kv.value) {
            Ok(services) => state.fleet.follow_watched(services),
            Err(e) => tracing::warn!(error = %e, "unreadable watched services ignored"),
        },
        _ => {}
    }
}

/// Follows the store and keeps the catalog mirror and the agents' desired state current.
/// When the watch falls behind, rereads the catalog and re-pushes every service.
async fn run_catalog_watch(state: AppState, mut from: u64, cancel: CancellationToken) {
    let store = state.repo.store().clone();
    // The watch was refused since the last one that started (logged once).
    let mut refused = false;
    loop {
        match store.watch("", from).await {
            Ok(w) => {
                refused = false;
                if !follow(&state, w, &mut from, &cancel).await {
                    return;
                }
            }
            Err(e @ StoreError::Compacted { .. }) => tracing::warn!(error = %e, "catalog watch refused"),
            // The store is away: nothing changed meanwhile, so watch again from the same
            // revision a moment later (reads may still answer, from the store's last state).
            Err(e) => {
                if !std::mem::replace(&mut refused, true) {
                    tracing::warn!(error = %e, "catalog watch refused; trying again every 500 ms");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    () = cancel.cancelled() => return,
                }
            }
        }
        if let Err(e) = reload_tokens(&state).await {
            tracing::error!(error = %e, "cannot reload the tokens");
        }
        match load_catalog(store.as_ref()).await {
            Ok((fresh, next)) => {
                let mut c = state.catalog.write().unwrap_or_else(|p| p.into_inner());
                *c = fresh;
                state.fleet.push(&state.fleet.all_services(), &c);
                from = next;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the catalog");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = cancel.cancelled() => return,
                }
            }
        }
    }
}

/// Opens the store (`config.store`, else the embedded one in `config.data_dir`), binds
/// `config.listen`, and serves until cancelled.
pub async fn start(config: ManagerConfig) -> Result<RunningManager, StartError> {
    start_with_clock(config, Arc::new(executor::SystemClock)).await
}

/// Like [`start`], with the rollout executor reading the time from `clock` (tests move plans
/// through windows and caps on a clock of their own).
pub async fn start_with_clock(
    config: ManagerConfig,
    clock: Arc<dyn executor::Clock>,
) -> Result<RunningManager, StartError> {
    start_with(config, clock, Tuning::default()).await
}

/// Like [`start_with_clock`], with the listener's limits and the event log's retention.
pub async fn start_with(
    config: ManagerConfig,
    clock: Arc<dyn executor::Clock>,
    tuning: Tuning,
) -> Result<RunningManager, StartError> {
    // Read first: bad files are refused before anything is opened or written.
    let tls = config.tls.as_ref().map(Tls::load).transpose()?;
    let webhook_roots = match &config.webhook_ca {
        Some(path) => tls::ca_bundle(path)?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
    restrict(&config.data_dir, 0o700)?;
    let url = config.store.clone().unwrap_or_else(|| outrider_store::embedded_url(&config.data_dir));
    let store = outrider_store::open(&url).await.map_err(|source| StartError::Store { url: url.clone(), source })?;
    let repo = Repo::new(store.clone());
    ensure_default_tenant(&repo).await?;
    retention::migrate(&repo).await?;
    let reindexed = live_plans::rebuild(store.as_ref()).await?;
    if reindexed > 0 {
        tracing::info!(reindexed, "live-plan index rebuilt");
    }
    let auth = Auth::bootstrap(&repo, &config.data_dir).await?;
    restrict_files(&config.data_dir)?;
    let prometheus = match &config.prometheus {
        Some(url) => Some(
            outrider_prometheus::Client::new(url, PROMETHEUS_TIMEOUT)
                .map_err(|source| StartError::Prometheus { url: url.clone(), source })?,
        ),
        None => None,
    };
    let name = config.name.clone().unwrap_or_else(default_name);
    let presence = leadership::join(store.as_ref(), &name, config.leader_lease)
        .await?
        .ok_or_else(|| StartError::NameTaken { name: name.clone() })?;
    let metrics = Arc::new(Metrics::default());
    let fleet = Arc::new(Fleet::new(metrics.clone(), clock.clone(), name.clone(), leadership::shared(&presence)));
    let records = store.range(keys::INSTANCES).await?;
    fleet.load(records.kvs.iter().map(|kv| decode::<StoredInstance>(&kv.key, &kv.value)).collect::<Result<_, _>>()?);
    let (catalog, watch_from) = load_catalog(store.as_ref()).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let cancel = CancellationToken::new();
    let webhooks =
        Arc::new(Webhooks::new(tuning.webhooks, webhook_roots, metrics.clone(), clock.clone(), cancel.clone())?);
    let state = AppState {
        repo: repo.clone(),
        fleet: fleet.clone(),
        catalog: Arc::new(RwLock::new(catalog)),
        auth,
        metrics,
        wake,
        webhooks,
        clock,
    };

    let work = LeaderWork {
        state: state.clone(),
        prometheus,
        retention: tuning.retention,
        instances: config.instances,
        started: tokio::time::Instant::now(),
    };
    let (intake, intake_queue) = crate::fleet::queue();
    let background = vec![
        tokio::spawn(fleet.clone().run_intake(intake_queue, cancel.clone())),
        tokio::spawn(run_catalog_watch(state.clone(), watch_from, cancel.clone())),
        tokio::spawn(fleet.clone().run_flusher(repo, cancel.clone())),
        tokio::spawn(leadership::stay_present(
            store.clone(),
            name.clone(),
            config.leader_lease,
            presence,
            cancel.clone(),
        )),
        tokio::spawn(leadership::lead(work, name, config.leader_lease, cancel.clone())),
    ];
    // Only the gRPC service's own path speaks gRPC; every other path is the REST router's.
    let grpc = SyncServer::new(SyncService::new(state.clone(), intake));
    let grpc_prefix = format!("/{}/", <SyncServer<SyncService> as tonic::server::NamedService>::NAME);
    let (auth, metrics) = (state.auth.clone(), state.metrics.clone());
    let app = api::router(state).route_service(&format!("{grpc_prefix}{{*method}}"), grpc);
    let listen = |source| StartError::Listen { addr: config.listen, source };
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(listen)?;
    let addr = listener.local_addr().map_err(listen)?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), tls = tls.is_some(), "manager listening");
    let stop = cancel.clone();
    let task = tokio::spawn(serve::serve(listener, app, auth, metrics, tuning.serve, grpc_prefix, tls, stop));
    Ok(RunningManager { addr, cancel, fleet, task, background })
}
