//! The embedded backend against the behaviour suite every backend runs
//! (`outrider_store::conformance`), and what only a file-backed store promises.

use std::sync::atomic::{AtomicU32, Ordering};

use outrider_store::{RedbStore, Store, StoreError, conformance};

#[tokio::test]
async fn redb_shows_the_behaviour_of_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicU32::new(0);
    conformance::check_all(|| {
        let url = format!("redb:{}", dir.path().join(format!("{}.redb", n.fetch_add(1, Ordering::Relaxed))).display());
        async move { outrider_store::open(&url).await.unwrap() }
    })
    .await;
    assert_eq!(n.load(Ordering::Relaxed), 7, "one fresh store per check");
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).unwrap()
}

#[tokio::test]
async fn redb_keeps_data_and_revision_across_reopen() {
    let put = conformance::put;
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let s = open(&dir);
        put(&s, "p/a", "1").await;
        put(&s, "p/b", "2").await
    };
    let s = open(&dir);
    assert_eq!(s.revision().await.unwrap(), rev);
    assert_eq!(s.get("p/b").await.unwrap().unwrap().value, b"2");
    // A fresh process has no watch history: asking for the past is "compacted" (resync).
    assert!(matches!(s.watch("p/", 1).await, Err(StoreError::Compacted { .. })));
    assert_eq!(put(&s, "p/c", "3").await, rev + 1);
}
