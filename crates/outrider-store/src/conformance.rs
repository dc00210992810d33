//! The behaviour every store backend must show, written once against [`Store`] (the
//! `conformance` feature). A backend is done when [`check_all`] passes on it; its tests call
//! it with a function that opens a fresh, empty store.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;

use crate::{Compare, Op, Store, Txn, WatchEvent};

/// Runs every check, each on a store of its own from `fresh`.
pub async fn check_all<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    revisions_grow_by_one_per_write_txn(fresh().await.as_ref()).await;
    range_is_prefix_bounded_and_ordered(fresh().await.as_ref()).await;
    pages_and_counts_follow_key_order(fresh().await.as_ref()).await;
    compare_and_swap_is_atomic(fresh().await.as_ref()).await;
    stamped_keys_carry_the_commit_revision(fresh().await.as_ref()).await;
    watch_replays_from_revision_then_follows(fresh().await.as_ref()).await;
    watch_from_now_sees_only_new_changes(fresh().await.as_ref()).await;
}

/// Puts `k` = `v` in a transaction of its own; returns its revision.
pub async fn put(s: &dyn Store, k: &str, v: &str) -> u64 {
    s.txn(Txn::ops(vec![Op::put(k, v)])).await.unwrap().revision
}

/// Every write transaction is one revision; a transaction that changes nothing is none; a
/// key keeps its create revision across updates.
pub async fn revisions_grow_by_one_per_write_txn(s: &dyn Store) {
    let r0 = s.revision().await.unwrap();
    let r1 = put(s, "a/1", "x").await;
    assert_eq!(r1, r0 + 1);
    let r2 = s.txn(Txn::ops(vec![Op::put("a/2", "y"), Op::put("a/3", "z")])).await.unwrap().revision;
    assert_eq!(r2, r1 + 1, "one transaction is one revision");
    let noop = s.txn(Txn::ops(vec![Op::delete("a/absent")])).await.unwrap();
    assert_eq!(noop.revision, r2, "a transaction that changes nothing keeps the revision");
    let kv = s.get("a/2").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision), (b"y".as_slice(), r2, r2));
    let r3 = put(s, "a/2", "y2").await;
    let kv = s.get("a/2").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r2, r3), "create revision survives updates");
}

/// A range holds exactly the keys under its prefix, in key order, at the current revision.
pub async fn range_is_prefix_bounded_and_ordered(s: &dyn Store) {
    put(s, "r/b", "2").await;
    put(s, "r/a", "1").await;
    put(s, "rx", "no").await;
    put(s, "q", "no").await;
    let r = s.range("r/").await.unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["r/a", "r/b"]);
    assert_eq!(r.revision, s.revision().await.unwrap());
}

/// A page holds at most `limit` keys under its prefix after `after`, in key order; a count
/// counts exactly the keys under its prefix.
pub async fn pages_and_counts_follow_key_order(s: &dyn Store) {
    for k in ["p/a", "p/b", "p/c", "p/d", "px", "o"] {
        put(s, k, "v").await;
    }
    let keys = |r: crate::Range| r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(keys(s.range_page("p/", None, 2).await.unwrap()), ["p/a", "p/b"]);
    assert_eq!(keys(s.range_page("p/", Some("p/b"), 10).await.unwrap()), ["p/c", "p/d"]);
    assert_eq!(keys(s.range_page("p/", Some("p/bb"), 1).await.unwrap()), ["p/c"]);
    assert_eq!(keys(s.range_page("p/", Some("a"), 1).await.unwrap()), ["p/a"], "an `after` before the prefix");
    assert!(s.range_page("p/", Some("p/d"), 10).await.unwrap().kvs.is_empty());
    assert!(s.range_page("p/", None, 0).await.unwrap().kvs.is_empty());
    assert_eq!(s.range_page("p/", None, 1).await.unwrap().revision, s.revision().await.unwrap());
    assert_eq!(s.count("p/").await.unwrap(), 4);
    assert_eq!(s.count("none/").await.unwrap(), 0);
}

/// A stamped put's key carries the revision its transaction commits at, for reads and watches.
pub async fn stamped_keys_carry_the_commit_revision(s: &dyn Store) {
    let mut w = s.watch("log/", 0).await.unwrap();
    let key = format!("log/{}-a", Op::REVISION);
    let r = s.txn(Txn::ops(vec![Op::put_stamped(&key, "1"), Op::put("other", "x")])).await.unwrap().revision;
    let stamped = Op::stamp(&key, r);
    assert_eq!(stamped, format!("log/{r:020}-a"));
    assert_eq!(s.get(&stamped).await.unwrap().unwrap().value, b"1");
    let b = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(b.events[0].key(), stamped);
    let later = s.txn(Txn::ops(vec![Op::put_stamped(&key, "2")])).await.unwrap().revision;
    let all: Vec<_> = s.range("log/").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(all, [stamped, Op::stamp(&key, later)], "stamped keys sort in commit order");
}

/// Compares decide between the success and the failure branch, atomically.
pub async fn compare_and_swap_is_atomic(s: &dyn Store) {
    let t = s.txn(Txn::when(vec![Compare::absent("c/k")], vec![Op::put("c/k", "1")])).await.unwrap();
    assert!(t.succeeded);
    let again = s.txn(Txn::when(vec![Compare::absent("c/k")], vec![Op::put("c/k", "2")])).await.unwrap();
    assert!(!again.succeeded, "create-if-absent must fail when present");
    assert_eq!(s.get("c/k").await.unwrap().unwrap().value, b"1");
    // A failed compare applies the failure branch only.
    let stale = s
        .txn(Txn {
            compare: vec![Compare::unchanged("c/k", t.revision - 1), Compare::Exists("c/k".into())],
            success: vec![Op::put("c/k", "3")],
            failure: vec![Op::put("c/failed", "yes")],
        })
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(s.get("c/k").await.unwrap().unwrap().value, b"1");
    assert!(s.get("c/failed").await.unwrap().is_some());
    let ok = s.txn(Txn::when(vec![Compare::unchanged("c/k", t.revision)], vec![Op::delete("c/k")])).await.unwrap();
    assert!(ok.succeeded);
    assert!(s.get("c/k").await.unwrap().is_none());
}

/// A watch from a past revision replays the changes under its prefix, then follows new ones.
pub async fn watch_replays_from_revision_then_follows(s: &dyn Store) {
    let from = put(s, "w/1", "a").await;
    put(s, "other/1", "ignored").await;
    put(s, "w/2", "b").await;
    let mut w = s.watch("w/", from).await.unwrap();
    let b1 = w.next().await.unwrap().unwrap();
    assert_eq!((b1.revision, b1.events[0].key()), (from, "w/1"));
    let b2 = w.next().await.unwrap().unwrap();
    assert_eq!(b2.events[0].key(), "w/2");
    let r = s.txn(Txn::ops(vec![Op::delete("w/1")])).await.unwrap().revision;
    let b3 = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(b3.revision, r);
    assert!(matches!(&b3.events[0], WatchEvent::Delete { key, .. } if key == "w/1"));
}

/// A watch from revision 0 sees only changes made after it started.
pub async fn watch_from_now_sees_only_new_changes(s: &dyn Store) {
    put(s, "n/old", "a").await;
    let mut w = s.watch("n/", 0).await.unwrap();
    put(s, "n/new", "b").await;
    let b = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(b.events[0].key(), "n/new");
}
