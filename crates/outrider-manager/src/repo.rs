//! Typed access to the store: JSON values, create-if-absent, compare-and-swap updates, and
//! event-log entries written in the same transaction as the change they record.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use outrider_model::Event;
use outrider_store::{Compare, Op, Store, Txn, TxnResult};
use serde::{Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

use crate::{ApiError, keys};

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

/// The manager's typed view of the store.
#[derive(Clone)]
pub struct Repo {
    store: Arc<dyn Store>,
    counter: Arc<AtomicU32>,
}

impl Repo {
    /// A repository over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, counter: Arc::new(AtomicU32::new(0)) }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The value at `key` and its mod revision.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, ApiError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(&kv.key, &kv.value)?, kv.mod_revision))),
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, ApiError> {
        Ok(self.store.get(key).await?.is_some())
    }

    /// Every value under `prefix`, in key order.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, ApiError> {
        let r = self.store.range(prefix).await?;
        r.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Applies `ops` and `events` if every compare holds.
    pub async fn commit(
        &self,
        compare: Vec<Compare>,
        mut ops: Vec<Op>,
        events: Vec<NewEvent>,
    ) -> Result<TxnResult, ApiError> {
        for e in events {
            ops.push(self.event_op(e)?);
        }
        Ok(self.store.txn(Txn::when(compare, ops)).await?)
    }

    /// The write of one event-log entry.
    pub fn event_op(&self, e: NewEvent) -> Result<Op, ApiError> {
        let now = OffsetDateTime::now_utc();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}{:020}-{n:010}", keys::events(&e.tenant), now.unix_timestamp_nanos());
        let event = Event {
            seq: 0,
            time: now,
            tenant: e.tenant,
            kind: e.kind.to_owned(),
            actor: e.actor,
            object: e.object,
            reason: e.reason,
            plan: e.plan,
            detail: e.detail,
        };
        Ok(Op::put(key, encode(&event)?))
    }
}

/// JSON bytes of a value.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::internal(format!("encode: {e}")))
}

/// A value from JSON bytes.
pub fn decode<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::internal(format!("corrupt value at {key}: {e}")))
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
    ) -> Result<u64, ApiError> {
        let mut compare: Vec<Compare> = parents.iter().map(|(k, _)| Compare::Exists(k.clone())).collect();
        compare.push(Compare::absent(key));
        let r = self.commit(compare, vec![Op::put(key, encode(value)?)], events).await?;
        if r.succeeded {
            return Ok(r.revision);
        }
        for (k, name) in parents {
            if !self.exists(k).await? {
                return Err(ApiError::not_found(name.clone()));
            }
        }
        Err(ApiError::conflict(format!("{what} already exists")))
    }

    /// Read-modify-write of `key` with compare-and-swap, retried a few times under contention.
    /// `f` changes the value and returns the events to record, or refuses.
    pub async fn update<T, F>(&self, key: &str, what: &str, mut f: F) -> Result<T, ApiError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> Result<Vec<NewEvent>, ApiError>,
    {
        for _ in 0..5 {
            let (mut v, rev) = self.get::<T>(key).await?.ok_or_else(|| ApiError::not_found(what))?;
            let events = f(&mut v)?;
            let r = self.commit(vec![Compare::unchanged(key, rev)], vec![Op::put(key, encode(&v)?)], events).await?;
            if r.succeeded {
                return Ok(v);
            }
        }
        Err(ApiError::conflict(format!("{what} is being changed concurrently; retry")))
    }
}
