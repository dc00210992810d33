//! The etcd backend: the store's keys are etcd keys under an optional root prefix, its
//! revisions are etcd's, a transaction is one etcd transaction and a watch one etcd watch.
//!
//! Every request has a bounded time ([`REQUEST_TIMEOUT`]); an unreachable or silent etcd is
//! [`StoreError::Unavailable`]. Nothing is retried here: the gRPC channel reconnects by itself,
//! so the next operation after etcd returns succeeds. A watch ends with `Unavailable` when its
//! connection breaks, and with [`StoreError::Compacted`] when etcd compacted the revisions it
//! needs (resync with a range, as with the embedded store).
//!
//! While etcd is away, reads (`get`, `range`, `range_page`, `count`) are answered from the
//! last state seen: a background task keeps every key under the root in memory, read in full
//! and then followed by a watch (again after each reconnection). Writes, watches, `revision`
//! and `ready` still fail, so the manager answers writes 503 and reports itself not ready.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, GetResponse, KvClient,
    LeaseClient, ResponseHeader, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchClient, WatchOptions, WatchResponse,
};
use futures::StreamExt;
use tokio::{sync::Mutex, task::JoinHandle};
use tonic::Code;

use crate::{
    Compare, Held, KeyValue, Op, Range, Store, StoreError, Txn, TxnResult, WatchBatch, WatchEvent, WatchStream,
    last_state::LastState,
};

/// How long connecting to an etcd member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take before etcd counts as unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on idle connections, so a watch notices a vanished etcd.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Keys read per request: a long range is read in pages, all at the first page's revision.
const RANGE_PAGE: usize = 128;
/// Largest answer taken from etcd (a page of values well within etcd's own request limit).
const MAX_MESSAGE: usize = 16 << 20;
/// Tries of a stamped transaction while other writers keep moving the revision.
const STAMP_ATTEMPTS: usize = 16;
/// A key every changing write of an `EtcdStore` also puts, outside every store's keys (and
/// hidden from reads and watches): its mod revision is etcd's revision as long as only
/// Outrider stores write, which makes the guard of a stamped write one compare.
const FENCE: &[u8] = b"\0outrider/fence";
/// etcd's default `--max-txn-ops`.
pub const ETCD_MAX_TXN_OPS: usize = 128;
/// Pause of the last-state follower between two tries to reach etcd.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

/// The store on an etcd cluster (v3 API). Writes of one `EtcdStore` are serialized, as the
/// embedded store's are.
///
/// A [`Op::PutStamped`] needs the revision its transaction will commit at before sending it:
/// the store reads the current revision `r`, stamps `r + 1`, and sends the transaction nested
/// in one whose guard holds only if nothing changed after `r`; when the guard fails it tries
/// again. Every changing write of an `EtcdStore` also puts a fence key (a delete-only write
/// only when one of its keys exists), so the guard is "the fence's mod revision is `r`". When
/// some other client wrote last, the fence lags and the guard becomes "no key in etcd changed
/// after `r`", which scans the keyspace and cannot see another client's delete: give Outrider
/// an etcd keyspace of its own.
///
/// The last state answered while etcd is away holds every key under the root in memory.
pub struct EtcdStore {
    conn: Arc<Conn>,
    /// Operations of one transaction branch (see [`EtcdStore::with_max_txn_ops`]).
    max_txn_ops: usize,
    writer: Mutex<()>,
    last: Arc<RwLock<LastState>>,
    /// Reads are being answered from the last state (logged once per outage).
    stale: AtomicBool,
    follower: JoinHandle<()>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// The clients of one etcd cluster, and where the store's keys are in it.
pub(crate) struct Conn {
    pub(crate) kv: KvClient,
    watch: WatchClient,
    pub(crate) lease: LeaseClient,
    /// Prepended to every key (empty, or ending in `/`).
    root: String,
    /// The members, for error messages.
    pub(crate) endpoints: String,
}

impl EtcdStore {
    /// Connects to the members `endpoints` (`host:port`) and checks that etcd answers within
    /// a few seconds; every key is kept under `root` (empty, or ending in `/`).
    pub async fn connect(endpoints: &[String], root: &str) -> Result<Self, StoreError> {
        let conn = Arc::new(Conn::connect(endpoints, root).await?);
        let last = Arc::new(RwLock::new(LastState::default()));
        let follower = tokio::spawn(follow(conn.clone(), last.clone()));
        let max_txn_ops = txn_ops_within(ETCD_MAX_TXN_OPS);
        Ok(Self { conn, max_txn_ops, writer: Mutex::new(()), last, stale: AtomicBool::new(false), follower })
    }

    /// For an etcd whose `--max-txn-ops` is `etcd_limit` (128 by default).
    pub fn with_max_txn_ops(mut self, etcd_limit: usize) -> Self {
        self.max_txn_ops = txn_ops_within(etcd_limit);
        self
    }

    /// `r`, or when etcd is unavailable, `read` of the last state (once there is one).
    fn or_last<T>(&self, r: Result<T, StoreError>, read: impl FnOnce(&LastState) -> T) -> Result<T, StoreError> {
        match r {
            Err(StoreError::Unavailable(why)) => {
                let last = self.last.read().unwrap_or_else(PoisonError::into_inner);
                if !last.loaded() {
                    return Err(StoreError::Unavailable(why));
                }
                if !self.stale.swap(true, Ordering::Relaxed) {
                    tracing::warn!(reason = %why, "etcd unavailable: reads are answered from the last state seen");
                }
                Ok(read(&last))
            }
            Ok(v) => {
                if self.stale.swap(false, Ordering::Relaxed) {
                    tracing::info!("etcd answers again");
                }
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }
}

/// Keeps `last` equal to everything under the root: a full read, then a watch from its
/// revision; again after every failure, until the store is dropped.
async fn follow(conn: Arc<Conn>, last: Arc<RwLock<LastState>>) {
    loop {
        match conn.range("").await {
            Ok(all) => {
                let from = all.revision + 1;
                last.write().unwrap_or_else(PoisonError::into_inner).reset(all);
                match conn.watch("", from).await {
                    Ok(mut changes) => {
                        while let Some(Ok(batch)) = changes.next().await {
                            last.write().unwrap_or_else(PoisonError::into_inner).apply(batch);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "last-state watch refused"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the last state"),
        }
        tokio::time::sleep(FOLLOW_RETRY).await;
    }
}

impl Conn {
    async fn connect(endpoints: &[String], root: &str) -> Result<Self, StoreError> {
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let names = endpoints.join(",");
        let client = within(&names, Client::connect(&urls, Some(options))).await?;
        let conn = Self {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
            root: root.to_owned(),
            endpoints: names,
        };
        conn.revision().await?;
        Ok(conn)
    }

    pub(crate) async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        within(&self.endpoints, f).await
    }

    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// The etcd key range `[start, end)` of the keys starting with `prefix`.
    fn span(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.full(prefix).into_bytes();
        if start.is_empty() {
            // etcd's spelling of "every key".
            return (vec![0], vec![0]);
        }
        let end = prefix_end(&start);
        (start, end)
    }

    /// Up to `cap` keys of `[start, end)` (all of them when `None`), read in pages at one
    /// revision.
    async fn collect(&self, mut start: Vec<u8>, end: Vec<u8>, cap: Option<usize>) -> Result<Range, StoreError> {
        let mut kvs = Vec::new();
        let mut at = 0;
        loop {
            let want = cap.map_or(RANGE_PAGE, |c| c.saturating_sub(kvs.len()).min(RANGE_PAGE));
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(want as i64);
            if at > 0 {
                options = options.with_revision(at);
            }
            let mut kv = self.kv.clone();
            let page: GetResponse = self.call(kv.get(start, Some(options))).await?;
            if at == 0 {
                at = page.header().map_or(0, ResponseHeader::revision);
            }
            for item in page.kvs().iter().filter(|kv| kv.key() != FENCE) {
                kvs.push(to_kv(&self.root, item)?);
            }
            let full = cap.is_some_and(|c| kvs.len() >= c);
            match page.kvs().last() {
                Some(last) if page.more() && !full => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(Range { kvs, revision: revision_of(at) }),
            }
        }
    }

    fn etcd_txn(&self, txn: &Txn, next: u64) -> EtcdTxn {
        let compare: Vec<EtcdCompare> = txn
            .compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, i64::try_from(*revision).unwrap_or(-1))
                }
                Compare::Exists(key) => EtcdCompare::version(self.full(key), CompareOp::Greater, 0),
            })
            .collect();
        EtcdTxn::new().when(compare).and_then(self.branch(&txn.success, next)).or_else(self.branch(&txn.failure, next))
    }

    /// The etcd operations of `ops`, with the fence put when they change something.
    fn branch(&self, ops: &[Op], next: u64) -> Vec<TxnOp> {
        let deleted: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(ops.len() + 1);
        if !deleted.is_empty() && deleted.len() == ops.len() {
            // Before the deletes: the fence only if one of the keys exists.
            out.extend(self.fence_if_any_exists(&deleted).map(TxnOp::txn));
        }
        out.extend(ops.iter().map(|op| match op {
            Op::Put { key, value } => TxnOp::put(self.full(key), value.clone(), None),
            Op::PutStamped { key, value } => TxnOp::put(self.full(&Op::stamp(key, next)), value.clone(), None),
            Op::Delete { key } => TxnOp::delete(self.full(key), None),
        }));
        if deleted.len() < ops.len() {
            out.push(fence());
        }
        out
    }

    /// `if absent(k1) { if absent(k2) { … } else fence } else fence`: puts the fence once
    /// if any of `keys` exists (etcd's compares only combine with "and").
    fn fence_if_any_exists(&self, keys: &[&str]) -> Option<EtcdTxn> {
        keys.iter().rev().fold(None, |inner, key| {
            let absent = EtcdCompare::version(self.full(key), CompareOp::Equal, 0);
            let then: Vec<TxnOp> = inner.map(TxnOp::txn).into_iter().collect();
            Some(EtcdTxn::new().when([absent]).and_then(then).or_else([fence()]))
        })
    }

    /// A transaction with stamped keys: see [`EtcdStore`]. The caller holds the writer lock.
    async fn stamped_txn(&self, txn: &Txn) -> Result<TxnResult, StoreError> {
        for _ in 0..STAMP_ATTEMPTS {
            let mut kv = self.kv.clone();
            let read = self.call(kv.get(FENCE, None)).await?;
            let current = read.header().map_or(0, ResponseHeader::revision);
            let fenced = read.kvs().first().map_or(0, etcd_client::KeyValue::mod_revision);
            let next = revision_of(current) + 1;
            let unchanged = if fenced == current {
                EtcdCompare::mod_revision(FENCE, CompareOp::Equal, current)
            } else {
                tracing::debug!(current, fenced, "another etcd client wrote last: guarding on every key");
                EtcdCompare::mod_revision(vec![0], CompareOp::Less, current.saturating_add(1)).with_range(vec![0])
            };
            let guarded = EtcdTxn::new().when([unchanged]).and_then([TxnOp::txn(self.etcd_txn(txn, next))]);
            let mut kv = self.kv.clone();
            let resp = self.call(kv.txn(guarded)).await?;
            if !resp.succeeded() {
                continue;
            }
            let succeeded = match resp.op_responses().first() {
                Some(TxnOpResponse::Txn(inner)) => inner.succeeded(),
                _ => return Err(StoreError::Backend("etcd answered a nested transaction without its outcome".into())),
            };
            let revision = revision_of(resp.header().map_or(0, ResponseHeader::revision));
            let branch = if succeeded { &txn.success } else { &txn.failure };
            if revision != next && branch.iter().any(|op| matches!(op, Op::PutStamped { .. })) {
                tracing::error!(revision, stamped = next, "another etcd client deleted a key during a stamped write");
            }
            return Ok(TxnResult { succeeded, revision });
        }
        Err(StoreError::Unavailable(format!(
            "the etcd revision kept moving during {STAMP_ATTEMPTS} tries of a stamped write"
        )))
    }

    /// Whether the revisions from `from` on are compacted away.
    async fn compacted(&self, from: i64) -> Result<bool, StoreError> {
        if from > i64::try_from(self.revision().await?).unwrap_or(i64::MAX) {
            return Ok(false);
        }
        let mut kv = self.kv.clone();
        let probe = kv.get(vec![0], Some(GetOptions::new().with_count_only().with_revision(from)));
        match tokio::time::timeout(REQUEST_TIMEOUT, probe).await {
            Ok(Err(etcd_client::Error::GRpcStatus(s)))
                if s.code() == Code::OutOfRange && s.message().contains("compacted") =>
            {
                Ok(true)
            }
            Ok(r) => r.map(|_| false).map_err(|e| convert(&self.endpoints, e)),
            Err(_) => Err(late(&self.endpoints)),
        }
    }
}

/// The first key after every key starting with `key` (`[0]`: the end of the keyspace).
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The operations a branch may hold under etcd's `--max-txn-ops` of `etcd_limit`. etcd counts
/// a nested transaction's operations against its parents' budget: a stamped write nests once,
/// and a delete-only branch nests one level per key (the fence), so half of it fits every
/// shape (63 of 128).
fn txn_ops_within(etcd_limit: usize) -> usize {
    (etcd_limit.saturating_sub(1) / 2).max(1)
}

pub(crate) fn fence() -> TxnOp {
    TxnOp::put(FENCE, Vec::new(), None)
}

pub(crate) fn revision_of(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn late(endpoints: &str) -> StoreError {
    StoreError::Unavailable(format!("etcd at {endpoints} did not answer within {}s", REQUEST_TIMEOUT.as_secs()))
}

/// Runs one request with the request timeout.
pub(crate) async fn within<T>(
    endpoints: &str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| convert(endpoints, e)),
        Err(_) => Err(late(endpoints)),
    }
}

/// Connection trouble is `Unavailable` (a status with a source is the client's own, from its
/// connection); anything else etcd refused is `Backend`.
fn convert(endpoints: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable(format!("etcd at {endpoints}: {e}")),
        E::GRpcStatus(s)
            if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
                || std::error::Error::source(&s).is_some() =>
        {
            StoreError::Unavailable(format!("etcd at {endpoints}: {}", s.message()))
        }
        E::GRpcStatus(s) if s.message().contains("too many operations") => StoreError::Backend(format!(
            "etcd refused a transaction as too long ({}): raise its --max-txn-ops, and the store URL's max-txn-ops with it",
            s.message()
        )),
        e => StoreError::Backend(format!("etcd: {e}")),
    }
}

fn to_key(root: &str, raw: &[u8]) -> Result<String, StoreError> {
    std::str::from_utf8(raw).ok().and_then(|k| k.strip_prefix(root)).map(str::to_owned).ok_or_else(|| {
        StoreError::Backend(format!("etcd key {:?} is not text under {root:?}", String::from_utf8_lossy(raw)))
    })
}

fn to_kv(root: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: to_key(root, kv.key())?,
        value: kv.value().to_vec(),
        create_revision: revision_of(kv.create_revision()),
        mod_revision: revision_of(kv.mod_revision()),
    })
}

impl Conn {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.kv.clone();
        let resp = self.call(kv.get(self.full(key), None)).await?;
        resp.kvs().first().map(|kv| to_kv(&self.root, kv)).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let (start, end) = self.span(prefix);
        self.collect(start, end, None).await
    }

    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Range, StoreError> {
        let (mut start, end) = self.span(prefix);
        if let Some(after) = after.filter(|a| *a >= prefix) {
            start = self.full(after).into_bytes();
            start.push(0);
        }
        if limit == 0 || (end != [0] && start >= end) {
            return Ok(Range { kvs: Vec::new(), revision: self.revision().await? });
        }
        self.collect(start, end, Some(limit)).await
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let (start, end) = self.span(prefix);
        let mut kv = self.kv.clone();
        let counted = FENCE >= start.as_slice() && (end == [0] || FENCE < end.as_slice());
        let resp = self.call(kv.get(start, Some(GetOptions::new().with_range(end).with_count_only()))).await?;
        let mut n = u64::try_from(resp.count()).unwrap_or(0);
        if counted && n > 0 {
            let fence = self.call(kv.get(FENCE, Some(GetOptions::new().with_count_only()))).await?;
            n = n.saturating_sub(u64::try_from(fence.count()).unwrap_or(0));
        }
        Ok(n)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        if txn.success.iter().chain(&txn.failure).any(|op| matches!(op, Op::PutStamped { .. })) {
            return self.stamped_txn(&txn).await;
        }
        let mut kv = self.kv.clone();
        let resp = self.call(kv.txn(self.etcd_txn(&txn, 0))).await?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: revision_of(resp.header().map_or(0, ResponseHeader::revision)),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError> {
        let from = i64::try_from(from_revision)
            .map_err(|_| StoreError::Backend(format!("revision {from_revision} is beyond etcd's")))?;
        let compacted = from > 0 && self.compacted(from).await?;
        let (start, end) = self.span(prefix);
        let mut client = self.watch.clone();
        let options = WatchOptions::new().with_range(end).with_start_revision(from);
        let mut stream = self.call(client.watch(start, Some(options))).await?;
        // etcd confirms the watch first; a compacted start then comes as a cancellation.
        let mut first = self.call(stream.message()).await?;
        if compacted && first.as_ref().is_some_and(|r| r.created() && r.compact_revision() == 0) {
            first = self.call(stream.message()).await?;
        }
        match first {
            Some(r) if r.compact_revision() > 0 => {
                return Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest: revision_of(r.compact_revision()),
                });
            }
            Some(r) if r.canceled() => {
                return Err(StoreError::Backend(format!("etcd refused the watch: {}", r.cancel_reason())));
            }
            Some(_) => {}
            None => return Err(StoreError::Unavailable(format!("etcd at {} closed the watch", self.endpoints))),
        }
        let follow = Follow {
            stream,
            pending: VecDeque::new(),
            root: self.root.clone(),
            endpoints: self.endpoints.clone(),
            last: from_revision.saturating_sub(1),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(follow, Follow::next)))
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let mut kv = self.kv.clone();
        let resp = self.call(kv.get(vec![0], Some(GetOptions::new().with_count_only()))).await?;
        Ok(revision_of(resp.header().map_or(0, ResponseHeader::revision)))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.or_last(self.conn.get(key).await, |s| s.get(key))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        self.or_last(self.conn.range(prefix).await, |s| s.range_page(prefix, None, None))
    }

    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Range, StoreError> {
        self.or_last(self.conn.range_page(prefix, after, limit).await, |s| s.range_page(prefix, after, Some(limit)))
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.or_last(self.conn.count(prefix).await, |s| s.count(prefix))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let _writer = self.writer.lock().await;
        self.conn.txn(txn).await
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError> {
        self.conn.watch(prefix, from_revision).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.conn.revision().await
    }

    fn max_txn_ops(&self) -> usize {
        self.max_txn_ops
    }

    async fn hold(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Option<Held>, StoreError> {
        self.conn.hold(key, value, ttl).await
    }
}

/// The state of a watch stream: etcd's answers, cut into one batch per revision.
struct Follow {
    stream: etcd_client::WatchStream,
    /// Batches of the last answer not yet handed out (bounded by one answer's size).
    pending: VecDeque<WatchBatch>,
    root: String,
    endpoints: String,
    /// The last revision received.
    last: u64,
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<WatchBatch, StoreError>, Self)> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some((Ok(batch), self));
            }
            if self.done {
                return None;
            }
            let outcome = match self.stream.message().await {
                Err(e) => Err(convert(&self.endpoints, e)),
                Ok(None) => Err(StoreError::Unavailable(format!("etcd at {} closed the watch", self.endpoints))),
                Ok(Some(r)) if r.compact_revision() > 0 => {
                    Err(StoreError::Compacted { requested: self.last + 1, oldest: revision_of(r.compact_revision()) })
                }
                Ok(Some(r)) if r.canceled() => {
                    Err(StoreError::Unavailable(format!("etcd cancelled the watch: {}", r.cancel_reason())))
                }
                Ok(Some(r)) => self.queue(&r),
            };
            if let Err(e) = outcome {
                self.done = true;
                return Some((Err(e), self));
            }
        }
    }

    /// Queues the events of `r`, one batch per revision.
    fn queue(&mut self, r: &WatchResponse) -> Result<(), StoreError> {
        for event in r.events() {
            let Some(kv) = event.kv().filter(|kv| kv.key() != FENCE) else { continue };
            let revision = revision_of(kv.mod_revision());
            let change = match event.event_type() {
                EventType::Put => WatchEvent::Put(to_kv(&self.root, kv)?),
                EventType::Delete => WatchEvent::Delete { key: to_key(&self.root, kv.key())?, mod_revision: revision },
            };
            match self.pending.back_mut() {
                Some(b) if b.revision == revision => b.events.push(change),
                _ => self.pending.push_back(WatchBatch { revision, events: vec![change] }),
            }
            self.last = revision;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_the_next_key_of_its_length() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
