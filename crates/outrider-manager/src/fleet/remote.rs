//! The agents of the other managers that share the store: their records come in from the
//! store's watch, the leader's watched services go out to them, and the managers alive are
//! those that hold their `managers/{name}` key.

use std::collections::{BTreeSet, HashSet};

use outrider_store::{Store, StoreError};

use super::{Entry, Fleet, StoredInstance};
use crate::{catalog::ServiceRef, keys};

/// The watched services as stored (sorted, so equal sets are equal values).
pub(super) fn watched_list(watched: &HashSet<ServiceRef>) -> BTreeSet<ServiceRef> {
    watched.iter().cloned().collect()
}

/// The names of the managers alive now.
pub(super) async fn live_managers(store: &dyn Store) -> Result<HashSet<String>, StoreError> {
    let range = store.range(keys::MANAGERS).await?;
    Ok(range.kvs.into_iter().filter_map(|kv| kv.key.strip_prefix(keys::MANAGERS).map(str::to_owned)).collect())
}

impl Fleet {
    /// Takes in an instance record another manager wrote. A record that says another manager
    /// holds the stream of an instance connected here means its agent moved there: the stream
    /// here is stale and ends. A record without an owner (its stream ended elsewhere) leaves an
    /// instance connected here alone, and this manager writes its record again.
    pub fn merge_remote(&self, stored: StoredInstance) {
        let StoredInstance { tenant, instance: record, owner } = stored;
        if owner.as_deref() == Some(self.me.as_str()) {
            return;
        }
        let now = self.clock.now();
        let mut g = self.lock();
        let inner = &mut *g;
        let key = (tenant.clone(), record.service.clone());
        let watched = inner.watched.contains(&key);
        let entries = inner.instances.entry(tenant.clone()).or_default();
        let mut closed = false;
        match entries.get_mut(&record.id) {
            Some(e) => {
                if e.conn.is_some() {
                    if owner.is_none() {
                        e.dirty = true;
                        drop(g);
                        self.flush.notify_one();
                        return;
                    }
                    e.conn = None;
                    closed = true;
                }
                if e.record.service != record.service {
                    if let Some(ids) = inner.by_service.get_mut(&(tenant.clone(), e.record.service.clone())) {
                        ids.remove(&record.id);
                    }
                    inner.by_service.entry(key).or_default().insert(record.id.clone());
                }
                if e.record.deploy_id != record.deploy_id {
                    e.deployed_at = Some(now);
                    e.history = watched.then(Box::default);
                }
                if let Some(h) = e.history.as_deref_mut() {
                    h.record(now, &record.sidecars);
                }
                e.record = record;
                e.owner = owner;
                e.orphaned_at = None;
            }
            None => {
                let id = record.id.clone();
                let mut e = Entry::new(record);
                e.owner = owner;
                e.deployed_at = Some(now);
                e.history = watched.then(Box::default);
                entries.insert(id.clone(), e);
                inner.by_service.entry(key).or_default().insert(id);
            }
        }
        drop(g);
        if closed {
            self.metrics.agents_connected.dec();
        }
        self.observed.notify_one();
    }

    /// Forgets an instance whose record another manager deleted (unless its agent is
    /// connected here).
    pub fn forget_remote(&self, tenant: &str, id: &str) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(entries) = inner.instances.get_mut(tenant) else { return };
        if entries.get(id).is_none_or(|e| e.conn.is_some()) {
            return;
        }
        if let Some(e) = entries.remove(id)
            && let Some(ids) = inner.by_service.get_mut(&(tenant.to_owned(), e.record.service))
        {
            ids.remove(id);
        }
        drop(g);
        self.observed.notify_one();
    }

    /// Takes in the services the leader watches: the instances of those connected here
    /// keep a history, and their every sample is written for the leader to judge.
    pub fn follow_watched(&self, services: BTreeSet<ServiceRef>) {
        self.set_watched(services.into_iter().collect(), false);
    }
}
