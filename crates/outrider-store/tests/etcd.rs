//! The etcd backend on a real etcd (Debian's `etcd-server`, started on loopback and stopped
//! afterwards): the behaviour suite every backend runs, compaction answered as "resync",
//! key prefixes, and what an etcd outage looks like. Skipped with a note when etcd is not
//! installed, unless `OUTRIDER_REQUIRE_ETCD` is set (as in CI).

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt;
use outrider_store::{
    Compare, Op, StoreError, Txn, conformance,
    test_etcd::{TestEtcd, etcd_or_skip},
};

async fn etcd() -> Option<TestEtcd> {
    let binary = etcd_or_skip()?;
    Some(TestEtcd::start(&binary).await.unwrap())
}

#[tokio::test]
async fn etcd_shows_the_behaviour_of_every_store() {
    let Some(etcd) = etcd().await else { return };
    // One etcd, checks one after another: each check's key prefix is new (revisions are
    // etcd-wide, and nothing else writes meanwhile).
    let n = AtomicU32::new(0);
    conformance::check_all(|| {
        let url = etcd.url(&format!("check{}", n.fetch_add(1, Ordering::Relaxed)));
        async move { outrider_store::open(&url).await.unwrap() }
    })
    .await;
    assert_eq!(n.load(Ordering::Relaxed), 7, "one fresh store per check");
}

#[tokio::test]
async fn etcd_prefixes_keep_deployments_apart_and_long_ranges_come_whole() {
    let Some(etcd) = etcd().await else { return };
    let a = outrider_store::open(&etcd.url("team-a")).await.unwrap();
    let b = outrider_store::open(&etcd.url("team-b")).await.unwrap();
    conformance::put(a.as_ref(), "k", "a").await;
    conformance::put(b.as_ref(), "k", "b").await;
    assert_eq!(a.get("k").await.unwrap().unwrap().value, b"a");
    assert_eq!(b.range("").await.unwrap().kvs.len(), 1);
    // More keys than one etcd request reads: a range pages at one revision, a page stops at
    // its limit.
    // (etcd takes at most 128 operations per transaction by default.)
    let mut rev = 0;
    for chunk in 0..3 {
        let ops = (0..100).map(|i| Op::put(format!("many/{:03}", chunk * 100 + i), "v")).collect();
        rev = a.txn(Txn::ops(ops)).await.unwrap().revision;
    }
    let all = a.range("many/").await.unwrap();
    assert_eq!((all.kvs.len(), all.revision), (300, rev));
    assert!(all.kvs.windows(2).all(|w| w[0].key < w[1].key));
    let page = a.range_page("many/", Some("many/099"), 150).await.unwrap();
    assert_eq!((page.kvs.len(), page.kvs[0].key.as_str()), (150, "many/100"));
    assert_eq!(a.count("").await.unwrap(), 301);
}

#[tokio::test]
async fn etcd_watch_from_a_compacted_revision_is_told_to_resync() {
    let Some(etcd) = etcd().await else { return };
    let s = outrider_store::open(&etcd.url("")).await.unwrap();
    let first = conformance::put(s.as_ref(), "w/1", "a").await;
    conformance::put(s.as_ref(), "w/2", "b").await;
    let last = conformance::put(s.as_ref(), "w/3", "c").await;
    // The store's own bookkeeping key stays out of sight, even with no prefix.
    assert_eq!((s.count("").await.unwrap(), s.range("").await.unwrap().kvs.len()), (3, 3));
    etcd.compact(last).await.unwrap();
    match s.watch("w/", first).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (first, last)),
        Err(e) => panic!("expected compacted, got {e}"),
        Ok(_) => panic!("expected compacted, got a watch"),
    }
    // From the compaction revision on, the history is still there.
    let mut w = s.watch("w/", last).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((b.revision, b.events[0].key()), (last, "w/3"));
}

#[tokio::test]
async fn etcd_outage_fails_writes_quickly_answers_reads_from_the_last_state_and_recovers() {
    let Some(mut etcd) = etcd().await else { return };
    let s = outrider_store::open(&etcd.url("o")).await.unwrap();
    conformance::put(s.as_ref(), "k", "1").await;
    conformance::put(s.as_ref(), "gone", "x").await;
    let rev = s.txn(Txn::ops(vec![Op::delete("gone"), Op::put("j", "2")])).await.unwrap().revision;
    let mut w = s.watch("", 0).await.unwrap();
    // The last state follows etcd from a watch of its own: give it a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;

    etcd.stop();
    let started = Instant::now();
    let write = s.txn(Txn::ops(vec![Op::put("k", "2")])).await;
    assert!(matches!(write, Err(StoreError::Unavailable(_))), "{write:?}");
    assert!(s.ready().await.is_err(), "not ready without etcd");
    assert!(matches!(s.revision().await, Err(StoreError::Unavailable(_))));
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"1", "reads from the last state");
    assert!(s.get("gone").await.unwrap().is_none());
    let all = s.range("").await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!((keys, all.revision), (vec!["j", "k"], rev));
    assert_eq!(s.range_page("", Some("j"), 5).await.unwrap().kvs.len(), 1);
    assert_eq!(s.count("").await.unwrap(), 2);
    assert!(started.elapsed() < Duration::from_secs(12), "bounded: {:?}", started.elapsed());
    let ended = tokio::time::timeout(Duration::from_secs(15), w.next()).await.unwrap();
    assert!(matches!(ended, Some(Err(StoreError::Unavailable(_)))), "a watch ends: {ended:?}");

    etcd.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ready().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(conformance::put(s.as_ref(), "k", "3").await, rev + 1);
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"3");
}

#[tokio::test]
async fn etcd_unreachable_at_open_is_a_clear_error() {
    if etcd_or_skip().is_none() {
        return;
    }
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let err = outrider_store::open(&format!("etcd://127.0.0.1:{port}")).await.err().unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8), "bounded: {:?}", started.elapsed());
}

#[tokio::test]
async fn etcd_stamped_keys_stay_exact_after_another_client_wrote() {
    let Some(etcd) = etcd().await else { return };
    let s = outrider_store::open(&etcd.url("s")).await.unwrap();
    conformance::put(s.as_ref(), "a", "1").await;
    // A write and a delete by a client that is not an Outrider store.
    let mut other = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    other.put("foreign", "x", None).await.unwrap();
    other.delete("foreign", None).await.unwrap();
    let key = format!("log/{}", Op::REVISION);
    for value in ["after a foreign write", "after our own"] {
        let r = s.txn(Txn::ops(vec![Op::put_stamped(&key, value)])).await.unwrap().revision;
        assert_eq!(s.get(&Op::stamp(&key, r)).await.unwrap().unwrap().value, value.as_bytes());
    }
    // A delete-only transaction that deletes nothing is still no revision.
    let r = s.revision().await.unwrap();
    assert_eq!(s.txn(Txn::ops(vec![Op::delete("x"), Op::delete("y")])).await.unwrap().revision, r);
    assert_eq!(s.txn(Txn::ops(vec![Op::delete("x"), Op::delete("a")])).await.unwrap().revision, r + 1);
}

#[tokio::test]
async fn etcd_takes_transactions_of_max_txn_ops_operations_of_every_shape() {
    let Some(binary) = etcd_or_skip() else { return };
    let default = TestEtcd::start(&binary).await.unwrap();
    every_shape_at_the_limit(outrider_store::open(&default.url("big")).await.unwrap()).await;
    let raised = TestEtcd::start_with(&binary, &["--max-txn-ops=300"]).await.unwrap();
    let s = outrider_store::open(&format!("{}?max-txn-ops=300", raised.url("big"))).await.unwrap();
    assert_eq!(s.max_txn_ops(), 149);
    every_shape_at_the_limit(s).await;
}

async fn every_shape_at_the_limit(s: std::sync::Arc<dyn outrider_store::Store>) {
    let n = s.max_txn_ops();
    let puts = |p: &str| (0..n).map(|i| Op::put(format!("{p}/{i:03}"), "v")).collect::<Vec<_>>();
    let deletes = |p: &str| (0..n).map(|i| Op::delete(format!("{p}/{i:03}"))).collect::<Vec<_>>();
    let mut stamped = puts("s");
    stamped[0] = Op::put_stamped(format!("log/{}", Op::REVISION), "e");
    let compare = (0..n).map(|i| Compare::absent(format!("none/{i}"))).collect::<Vec<_>>();
    for txn in [
        Txn::ops(puts("a")),
        Txn::ops(deletes("a")),
        Txn::ops(stamped),
        Txn::ops(puts("a")),
        Txn { compare, success: deletes("a"), failure: deletes("a") },
        Txn { compare: vec![Compare::Exists("none".into())], success: vec![], failure: deletes("s") },
    ] {
        s.txn(txn).await.unwrap();
    }
    assert_eq!(s.count("").await.unwrap(), 1, "only the stamped key is left");
}

#[tokio::test]
async fn one_process_holds_a_key_until_it_lets_go_and_the_next_campaigner_takes_over() {
    let Some(etcd) = etcd().await else { return };
    let a = outrider_store::open(&etcd.url("ha")).await.unwrap();
    let b = outrider_store::open(&etcd.url("ha")).await.unwrap();
    let ttl = Duration::from_secs(2);
    let first = a.hold("election/x", b"a", ttl).await.unwrap().expect("the key was free");
    assert!(b.hold("election/x", b"b", ttl).await.unwrap().is_none(), "a held key is not given twice");
    assert_eq!(b.get("election/x").await.unwrap().unwrap().value, b"a");
    // The holder's fence admits its writes; another process's campaign waits.
    let fence = first.fence().expect("a shared store fences");
    assert!(a.txn(Txn::when(vec![fence.clone()], vec![Op::put("work", "1")])).await.unwrap().succeeded);
    let waiting = tokio::spawn(async move {
        let held = outrider_store::campaign(b.as_ref(), "election/x", b"b", ttl).await.unwrap();
        (held, b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the campaign waits while the key is held");
    let started = Instant::now();
    drop(first);
    let (second, b) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "letting go hands over at once, not at the lease's end");
    assert_eq!(b.get("election/x").await.unwrap().unwrap().value, b"b");
    // The deposed holder's fence no longer admits anything.
    let late = a.txn(Txn::when(vec![fence], vec![Op::put("work", "2")])).await.unwrap();
    assert!(!late.succeeded, "a deposed holder cannot write behind its fence");
    assert_eq!(a.get("work").await.unwrap().unwrap().value, b"1");
    assert!(!second.is_lost());
}

#[tokio::test]
async fn a_hold_is_lost_when_its_lease_cannot_be_renewed() {
    let Some(mut etcd) = etcd().await else { return };
    let store = outrider_store::open(&etcd.url("lease")).await.unwrap();
    let held = store.hold("election/y", b"me", Duration::from_secs(2)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!held.is_lost(), "renewals keep the hold past its TTL");
    etcd.stop();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), held.lost()).await.expect("the hold is given up without etcd");
    assert!(started.elapsed() < Duration::from_secs(2), "given up before the lease could expire and pass on");
}
