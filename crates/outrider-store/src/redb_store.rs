//! The embedded backend: one redb file, ACID and durable on commit.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{
    Compare, KeyValue, Op, Range, Store, StoreError, Txn, TxnResult, WatchBatch, WatchEvent, WatchStream,
    watch_hub::WatchHub,
};

/// key → 8 bytes create revision, 8 bytes mod revision (little endian), value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// "revision" → the global revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Transactions kept for watchers that start from a past revision…
const WATCH_HISTORY: usize = 8192;
/// …and at most this many bytes of their keys and values.
const WATCH_HISTORY_BYTES: usize = 32 << 20;

/// The embedded store: a redb database file, a global revision kept inside every write
/// transaction, and an in-memory hub that fans committed changes out to watchers.
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Serializes commit + publish so watchers see transactions in revision order.
    writer: Mutex<()>,
    hub: WatchHub,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(StoreError::backend)?;
        let w = db.begin_write().map_err(StoreError::backend)?;
        let revision = {
            w.open_table(KV).map_err(StoreError::backend)?;
            let meta = w.open_table(META).map_err(StoreError::backend)?;
            meta.get(REVISION_KEY).map_err(StoreError::backend)?.map(|v| v.value()).unwrap_or(0)
        };
        w.commit().map_err(StoreError::backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(()),
                hub: WatchHub::new(revision, WATCH_HISTORY, WATCH_HISTORY_BYTES),
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|_| StoreError::Closed)?
    }
}

fn encode(create: u64, modr: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&create.to_le_bytes());
    v.extend_from_slice(&modr.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(StoreError::Backend(format!("corrupt record for key {key:?}")));
    }
    let (c, rest) = raw.split_at(8);
    let (m, value) = rest.split_at(8);
    let n = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    Ok(KeyValue { key: key.to_owned(), value: value.to_vec(), create_revision: n(c), mod_revision: n(m) })
}

impl Inner {
    fn read_revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, StoreError> {
        Ok(meta.get(REVISION_KEY).map_err(StoreError::backend)?.map(|v| v.value()).unwrap_or(0))
    }

    fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = self.db.begin_write().map_err(StoreError::backend)?;
        let (result, events) = {
            let mut kv = w.open_table(KV).map_err(StoreError::backend)?;
            let mut meta = w.open_table(META).map_err(StoreError::backend)?;
            let current = Self::read_revision(&meta)?;
            let mut succeeded = true;
            for c in &txn.compare {
                let holds = match c {
                    Compare::ModRevision { key, revision } => {
                        let found = kv.get(key.as_str()).map_err(StoreError::backend)?;
                        let modr = match found {
                            Some(raw) => decode(key, raw.value())?.mod_revision,
                            None => 0,
                        };
                        modr == *revision
                    }
                    Compare::Exists(key) => kv.get(key.as_str()).map_err(StoreError::backend)?.is_some(),
                };
                if !holds {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded { txn.success } else { txn.failure };
            let next = current + 1;
            let mut events = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        let create = match kv.get(key.as_str()).map_err(StoreError::backend)? {
                            Some(raw) => decode(&key, raw.value())?.create_revision,
                            None => next,
                        };
                        kv.insert(key.as_str(), encode(create, next, &value).as_slice())
                            .map_err(StoreError::backend)?;
                        events.push(WatchEvent::Put(KeyValue {
                            key,
                            value,
                            create_revision: create,
                            mod_revision: next,
                        }));
                    }
                    Op::Delete { key } => {
                        if kv.remove(key.as_str()).map_err(StoreError::backend)?.is_some() {
                            events.push(WatchEvent::Delete { key, mod_revision: next });
                        }
                    }
                }
            }
            let revision = if events.is_empty() { current } else { next };
            if revision != current {
                meta.insert(REVISION_KEY, revision).map_err(StoreError::backend)?;
            }
            (TxnResult { succeeded, revision }, events)
        };
        if events.is_empty() {
            w.abort().map_err(StoreError::backend)?;
        } else {
            w.commit().map_err(StoreError::backend)?;
            self.hub.publish(WatchBatch { revision: result.revision, events });
        }
        Ok(result)
    }

    fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::backend)?;
        let kv = r.open_table(KV).map_err(StoreError::backend)?;
        let meta = r.open_table(META).map_err(StoreError::backend)?;
        let revision = Self::read_revision(&meta)?;
        let mut kvs = Vec::new();
        for item in kv.range(prefix..).map_err(StoreError::backend)? {
            let (k, v) = item.map_err(StoreError::backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            kvs.push(decode(k.value(), v.value())?);
        }
        Ok(Range { kvs, revision })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::backend)?;
        let kv = r.open_table(KV).map_err(StoreError::backend)?;
        kv.get(key).map_err(StoreError::backend)?.map(|raw| decode(key, raw.value())).transpose()
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::backend)?;
        let meta = r.open_table(META).map_err(StoreError::backend)?;
        Self::read_revision(&meta)
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |i| i.get(&key)).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |i| i.range(&prefix)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        self.blocking(move |i| i.txn(txn)).await
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError> {
        let current = self.revision().await?;
        self.inner.hub.watch(prefix, from_revision, current)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.blocking(|i| i.revision()).await
    }
}
