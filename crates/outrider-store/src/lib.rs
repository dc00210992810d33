//! Outrider's store: one interface shaped after etcd's model — keys, one global revision,
//! compare-and-swap transactions, watch from a revision — so backends are interchangeable.
//!
//! Architecture invariant: nothing outside this crate knows which engine holds the data.
//! Callers open a store by URL ([`open`]); the embedded backend ([`RedbStore`], `redb:PATH`)
//! keeps everything in one redb file in the data dir; a write is durable once [`Store::txn`]
//! returns. The etcd backend ([`EtcdStore`], `etcd://H:P[,H:P…][/prefix]`) keeps it in an
//! etcd cluster, with etcd's own revisions.

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod etcd_lease;
mod etcd_store;
mod held;
mod last_state;
mod redb_store;
#[cfg(feature = "conformance")]
pub mod test_etcd;
mod types;
mod url;
mod watch_hub;

use std::{pin::Pin, time::Duration};

use async_trait::async_trait;
use futures::Stream;

pub use error::StoreError;
pub use etcd_store::{ETCD_MAX_TXN_OPS, EtcdStore};
pub use held::{Held, campaign};
pub use redb_store::RedbStore;
pub use types::{Compare, KeyValue, Op, Range, Txn, TxnResult, WatchBatch, WatchEvent};
pub use url::{embedded_url, open};

/// A stream of committed changes under a prefix, one batch per transaction, in revision order.
/// It ends with [`StoreError::Compacted`] when the watcher fell too far behind: reread with
/// [`Store::range`] and watch again from the revision it returned.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, StoreError>> + Send>>;

/// The store interface every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key starting with `prefix`, in key order, and the revision of that snapshot.
    async fn range(&self, prefix: &str) -> Result<Range, StoreError>;
    /// At most `limit` keys under `prefix` that sort after `after` (all of them when `None`),
    /// in key order, and the revision of that snapshot: a page of a long range.
    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Range, StoreError> {
        let mut r = self.range(prefix).await?;
        r.kvs.retain(|kv| after.is_none_or(|a| kv.key.as_str() > a));
        r.kvs.truncate(limit);
        Ok(r)
    }
    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        Ok(self.range(prefix).await?.kvs.len() as u64)
    }
    /// Applies `txn.success` if every compare holds, else `txn.failure`, atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;
    /// Changes under `prefix` with revision `from_revision` or later (0: from now on).
    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError>;
    /// The current revision.
    async fn revision(&self) -> Result<u64, StoreError>;
    /// The most operations one branch of a transaction may hold (etcd refuses longer ones);
    /// callers that write many keys in independent transactions split by it ([`Op::batches`]).
    /// By default, no limit.
    fn max_txn_ops(&self) -> usize {
        usize::MAX
    }
    /// Puts `key` = `value` unless `key` exists, for as long as this process lives and keeps
    /// the returned [`Held`] (a lease of `ttl` kept alive in the background: when the process
    /// dies the key goes within `ttl`); `None` when the key exists. Several processes that
    /// share a store elect a leader with it ([`campaign`]) and show they are alive. By default
    /// (a store that only one process opens) nothing is written and the hold always succeeds.
    async fn hold(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Option<Held>, StoreError> {
        let _ = (value, ttl);
        Ok(Some(Held::sole(key)))
    }
    /// Whether the store can take writes now (readiness); by default, whether it answers.
    async fn ready(&self) -> Result<(), StoreError> {
        self.revision().await.map(|_| ())
    }
}
