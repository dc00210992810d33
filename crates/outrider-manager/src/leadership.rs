//! Several managers on one store. Each holds `managers/{name}` while it lives (presence), and
//! one of them, the elected leader, does the work that must happen once: the rollout
//! executor (every step it commits carries the leadership's fence, so a deposed leader cannot
//! commit one), webhook deliveries, the event log's retention and the instance sweeper. A
//! manager alone on its embedded store is always the leader; with etcd, leadership is a key
//! held with a lease ([`outrider_store::campaign`]), lost when the lease cannot be renewed
//! and handed over at once when the leader stops.

use std::{sync::Arc, time::Duration};

use outrider_store::{Held, Store, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    executor::{self, Executor},
    fleet::InstanceRetention,
    keys,
    metrics::Metrics,
    retention::{self, Retention},
    state::AppState,
};

/// Pause before campaigning again after the store refused.
const RETRY: Duration = Duration::from_millis(500);

/// What the leader runs, and what it needs for it.
pub struct LeaderWork {
    /// The manager's state (store, catalog, fleet, webhooks, clock, wake-ups).
    pub state: AppState,
    /// Where the plans' analysis queries run.
    pub prometheus: Option<outrider_prometheus::Client>,
    /// The event log's retention.
    pub retention: Retention,
    /// When instances are `gone` and removed.
    pub instances: InstanceRetention,
    /// When the manager started.
    pub started: tokio::time::Instant,
}

impl LeaderWork {
    /// Starts the leader's tasks for one term, until `term` ends; `fence` guards the
    /// executor's commits.
    async fn start(&self, fence: Option<outrider_store::Compare>, term: &CancellationToken) -> Vec<JoinHandle<()>> {
        let s = &self.state;
        let store = s.repo.store().clone();
        let mut tasks = Vec::new();
        match s.webhooks.load(store.as_ref(), term.clone()).await {
            Ok(from) => tasks.push(tokio::spawn(s.webhooks.clone().run(store.clone(), from))),
            Err(e) => tracing::error!(error = %e, "webhooks not loaded: none is delivered this term"),
        }
        tasks.push(tokio::spawn(retention::run(s.repo.clone(), self.retention.clone(), term.clone())));
        tasks.push(tokio::spawn(s.fleet.clone().run_sweeper(self.instances, store, term.clone())));
        let executor = Executor {
            repo: s.repo.clone(),
            catalog: s.catalog.clone(),
            fleet: s.fleet.clone(),
            clock: s.clock.clone(),
            wake: s.wake.clone(),
            metrics: s.metrics.clone(),
            prometheus: self.prometheus.clone(),
            settle: executor::SETTLE.saturating_sub(self.started.elapsed()).max(executor::TAKEOVER_SETTLE),
            fence,
        };
        tasks.push(tokio::spawn(executor.run(term.clone())));
        tasks
    }
}

/// Holds this manager's presence key; `None` when a live manager already has the name.
pub async fn join(store: &dyn Store, name: &str, lease: Duration) -> Result<Option<Held>, StoreError> {
    store.hold(&keys::manager(name), name.as_bytes(), lease).await
}

/// Keeps the presence `held` until `cancel`: when it is lost (the store was away longer than
/// the lease), takes it again as soon as the store lets it.
pub async fn stay_present(
    store: Arc<dyn Store>,
    name: String,
    lease: Duration,
    mut held: Held,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = held.lost() => {}
            () = cancel.cancelled() => return,
        }
        tracing::warn!(manager = %name, "presence lost; joining again");
        loop {
            match join(store.as_ref(), &name, lease).await {
                Ok(Some(h)) => {
                    held = h;
                    break;
                }
                Ok(None) => tracing::debug!("presence key still held from before; waiting for it to expire"),
                Err(e) => tracing::debug!(error = %e, "cannot join"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// Campaigns for leadership until `cancel`; runs the leader's work for every term won.
pub async fn lead(work: LeaderWork, name: String, lease: Duration, cancel: CancellationToken) {
    let store = work.state.repo.store().clone();
    let metrics: Arc<Metrics> = work.state.metrics.clone();
    loop {
        let won = tokio::select! {
            r = outrider_store::campaign(store.as_ref(), keys::LEADER, name.as_bytes(), lease) => r,
            () = cancel.cancelled() => return,
        };
        let held = match won {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "campaign interrupted; trying again");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = cancel.cancelled() => return,
                }
            }
        };
        if held.fence().is_some() {
            tracing::info!(manager = %name, "elected leader: running the executor");
        }
        metrics.leader.set(1);
        metrics.leader_terms.inc();
        let term = cancel.child_token();
        let tasks = work.start(held.fence(), &term).await;
        tokio::select! {
            () = held.lost() => tracing::warn!(manager = %name, "leadership lost: the executor stops"),
            () = cancel.cancelled() => {}
        }
        term.cancel();
        for t in tasks {
            let _ = t.await;
        }
        metrics.leader.set(0);
        // Dropping the hold lets the next manager lead at once.
        drop(held);
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// The kind of `Fleet` a store calls for: shared when the store fences (several managers).
pub fn shared(presence: &Held) -> bool {
    presence.fence().is_some()
}
