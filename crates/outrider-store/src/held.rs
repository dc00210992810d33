//! Keys held for the life of a process: the building block of leader election and of
//! presence (which managers are alive) when several processes share one store.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::{Compare, Store, StoreError, WatchEvent};

/// A key this process holds (see [`Store::hold`]): it stays in the store while the holder
/// lives and keeps its lease alive, and goes when the guard drops or the lease expires.
pub struct Held {
    key: String,
    revision: u64,
    lost: watch::Receiver<bool>,
    /// Keeps the lease alive; dropping it ends the lease (the backend's own guard).
    _lease: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("key", &self.key).field("revision", &self.revision).finish_non_exhaustive()
    }
}

impl Held {
    /// A hold in a store that only this process opens: nothing is written, nobody else can
    /// hold the key, and it is never lost.
    pub fn sole(key: &str) -> Self {
        let (keep, lost) = watch::channel(false);
        Self { key: key.to_owned(), revision: 0, lost, _lease: Some(Box::new(keep)) }
    }

    /// A hold of `key` put at `revision`, lost when `lost` turns true, whose lease lives as
    /// long as `lease`.
    pub(crate) fn leased(key: &str, revision: u64, lost: watch::Receiver<bool>, lease: Box<dyn Send + Sync>) -> Self {
        Self { key: key.to_owned(), revision, lost, _lease: Some(lease) }
    }

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The compare that holds only while this hold lasts (the key was not deleted nor put
    /// again by someone else): add it to every write only the holder may make. None in a
    /// store only this process opens.
    pub fn fence(&self) -> Option<Compare> {
        (self.revision > 0).then(|| Compare::unchanged(&self.key, self.revision))
    }

    /// Whether the hold is lost (the lease expired or could not be kept alive in time).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the hold is lost (never for a store only this process opens).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper is gone without a verdict: count it as lost.
        let _ = lost.wait_for(|l| *l).await;
    }
}

/// Waits until this process holds `key` (with `value`, a lease of `ttl`): the election of
/// one leader among the processes that campaign for the same key. Whoever holds the key
/// leads until its hold is lost or dropped; the others wait for the key to go.
pub async fn campaign(store: &dyn Store, key: &str, value: &[u8], ttl: Duration) -> Result<Held, StoreError> {
    loop {
        if let Some(held) = store.hold(key, value, ttl).await? {
            return Ok(held);
        }
        let Some(current) = store.get(key).await? else { continue };
        let mut changes = store.watch(key, current.mod_revision + 1).await?;
        'watch: while let Some(batch) = changes.next().await {
            let batch = match batch {
                Ok(b) => b,
                // Compacted or interrupted: look at the key again.
                Err(_) => break,
            };
            for e in &batch.events {
                if matches!(e, WatchEvent::Delete { key: k, .. } if k == key) {
                    break 'watch;
                }
            }
        }
    }
}
