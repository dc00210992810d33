//! The rollout executor: the loop around the reconciler (`outrider_rollout::reconcile`). It
//! keeps every plan with the time it is next due, and for each due plan takes a snapshot view
//! (catalog mirror, live fleet, freezes), asks the reconciler for the next step, and commits
//! the step — the plan with compare-and-swap, together with its overrides and events, in one
//! transaction, or, for a step longer than the store takes at once, as a chunked write whose
//! plan and events come last (`crate::chunked`). A manager that restarts finishes a step it
//! left midway, then reads where every plan was and continues: no batch is applied twice, and
//! none is skipped.
//!
//! Between steps it sleeps until the earliest due time, a wake-up (an API action, a change of
//! the catalog or the freezes), or — while a batch is in flight — new reports from its
//! instances. A plan waiting on a window costs nothing until the window opens.

mod on_fail;
mod queries;
mod view;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use outrider_model::{Plan, PlanState, Version};
use outrider_rollout::reconcile::{self, Step, Write};
use outrider_store::{Compare, Op};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use view::TenantView;

use crate::{
    Error,
    catalog::Catalog,
    chunked::{self, Chunked},
    fleet::Fleet,
    keys, live_plans,
    metrics::Metrics,
    repo::{NewEvent, Repo, decode, encode},
};

pub use crate::clock::{Clock, SystemClock};

/// After the manager starts, the executor waits this long before acting on plans: instance
/// records read from the store may lag what the agents run (status writes are batched), and
/// reconnecting agents report the truth within a second or two. Acting earlier could leave
/// out an instance whose stored record is behind.
pub const SETTLE: Duration = Duration::from_secs(5);

/// The wait of a manager that takes over the lead after following the store for [`SETTLE`]
/// or more: its fleet is current but for the dead leader's agents, which reconnect to the
/// managers left within a second or so and whose records are then written at once.
pub const TAKEOVER_SETTLE: Duration = Duration::from_secs(2);

/// Reports of a batch's instances are gathered this long before the judge looks again.
const OBSERVE_COALESCE: Duration = Duration::from_millis(200);

/// The longest sleep: the plans are reread from the store this often even when nothing
/// woke the executor (a safety net; wake-ups do the work).
const RESYNC: Duration = Duration::from_secs(30);

/// How long a plan waits for the catalog mirror to catch up with its last write.
const CATALOG_LAG: Duration = Duration::from_millis(10);

/// After a failed commit, the plan is tried again this much later.
const RETRY: Duration = Duration::from_secs(1);

/// What the executor reads and writes.
pub struct Executor {
    /// Typed store access.
    pub repo: Repo,
    /// The catalog mirror (overrides and freezes included).
    pub catalog: Arc<RwLock<Catalog>>,
    /// The live fleet.
    pub fleet: Arc<Fleet>,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Poked by API actions and catalog changes.
    pub wake: Arc<Notify>,
    /// Steps and commits are counted here.
    pub metrics: Arc<Metrics>,
    /// Where the plans' analysis queries run (`--prometheus`).
    pub prometheus: Option<outrider_prometheus::Client>,
    /// Holds while this manager leads: every step commits only with it (none: the manager is
    /// alone on its store).
    pub fence: Option<Compare>,
    /// How long to wait before acting on plans ([`SETTLE`] after a start).
    pub settle: Duration,
}

/// A plan the executor follows.
struct Tracked {
    tenant: String,
    revision: u64,
    plan: Plan,
    /// When to step it next; `None`: only after a wake-up.
    due: Option<OffsetDateTime>,
}

impl Tracked {
    fn watches_fleet(&self) -> bool {
        reconcile::needs_observations(&self.plan)
    }
}

/// Which plans to look at after a wake-up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Only those whose due time has come.
    Due,
    /// Reread the plans; new or changed ones are due.
    Reread,
    /// Reread the plans; every live one is due (its inputs may have changed).
    All,
    /// Those with a batch in flight (their instances reported).
    InFlight,
}

impl Executor {
    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(self.settle) => {}
            () = cancel.cancelled() => return,
        }
        let mut plans: HashMap<String, Tracked> = HashMap::new();
        let mut look = Look::All;
        loop {
            let now = self.clock.now();
            if matches!(look, Look::Reread | Look::All) {
                if let Err(e) = self.reread(&mut plans, now, look == Look::All).await {
                    tracing::warn!(error = %e, "cannot read the plans; retrying");
                }
            } else if look == Look::InFlight {
                plans.values_mut().filter(|t| t.watches_fleet()).for_each(|t| t.due = Some(now));
            }
            for (key, t) in &mut plans {
                if t.due.is_some_and(|d| d <= now) {
                    self.step(key, t, now).await;
                }
            }
            self.watch(&plans);
            let in_flight = plans.values().any(Tracked::watches_fleet);
            let next = plans.values().filter_map(|t| t.due).min();
            let sleep = next.map_or(RESYNC, |d| {
                let left = d - self.clock.now();
                Duration::try_from(left).unwrap_or(Duration::ZERO).min(RESYNC)
            });
            look = tokio::select! {
                () = tokio::time::sleep(sleep) => if next.is_some() { Look::Due } else { Look::Reread },
                () = self.wake.notified() => Look::All,
                () = self.fleet.observed(), if in_flight => {
                    tokio::time::sleep(OBSERVE_COALESCE).await;
                    Look::InFlight
                }
                () = cancel.cancelled() => return,
            };
        }
    }

    /// Tells the fleet which services' instances keep samples: those live plans judge soon.
    fn watch(&self, plans: &HashMap<String, Tracked>) {
        let services = plans
            .values()
            .flat_map(|t| reconcile::judged_services(&t.plan).map(|s| (t.tenant.clone(), s.to_owned())))
            .collect();
        self.fleet.watch(services);
    }

    /// Rereads the plans that are not done (decoding only those that changed; done plans
    /// leave the map), after finishing long writes found under way; changed ones, or with
    /// `all` every one, are due now.
    async fn reread(&self, plans: &mut HashMap<String, Tracked>, now: OffsetDateTime, all: bool) -> Result<(), Error> {
        // A write longer than one transaction left midway (a manager stopped, a store
        // outage) is finished first: the plan it writes moves on from there. One this process
        // is writing (an operator's rollback) is left to its writer, and one that cannot be
        // finished now is tried again: their plans are looked at a little later (the writer
        // of an operator action wakes the executor when done).
        let busy = chunked::finish_found(&self.repo, &self.fence()).await?;
        let due_at = |tenant: &str, plan: &Plan| {
            let under_way = busy.contains(&keys::plan_write(tenant, &plan.id));
            reconcile::is_live(plan.state).then_some(if under_way { now + RETRY } else { now })
        };
        let live = live_plans::all(self.repo.store().as_ref()).await?;
        let mut seen = HashMap::with_capacity(live.len());
        for kv in &live {
            seen.insert(kv.key.as_str(), ());
            match plans.get_mut(&kv.key) {
                Some(t) if t.revision == kv.mod_revision => {
                    if all && reconcile::is_live(t.plan.state) {
                        t.due = due_at(&t.tenant, &t.plan);
                    }
                }
                _ => {
                    let plan: Plan = decode(&kv.key, &kv.value)?;
                    let Some(tenant) = kv.key.strip_prefix(keys::PLANS).and_then(|r| r.split('/').next()) else {
                        continue;
                    };
                    let due = due_at(tenant, &plan);
                    let t = Tracked { tenant: tenant.to_owned(), revision: kv.mod_revision, plan, due };
                    plans.insert(kv.key.clone(), t);
                }
            }
        }
        plans.retain(|k, _| seen.contains_key(k.as_str()));
        Ok(())
    }

    /// What a step that judges batches needs from Prometheus, read before the step.
    async fn fetch_queries(&self, t: &Tracked, now: OffsetDateTime) -> Option<queries::Fetched> {
        let batches = reconcile::due_for_judgment(&t.plan, now);
        if batches.is_empty() {
            return None;
        }
        let judging = {
            let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
            let sidecar = catalog.tenant(&t.tenant).and_then(|tc| tc.sidecar(&t.plan.sidecar));
            reconcile::judging(&t.plan, sidecar)
        };
        queries::fetch(self.prometheus.as_ref(), &self.fleet, &t.tenant, &t.plan, &judging, &batches, now).await
    }

    /// One step of the plan at `key`, committed.
    async fn step(&self, key: &str, t: &mut Tracked, now: OffsetDateTime) {
        let external = self.fetch_queries(t, now).await;
        let (mut step, rollback) = {
            let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
            // A step reads a view at least as new as the plan's last write (its overrides and
            // targets): until the catalog watch has applied it, the plan waits.
            if catalog.revision < t.revision {
                t.due = Some(now + CATALOG_LAG);
                return;
            }
            let Some(tc) = catalog.tenant(&t.tenant) else {
                t.due = None;
                return;
            };
            let view = TenantView { tenant: &t.tenant, catalog: tc, fleet: &self.fleet, external: external.as_ref() };
            let mut step = reconcile::reconcile(&t.plan, &view, now);
            let rollback = match on_fail::rolls_back_by_itself(&t.plan, &step.plan).cloned() {
                Some(incident) => match on_fail::roll_back(tc, &t.tenant, &mut step, &incident) {
                    Ok(ops) => ops,
                    Err(e) => {
                        tracing::warn!(plan = %t.plan.id, error = %e, "cannot roll back by itself; retrying");
                        t.due = Some(now + RETRY);
                        return;
                    }
                },
                None => Vec::new(),
            };
            (step, rollback)
        };
        if step.plan.rolling_back && !t.plan.rolling_back {
            // Rolled back by itself: follow the rollback from the next step on.
            step.next = Some(now);
        }
        self.metrics.executor_steps.inc();
        if !step.changed {
            t.due = step.next;
            return;
        }
        match self.commit(key, t, &step, rollback).await {
            Ok(Some(revision)) => {
                self.metrics.executor_commits.inc();
                t.revision = revision;
                t.due = step.next;
                t.plan = step.plan;
            }
            Ok(None) => {
                // Changed meanwhile (an operator action): reread it and step again.
                tracing::debug!(plan = %t.plan.id, "plan changed meanwhile; rereading");
                t.revision = 0;
                t.due = Some(now);
                self.wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(plan = %t.plan.id, error = %e, "plan step failed; retrying");
                t.due = Some(now + RETRY);
            }
        }
    }

    /// Writes a step: the plan (if unchanged since read), its overrides and events, and
    /// `extra` (a rollback by itself). The new revision, or `None` when the plan changed
    /// meanwhile (or another write of it is under way). A step longer than one store
    /// transaction is written in chunks (`chunked.rs`): its overrides, targets and bindings
    /// first, the plan and its events last, so the plan never says a batch is done before
    /// all of its writes landed; a manager stopped midway finishes the step when it starts.
    async fn commit(&self, key: &str, t: &Tracked, step: &Step, extra: Vec<Op>) -> Result<Option<u64>, Error> {
        let mut data = extra;
        data.reserve(step.writes.len());
        for w in &step.writes {
            data.push(write_op(&t.tenant, w)?);
        }
        let mut record = vec![Op::put(key, encode(&step.plan)?), live_plans::op(&t.tenant, &step.plan)];
        let mut guard = vec![Compare::unchanged(key, t.revision)];
        if step.plan.state == PlanState::Completed && t.plan.state != PlanState::Completed {
            guard.extend(self.mark_completed(&t.tenant, &step.plan, &mut record).await?);
        }
        let events =
            step.events.iter().map(|e| NewEvent::of_plan(&t.tenant, "executor", &t.plan.id, e.clone())).collect();
        let intent = keys::plan_write(&t.tenant, &t.plan.id);
        let r = chunked::commit(&self.repo, &self.fence(), Chunked { intent, guard, data, record, events }).await?;
        if r.is_none() && !self.leads().await? {
            return Err(Error::Unavailable("this manager no longer leads: the step is not committed".into()));
        }
        Ok(r)
    }

    /// The compares every transaction the executor writes carries — a step's one transaction,
    /// or each chunk of a long one, and the long writes it finishes — beside the compares of
    /// the write itself: the leadership's fence, with several managers.
    fn fence(&self) -> Vec<Compare> {
        self.fence.iter().cloned().collect()
    }

    /// Whether the leadership behind the fence still holds (always, without a fence).
    async fn leads(&self) -> Result<bool, Error> {
        let Some(Compare::ModRevision { key, revision }) = &self.fence else { return Ok(true) };
        Ok(self.repo.store().get(key).await?.is_some_and(|kv| kv.mod_revision == *revision))
    }

    /// Records on the target version that `plan` completed (it is known good from now on),
    /// in the step's transaction: the version's write, and the compare that it is unchanged
    /// since read (a version changed meanwhile makes the step retry).
    async fn mark_completed(&self, tenant: &str, plan: &Plan, ops: &mut Vec<Op>) -> Result<Option<Compare>, Error> {
        let key = keys::version(tenant, &plan.sidecar, &plan.target_version);
        let Some((mut v, rev)) = self.repo.get::<Version>(&key).await? else { return Ok(None) };
        v.completed_plan = Some(plan.id.clone());
        ops.push(Op::put(&key, encode(&v)?));
        Ok(Some(Compare::unchanged(&key, rev)))
    }
}

/// The store operation of one write of a step.
fn write_op(tenant: &str, w: &Write) -> Result<Op, Error> {
    Ok(match w {
        Write::Override { service, instance, sidecar, value } => {
            Op::put(keys::override_key(tenant, service, instance, sidecar), encode(value)?)
        }
        Write::Target { cell, value } => Op::put(target_key(tenant, cell), encode(value)?),
        Write::Binding { service, sidecar, value } => Op::put(keys::binding(tenant, service, sidecar), encode(value)?),
        Write::DeleteOverride { service, instance, sidecar } => {
            Op::delete(keys::override_key(tenant, service, instance, sidecar))
        }
        Write::DeleteTarget { cell } => Op::delete(target_key(tenant, cell)),
    })
}

fn target_key(tenant: &str, c: &reconcile::CellRef) -> String {
    keys::target_key(tenant, &c.service, &c.sidecar, &c.region, &c.env, &c.stage)
}

#[cfg(test)]
mod tests {
    use outrider_model::{Override, PlanSpec, UpgradeMode};
    use outrider_rollout::reconcile::PlanEvent;
    use outrider_store::{Store, Txn};

    use super::*;
    use crate::test_store::TestStore;

    const INSTANCES: usize = 40;

    fn executor(store: Arc<TestStore>) -> Executor {
        let metrics = Arc::new(Metrics::default());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let fleet = Arc::new(Fleet::new(metrics.clone(), clock.clone(), "test".into(), false));
        let repo = Repo::new(store);
        Executor {
            repo,
            catalog: Arc::default(),
            fleet,
            clock,
            wake: Arc::default(),
            metrics,
            prometheus: None,
            fence: None,
            settle: SETTLE,
        }
    }

    fn record(i: usize) -> String {
        keys::override_key("t", "svc", &format!("i{i:02}"), "mesh")
    }

    /// A store taking 8 operations per transaction holding a running plan, the plan as the
    /// executor tracks it, and a step that records 40 instances and says so.
    async fn setup() -> (Arc<TestStore>, Tracked, Step) {
        let store = Arc::new(TestStore::new().with_max_txn_ops(8));
        let spec: PlanSpec = serde_json::from_str(r#"{"sidecar":"mesh","target_version":"1.1.0"}"#).unwrap();
        let mut plan = Plan::new("p1".into(), spec, Vec::new(), Vec::new(), OffsetDateTime::UNIX_EPOCH);
        plan.state = PlanState::Running;
        let ops = vec![Op::put(keys::plan("t", "p1"), encode(&plan).unwrap()), live_plans::op("t", &plan)];
        let revision = store.txn(Txn::ops(ops)).await.unwrap().revision;
        let mut next = plan.clone();
        next.reason = "batch 0 applied".into();
        let writes = (0..INSTANCES)
            .map(|i| Write::Override {
                service: "svc".into(),
                instance: format!("i{i:02}"),
                sidecar: "mesh".into(),
                value: Override {
                    plan: "p1".into(),
                    phase: 0,
                    batch: 0,
                    version: "1.1.0".into(),
                    mode: UpgradeMode::Restart,
                    previous: "1.0.0".into(),
                    base_version: "1.0.0".into(),
                    exits_before: 0,
                },
            })
            .collect();
        let event = PlanEvent { kind: "batch.state", reason: "applying".into(), detail: serde_json::Value::Null };
        let step = Step { plan: next, changed: true, writes, events: vec![event], next: None };
        (store, Tracked { tenant: "t".into(), revision, plan, due: None }, step)
    }

    #[tokio::test]
    async fn a_step_stopped_between_chunks_is_finished_exactly_once_by_the_restarted_executor() {
        let key = keys::plan("t", "p1");
        let (store, t, step) = setup().await;
        executor(store.clone()).commit(&key, &t, &step, Vec::new()).await.unwrap().expect("committed");
        let transactions = store.committed().len() - 1;
        assert!(transactions > 5, "a step of {INSTANCES} records takes chunks: {transactions}");
        for stop in 0..transactions {
            let (store, t, step) = setup().await;
            store.fail_after(stop);
            assert!(executor(store.clone()).commit(&key, &t, &step, Vec::new()).await.is_err());
            // A restarted manager: its executor rereads the plans.
            let mut plans = HashMap::new();
            executor(store.clone()).reread(&mut plans, OffsetDateTime::now_utc(), true).await.unwrap();
            let tracked = &plans[&key];
            let written: Vec<usize> = (0..INSTANCES).map(|i| store.writes_of(&record(i))).collect();
            let events = store.count(&keys::events_by_plan("t", "p1")).await.unwrap();
            if tracked.plan.reason == "batch 0 applied" {
                assert!(written.iter().all(|w| *w == 1), "stopped at {stop}: each record once: {written:?}");
                assert_eq!(events, 1, "stopped at {stop}: the event once");
                assert_eq!(store.get(&key).await.unwrap().unwrap().mod_revision, tracked.revision);
            } else {
                assert!(written.iter().all(|w| *w == 0), "stopped at {stop}, undecided: nothing written");
                assert_eq!((events, tracked.revision), (0, t.revision), "stopped at {stop}: the plan as it was");
            }
            assert_eq!(store.count(keys::WRITES).await.unwrap(), 0, "stopped at {stop}: no intent left");
        }
    }

    #[tokio::test]
    async fn a_step_computed_while_another_write_of_the_plan_is_under_way_is_refused() {
        let key = keys::plan("t", "p1");
        let (store, t, step) = setup().await;
        // Stopped after the intent was stored.
        store.fail_after(4);
        assert!(executor(store.clone()).commit(&key, &t, &step, Vec::new()).await.is_err());
        assert_eq!(store.count(keys::WRITES).await.unwrap(), 1);
        // A step computed from the same plan, short enough for one transaction.
        let short = Step { writes: Vec::new(), ..step.clone() };
        assert_eq!(executor(store.clone()).commit(&key, &t, &short, Vec::new()).await.unwrap(), None);
    }
}
