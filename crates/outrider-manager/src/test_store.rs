//! A store for unit tests: the embedded store with what a test needs to see or provoke — how
//! many keys reads return, a transaction limit enforced as etcd does, a failure of the nth
//! transaction (a manager stopped between two), and the log of committed writes.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use outrider_store::{KeyValue, Op, Range, RedbStore, Store, StoreError, Txn, TxnResult, WatchStream};
use tempfile::TempDir;

/// The embedded store in a temporary directory, observed and limited.
pub struct TestStore {
    inner: RedbStore,
    /// Keys returned by reads since the last reset (tests store 0 into it).
    pub read: AtomicUsize,
    max_txn_ops: usize,
    /// Transactions to let through before one fails (`usize::MAX`: none fails).
    fail_after: AtomicUsize,
    /// The writes of every transaction that succeeded, in commit order.
    committed: Mutex<Vec<Vec<Op>>>,
    _dir: TempDir,
}

impl TestStore {
    /// A fresh store with no transaction limit.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self {
            inner: RedbStore::open(&dir.path().join("s.redb")).expect("a fresh embedded store"),
            read: AtomicUsize::new(0),
            max_txn_ops: usize::MAX,
            fail_after: AtomicUsize::new(usize::MAX),
            committed: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }

    /// The same store refusing, as etcd does, transactions with more than `limit` compares or
    /// operations in a branch (and telling callers so through `max_txn_ops`).
    pub fn with_max_txn_ops(mut self, limit: usize) -> Self {
        self.max_txn_ops = limit;
        self
    }

    /// Lets `n` more transactions through, then fails the next one as an unreachable store
    /// would (applying nothing), and then works again.
    pub fn fail_after(&self, n: usize) {
        self.fail_after.store(n, Ordering::SeqCst);
    }

    /// The writes of the transactions that succeeded, in commit order.
    pub fn committed(&self) -> Vec<Vec<Op>> {
        self.committed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many committed operations put or deleted `key`.
    pub fn writes_of(&self, key: &str) -> usize {
        let written = |op: &Op| match op {
            Op::Put { key: k, .. } | Op::Delete { key: k } => k == key,
            Op::PutStamped { .. } => false,
        };
        self.committed().iter().flatten().filter(|op| written(op)).count()
    }
}

#[async_trait]
impl Store for TestStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.read.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let r = self.inner.range(prefix).await?;
        self.read.fetch_add(r.kvs.len(), Ordering::SeqCst);
        Ok(r)
    }

    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Range, StoreError> {
        let r = self.inner.range_page(prefix, after, limit).await?;
        self.read.fetch_add(r.kvs.len(), Ordering::SeqCst);
        Ok(r)
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.count(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let longest = txn.compare.len().max(txn.success.len()).max(txn.failure.len());
        if longest > self.max_txn_ops {
            return Err(StoreError::Backend(format!(
                "too many operations in txn request ({longest} > {})",
                self.max_txn_ops
            )));
        }
        let left = self.fail_after.load(Ordering::SeqCst);
        if left != usize::MAX {
            self.fail_after.store(if left == 0 { usize::MAX } else { left - 1 }, Ordering::SeqCst);
            if left == 0 {
                return Err(StoreError::Unavailable("the test stopped the store".into()));
            }
        }
        let success = txn.success.clone();
        let r = self.inner.txn(txn).await?;
        if r.succeeded {
            self.committed.lock().unwrap_or_else(PoisonError::into_inner).push(success);
        }
        Ok(r)
    }

    async fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision().await
    }

    fn max_txn_ops(&self) -> usize {
        self.max_txn_ops
    }
}
