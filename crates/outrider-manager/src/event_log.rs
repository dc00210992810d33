//! The event log in the store, indexed so that no read scans it. Each event is written once
//! by sequence and again under its plan, with a key by time, in the transaction of the change
//! it records; the sequence is the revision of that transaction, stamped into the keys by the
//! store ([`Op::PutStamped`]), so key order is commit order:
//!
//! - `events/{t}/seq/{seq}-{n}` → the event: `since` and `limit` read a page from a key;
//! - `events/{t}/plan/{plan}/{seq}-{n}` → the event: `plan` reads that prefix;
//! - `events/{t}/time/{nanos}-{seq}-{n}` → nothing: `from` finds the first sequence at or
//!   after a time;
//! - `events/{t}/trimmed` → the newest sequence retention deleted, so that a cursor older
//!   than the log is told (the `outrider-events-trimmed` answer header), not silently served
//!   a log with a hole.
//!
//! `n` orders the events of one transaction. Logs written by older versions (events keyed by
//! time directly under `events/{t}/`) are moved into this layout at start ([`migrate`]).

use outrider_model::Event;
use outrider_store::{KeyValue, Op, Range, Store, Txn};
use time::OffsetDateTime;

use crate::{
    Error,
    codec::{decode, encode},
    keys,
};

/// Events handled per transaction when trimming or migrating…
const CHUNK: usize = 500;

/// …or fewer, so that their `ops_per_event` writes and one more fit the store's transactions.
fn events_per_txn(store: &dyn Store, ops_per_event: usize) -> usize {
    CHUNK.min(store.max_txn_ops().saturating_sub(1) / ops_per_event).max(1)
}

/// Most events of one transaction read to finish a page (a page never splits one).
const TXN_TAIL: usize = 10_000;

/// Keys read per page while finishing a transaction's events.
const TAIL_PAGE: usize = 64;

/// The writes that append `e`: by sequence, under its plan, by time.
pub fn append_ops(e: &Event, n: u32) -> Result<Vec<Op>, Error> {
    let rev = Op::REVISION;
    let value = encode(e)?;
    let nanos = e.time.unix_timestamp_nanos().max(0);
    let mut ops = vec![
        Op::put_stamped(format!("{}{rev}-{n:010}", keys::events_by_seq(&e.tenant)), value.clone()),
        Op::put_stamped(format!("{}{nanos:020}-{rev}-{n:010}", keys::events_by_time(&e.tenant)), Vec::new()),
    ];
    if let Some(plan) = &e.plan {
        ops.push(Op::put_stamped(format!("{}{rev}-{n:010}", keys::events_by_plan(&e.tenant, plan)), value));
    }
    Ok(ops)
}

/// The sequence number in an index key (`…/{seq:020}-{n:010}`).
fn seq_of(key: &str) -> Option<u64> {
    let tail = key.rsplit('/').next()?;
    let (seq, _n) = tail.rsplit_once('-')?;
    // By time: `{nanos}-{seq}`.
    seq.rsplit('-').next()?.parse().ok()
}

/// An event read back, its `seq` from its key.
fn to_event(kv: &KeyValue) -> Result<Event, Error> {
    let mut e: Event = decode(&kv.key, &kv.value)?;
    e.seq = seq_of(&kv.key).ok_or_else(|| Error::internal(format!("event key {:?} has no sequence", kv.key)))?;
    Ok(e)
}

/// The event a watched put under a log prefix holds.
pub fn watched(kv: &KeyValue) -> Option<Event> {
    to_event(kv).ok()
}

/// What a read of the log asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only events after this sequence number.
    pub since: u64,
    /// Only events from the first one at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Only the events of this plan.
    pub plan: Option<String>,
}

/// A page of the log.
#[derive(Debug)]
pub struct Page {
    /// The events, in sequence order.
    pub events: Vec<Event>,
    /// The key to read the next page after.
    pub next: Option<String>,
    /// The revision the page was read at.
    pub revision: u64,
}

/// The prefix a query reads.
pub fn prefix(tenant: &str, q: &Query) -> String {
    match &q.plan {
        Some(plan) => keys::events_by_plan(tenant, plan),
        None => keys::events_by_seq(tenant),
    }
}

/// The key a query starts after: past `since`, and past the events before `from`.
pub async fn start_after(store: &dyn Store, tenant: &str, q: &Query) -> Result<String, Error> {
    let mut since = q.since;
    if let Some(from) = q.from {
        let times = keys::events_by_time(tenant);
        let nanos = from.unix_timestamp_nanos().max(0);
        // The first key at or after `from`: after the last key one nanosecond before.
        let after = format!("{times}{:020}-~", nanos.saturating_sub(1));
        let first = store.range_page(&times, Some(&after), 1).await?;
        since = since.max(match first.kvs.first().and_then(|kv| seq_of(&kv.key)) {
            Some(seq) => seq.saturating_sub(1),
            None => u64::MAX,
        });
    }
    // `~` sorts after the digits: past every event of `since`.
    Ok(format!("{}{since:020}-~", prefix(tenant, q)))
}

/// At most about `limit` events of `prefix` after the key `after`; the events of the last
/// transaction are never split, so `since=<last seq>` resumes without losing any.
pub async fn page(store: &dyn Store, prefix: &str, after: &str, limit: usize) -> Result<Page, Error> {
    let Range { kvs, revision } = store.range_page(prefix, Some(after), limit).await?;
    let mut events = kvs.iter().map(to_event).collect::<Result<Vec<_>, _>>()?;
    let mut next = kvs.last().map(|kv| kv.key.clone());
    let Some(last) = events.last().map(|e| e.seq).filter(|_| kvs.len() == limit) else {
        return Ok(Page { events, next, revision });
    };
    // Finish the last transaction, a small page at a time.
    let mut tail = 0;
    while let Some(key) = next.clone()
        && tail < TXN_TAIL
    {
        let more = store.range_page(prefix, Some(&key), TAIL_PAGE).await?;
        let same: Vec<&KeyValue> = more.kvs.iter().take_while(|kv| seq_of(&kv.key) == Some(last)).collect();
        for kv in &same {
            events.push(to_event(kv)?);
            next = Some(kv.key.clone());
        }
        tail += same.len();
        if same.len() < more.kvs.len() || more.kvs.len() < TAIL_PAGE {
            break;
        }
    }
    Ok(Page { events, next, revision })
}

/// The newest sequence number retention deleted from the tenant's log, if any.
pub async fn trimmed(store: &dyn Store, tenant: &str) -> Result<Option<u64>, Error> {
    let kv = store.get(&keys::events_trimmed(tenant)).await?;
    Ok(kv.and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()))
}

/// Deletes the tenant's oldest events over `keep`, with their index keys; returns how many
/// went.
pub async fn trim(store: &dyn Store, tenant: &str, keep: u64) -> Result<usize, Error> {
    let by_seq = keys::events_by_seq(tenant);
    let mut over = store.count(&by_seq).await?.saturating_sub(keep);
    let mut deleted = 0;
    while over > 0 {
        let chunk = usize::try_from(over).unwrap_or(usize::MAX).min(events_per_txn(store, 3));
        let oldest = store.range_page(&by_seq, None, chunk).await?;
        let Some(last) = oldest.kvs.last() else { break };
        let newest_trimmed = seq_of(&last.key).unwrap_or_default();
        let mut ops = Vec::with_capacity(oldest.kvs.len() * 3 + 1);
        for kv in &oldest.kvs {
            let e = to_event(kv)?;
            let suffix = kv.key.strip_prefix(&by_seq).unwrap_or_default();
            let nanos = e.time.unix_timestamp_nanos().max(0);
            ops.push(Op::delete(&kv.key));
            ops.push(Op::delete(format!("{}{nanos:020}-{suffix}", keys::events_by_time(tenant))));
            if let Some(plan) = &e.plan {
                ops.push(Op::delete(format!("{}{suffix}", keys::events_by_plan(tenant, plan))));
            }
        }
        ops.push(Op::put(keys::events_trimmed(tenant), newest_trimmed.to_string()));
        store.txn(Txn::ops(ops)).await?;
        deleted += oldest.kvs.len();
        over = over.saturating_sub(oldest.kvs.len() as u64);
    }
    Ok(deleted)
}

/// Moves the tenant's events of an older layout (keyed by time directly under
/// `events/{t}/`, the sequence their revision) into the indexed layout; returns how many.
pub async fn migrate(store: &dyn Store, tenant: &str) -> Result<usize, Error> {
    let root = keys::events(tenant);
    let mut moved = 0;
    loop {
        let page = store.range_page(&root, None, events_per_txn(store, 4)).await?;
        // Old keys start with a digit; the indexes' with a letter, after them.
        let old: Vec<&KeyValue> =
            page.kvs.iter().take_while(|kv| kv.key[root.len()..].starts_with(|c: char| c.is_ascii_digit())).collect();
        if old.is_empty() {
            return Ok(moved);
        }
        let mut ops = Vec::with_capacity(old.len() * 4);
        for kv in &old {
            let mut e: Event = decode(&kv.key, &kv.value)?;
            e.seq = 0;
            // `{nanos}-{n}`: `n` told apart the events of one transaction then too.
            let n = kv.key.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or_default();
            for op in append_ops(&e, n)? {
                if let Op::PutStamped { key, value } = op {
                    ops.push(Op::put(Op::stamp(&key, kv.mod_revision), value));
                }
            }
            ops.push(Op::delete(&kv.key));
        }
        store.txn(Txn::ops(ops)).await?;
        moved += old.len();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use outrider_store::RedbStore;

    use super::*;
    use crate::test_store::TestStore;

    fn event(plan: Option<&str>, at: OffsetDateTime) -> Event {
        Event {
            seq: 0,
            time: at,
            tenant: "t".into(),
            kind: "k".into(),
            actor: "a".into(),
            object: "o".into(),
            reason: String::new(),
            plan: plan.map(str::to_owned),
            detail: serde_json::Value::Null,
        }
    }

    /// `count` transactions of two events each (the second of plan `p`), a second apart.
    async fn log(count: u32) -> (Arc<TestStore>, OffsetDateTime) {
        let store = Arc::new(TestStore::new());
        let t0 = time::macros::datetime!(2026-03-01 00:00 UTC);
        let mut ops = Vec::new();
        for i in 0..count {
            let at = t0 + time::Duration::seconds(i64::from(i));
            ops.clear();
            ops.extend(append_ops(&event(None, at), 2 * i).unwrap());
            ops.extend(append_ops(&event(Some("p"), at), 2 * i + 1).unwrap());
            store.txn(Txn::ops(ops.clone())).await.unwrap();
        }
        (store, t0)
    }

    #[tokio::test]
    async fn reads_go_through_the_indexes_and_never_split_a_transaction() {
        let (store, t0) = log(300).await;
        let q = |since, from, plan: Option<&str>| Query { since, from, plan: plan.map(str::to_owned) };
        let read = |q: Query, limit: usize| {
            let store = store.clone();
            async move {
                store.read.store(0, Ordering::SeqCst);
                let after = start_after(store.as_ref(), "t", &q).await.unwrap();
                let page = page(store.as_ref(), &prefix("t", &q), &after, limit).await.unwrap();
                (page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), store.read.load(Ordering::SeqCst))
            }
        };
        let (first, keys_read) = read(q(0, None, None), 1).await;
        assert_eq!(first, [1, 1], "limit=1 ends with the whole first transaction");
        assert!(keys_read <= 2 + TAIL_PAGE, "{keys_read} keys read for limit=1");
        let (after, keys_read) = read(q(150, None, None), 3).await;
        assert_eq!(after, [151, 151, 152, 152]);
        assert!(keys_read <= 4 + TAIL_PAGE, "{keys_read} keys read");
        let (plan, _) = read(q(10, None, Some("p")), 2).await;
        assert_eq!(plan, [11, 12]);
        let (from, keys_read) = read(q(0, Some(t0 + time::Duration::seconds(100)), Some("p")), 1).await;
        assert_eq!(from, [101]);
        assert!(keys_read <= 2 + TAIL_PAGE, "{keys_read} keys read");
        let (late, _) = read(q(0, Some(t0 + time::Duration::days(1)), None), 10).await;
        assert!(late.is_empty(), "nothing at or after a time past the log");
    }

    #[tokio::test]
    async fn trimming_deletes_the_oldest_with_their_index_keys_and_says_how_far() {
        let (store, _) = log(100).await;
        assert_eq!(trim(store.as_ref(), "t", 50).await.unwrap(), 150);
        assert_eq!(store.count(&keys::events_by_seq("t")).await.unwrap(), 50);
        assert_eq!(store.count(&keys::events_by_plan("t", "p")).await.unwrap(), 25);
        assert_eq!(store.count(&keys::events_by_time("t")).await.unwrap(), 50);
        assert_eq!(trimmed(store.as_ref(), "t").await.unwrap(), Some(75));
        assert_eq!(trim(store.as_ref(), "t", 50).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn events_of_the_older_layout_move_into_the_indexes_with_their_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let t0 = time::macros::datetime!(2026-03-01 00:00 UTC);
        let mut revisions = Vec::new();
        for i in 0..3i64 {
            let e = event((i == 1).then_some("p"), t0 + time::Duration::seconds(i));
            let key = format!("{}{:020}-{i:010}", keys::events("t"), e.time.unix_timestamp_nanos());
            let put = Op::put(key, encode(&e).unwrap());
            revisions.push(store.txn(Txn::ops(vec![put, Op::put("x", i.to_string())])).await.unwrap().revision);
        }
        assert_eq!(migrate(&store, "t").await.unwrap(), 3);
        assert_eq!(migrate(&store, "t").await.unwrap(), 0);
        let q = Query::default();
        let after = start_after(&store, "t", &q).await.unwrap();
        let seqs: Vec<u64> =
            page(&store, &prefix("t", &q), &after, 10).await.unwrap().events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, revisions);
        assert_eq!(store.count(&keys::events_by_plan("t", "p")).await.unwrap(), 1);
    }

    #[test]
    fn sequences_are_read_from_every_index_key() {
        assert_eq!(seq_of("events/t/seq/00000000000000000042-0000000007"), Some(42));
        assert_eq!(seq_of("events/t/plan/p1/00000000000000000042-0000000007"), Some(42));
        assert_eq!(seq_of("events/t/time/00000001700000000000-00000000000000000042-0000000007"), Some(42));
        assert_eq!(seq_of("events/t/trimmed"), None);
    }
}
