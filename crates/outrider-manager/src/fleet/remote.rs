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
        let StoredInstance { tenant, instance: record, owner, claim } = stored;
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
                e.claim = claim;
                e.orphaned_at = None;
            }
            None => {
                let id = record.id.clone();
                let mut e = Entry::new(record, claim);
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

#[cfg(test)]
pub(super) mod tests {
    use std::{collections::HashSet, sync::Arc, time::Duration};

    use futures::FutureExt;
    use outrider_model::{Instance, InstanceFilter, InstanceLabels};
    use outrider_store::KeyValue;
    use time::OffsetDateTime;

    use super::super::{InstanceRetention, Registration};
    use crate::{catalog::Catalog, clock::SystemClock, fleet::Fleet, keys, metrics::Metrics};

    pub(in crate::fleet) fn labels() -> InstanceLabels {
        InstanceLabels { region: "r1".into(), env: "prod".into(), stage: "canary".into(), ..InstanceLabels::default() }
    }

    pub(in crate::fleet) fn catalog() -> Catalog {
        let mut c = Catalog::default();
        let kv = |key: String, value: serde_json::Value| KeyValue {
            key,
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: 1,
            mod_revision: 1,
        };
        c.load(&kv(keys::tenant("t"), serde_json::json!({"name": "t", "created_at": "2026-01-01T00:00:00Z"})));
        c.load(&kv(keys::service("t", "s"), serde_json::json!({"name": "s"})));
        c
    }

    pub(in crate::fleet) fn fleet(me: &str) -> Fleet {
        Fleet::new(Arc::new(Metrics::default()), Arc::new(SystemClock), me.into(), true)
    }

    fn record(id: &str, last_seen: OffsetDateTime) -> Instance {
        Instance {
            id: id.into(),
            service: "s".into(),
            labels: labels(),
            deploy_id: "d1".into(),
            connected: true,
            gone: false,
            last_seen,
            desired_revision: 1,
            acked_revision: 1,
            sidecars: Vec::new(),
        }
    }

    fn stored(id: &str, owner: Option<&str>, last_seen: OffsetDateTime) -> super::StoredInstance {
        let mut instance = record(id, last_seen);
        instance.connected = owner.is_some();
        super::StoredInstance { tenant: "t".into(), instance, owner: owner.map(str::to_owned), claim: None }
    }

    pub(in crate::fleet) fn get(f: &Fleet, id: &str) -> Option<Instance> {
        f.list("t", &InstanceFilter::default()).into_iter().find(|i| i.id == id)
    }

    fn live(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    const RETENTION: InstanceRetention =
        InstanceRetention { ttl: Duration::from_secs(60), keep_gone: Duration::from_secs(3600) };

    #[test]
    fn another_managers_agent_counts_as_connected_while_that_manager_lives() {
        let f = fleet("m1");
        let start = OffsetDateTime::now_utc() - time::Duration::hours(1);
        f.merge_remote(stored("i-1", Some("m2"), start));
        assert!(get(&f, "i-1").unwrap().connected, "seen through the other manager's record");
        // Long after its record was written: still there while m2 lives.
        let now = OffsetDateTime::now_utc();
        assert_eq!(f.sweep(RETENTION, now, &live(&["m1", "m2"])), 0);
        assert!(!get(&f, "i-1").unwrap().gone);
        // m2 dies: its agent counts as away from then on, not from its old record's time.
        assert_eq!(f.sweep(RETENTION, now, &live(&["m1"])), 0, "not gone at once");
        assert!(!get(&f, "i-1").unwrap().connected);
        assert_eq!(f.sweep(RETENTION, now + time::Duration::seconds(61), &live(&["m1"])), 1);
        assert!(get(&f, "i-1").unwrap().gone, "gone a TTL after its manager died");
    }

    #[test]
    fn an_agent_that_moved_to_another_manager_ends_its_stale_stream_here() {
        let f = fleet("m1");
        let reg = Registration {
            tenant: "t".into(),
            instance: "i-1".into(),
            service: "s".into(),
            labels: labels(),
            deploy_id: "d1".into(),
            sidecars: Vec::new(),
            claim: None,
            stored_claim: None,
            opened_by: "agent".into(),
        };
        let mut conn = f.connect(reg, &catalog()).unwrap();
        // Its own record coming back from the watch changes nothing.
        f.merge_remote(stored("i-1", Some("m1"), OffsetDateTime::now_utc()));
        assert!(conn.desired.has_changed().is_ok(), "the stream is open");
        // A record without owner (a stream that ended elsewhere) does not end the live one.
        f.merge_remote(stored("i-1", None, OffsetDateTime::now_utc()));
        assert!(conn.desired.has_changed().is_ok(), "the stream is still open");
        // The agent registered with m2: the stream here is stale and ends.
        f.merge_remote(stored("i-1", Some("m2"), OffsetDateTime::now_utc()));
        assert!(conn.desired.changed().now_or_never().is_some_and(|r| r.is_err()), "the stale stream ended");
        assert!(get(&f, "i-1").unwrap().connected, "connected, through m2");
        assert!(f.remove("t", "i-1", "test").is_err(), "a connected instance is not deleted");
        // m2's agent record is deleted (the instance was removed there): forgotten here.
        f.forget_remote("t", "i-1");
        assert!(get(&f, "i-1").is_none());
    }
}
