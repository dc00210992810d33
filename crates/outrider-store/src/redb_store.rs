//! The embedded backend: one redb file, ACID and durable on commit.

use std::{
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
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

/// Opens the database file (again).
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// The embedded store: a redb database file, a global revision kept inside every write
/// transaction, and an in-memory hub that fans committed changes out to watchers.
///
/// After a failed write (a full disk), redb refuses every later operation ("Previous I/O
/// error occurred"): the store then closes and reopens the file before the next operation,
/// so writes recover by themselves once space returns. Until a write succeeds again,
/// [`Store::ready`] probes with a write and reports the store not ready.
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` while a reopen failed.
    db: RwLock<Option<Database>>,
    open: Opener,
    /// A write failed: the handle refuses everything, reopen before the next operation.
    stale: AtomicBool,
    /// No write succeeded since the last failed one.
    failed: AtomicBool,
    /// Serializes commit + publish so watchers see transactions in revision order.
    writer: Mutex<()>,
    hub: WatchHub,
}

/// Creates the tables; returns the stored revision.
fn init(db: &Database) -> Result<u64, StoreError> {
    let w = db.begin_write().map_err(StoreError::backend)?;
    let revision = {
        w.open_table(KV).map_err(StoreError::backend)?;
        let meta = w.open_table(META).map_err(StoreError::backend)?;
        meta.get(REVISION_KEY).map_err(StoreError::backend)?.map(|v| v.value()).unwrap_or(0)
    };
    w.commit().map_err(StoreError::backend)?;
    Ok(revision)
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        Self::open_with(Box::new(move || Database::create(&path)))
    }

    fn open_with(open: Opener) -> Result<Self, StoreError> {
        let db = open().map_err(StoreError::backend)?;
        let revision = init(&db)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                open,
                stale: AtomicBool::new(false),
                failed: AtomicBool::new(false),
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

    /// Closes and reopens the database after a failed write (or a failed reopen).
    fn recover(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must be closed first: it holds the file's lock.
        *db = None;
        let fresh = (self.open)().map_err(|e| StoreError::Backend(format!("reopening after a failed write: {e}")))?;
        *db = Some(fresh);
        self.stale.store(false, Ordering::SeqCst);
        tracing::info!("store reopened after a failed write");
        Ok(())
    }

    /// Runs `f` on the open database, reopening it first after a failed write.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.stale.load(Ordering::SeqCst) || self.db.read().unwrap_or_else(|p| p.into_inner()).is_none() {
            self.recover()?;
        }
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = db.as_ref().ok_or_else(|| StoreError::Backend("the store is reopening".into()))?;
        f(db)
    }

    fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.with_db(|db| self.txn_on(db, txn));
        // Only a write that reached the disk proves the store writable again.
        match &r {
            Err(StoreError::Backend(e)) => {
                self.stale.store(true, Ordering::SeqCst);
                if !self.failed.swap(true, Ordering::SeqCst) {
                    tracing::error!(error = %e, "store write failed; the store reopens before the next operation");
                }
            }
            Ok(_) => self.failed.store(false, Ordering::SeqCst),
            Err(_) => {}
        }
        r
    }

    /// Whether a write reaches the disk now (only probed after a failed write).
    fn ready(&self) -> Result<(), StoreError> {
        if !self.failed.load(Ordering::SeqCst) {
            return self.with_db(|db| db.begin_read().map(|_| ()).map_err(StoreError::backend));
        }
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.with_db(init);
        match r {
            Ok(_) => self.failed.store(false, Ordering::SeqCst),
            Err(_) => self.stale.store(true, Ordering::SeqCst),
        }
        r.map(|_| ())
    }

    fn txn_on(&self, db: &Database, txn: Txn) -> Result<TxnResult, StoreError> {
        let w = db.begin_write().map_err(StoreError::backend)?;
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
                let stamped = matches!(op, Op::PutStamped { .. });
                match op {
                    Op::Put { key, value } | Op::PutStamped { key, value } => {
                        let key = if stamped { Op::stamp(&key, next) } else { key };
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
        self.with_db(|db| Self::range_on(db, prefix))
    }

    fn range_on(db: &Database, prefix: &str) -> Result<Range, StoreError> {
        let r = db.begin_read().map_err(StoreError::backend)?;
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

    fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Range, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(StoreError::backend)?;
            let kv = r.open_table(KV).map_err(StoreError::backend)?;
            let meta = r.open_table(META).map_err(StoreError::backend)?;
            let revision = Self::read_revision(&meta)?;
            let start = match after {
                Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
                _ => std::ops::Bound::Included(prefix),
            };
            let mut kvs = Vec::new();
            for item in kv.range::<&str>((start, std::ops::Bound::Unbounded)).map_err(StoreError::backend)? {
                let (k, v) = item.map_err(StoreError::backend)?;
                if kvs.len() >= limit || !k.value().starts_with(prefix) {
                    break;
                }
                kvs.push(decode(k.value(), v.value())?);
            }
            Ok(Range { kvs, revision })
        })
    }

    fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(StoreError::backend)?;
            let kv = r.open_table(KV).map_err(StoreError::backend)?;
            let mut n = 0;
            for item in kv.range(prefix..).map_err(StoreError::backend)? {
                let (k, _) = item.map_err(StoreError::backend)?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(StoreError::backend)?;
            let kv = r.open_table(KV).map_err(StoreError::backend)?;
            kv.get(key).map_err(StoreError::backend)?.map(|raw| decode(key, raw.value())).transpose()
        })
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let r = db.begin_read().map_err(StoreError::backend)?;
            let meta = r.open_table(META).map_err(StoreError::backend)?;
            Self::read_revision(&meta)
        })
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

    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Range, StoreError> {
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        self.blocking(move |i| i.range_page(&prefix, after.as_deref(), limit)).await
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |i| i.count(&prefix)).await
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

    async fn ready(&self) -> Result<(), StoreError> {
        self.blocking(|i| i.ready()).await
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::OpenOptions, io, sync::atomic::AtomicBool};

    use redb::{StorageBackend, backends::FileBackend};

    use super::*;

    /// A file whose writes fail with "no space left on device" while `full` is set.
    #[derive(Debug)]
    struct Disk {
        file: FileBackend,
        full: Arc<AtomicBool>,
    }

    impl Disk {
        fn check(&self) -> Result<(), io::Error> {
            if self.full.load(Ordering::SeqCst) { Err(io::Error::from_raw_os_error(28)) } else { Ok(()) }
        }
    }

    impl StorageBackend for Disk {
        fn len(&self) -> Result<u64, io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> Result<(), io::Error> {
            self.file.close()
        }
    }

    fn put(key: &str, value: &str) -> Txn {
        Txn { compare: vec![], success: vec![Op::put(key, value.as_bytes().to_vec())], failure: vec![] }
    }

    #[tokio::test]
    async fn writes_recover_once_space_returns_and_ready_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let full = Arc::new(AtomicBool::new(false));
        let disk = full.clone();
        let store = RedbStore::open_with(Box::new(move || {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
            let backend = Disk { file: FileBackend::new(file)?, full: disk.clone() };
            Database::builder().create_with_backend(backend)
        }))
        .unwrap();
        store.txn(put("a", "1")).await.unwrap();
        store.ready().await.unwrap();

        full.store(true, Ordering::SeqCst);
        for i in 0..3 {
            assert!(store.txn(put("b", &i.to_string())).await.is_err(), "a write on a full disk fails");
            assert!(store.ready().await.is_err(), "not ready while writes fail");
        }

        full.store(false, Ordering::SeqCst);
        store.ready().await.unwrap();
        store.txn(put("c", "3")).await.unwrap();
        let got: Vec<(String, Vec<u8>)> =
            store.range("").await.unwrap().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(
            got,
            [("a".to_owned(), b"1".to_vec()), ("c".to_owned(), b"3".to_vec())],
            "nothing acknowledged lost"
        );
    }
}
