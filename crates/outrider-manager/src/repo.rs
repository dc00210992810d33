//! Typed access to the store: JSON values, create-if-absent, compare-and-swap updates, and
//! event-log entries written in the same transaction as the change they record.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
};

use outrider_model::Event;
use outrider_rollout::reconcile::PlanEvent;
use outrider_store::{Compare, Op, Store, Txn, TxnResult};
use serde::{Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

pub use crate::codec::{decode, encode};
use crate::{Error, event_log};

/// An event to append with a write. Its `seq` is the revision of that write.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Tenant.
    pub tenant: String,
    /// Kind (`binding.updated`).
    pub kind: &'static str,
    /// Who.
    pub actor: String,
    /// What (`service/checkout/sidecar/mesh`).
    pub object: String,
    /// Why.
    pub reason: String,
    /// Plan it belongs to.
    pub plan: Option<String>,
    /// Details.
    pub detail: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` by `actor` about `object` (`service/checkout`), with no reason or
    /// detail yet.
    pub fn new(tenant: &str, kind: &'static str, actor: &str, object: impl Into<String>) -> Self {
        Self {
            tenant: tenant.to_owned(),
            kind,
            actor: actor.to_owned(),
            object: object.into(),
            reason: String::new(),
            plan: None,
            detail: serde_json::Value::Null,
        }
    }

    /// The same event with this reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// The same event with these details.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The same event, recorded as part of plan `id`.
    pub fn plan(mut self, id: &str) -> Self {
        self.plan = Some(id.to_owned());
        self
    }

    /// An event about plan `plan` by `actor`, as a plan step or action drafted it.
    pub fn of_plan(tenant: &str, actor: &str, plan: &str, e: PlanEvent) -> Self {
        Self::new(tenant, e.kind, actor, format!("plan/{plan}")).reason(e.reason).detail(e.detail).plan(plan)
    }
}

/// The manager's typed view of the store.
#[derive(Clone)]
pub struct Repo {
    store: Arc<dyn Store>,
    counter: Arc<AtomicU32>,
    /// Intent keys of the long writes this process is applying (see [`Repo::claim`]).
    claimed: Arc<Mutex<BTreeSet<String>>>,
}

/// A long write's intent key claimed by this process until dropped (see [`Repo::claim`]).
pub struct Claim {
    key: String,
    claimed: Arc<Mutex<BTreeSet<String>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claimed.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

impl Repo {
    /// A repository over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, counter: Arc::new(AtomicU32::new(0)), claimed: Arc::default() }
    }

    /// Claims the intent key of a long write for this process (`None`: a task of this process
    /// is applying it), so that another task finishing found intents leaves it to its writer.
    pub fn claim(&self, key: &str) -> Option<Claim> {
        let fresh = self.claimed.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned());
        fresh.then(|| Claim { key: key.to_owned(), claimed: self.claimed.clone() })
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The value at `key` and its mod revision.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, Error> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(&kv.key, &kv.value)?, kv.mod_revision))),
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.store.get(key).await?.is_some())
    }

    /// Every value under `prefix`, in key order.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, Error> {
        let r = self.store.range(prefix).await?;
        r.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Applies `ops` and `events` if every compare holds.
    pub async fn commit(
        &self,
        compare: Vec<Compare>,
        mut ops: Vec<Op>,
        events: Vec<NewEvent>,
    ) -> Result<TxnResult, Error> {
        for e in events {
            ops.extend(self.event_ops(e)?);
        }
        Ok(self.store.txn(Txn::when(compare, ops)).await?)
    }

    /// The writes of one event-log entry (see [`event_log`](crate::event_log)).
    pub fn event_ops(&self, e: NewEvent) -> Result<Vec<Op>, Error> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            seq: 0,
            time: OffsetDateTime::now_utc(),
            tenant: e.tenant,
            kind: e.kind.to_owned(),
            actor: e.actor,
            object: e.object,
            reason: e.reason,
            plan: e.plan,
            detail: e.detail,
        };
        event_log::append_ops(&event, n)
    }
}

impl Repo {
    /// Creates `key` if it is absent and every `parents` key exists (each named for errors),
    /// with `events`. Missing parent → 404; existing key → 409.
    pub async fn create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        parents: &[(String, String)],
        what: &str,
        events: Vec<NewEvent>,
    ) -> Result<u64, Error> {
        let mut compare: Vec<Compare> = parents.iter().map(|(k, _)| Compare::Exists(k.clone())).collect();
        compare.push(Compare::absent(key));
        let r = self.commit(compare, vec![Op::put(key, encode(value)?)], events).await?;
        if r.succeeded {
            return Ok(r.revision);
        }
        for (k, name) in parents {
            if !self.exists(k).await? {
                return Err(Error::not_found(name.clone()));
            }
        }
        Err(Error::conflict(format!("{what} already exists")))
    }

    /// Read-modify-write of `key` with compare-and-swap, retried a few times under contention.
    /// `f` changes the value and returns the events to record, or refuses.
    pub async fn update<T, F>(&self, key: &str, what: &str, mut f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> Result<Vec<NewEvent>, Error>,
    {
        self.update_with(key, what, |v| Ok((Vec::new(), f(v)?))).await
    }

    /// Like [`Repo::update`], with other writes to commit in the same transaction: `f` returns
    /// them beside the events.
    pub async fn update_with<T, F>(&self, key: &str, what: &str, mut f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> Result<(Vec<Op>, Vec<NewEvent>), Error>,
    {
        for _ in 0..5 {
            let (mut v, rev) = self.get::<T>(key).await?.ok_or_else(|| Error::not_found(what))?;
            let (mut ops, events) = f(&mut v)?;
            ops.push(Op::put(key, encode(&v)?));
            let r = self.commit(vec![Compare::unchanged(key, rev)], ops, events).await?;
            if r.succeeded {
                return Ok(v);
            }
        }
        Err(Error::conflict(format!("{what} is being changed concurrently; retry")))
    }
}
