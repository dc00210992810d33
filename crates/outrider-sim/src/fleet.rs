//! Many in-process agents: one real sync loop ([`outrider_agent::sync::run`]) per simulated
//! instance, each with its own [`SimRuntime`], sharing a few HTTP/2 connections.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use outrider_agent::{
    Runtime,
    sync::{self, SyncConfig, SyncStatus},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    sync::{Barrier, Mutex, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{Defect, Profile, SimError, SimInstance, SimRuntime, SimRuntimeOptions};

/// How a [`SimFleet`] runs its agents.
#[derive(Debug, Clone)]
pub struct SimFleetOptions {
    /// Agents that share one HTTP/2 connection (one stream each). The manager accepts 200
    /// concurrent streams per connection, so keep this at 200 or below.
    pub agents_per_connection: usize,
    /// Each agent reports on change and at least this often.
    pub report_interval: Duration,
    /// Behaviour of every agent's simulated runtime.
    pub runtime: SimRuntimeOptions,
    /// Time to establish one connection.
    pub connect_timeout: Duration,
    /// Defects injected into the instances they select.
    pub defects: Vec<Defect>,
    /// The traits of each service by name ([`FleetSpec::service_traits`]), which defects
    /// that select by trait look at; a service missing here has no trait.
    ///
    /// [`FleetSpec::service_traits`]: crate::FleetSpec::service_traits
    pub service_traits: BTreeMap<String, BTreeMap<String, String>>,
    /// Deploys per minute across the fleet: an instance picked at random (seeded) registers
    /// again with a new deploy id, as when its service is deployed (0: none).
    pub deploy_rate: f64,
    /// Seed of the deploy picks.
    pub seed: u64,
    /// The time of day on the fleet's daily load curve when it starts (0: midnight).
    pub time_of_day: Duration,
    /// A CA (PEM) trusted besides the system's roots for `https://` managers.
    pub ca: Option<Vec<u8>>,
}

impl Default for SimFleetOptions {
    /// 200 agents per connection, reports every 30 s, the default runtime, 5 s to connect,
    /// no defect.
    fn default() -> Self {
        Self {
            agents_per_connection: 200,
            report_interval: Duration::from_secs(30),
            runtime: SimRuntimeOptions::default(),
            connect_timeout: Duration::from_secs(5),
            defects: Vec::new(),
            service_traits: BTreeMap::new(),
            deploy_rate: 0.0,
            seed: 1,
            time_of_day: Duration::ZERO,
            ca: None,
        }
    }
}

impl SimFleetOptions {
    /// The defects that select `instance`.
    pub fn defects_of(&self, instance: &SimInstance) -> Vec<Defect> {
        if self.defects.is_empty() {
            return Vec::new();
        }
        let no_traits = BTreeMap::new();
        let traits = self.service_traits.get(&instance.service).unwrap_or(&no_traits);
        self.defects.iter().filter(|d| d.selects(instance, traits)).cloned().collect()
    }
}

/// One simulated agent of a [`SimFleet`].
#[derive(Debug)]
pub struct SimAgent {
    instance: SimInstance,
    status: watch::Receiver<SyncStatus>,
    runtime: Arc<SimRuntime>,
    run: Mutex<AgentRun>,
}

/// The sync loop an agent runs now, and what starting another takes.
#[derive(Debug)]
struct AgentRun {
    config: SyncConfig,
    /// The managers, the one it starts with first.
    channels: Vec<Channel>,
    status: watch::Sender<SyncStatus>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    deploys: u32,
}

impl AgentRun {
    /// Starts the sync loop under `parent`, tracked by `tasks`.
    fn start(&mut self, runtime: Arc<SimRuntime>, parent: &CancellationToken, tasks: &TaskTracker) {
        self.cancel = parent.child_token();
        let runtime: Arc<dyn Runtime> = runtime;
        let run =
            sync::run(self.config.clone(), self.channels.clone(), runtime, self.status.clone(), self.cancel.clone());
        self.task = Some(tasks.spawn(run));
    }
}

impl SimAgent {
    /// The instance it registers.
    pub fn instance(&self) -> &SimInstance {
        &self.instance
    }

    /// Its sync status (connected, the desired state last received). A fresh receiver each
    /// call, so callers can wait on it independently.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.clone()
    }

    /// Whether its sync stream is open.
    pub fn connected(&self) -> bool {
        self.status.borrow().connected
    }

    /// Deploys the instance: its sync loop ends and it registers again with a new deploy id
    /// (its simulated sidecars keep running, as on a host whose service is redeployed, and
    /// show the business process's cold start: [`SimRuntime::deployed`]).
    async fn deploy(&self, parent: &CancellationToken, tasks: &TaskTracker) {
        self.runtime.deployed();
        let mut run = self.run.lock().await;
        run.cancel.cancel();
        if let Some(task) = run.task.take() {
            let _ = task.await;
        }
        run.deploys += 1;
        run.config.deploy_id = format!("sim-deploy-{}", run.deploys);
        run.start(self.runtime.clone(), parent, tasks);
    }

    /// How many times the instance was deployed since the fleet started.
    pub async fn deploys(&self) -> u32 {
        self.run.lock().await.deploys
    }

    /// The version of `sidecar` in the desired state it holds, if any.
    pub fn desired_version(&self, sidecar: &str) -> Option<String> {
        desired_version(&self.status.borrow(), sidecar).map(str::to_owned)
    }

    /// Its simulated runtime.
    pub fn runtime(&self) -> &SimRuntime {
        &self.runtime
    }
}

/// The version of `sidecar` in the desired state of `status`.
fn desired_version<'a>(status: &'a SyncStatus, sidecar: &str) -> Option<&'a str> {
    status.desired.as_ref()?.sidecars.iter().find(|s| s.name == sidecar).map(|s| s.version.as_str())
}

/// A running simulated fleet. Dropping it stops the agents without waiting for them;
/// [`SimFleet::shutdown`] waits.
#[derive(Debug)]
pub struct SimFleet {
    agents: Arc<[SimAgent]>,
    connections: usize,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl SimFleet {
    /// Starts one agent per instance against the manager at `manager_url` (or several
    /// managers of one store, comma-separated: the agents are spread over them and move to the
    /// next when one fails), with `token`, in `tenant`; each instance's runtime gets the defects that select it and the
    /// [`Profile::of_service`] of its service. Connections are opened lazily by the agents'
    /// first requests. Must be called
    /// inside a Tokio runtime.
    pub fn start(
        manager_url: &str,
        token: &str,
        tenant: &str,
        instances: &[SimInstance],
        options: &SimFleetOptions,
    ) -> Result<Self, SimError> {
        let endpoints = manager_url
            .split(',')
            .map(|url| {
                let bad = |source| SimError::ManagerUrl { url: url.to_owned(), source };
                let mut endpoint = Endpoint::from_shared(url.trim().to_owned()).map_err(bad)?;
                if url.trim().starts_with("https://") {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(ca) = &options.ca {
                        tls = tls.ca_certificate(Certificate::from_pem(ca));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(bad)?;
                }
                Ok(endpoint
                    .connect_timeout(options.connect_timeout)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true))
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let per_connection = options.agents_per_connection.max(1);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut agents = Vec::with_capacity(instances.len());
        let mut channels: Option<Vec<Channel>> = None;
        let mut connections = 0;
        // The fleet's day is the same for every instance.
        let midnight =
            Profile::midnight_for(tokio::time::Instant::now(), options.time_of_day, Duration::from_secs(24 * 3600));
        for (index, instance) in instances.iter().enumerate() {
            if index % per_connection == 0 {
                channels = None;
            }
            // Each group of agents starts with the next manager; its connections to the
            // others open only when it moves there.
            let channels = channels.get_or_insert_with(|| {
                let first = connections % endpoints.len();
                connections += 1;
                (0..endpoints.len()).map(|i| endpoints[(first + i) % endpoints.len()].connect_lazy()).collect()
            });
            let runtime = Arc::new(
                SimRuntime::new(options.runtime, index as u64)
                    .with_defects(options.defects_of(instance))
                    .with_profile(Profile::of_service(&instance.service, midnight)),
            );
            let (tx, rx) = watch::channel(SyncStatus::default());
            let mut config = SyncConfig::new(
                Some(token.to_owned()),
                tenant.to_owned(),
                instance.id.clone(),
                instance.service.clone(),
                instance.labels.clone(),
            );
            config.report_interval = options.report_interval;
            // A claim derived from the instance: a redeploy (a new stream while the manager may
            // not have seen the old one end yet) and a later run of the same fleet take their
            // instances back; real agents, whose claims are random, cannot.
            config.claim = Some(format!("outrider-sim/{tenant}/{}", instance.id));
            let mut run = AgentRun {
                config,
                channels: channels.clone(),
                status: tx,
                cancel: cancel.child_token(),
                task: None,
                deploys: 0,
            };
            run.start(runtime.clone(), &cancel, &tasks);
            agents.push(SimAgent { instance: instance.clone(), status: rx, runtime, run: Mutex::new(run) });
        }
        let agents: Arc<[SimAgent]> = agents.into();
        if options.deploy_rate > 0.0 && !agents.is_empty() {
            let every = Duration::from_secs_f64(60.0 / options.deploy_rate.min(60_000.0));
            tasks.spawn(deploy_at_random(agents.clone(), every, options.seed, cancel.clone(), tasks.clone()));
        }
        tracing::info!(agents = agents.len(), connections, "simulated fleet started");
        Ok(Self { agents, connections, cancel, tasks })
    }

    /// The agents, in the order of the instances given to [`SimFleet::start`].
    pub fn agents(&self) -> &[SimAgent] {
        &self.agents
    }

    /// Deploys the instance of agent `index` (see [`SimAgent`]): it registers again with a
    /// new deploy id. Out of range: nothing.
    pub async fn deploy(&self, index: usize) {
        if let Some(agent) = self.agents.get(index) {
            agent.deploy(&self.cancel, &self.tasks).await;
        }
    }

    /// Serves `GET /metrics` on `addr` (`127.0.0.1:0` for a free port) until the fleet stops:
    /// the figures of every agent's last report, as the manager received them (see the
    /// crate docs for the names). Returns the bound address.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> Result<SocketAddr, SimError> {
        crate::metrics::serve(addr, self.agents.clone(), self.cancel.clone(), &self.tasks).await
    }

    /// HTTP/2 connections the agents share.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Agents whose sync stream is open now.
    pub fn connected(&self) -> usize {
        self.agents.iter().filter(|a| a.connected()).count()
    }

    /// Agents whose open sync stream has brought a desired state (synced again after a
    /// reconnect).
    pub fn synced(&self) -> usize {
        self.agents.iter().filter(|a| a.status.borrow().synced).count()
    }

    /// Agents whose desired state has `sidecar` at `version` now.
    pub fn holding(&self, sidecar: &str, version: &str) -> usize {
        self.agents.iter().filter(|a| desired_version(&a.status.borrow(), sidecar) == Some(version)).count()
    }

    /// Starts watching every agent for the moment its desired state first has `sidecar` at
    /// `version`; returns once every watcher is in place, so a change made afterwards is
    /// timed from the agents' side without missing an early arrival.
    pub async fn watch_arrivals(&self, sidecar: &str, version: &str) -> Arrivals {
        let ready = Arc::new(Barrier::new(self.agents.len() + 1));
        let mut watchers = JoinSet::new();
        for agent in self.agents.iter() {
            let mut status = agent.status();
            let (sidecar, version, ready) = (sidecar.to_owned(), version.to_owned(), ready.clone());
            watchers.spawn(async move {
                ready.wait().await;
                status.wait_for(|s| desired_version(s, &sidecar) == Some(version.as_str())).await.ok()?;
                Some(Instant::now())
            });
        }
        ready.wait().await;
        Arrivals { watchers, total: self.agents.len() }
    }

    /// Stops every agent and waits for their sync loops to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!(agents = self.agents.len(), "simulated fleet stopped");
    }
}

/// Deploys an agent picked at random every `every` until `cancel`.
async fn deploy_at_random(
    agents: Arc<[SimAgent]>,
    every: Duration,
    seed: u64,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        let pick = rng.random_range(0..agents.len());
        agents[pick].deploy(&cancel, &tasks).await;
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Watchers started by [`SimFleet::watch_arrivals`].
#[derive(Debug)]
pub struct Arrivals {
    watchers: JoinSet<Option<Instant>>,
    total: usize,
}

impl Arrivals {
    /// Waits until every agent holds the watched version and returns the instants they got
    /// it (in no particular order). Fails with [`SimError::Missing`] after `timeout`, naming
    /// how many agents did not get it.
    pub async fn wait(self, timeout: Duration) -> Result<Vec<Instant>, SimError> {
        let total = self.total;
        match self.wait_partial(timeout).await {
            (arrived, 0) => Ok(arrived),
            (_, missing) => Err(SimError::Missing { missing, total, waited: timeout }),
        }
    }

    /// Like [`Arrivals::wait`], but returns what arrived within `timeout` and how many agents
    /// are missing.
    pub async fn wait_partial(mut self, timeout: Duration) -> (Vec<Instant>, usize) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut arrived = Vec::with_capacity(self.total);
        loop {
            match tokio::time::timeout_at(deadline, self.watchers.join_next()).await {
                Ok(Some(Ok(Some(at)))) => arrived.push(at),
                // A watcher whose agent stopped, or that panicked: counted as missing.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break,
            }
        }
        let missing = self.total - arrived.len();
        (arrived, missing)
    }
}
