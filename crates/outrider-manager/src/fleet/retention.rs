//! When instances whose agent went away are `gone`, and when they are removed: the
//! leader's sweeper, and removal by an operator.

use std::{collections::HashSet, sync::Arc, time::Duration};

use outrider_model::Instance;
use outrider_store::{Op, Store};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Fleet, remote};
use crate::{
    Error, keys,
    repo::{NewEvent, Repo},
};

/// How long instances whose agent went away are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceRetention {
    /// Disconnected this long, an instance is `gone`: it no longer counts in plans.
    pub ttl: Duration,
    /// Gone this long (after the TTL), its record is removed.
    pub keep_gone: Duration,
}

impl Default for InstanceRetention {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(300), keep_gone: Duration::from_secs(24 * 3600) }
    }
}

impl Fleet {
    /// Marks `gone` the instances disconnected longer than `r.ttl` and removes those gone
    /// longer than `r.keep_gone` more, at `now`; returns how many changed. An instance whose
    /// stream another manager holds counts as connected while that manager is in `live`;
    /// once it is not, as away since then.
    pub fn sweep(&self, r: InstanceRetention, now: OffsetDateTime, live: &HashSet<String>) -> usize {
        let ttl = time::Duration::try_from(r.ttl).unwrap_or(time::Duration::MAX);
        let remove_after = ttl.saturating_add(time::Duration::try_from(r.keep_gone).unwrap_or(time::Duration::MAX));
        let mut changed = 0;
        let mut g = self.lock();
        let inner = &mut *g;
        for (tenant, entries) in &mut inner.instances {
            let mut expired = Vec::new();
            for (id, e) in entries.iter_mut() {
                if e.conn.is_some() {
                    continue;
                }
                let mut since = e.record.last_seen;
                if let Some(owner) = &e.owner {
                    if live.contains(owner) {
                        continue;
                    }
                    // Its manager died: its agent is away from now on, unless it comes back.
                    since = since.max(*e.orphaned_at.get_or_insert(now));
                    e.record.connected = false;
                }
                let away = now - since;
                if away > remove_after {
                    expired.push(id.clone());
                } else if away > ttl && !e.record.gone {
                    e.record.gone = true;
                    e.owner = None;
                    e.dirty = true;
                    changed += 1;
                    let event = NewEvent::new(tenant, "instance.gone", "manager", format!("instance/{id}"))
                        .reason(format!("no agent for more than {}", outrider_model::HumanDuration(r.ttl)))
                        .detail(serde_json::json!({"service": e.record.service, "last_seen": e.record.last_seen}));
                    inner.events.push(event);
                }
            }
            for id in expired {
                if let Some(e) = entries.remove(&id) {
                    if let Some(ids) = inner.by_service.get_mut(&(tenant.clone(), e.record.service.clone())) {
                        ids.remove(&id);
                    }
                    inner.removed.push((tenant.clone(), id.clone()));
                    let event = NewEvent::new(tenant, "instance.removed", "manager", format!("instance/{id}"))
                        .reason("gone past the retention period");
                    inner.events.push(event);
                    changed += 1;
                }
            }
        }
        drop(g);
        if changed > 0 {
            self.flush.notify_one();
            self.observed.notify_one();
        }
        changed
    }

    /// Removes instance `id` of `tenant` for `actor` (its agent must not be connected: a
    /// returning agent registers it again). Returns the removed record.
    pub fn remove(&self, tenant: &str, id: &str, actor: &str) -> Result<Instance, Error> {
        let mut g = self.lock();
        let inner = &mut *g;
        let entries = inner.instances.get_mut(tenant).ok_or_else(|| Error::not_found(format!("instance {id:?}")))?;
        match entries.get(id) {
            None => return Err(Error::not_found(format!("instance {id:?}"))),
            Some(e) if e.conn.is_some() || (e.owner.is_some() && e.record.connected) => {
                return Err(Error::precondition(format!(
                    "instance {id} is connected: stop its agent first (a connected agent would register it again)"
                )));
            }
            Some(_) => {}
        }
        let Some(e) = entries.remove(id) else { return Err(Error::not_found(format!("instance {id:?}"))) };
        if let Some(ids) = inner.by_service.get_mut(&(tenant.to_owned(), e.record.service.clone())) {
            ids.remove(id);
        }
        inner.removed.push((tenant.to_owned(), id.to_owned()));
        let event = NewEvent::new(tenant, "instance.deleted", actor, format!("instance/{id}"))
            .detail(serde_json::json!({"service": e.record.service}));
        inner.events.push(event);
        drop(g);
        self.flush.notify_one();
        self.observed.notify_one();
        Ok(e.record)
    }

    /// Like [`Fleet::remove`], and deletes the stored record before answering, so the id is
    /// free at once on every manager (a new agent may register it with a claim of its own).
    pub async fn delete(&self, repo: &Repo, tenant: &str, id: &str, actor: &str) -> Result<Instance, Error> {
        let removed = self.remove(tenant, id, actor)?;
        repo.commit(Vec::new(), vec![Op::delete(keys::instance(tenant, id))], Vec::new()).await?;
        Ok(removed)
    }

    /// Sweeps every `r.ttl / 10` (at least each second, at most every 30 s) until `cancel`,
    /// with the managers alive in `store` (a sweep waits while they cannot be read).
    pub async fn run_sweeper(self: Arc<Self>, r: InstanceRetention, store: Arc<dyn Store>, cancel: CancellationToken) {
        let every = (r.ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = cancel.cancelled() => return,
            }
            match remote::live_managers(store.as_ref()).await {
                Ok(live) => {
                    self.sweep(r, OffsetDateTime::now_utc(), &live);
                }
                Err(e) => tracing::debug!(error = %e, "managers not readable; sweep postponed"),
            }
        }
    }
}
