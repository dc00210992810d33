//! The live fleet: every registered instance, its connection, what it reports, and the
//! desired state last pushed to it. Instance records are persisted write-behind, in batches,
//! so thousands of agents reporting at once cost a few store transactions, not thousands.
//!
//! When several managers share the store, each holds the streams of its own agents and
//! writes their records; the records of the others' agents come in from the store's watch
//! ([`remote`]), so every manager — the leader's executor above all — sees the whole fleet.

mod intake;
mod remote;
mod retention;

pub use intake::{Heard, Intake, IntakeQueue, Said, queue};
pub use retention::InstanceRetention;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use outrider_model::{
    DesiredSidecar, DesiredState, Instance, InstanceFilter, InstanceLabels, SidecarStatus, UpgradeMode, validate_name,
};
use outrider_store::Op;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    catalog::{Catalog, ServiceRef, TenantCatalog},
    clock::Clock,
    history::History,
    keys,
    metrics::Metrics,
    repo::{NewEvent, Repo, encode},
    told::Told,
};

/// Delay before writing instance records when a deploy is among them.
const URGENT_FLUSH: Duration = Duration::from_millis(20);
/// Least delay before writing status-only changes of instance records.
const STATUS_FLUSH: Duration = Duration::from_secs(3);
/// Status-only writes take at most one part in this many of the time.
const STATUS_FLUSH_SHARE: u32 = 10;

/// What an agent says when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Tenant.
    pub tenant: String,
    /// Instance id.
    pub instance: String,
    /// Service.
    pub service: String,
    /// Labels.
    pub labels: InstanceLabels,
    /// Deploy id.
    pub deploy_id: String,
    /// What it runs now.
    pub sidecars: Vec<SidecarStatus>,
    /// The SHA-256 of the agent's instance claim (none: an agent that sends none).
    pub claim: Option<String>,
    /// The claim hash the store holds for an instance this manager has not seen (another
    /// manager's record).
    pub stored_claim: Option<String>,
    /// Who opened the stream (the token's name): its revocation ends the stream.
    pub opened_by: String,
}

/// A live sync stream of one instance.
#[derive(Debug)]
pub struct Connection {
    /// Identifies this stream among reconnects of the same instance.
    pub id: u64,
    /// Desired state pushes (latest value wins: snapshots, never deltas).
    pub desired: watch::Receiver<Arc<Told>>,
    /// Whether this registration counted as a deploy.
    pub deploy: bool,
}

struct Entry {
    record: Instance,
    conn: Option<(u64, watch::Sender<Arc<Told>>)>,
    /// The desired state last sent, kept across disconnects (on-deploy targets depend on it).
    last_told: Option<Arc<DesiredState>>,
    /// Changed since last written to the store.
    dirty: bool,
    /// When it last deployed, as seen by this manager.
    deployed_at: Option<OffsetDateTime>,
    /// Its recent samples, while a live plan watches its service.
    history: Option<Box<History>>,
    /// The SHA-256 of the claim of the agent that holds it (persisted with the record).
    claim: Option<String>,
    /// Who opened the live stream (a token's name).
    opened_by: Option<String>,
    /// The other manager that holds its stream, from the record that manager wrote.
    owner: Option<String>,
    /// Since when its owner is known to be dead (its agent counts as away from then on).
    orphaned_at: Option<OffsetDateTime>,
}

impl Entry {
    fn new(record: Instance, claim: Option<String>) -> Self {
        Self {
            record,
            conn: None,
            last_told: None,
            dirty: false,
            deployed_at: None,
            history: None,
            claim,
            opened_by: None,
            owner: None,
            orphaned_at: None,
        }
    }
}

/// Whether a new stream may take instance `id` over from what holds it: a live stream or a
/// recorded claim yields only to the same claim (an agent restarted on its data dir, or a
/// reconnect after a half-open connection).
fn may_take_over(id: &str, live: bool, held: Option<&str>, given: Option<&str>) -> Result<(), Error> {
    match (held, given) {
        (Some(h), Some(g)) if h == g => Ok(()),
        (None, _) if !live => Ok(()),
        _ => Err(Error::forbidden(format!(
            "instance {id:?} is held by another agent{}; an agent keeps its claim in its data dir. If the \
             old agent is gone for good, delete the instance (`outrider instance delete {id}` once it is \
             disconnected) to free its id",
            if live { " that is connected" } else { "" }
        ))),
    }
}

#[derive(Default)]
struct Inner {
    /// tenant → instance id → entry (nested so lookups borrow `&str`: no allocation per
    /// ack or report).
    instances: HashMap<String, HashMap<String, Entry>>,
    by_service: HashMap<ServiceRef, BTreeSet<String>>,
    events: Vec<NewEvent>,
    /// Records to delete from the store (instances removed after their retention).
    removed: Vec<(String, String)>,
    next_conn: u64,
    /// Services whose instances keep a history of samples (a live plan judges them).
    watched: HashSet<ServiceRef>,
    /// The watched services changed and other managers must learn it.
    watched_dirty: bool,
    /// A record the other managers' executor waits for changed (a connect, a disconnect, a
    /// new version or state): write it within [`URGENT_FLUSH`].
    urgent: bool,
}

/// Whether and how soon a change of an instance record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Not by itself.
    No,
    /// With the next status flush.
    Later,
    /// What it runs changed: with several managers, within [`URGENT_FLUSH`].
    Soon,
}

/// The registry of instances.
pub struct Fleet {
    inner: Mutex<Inner>,
    flush: Notify,
    /// Poked when what instances report changes (the executor's judge looks again).
    observed: Notify,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// This manager's name in the records it writes.
    me: String,
    /// Other managers share the store (their agents' records come from its watch).
    shared: bool,
}

/// Desired sidecars of one instance. `on-deploy` bindings keep the version the instance was
/// last told (or runs) until it deploys; a defective version is replaced by its recall
/// target unless the instance runs it already.
fn instance_desired(
    tc: &TenantCatalog,
    service_desired: &[DesiredSidecar],
    record: &Instance,
    previous: Option<&DesiredState>,
    deploy: bool,
) -> Vec<DesiredSidecar> {
    let mut out = service_desired.to_vec();
    // A plan's record of this instance first, else its cell's target (an instance that joined
    // an upgraded cell since: a rescheduled pod, a scale-up).
    let overridden: Vec<(&str, &str, UpgradeMode)> =
        tc.overrides_of(&record.service, &record.id).map(|(s, o)| (s, o.version.as_str(), o.mode)).collect();
    for d in &mut out {
        let target =
            overridden.iter().find(|(s, _, _)| *s == d.name).map(|(_, v, m)| (*v, *m)).or_else(|| {
                tc.target_for(&record.service, &record.labels, &d.name).map(|t| (t.version.as_str(), t.mode))
            });
        if let Some((version, mode)) = target
            && let Some(mut changed) = tc.desired_at_version(d, version)
        {
            changed.mode = mode;
            *d = changed;
        }
    }
    if !deploy {
        for d in out.iter_mut().filter(|d| d.mode == UpgradeMode::OnDeploy) {
            let told = previous.and_then(|p| p.sidecars.iter().find(|s| s.name == d.name)).map(|s| s.version.as_str());
            let runs = record.sidecars.iter().find(|s| s.name == d.name).map(|s| s.version.as_str());
            if let Some(keep) = told.or(runs)
                && keep != d.version
                && let Some(kept) = tc.desired_at_version(d, keep)
            {
                *d = kept;
            }
        }
    }
    // A defective version reaches no instance that does not run it already: its recall
    // target stands in (those running it wait for the recall plan).
    for d in &mut out {
        let runs = record.sidecars.iter().any(|s| s.name == d.name && s.version == d.version);
        if !runs
            && let Some(to) = tc.recalled_to(&d.name, &d.version)
            && let Some(recalled) = tc.desired_at_version(d, to)
        {
            *d = recalled;
        }
    }
    out
}

fn material(a: &[SidecarStatus], b: &[SidecarStatus]) -> bool {
    a.len() != b.len()
        || a.iter().zip(b).any(|(x, y)| {
            (&x.name, &x.version, x.state, x.pid, x.restarts, &x.error)
                != (&y.name, &y.version, y.state, y.pid, y.restarts, &y.error)
        })
}

impl Fleet {
    /// An empty fleet of the manager named `me`, whose samples are stamped by `clock`;
    /// `shared`: other managers share the store.
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>, me: String, shared: bool) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            flush: Notify::new(),
            observed: Notify::new(),
            metrics,
            clock,
            me,
            shared,
        }
    }

    /// Whether other managers share the store.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads persisted instance records: disconnected until their agents come back, unless
    /// another manager that shares the store holds their stream.
    pub fn load(&self, records: Vec<StoredInstance>) {
        let mut g = self.lock();
        for StoredInstance { tenant, instance: mut record, owner, claim } in records {
            let owner = owner.filter(|o| self.shared && *o != self.me);
            record.connected = owner.is_some() && record.connected;
            g.by_service.entry((tenant.clone(), record.service.clone())).or_default().insert(record.id.clone());
            let mut entry = Entry::new(record, claim);
            entry.owner = owner;
            g.instances.entry(tenant).or_default().insert(entry.record.id.clone(), entry);
        }
    }

    /// Registers an instance's sync stream and computes its first desired state.
    pub fn connect(&self, reg: Registration, catalog: &Catalog) -> Result<Connection, Error> {
        validate_name("instance", &reg.instance)?;
        reg.labels.validate()?;
        let tc = catalog.tenant(&reg.tenant).ok_or_else(|| Error::not_found(format!("tenant {:?}", reg.tenant)))?;
        if !tc.has_service(&reg.service) {
            return Err(Error::not_found(format!("service {:?} in tenant {:?}", reg.service, reg.tenant)));
        }
        let now = OffsetDateTime::now_utc();
        let mut g = self.lock();
        match g.instances.get(&reg.tenant).and_then(|m| m.get(&reg.instance)) {
            Some(held) => {
                // Held here, or by another manager that is alive.
                let live = held.conn.is_some()
                    || (held.owner.is_some() && held.orphaned_at.is_none() && held.record.connected);
                may_take_over(&reg.instance, live, held.claim.as_deref(), reg.claim.as_deref())?
            }
            None => may_take_over(&reg.instance, false, reg.stored_claim.as_deref(), reg.claim.as_deref())?,
        }
        g.next_conn += 1;
        let conn_id = g.next_conn;
        let previous = g.instances.get_mut(&reg.tenant).and_then(|m| m.remove(&reg.instance));
        let deploy = previous.as_ref().is_none_or(|p| p.record.deploy_id != reg.deploy_id);
        if let Some(p) = &previous
            && p.record.service != reg.service
            && let Some(ids) = g.by_service.get_mut(&(reg.tenant.clone(), p.record.service.clone()))
        {
            ids.remove(&reg.instance);
        }
        let last_told = previous.as_ref().and_then(|p| p.last_told.clone());
        let claim = previous.as_ref().and_then(|p| p.claim.clone());
        let replaced = previous.as_ref().is_some_and(|p| p.conn.is_some());
        let record = Instance {
            id: reg.instance.clone(),
            service: reg.service.clone(),
            labels: reg.labels,
            deploy_id: reg.deploy_id.clone(),
            connected: true,
            gone: false,
            last_seen: now,
            desired_revision: catalog.revision,
            acked_revision: previous.as_ref().map_or(0, |p| p.record.acked_revision),
            sidecars: reg.sidecars,
        };
        let desired = DesiredState {
            revision: catalog.revision,
            sidecars: instance_desired(
                tc,
                &tc.desired_for_service(&reg.service),
                &record,
                last_told.as_deref(),
                deploy,
            ),
        };
        let desired = Arc::new(desired);
        let (tx, rx) = watch::channel(Told::new(desired.clone()));
        g.by_service.entry((reg.tenant.clone(), reg.service.clone())).or_default().insert(reg.instance.clone());
        if deploy {
            let agent = format!("agent:{}", reg.instance);
            let reason = if previous.is_some() { "new deploy id" } else { "new instance" };
            let event = NewEvent::new(&reg.tenant, "instance.deployed", &agent, format!("instance/{}", reg.instance))
                .reason(reason)
                .detail(serde_json::json!({"service": reg.service, "deploy_id": reg.deploy_id}));
            g.events.push(event);
        }
        let watched = g.watched.contains(&(reg.tenant.clone(), reg.service.clone()));
        let (deployed_at, history) = match previous {
            Some(p) if !deploy => (p.deployed_at, p.history),
            _ => (Some(self.clock.now()), None),
        };
        let history = history.or_else(|| watched.then(Box::default));
        let entry = Entry {
            record,
            conn: Some((conn_id, tx)),
            last_told: Some(desired),
            dirty: true,
            deployed_at,
            history,
            claim: reg.claim.or(claim),
            opened_by: Some(reg.opened_by),
            owner: None,
            orphaned_at: None,
        };
        g.instances.entry(reg.tenant.clone()).or_default().insert(reg.instance.clone(), entry);
        g.urgent |= self.shared;
        drop(g);
        // A reconnect that replaces a live stream keeps the count: the old stream's end is
        // ignored by `disconnect` (its id no longer matches).
        if !replaced {
            self.metrics.agents_connected.inc();
        }
        self.flush.notify_one();
        self.observed.notify_one();
        Ok(Connection { id: conn_id, desired: rx, deploy })
    }

    /// Resolves when an instance connected, disconnected or reported something new since the
    /// last call (one waiter: the executor).
    pub async fn observed(&self) {
        self.observed.notified().await;
    }

    /// Whether this manager has a record of `id` in `tenant`.
    pub fn knows(&self, tenant: &str, id: &str) -> bool {
        self.lock().instances.get(tenant).is_some_and(|m| m.contains_key(id))
    }

    /// Ends every sync stream opened by `name` (a revoked token); returns how many.
    pub fn close_opened_by(&self, name: &str) -> usize {
        let mut g = self.lock();
        let mut closed = 0;
        for e in g.instances.values_mut().flat_map(HashMap::values_mut) {
            if e.conn.is_some() && e.opened_by.as_deref() == Some(name) {
                e.conn = None;
                e.opened_by = None;
                e.record.connected = false;
                e.dirty = true;
                closed += 1;
            }
        }
        drop(g);
        if closed > 0 {
            self.metrics.agents_connected.dec_by(closed as i64);
            self.flush.notify_one();
            self.observed.notify_one();
        }
        closed
    }

    /// Recomputes and pushes the desired state of every connected instance of `touched`.
    pub fn push(&self, touched: &BTreeSet<ServiceRef>, catalog: &Catalog) {
        let revision = catalog.revision;
        let mut pushed = 0u64;
        let mut g = self.lock();
        let inner = &mut *g;
        for svc in touched {
            let Some(tc) = catalog.tenant(&svc.0) else { continue };
            let (Some(ids), Some(entries)) = (inner.by_service.get(svc), inner.instances.get_mut(&svc.0)) else {
                continue;
            };
            let service_desired = tc.desired_for_service(&svc.1);
            let per_instance = tc.has_overrides(&svc.1)
                || service_desired
                    .iter()
                    .any(|d| d.mode == UpgradeMode::OnDeploy || tc.recalled_to(&d.name, &d.version).is_some());
            // Instances without an on-deploy adjustment share one snapshot, and most of them
            // share their previous one too: compare each distinct previous snapshot once.
            let shared = Told::new(Arc::new(DesiredState { revision, sidecars: service_desired }));
            let mut last_compared: Option<(*const Told, bool)> = None;
            for id in ids {
                let Some(e) = entries.get_mut(id) else { continue };
                let Some((_, tx)) = &e.conn else { continue };
                let current = tx.borrow().clone();
                let desired = if per_instance {
                    let sidecars =
                        instance_desired(tc, &shared.state().sidecars, &e.record, Some(current.state()), false);
                    if sidecars == current.state().sidecars {
                        continue;
                    }
                    if sidecars == shared.state().sidecars {
                        shared.clone()
                    } else {
                        Told::new(Arc::new(DesiredState { revision, sidecars }))
                    }
                } else {
                    let unchanged = match last_compared {
                        Some((ptr, same)) if std::ptr::eq(ptr, Arc::as_ptr(&current)) => same,
                        _ => {
                            let same = current.state().sidecars == shared.state().sidecars;
                            last_compared = Some((Arc::as_ptr(&current), same));
                            same
                        }
                    };
                    if unchanged {
                        continue;
                    }
                    shared.clone()
                };
                e.record.desired_revision = revision;
                e.last_told = Some(desired.state().clone());
                tx.send_replace(desired);
                pushed += 1;
            }
        }
        drop(g);
        self.metrics.desired_pushes.inc_by(pushed);
    }

    /// Calls `f` with every instance of one service (records as last reported), under the
    /// fleet's lock: `f` must not call back into the fleet.
    pub fn for_each_of_service(&self, tenant: &str, service: &str, f: &mut dyn FnMut(&Instance)) {
        let g = self.lock();
        let (Some(ids), Some(entries)) =
            (g.by_service.get(&(tenant.to_owned(), service.to_owned())), g.instances.get(tenant))
        else {
            return;
        };
        ids.iter().filter_map(|id| entries.get(id)).for_each(|e| f(&e.record));
    }

    /// Keeps a history of samples for the instances of `services`, and drops it for the others
    /// (the executor calls it with the services its live plans judge).
    pub fn watch(&self, services: HashSet<ServiceRef>) {
        self.set_watched(services, self.shared);
    }

    /// Sets the watched services; `tell`: write them for the other managers.
    fn set_watched(&self, services: HashSet<ServiceRef>, tell: bool) {
        let mut g = self.lock();
        let inner = &mut *g;
        if inner.watched == services {
            return;
        }
        for ((tenant, service), ids) in &inner.by_service {
            let key = (tenant.clone(), service.clone());
            let keep = services.contains(&key);
            if keep == inner.watched.contains(&key) {
                continue;
            }
            let Some(entries) = inner.instances.get_mut(tenant) else { continue };
            for id in ids {
                if let Some(e) = entries.get_mut(id) {
                    e.history = keep.then(Box::default);
                }
            }
        }
        inner.watched = services;
        if tell {
            inner.watched_dirty = true;
            drop(g);
            self.flush.notify_one();
        }
    }

    /// Calls `f` with the history of `instance`, if it keeps one.
    pub fn with_history(&self, tenant: &str, instance: &str, f: &mut dyn FnMut(&History)) {
        self.with_history_or_none(tenant, instance, &mut |h| {
            if let Some(h) = h {
                f(h);
            }
        });
    }

    /// Calls `f` once with the history of `instance`, or `None` when it keeps none.
    pub fn with_history_or_none(&self, tenant: &str, instance: &str, f: &mut dyn FnMut(Option<&History>)) {
        let g = self.lock();
        f(g.instances.get(tenant).and_then(|m| m.get(instance)).and_then(|e| e.history.as_deref()));
    }

    /// When `instance` last deployed, as this manager saw it.
    pub fn deployed_at(&self, tenant: &str, instance: &str) -> Option<OffsetDateTime> {
        self.lock().instances.get(tenant).and_then(|m| m.get(instance)).and_then(|e| e.deployed_at)
    }

    /// Every instance of a tenant (records as last reported).
    pub fn of_tenant(&self, tenant: &str) -> Vec<Instance> {
        self.list(tenant, &InstanceFilter::default())
    }

    /// Every (tenant, service) with registered instances.
    pub fn all_services(&self) -> BTreeSet<ServiceRef> {
        self.lock().by_service.keys().cloned().collect()
    }

    /// Ends every sync stream (manager shutdown); agents reconnect to the next manager.
    pub fn close_all(&self) {
        let mut g = self.lock();
        let mut closed = 0;
        for e in g.instances.values_mut().flat_map(HashMap::values_mut) {
            if e.conn.take().is_some() {
                e.record.connected = false;
                closed += 1;
            }
        }
        drop(g);
        self.metrics.agents_connected.dec_by(closed);
    }

    /// Instances of `tenant` that match `filter`, by id.
    pub fn list(&self, tenant: &str, filter: &InstanceFilter) -> Vec<Instance> {
        let g = self.lock();
        let Some(entries) = g.instances.get(tenant) else { return Vec::new() };
        let mut out: Vec<Instance> =
            entries.values().filter(|e| filter.matches(&e.record)).map(|e| e.record.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Instances per running version of `sidecar` in `tenant`.
    pub fn distribution(&self, tenant: &str, sidecar: &str) -> Vec<(String, u64)> {
        let g = self.lock();
        let mut counts: HashMap<String, u64> = HashMap::new();
        for e in g.instances.get(tenant).into_iter().flat_map(HashMap::values) {
            for s in e.record.sidecars.iter().filter(|s| s.name == sidecar) {
                *counts.entry(s.version.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| {
            let parse = |s: &str| semver::Version::parse(s).ok();
            parse(&b.0).cmp(&parse(&a.0)).then_with(|| a.0.cmp(&b.0))
        });
        v
    }

    /// Writes dirty records and pending events until `cancel`, batching what accumulates.
    pub async fn run_flusher(self: Arc<Self>, repo: Repo, cancel: CancellationToken) {
        // Status-only changes wait at least STATUS_FLUSH, and long enough that writing them
        // takes at most 1/STATUS_FLUSH_SHARE of the time (100,000 records take seconds).
        let mut status_wait = STATUS_FLUSH;
        loop {
            let mut stop = tokio::select! {
                () = self.flush.notified() => false,
                () = cancel.cancelled() => true,
            };
            // Let a burst gather into one transaction. Deploys (which carry events and decide
            // on-deploy targets after a restart) are written within ~20 ms, even while
            // status-only changes wait; those wait longer so that writing them never competes
            // with a push to thousands of agents.
            if !stop {
                let start = tokio::time::Instant::now();
                let mut due = start + if self.is_urgent() { URGENT_FLUSH } else { status_wait };
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => break,
                        () = self.flush.notified() => {
                            if self.is_urgent() {
                                due = due.min(tokio::time::Instant::now() + URGENT_FLUSH);
                            }
                        }
                        // Shutting down: write what is pending now, then stop.
                        () = cancel.cancelled() => {
                            stop = true;
                            break;
                        }
                    }
                }
            }
            let started = tokio::time::Instant::now();
            match self.flush_once(&repo).await {
                Ok(written) => {
                    if written > 0 {
                        status_wait = STATUS_FLUSH.max(started.elapsed() * STATUS_FLUSH_SHARE);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "instance records not persisted; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.flush.notify_one();
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Whether something pending must be written within [`URGENT_FLUSH`].
    fn is_urgent(&self) -> bool {
        let g = self.lock();
        !g.events.is_empty() || g.urgent
    }

    /// Writes what is pending; returns how many instance records it wrote.
    async fn flush_once(&self, repo: &Repo) -> Result<usize, Error> {
        let records = {
            let mut g = self.lock();
            let mut records = Vec::new();
            for (tenant, entries) in &mut g.instances {
                for e in entries.values_mut().filter(|e| e.dirty) {
                    e.dirty = false;
                    let owner = e.conn.is_some().then(|| self.me.clone());
                    records.push(StoredInstance {
                        tenant: tenant.clone(),
                        instance: e.record.clone(),
                        owner,
                        claim: e.claim.clone(),
                    });
                }
            }
            let watched = std::mem::take(&mut g.watched_dirty).then(|| remote::watched_list(&g.watched));
            g.urgent = false;
            (records, std::mem::take(&mut g.events), std::mem::take(&mut g.removed), watched)
        };
        let (records, events, removed, watched) = (records.0, records.1, records.2, records.3);
        // One group per record, and per event (its log and index entries commit together).
        let mut groups = Vec::with_capacity(records.len() + events.len() + removed.len());
        for (tenant, id) in &removed {
            groups.push(vec![Op::delete(keys::instance(tenant, id))]);
        }
        for stored in &records {
            groups.push(vec![Op::put(keys::instance(&stored.tenant, &stored.instance.id), encode(stored)?)]);
        }
        for e in events.iter().cloned() {
            groups.push(repo.event_ops(e)?);
        }
        if let Some(list) = &watched {
            groups.push(vec![Op::put(keys::WATCHED, encode(list)?)]);
        }
        let limit = repo.store().max_txn_ops().clamp(1, 2000);
        for chunk in Op::batches(groups, limit) {
            if let Err(e) = repo.commit(Vec::new(), chunk, Vec::new()).await {
                // Put everything back so nothing is lost.
                let mut g = self.lock();
                for r in &records {
                    if let Some(e) = g.instances.get_mut(&r.tenant).and_then(|m| m.get_mut(&r.instance.id)) {
                        e.dirty = true;
                    }
                }
                g.events.extend(events);
                g.removed.extend(removed);
                g.watched_dirty |= watched.is_some();
                return Err(e);
            }
        }
        Ok(records.len())
    }
}

/// An instance record as persisted: the instance plus its tenant.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredInstance {
    /// Tenant.
    pub tenant: String,
    /// The instance.
    #[serde(flatten)]
    pub instance: Instance,
    /// The manager that holds its stream (none while no agent is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The SHA-256 of the claim of the agent that holds it (none: an agent that sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio_util::sync::CancellationToken;

    use super::{Fleet, Registration, STATUS_FLUSH, URGENT_FLUSH, may_take_over, remote::tests::catalog};
    use crate::{clock::SystemClock, keys, metrics::Metrics, repo::Repo, test_store::TestStore};

    fn registration(instance: &str, deploy_id: &str) -> Registration {
        Registration {
            tenant: "t".into(),
            instance: instance.into(),
            service: "s".into(),
            labels: super::remote::tests::labels(),
            deploy_id: deploy_id.into(),
            sidecars: Vec::new(),
            claim: Some(format!("claim of {instance}")),
            stored_claim: None,
            opened_by: "agent".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deploy_is_written_promptly_even_while_status_changes_wait() {
        let store = Arc::new(TestStore::new());
        let fleet = Arc::new(Fleet::new(Arc::new(Metrics::default()), Arc::new(SystemClock), "m1".into(), false));
        let cancel = CancellationToken::new();
        let flusher = tokio::spawn(fleet.clone().run_flusher(Repo::new(store.clone()), cancel.clone()));
        let catalog = catalog();
        let settle = |d: Duration| async move {
            tokio::time::sleep(d).await;
            tokio::task::yield_now().await;
        };
        let _a = fleet.connect(registration("i-1", "d1"), &catalog).unwrap();
        settle(URGENT_FLUSH * 2).await;
        assert_eq!(store.writes_of(&keys::instance("t", "i-1")), 1, "a new instance is a deploy: written at once");
        // The same agent reconnects with the same deploy: status only, which waits.
        let _b = fleet.connect(registration("i-1", "d1"), &catalog).unwrap();
        settle(STATUS_FLUSH / 3).await;
        assert_eq!(store.writes_of(&keys::instance("t", "i-1")), 1, "a status-only change waits");
        // A deploy during that wait is written within the urgent delay, with the status change.
        let _c = fleet.connect(registration("i-2", "d1"), &catalog).unwrap();
        settle(URGENT_FLUSH * 2).await;
        assert_eq!(store.writes_of(&keys::instance("t", "i-2")), 1, "the deploy did not wait for the status delay");
        assert_eq!(store.writes_of(&keys::instance("t", "i-1")), 2);
        cancel.cancel();
        flusher.await.unwrap();
    }

    #[test]
    fn only_the_holder_s_claim_takes_a_held_instance() {
        // (live stream, recorded claim, claim shown) → accepted
        let cases = [
            (false, None, None, true),
            (false, None, Some("c"), true),
            (true, None, None, false),
            (true, None, Some("c"), false),
            (true, Some("c"), Some("c"), true),
            (true, Some("c"), Some("d"), false),
            (true, Some("c"), None, false),
            (false, Some("c"), Some("c"), true),
            (false, Some("c"), Some("d"), false),
            (false, Some("c"), None, false),
        ];
        for (live, held, given, accepted) in cases {
            let r = may_take_over("i-1", live, held, given);
            assert_eq!(r.is_ok(), accepted, "live {live}, held {held:?}, given {given:?}");
            if let Err(e) = r {
                assert_eq!(e.code(), "forbidden");
                assert!(e.to_string().contains("outrider instance delete i-1"), "{e}");
            }
        }
    }
}
