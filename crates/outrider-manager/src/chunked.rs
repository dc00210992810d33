//! Writes longer than one store transaction. etcd takes at most `Store::max_txn_ops`
//! operations per transaction, and a plan step, a rollback or a defective mark writes a record
//! or a target for every instance and cell it touches. A [`Chunked`] write — many data
//! operations, then the `record` that says they happened (a plan, a version) with its events —
//! is applied so that it is as safe as one transaction:
//!
//! 1. When all of it fits in one transaction, it is one transaction, compared on its `guard`
//!    and on its intent key being absent.
//! 2. Else its **intent** is stored first: a header at the intent key (compared on the guard
//!    and absent) holding the guard and the last transaction's operations, and the data in
//!    parts (`write-parts/{nonce}/{i}`, one transaction's worth each); the header says
//!    `ready` once every part is stored. From then on the write is decided: whoever finds the
//!    intent finishes it ([`finish_found`], which the executor runs before stepping plans).
//! 3. Each part is applied by a transaction that deletes it, compared on it: no part is
//!    applied twice, even by two finishers at once.
//! 4. The record, the events and the intent's removal come last, in one transaction, so that
//!    nothing reports the write done before all of its data landed (events that do not fit
//!    beside the record go in the last parts, after the data).
//!
//! Every transaction compares the guard and the header's revision; other writers of the same
//! record compare its intent key absent, so none interleaves with a long write. An intent
//! found not ready (its writer stopped while storing parts — or, in another manager, is still
//! storing them: its next transaction is refused and it starts again) is removed with its
//! parts: none of it was applied. A guard found broken abandons the write the same way (what it applied
//! stays; the caller computes again from the store).
//!
//! Every transaction of a write goes through one function (`send`), which adds the caller's
//! `fence` compares: the executor passes its own, so each chunk of a plan step is fenced.

use std::collections::BTreeSet;

use outrider_store::{Compare, KeyValue, Op, Txn, TxnResult};
use serde::{Deserialize, Serialize};

use crate::{
    Error, keys,
    repo::{NewEvent, Repo, decode, encode},
};

/// Most bytes of parts stored by one transaction (etcd takes requests of 1.5 MiB by default).
const PART_BYTES: usize = 512 << 10;

/// Parts read at once while applying an intent.
const PART_PAGE: usize = 8;

/// A write that may be longer than one transaction (see the module's documentation).
#[derive(Debug)]
pub struct Chunked {
    /// Its intent key (`keys::plan_write`, `keys::version_write`): the record's.
    pub intent: String,
    /// Compares that must hold for the write, rechecked by each of its transactions.
    pub guard: Vec<Compare>,
    /// The data, applied in order (a record before the cell target it pins).
    pub data: Vec<Op>,
    /// The record that says the write happened, always in the last transaction.
    pub record: Vec<Op>,
    /// Events to record with it.
    pub events: Vec<NewEvent>,
}

/// A long write's header, stored at its intent key while it is applied.
#[derive(Serialize, Deserialize)]
struct Intent {
    /// Its parts are under `write-parts/{nonce}/`.
    nonce: String,
    /// How many parts it was stored with.
    parts: usize,
    /// Every part is stored: the write is decided.
    ready: bool,
    guard: Vec<StoredCompare>,
    /// The last transaction's operations: the record and events.
    last: Vec<StoredOp>,
}

/// A [`Compare`] as stored in an intent.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredCompare {
    ModRevision { key: String, revision: u64 },
    Exists { key: String },
}

/// An [`Op`] as stored in an intent (the manager's values are JSON text).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredOp {
    Put { key: String, value: String },
    PutStamped { key: String, value: String },
    Delete { key: String },
}

impl From<&Compare> for StoredCompare {
    fn from(c: &Compare) -> Self {
        match c {
            Compare::ModRevision { key, revision } => Self::ModRevision { key: key.clone(), revision: *revision },
            Compare::Exists(key) => Self::Exists { key: key.clone() },
        }
    }
}

impl StoredCompare {
    fn compare(&self) -> Compare {
        match self {
            Self::ModRevision { key, revision } => Compare::unchanged(key, *revision),
            Self::Exists { key } => Compare::Exists(key.clone()),
        }
    }
}

impl StoredOp {
    fn of(op: &Op) -> Result<Self, Error> {
        let text = |key: &str, value: &[u8]| {
            String::from_utf8(value.to_vec())
                .map_err(|_| Error::internal(format!("a long write holds a value at {key} that is not text")))
        };
        Ok(match op {
            Op::Put { key, value } => Self::Put { key: key.clone(), value: text(key, value)? },
            Op::PutStamped { key, value } => Self::PutStamped { key: key.clone(), value: text(key, value)? },
            Op::Delete { key } => Self::Delete { key: key.clone() },
        })
    }

    fn op(self) -> Op {
        match self {
            Self::Put { key, value } => Op::put(key, value),
            Self::PutStamped { key, value } => Op::put_stamped(key, value),
            Self::Delete { key } => Op::delete(key),
        }
    }
}

fn stored(ops: &[Op]) -> Result<Vec<StoredOp>, Error> {
    ops.iter().map(StoredOp::of).collect()
}

/// Applies `w` if its guard holds and no other long write of its record is under way. The
/// revision of its last transaction, or `None` when it was refused (nothing of it applied,
/// or — a guard broken midway — abandoned: compute again from the store).
pub async fn commit(repo: &Repo, fence: &[Compare], w: Chunked) -> Result<Option<u64>, Error> {
    let limit = repo.store().max_txn_ops();
    let events = w.events.into_iter().map(|e| repo.event_ops(e)).collect::<Result<Vec<_>, _>>()?;
    let total = w.data.len() + w.record.len() + events.iter().map(Vec::len).sum::<usize>();
    if total <= limit {
        let mut compare = w.guard;
        compare.push(Compare::absent(&w.intent));
        let mut ops = w.data;
        ops.extend(w.record);
        ops.extend(events.into_iter().flatten());
        let r = send(repo, fence, compare, ops).await?;
        return Ok(r.succeeded.then_some(r.revision));
    }
    let Some(_claim) = repo.claim(&w.intent) else { return Ok(None) };
    let (parts, last) = split(w.data, w.record, events, limit);
    tracing::debug!(intent = %w.intent, parts = parts.len(), "a write longer than one transaction");
    let Some((intent, revision)) = store_intent(repo, fence, &w.intent, &w.guard, &parts, &last).await? else {
        return Ok(None);
    };
    apply(repo, fence, &w.intent, &intent, revision).await
}

/// Whether a long write of the record whose intent key is `key` is under way.
pub async fn under_way(repo: &Repo, key: &str) -> Result<bool, Error> {
    repo.exists(key).await
}

/// Finishes every long write found in the store — applies a ready one, removes one whose
/// writer stopped before it was ready — but those this process is applying itself, and
/// those that could not be finished now (logged): their intent keys are returned.
pub async fn finish_found(repo: &Repo, fence: &[Compare]) -> Result<BTreeSet<String>, Error> {
    let found = repo.store().range(keys::WRITES).await?;
    let mut left = BTreeSet::new();
    for kv in &found.kvs {
        let Some(_claim) = repo.claim(&kv.key) else {
            left.insert(kv.key.clone());
            continue;
        };
        if let Err(e) = finish(repo, fence, kv).await {
            tracing::warn!(intent = %kv.key, error = %e, "cannot finish a long write found under way; retrying later");
            left.insert(kv.key.clone());
        }
    }
    Ok(left)
}

/// Finishes the long write whose header `kv` holds (see [`finish_found`]).
async fn finish(repo: &Repo, fence: &[Compare], kv: &KeyValue) -> Result<(), Error> {
    let intent: Intent = decode(&kv.key, &kv.value)?;
    if intent.ready {
        tracing::info!(intent = %kv.key, parts = intent.parts, "finishing a long write found under way");
        apply(repo, fence, &kv.key, &intent, kv.mod_revision).await?;
    } else {
        tracing::info!(intent = %kv.key, "removing a long write left before it was decided (none of it applied)");
        discard(repo, &kv.key, kv.mod_revision, &intent.nonce).await?;
    }
    Ok(())
}

/// The parts of a long write (each fits a transaction beside the removal of its part) and its
/// last transaction: the record and the latest events that fit beside it and the intent's
/// removal; earlier events go in the parts, after the data.
fn split(data: Vec<Op>, record: Vec<Op>, mut events: Vec<Vec<Op>>, limit: usize) -> (Vec<Vec<Op>>, Vec<Op>) {
    let mut room = limit.saturating_sub(record.len() + 1);
    let mut keep = events.len();
    while keep > 0 && events[keep - 1].len() <= room {
        room -= events[keep - 1].len();
        keep -= 1;
    }
    let mut last = record;
    last.extend(events.split_off(keep).into_iter().flatten());
    let groups = data.into_iter().map(|op| vec![op]).chain(events).collect();
    (Op::batches(groups, limit.saturating_sub(1).max(1)), last)
}

/// Stores the intent at `key` with its `parts`: the header (compared on `guard` and absent)
/// with the first parts, then the others, then the header `ready`. The intent and the header's
/// revision, or `None` when refused (nothing is left behind then).
async fn store_intent(
    repo: &Repo,
    fence: &[Compare],
    key: &str,
    guard: &[Compare],
    parts: &[Vec<Op>],
    last: &[Op],
) -> Result<Option<(Intent, u64)>, Error> {
    let nonce = format!("{:016x}", rand::random::<u64>());
    let mut puts = Vec::with_capacity(parts.len());
    for (i, ops) in parts.iter().enumerate() {
        puts.push(Op::put(keys::write_part(&nonce, i), encode(&stored(ops)?)?));
    }
    let mut intent = Intent {
        nonce,
        parts: parts.len(),
        ready: false,
        guard: guard.iter().map(StoredCompare::from).collect(),
        last: stored(last)?,
    };
    let packs = pack(puts, repo.store().max_txn_ops().saturating_sub(1).max(1));
    let mut revision = 0;
    for (i, mut ops) in packs.iter().cloned().enumerate() {
        let (first, ready) = (i == 0, i + 1 == packs.len());
        let compare = if first {
            guard.iter().cloned().chain([Compare::absent(key)]).collect()
        } else {
            vec![Compare::unchanged(key, revision)]
        };
        if first || ready {
            intent.ready = ready;
            ops.push(Op::put(key, encode(&intent)?));
        }
        let r = send(repo, fence, compare, ops).await?;
        if !r.succeeded {
            if !first {
                discard(repo, key, revision, &intent.nonce).await?;
            }
            return Ok(None);
        }
        if first || ready {
            revision = r.revision;
        }
    }
    Ok(Some((intent, revision)))
}

/// `puts` in transactions of at most `cap` operations and about [`PART_BYTES`] bytes.
fn pack(puts: Vec<Op>, cap: usize) -> Vec<Vec<Op>> {
    let mut out: Vec<Vec<Op>> = Vec::new();
    let mut bytes = 0;
    for op in puts {
        let size = match &op {
            Op::Put { value, .. } | Op::PutStamped { value, .. } => value.len(),
            Op::Delete { .. } => 0,
        };
        match out.last_mut() {
            Some(last) if last.len() < cap && bytes + size <= PART_BYTES => {
                last.push(op);
                bytes += size;
            }
            _ => {
                out.push(vec![op]);
                bytes = size;
            }
        }
    }
    out
}

/// Applies the ready intent at `key` (header at `revision`): its remaining parts, then its
/// last transaction. The last transaction's revision, or `None` when another finisher or a
/// broken guard ended it, or the fence refused.
async fn apply(
    repo: &Repo,
    fence: &[Compare],
    key: &str,
    intent: &Intent,
    revision: u64,
) -> Result<Option<u64>, Error> {
    let guard: Vec<Compare> = intent.guard.iter().map(StoredCompare::compare).collect();
    let holds_with = |more: Option<Compare>| {
        let mut c = guard.clone();
        c.push(Compare::unchanged(key, revision));
        c.extend(more);
        c
    };
    let prefix = keys::write_parts(&intent.nonce);
    let mut after: Option<String> = None;
    loop {
        let page = repo.store().range_page(&prefix, after.as_deref(), PART_PAGE).await?;
        let Some(tail) = page.kvs.last() else { break };
        after = Some(tail.key.clone());
        for kv in &page.kvs {
            let part: Vec<StoredOp> = decode(&kv.key, &kv.value)?;
            let mut ops: Vec<Op> = part.into_iter().map(StoredOp::op).collect();
            ops.push(Op::delete(&kv.key));
            let this_part = Compare::unchanged(&kv.key, kv.mod_revision);
            let r = send(repo, fence, holds_with(Some(this_part.clone())), ops).await?;
            if !r.succeeded && !go_on_after_refusal(repo, key, revision, intent, &guard, Some(&this_part)).await? {
                return Ok(None);
            }
        }
    }
    let mut ops: Vec<Op> = intent.last.iter().cloned().map(StoredOp::op).collect();
    ops.push(Op::delete(key));
    let r = send(repo, fence, holds_with(None), ops).await?;
    if !r.succeeded {
        go_on_after_refusal(repo, key, revision, intent, &guard, None).await?;
        return Ok(None);
    }
    Ok(Some(r.revision))
}

/// After a transaction of the intent at `key` was refused: whether to go on with the next
/// part (this `part` was applied by another finisher). Not when another finisher ended the
/// intent, when the fence refused, or when the guard is broken — then the intent is abandoned.
async fn go_on_after_refusal(
    repo: &Repo,
    key: &str,
    revision: u64,
    intent: &Intent,
    guard: &[Compare],
    part: Option<&Compare>,
) -> Result<bool, Error> {
    if !holds(repo, &Compare::unchanged(key, revision)).await? {
        return Ok(false);
    }
    for c in guard {
        if !holds(repo, c).await? {
            tracing::warn!(intent = %key, compare = ?c, "a long write's guard no longer holds: abandoning it");
            discard(repo, key, revision, &intent.nonce).await?;
            return Ok(false);
        }
    }
    match part {
        Some(part) => Ok(!holds(repo, part).await?),
        None => Ok(false),
    }
}

/// Whether `c` holds now.
async fn holds(repo: &Repo, c: &Compare) -> Result<bool, Error> {
    Ok(match c {
        Compare::ModRevision { key, revision } => {
            repo.store().get(key).await?.map_or(0, |kv| kv.mod_revision) == *revision
        }
        Compare::Exists(key) => repo.store().get(key).await?.is_some(),
    })
}

/// Removes the intent at `key` (if still at `revision`) and then its parts.
async fn discard(repo: &Repo, key: &str, revision: u64, nonce: &str) -> Result<(), Error> {
    let r = send(repo, &[], vec![Compare::unchanged(key, revision)], vec![Op::delete(key)]).await?;
    if !r.succeeded {
        return Ok(());
    }
    let parts = repo.store().range(&keys::write_parts(nonce)).await?;
    let deletes: Vec<Vec<Op>> = parts.kvs.iter().map(|kv| vec![Op::delete(&kv.key)]).collect();
    for ops in Op::batches(deletes, repo.store().max_txn_ops()) {
        send(repo, &[], Vec::new(), ops).await?;
    }
    Ok(())
}

/// Every transaction of a write: `compare` with the caller's `fence` added.
async fn send(repo: &Repo, fence: &[Compare], mut compare: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult, Error> {
    compare.extend_from_slice(fence);
    Ok(repo.store().txn(Txn::when(compare, ops)).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use outrider_store::Store;

    use super::*;
    use crate::test_store::TestStore;

    const RECORD: &str = "plans/t/p1";
    const INTENT: &str = "writes/t/plans/p1";

    fn data_key(i: usize) -> String {
        format!("catalog/t/overrides/svc/i{i:03}/mesh")
    }

    /// A store taking `limit` operations per transaction, with the record at some revision.
    async fn store(limit: usize) -> (Arc<TestStore>, Repo, u64) {
        let store = Arc::new(TestStore::new().with_max_txn_ops(limit));
        let repo = Repo::new(store.clone());
        let rev = store.txn(Txn::ops(vec![Op::put(RECORD, "\"v1\"")])).await.unwrap().revision;
        (store, repo, rev)
    }

    /// `n` data puts, the record, and `events` events, guarded on the record at `rev`.
    fn write(n: usize, events: usize, rev: u64) -> Chunked {
        let event =
            |i: usize| NewEvent::new("t", "plan.state", "executor", "plan/p1").reason(format!("e{i}")).plan("p1");
        Chunked {
            intent: INTENT.into(),
            guard: vec![Compare::unchanged(RECORD, rev)],
            data: (0..n).map(|i| Op::put(data_key(i), format!("{i}"))).collect(),
            record: vec![Op::put(RECORD, "\"v2\""), Op::put("plans-live/t/p1", "")],
            events: (0..events).map(event).collect(),
        }
    }

    async fn left_behind(store: &TestStore) -> u64 {
        store.count(keys::WRITES).await.unwrap() + store.count("write-parts/").await.unwrap()
    }

    async fn events(store: &TestStore) -> u64 {
        store.count(&keys::events_by_seq("t")).await.unwrap()
    }

    #[tokio::test]
    async fn a_write_that_fits_is_one_transaction() {
        let (store, repo, rev) = store(64).await;
        let r = commit(&repo, &[], write(10, 2, rev)).await.unwrap();
        assert!(r.is_some());
        assert_eq!(store.committed().len(), 2, "the record's creation, then one transaction");
        assert_eq!(store.get(RECORD).await.unwrap().unwrap().value, b"\"v2\"");
    }

    #[tokio::test]
    async fn a_write_over_the_limit_lands_in_chunks_with_its_record_last() {
        let (store, repo, rev) = store(8).await;
        let revision = commit(&repo, &[], write(50, 4, rev)).await.unwrap().expect("committed");
        for i in 0..50 {
            assert_eq!(store.writes_of(&data_key(i)), 1, "{}", data_key(i));
        }
        let committed = store.committed();
        let last = committed.last().unwrap();
        assert!(last.contains(&Op::put(RECORD, "\"v2\"")), "the record comes last");
        assert_eq!(store.get(RECORD).await.unwrap().unwrap().mod_revision, revision);
        let before: usize = committed
            .iter()
            .rev()
            .skip(1)
            .flatten()
            .filter(|op| matches!(op, Op::Put { key, .. } if key == RECORD))
            .count();
        assert_eq!(before, 1, "only the record's creation before");
        assert_eq!(events(&store).await, 4, "every event once");
        assert_eq!(left_behind(&store).await, 0, "no intent or part left");
    }

    /// The transactions an uninterrupted write of `w` takes.
    async fn transactions(limit: usize, n: usize, events: usize) -> usize {
        let (store, repo, rev) = store(limit).await;
        commit(&repo, &[], write(n, events, rev)).await.unwrap().unwrap();
        store.committed().len() - 1
    }

    #[tokio::test]
    async fn a_write_stopped_between_any_two_transactions_is_finished_once_by_the_next_run() {
        let (limit, n, events_n) = (8, 40, 3);
        let total = transactions(limit, n, events_n).await;
        assert!(total > 6, "{total} transactions");
        let mut finished = 0;
        for stop in 0..total {
            let (store, repo, rev) = store(limit).await;
            store.fail_after(stop);
            assert!(commit(&repo, &[], write(n, events_n, rev)).await.is_err(), "stopped at {stop}");
            // The next run (a restarted manager: a fresh repository) finishes what it finds.
            let next = Repo::new(store.clone());
            assert!(finish_found(&next, &[]).await.unwrap().is_empty());
            let record = store.get(RECORD).await.unwrap().unwrap().value;
            let written: Vec<usize> = (0..n).map(|i| store.writes_of(&data_key(i))).collect();
            if record == b"\"v2\"" {
                finished += 1;
                assert!(written.iter().all(|w| *w == 1), "stopped at {stop}: every key once: {written:?}");
                assert_eq!(events(&store).await, 3, "stopped at {stop}: every event once");
            } else {
                assert!(written.iter().all(|w| *w == 0), "stopped at {stop} before it was decided: nothing applied");
                assert_eq!(events(&store).await, 0);
            }
            assert_eq!(left_behind(&store).await, 0, "stopped at {stop}: nothing left behind");
        }
        assert!(finished > total / 2, "stops after the intent was stored are finished ({finished} of {total})");
    }

    #[tokio::test]
    async fn two_finishers_at_once_apply_each_part_once() {
        let (store, repo, rev) = store(8).await;
        let total = transactions(8, 60, 1).await;
        // Stopped in the middle of applying the parts.
        store.fail_after(total - 3);
        assert!(commit(&repo, &[], write(60, 1, rev)).await.is_err());
        let (a, b) = (Repo::new(store.clone()), Repo::new(store.clone()));
        let (ra, rb) = tokio::join!(finish_found(&a, &[]), finish_found(&b, &[]));
        ra.unwrap();
        rb.unwrap();
        assert!((0..60).all(|i| store.writes_of(&data_key(i)) == 1));
        assert_eq!(store.get(RECORD).await.unwrap().unwrap().value, b"\"v2\"");
        assert_eq!(events(&store).await, 1);
        assert_eq!(left_behind(&store).await, 0);
    }

    #[tokio::test]
    async fn other_writes_of_the_record_wait_and_a_change_between_chunks_abandons_the_write() {
        let (store, repo, rev) = store(8).await;
        // Stopped after the intent was stored and a few parts applied.
        store.fail_after(6);
        assert!(commit(&repo, &[], write(60, 1, rev)).await.is_err());
        assert!(under_way(&repo, INTENT).await.unwrap());
        // An operator's write of the same record, compared on the same revision, is refused.
        let other = Chunked { data: Vec::new(), ..write(0, 1, rev) };
        assert_eq!(commit(&repo, &[], other).await.unwrap(), None, "refused while the write is under way");
        // Something the compares do not cover changes the record meanwhile.
        store.txn(Txn::ops(vec![Op::put(RECORD, "\"changed\"")])).await.unwrap();
        let applied_before: usize = (0..60).map(|i| store.writes_of(&data_key(i))).sum();
        assert!(finish_found(&repo, &[]).await.unwrap().is_empty());
        let applied_after: usize = (0..60).map(|i| store.writes_of(&data_key(i))).sum();
        assert_eq!(applied_after, applied_before, "no part applied over the change");
        assert_eq!(store.get(RECORD).await.unwrap().unwrap().value, b"\"changed\"", "the record is not overwritten");
        assert_eq!(events(&store).await, 0);
        assert_eq!(left_behind(&store).await, 0, "the write is abandoned, its parts removed");
    }

    #[tokio::test]
    async fn a_refusing_fence_stops_every_chunk() {
        let (store, repo, rev) = store(8).await;
        let fence = [Compare::absent("leader/other")];
        store.txn(Txn::ops(vec![Op::put("leader/other", "")])).await.unwrap();
        assert_eq!(commit(&repo, &fence, write(30, 1, rev)).await.unwrap(), None);
        assert_eq!((0..30).map(|i| store.writes_of(&data_key(i))).sum::<usize>(), 0);
        assert_eq!(left_behind(&store).await, 0);
    }
}
