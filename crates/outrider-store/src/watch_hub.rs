//! Fan-out of committed transactions to watchers, with a bounded history so a watcher can
//! start from a recent revision without missing anything.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{StoreError, WatchBatch, WatchStream};

/// Committed batches, kept for late watchers and broadcast to live ones.
pub(crate) struct WatchHub {
    inner: Mutex<History>,
    tx: broadcast::Sender<Arc<WatchBatch>>,
}

struct History {
    batches: VecDeque<Arc<WatchBatch>>,
    capacity: usize,
    /// Revision current when the hub was created: nothing at or before it is in history.
    base_revision: u64,
}

impl WatchHub {
    pub(crate) fn new(current_revision: u64, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self { inner: Mutex::new(History { batches: VecDeque::new(), capacity, base_revision: current_revision }), tx }
    }

    /// Records a committed batch. Called in commit order, under the writer lock.
    pub(crate) fn publish(&self, batch: WatchBatch) {
        let batch = Arc::new(batch);
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if h.batches.len() == h.capacity
            && let Some(old) = h.batches.pop_front()
        {
            h.base_revision = old.revision;
        }
        h.batches.push_back(batch.clone());
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(batch);
    }

    /// A stream of batches at `from` or later, filtered to `prefix`.
    pub(crate) fn watch(&self, prefix: &str, from: u64, current: u64) -> Result<WatchStream, StoreError> {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let from = if from == 0 { current + 1 } else { from };
        if from <= h.base_revision {
            return Err(StoreError::Compacted { requested: from, oldest: h.base_revision + 1 });
        }
        // Subscribe while holding the lock: no batch can slip between history and live.
        let rx = self.tx.subscribe();
        let backlog: Vec<Arc<WatchBatch>> = h.batches.iter().filter(|b| b.revision >= from).cloned().collect();
        drop(h);
        let prefix = prefix.to_owned();
        let live = BroadcastStream::new(rx);
        let stream = futures::stream::iter(backlog.into_iter().map(Ok))
            .chain(live)
            // State: the last revision delivered, or None once the stream has failed.
            .scan(Some(from.saturating_sub(1)), move |state, item| {
                let out = match (*state, item) {
                    (None, _) => None,
                    (Some(last), Err(BroadcastStreamRecvError::Lagged(_))) => {
                        *state = None;
                        Some(Some(Err(StoreError::Compacted { requested: last + 1, oldest: last + 2 })))
                    }
                    (Some(last), Ok(b)) if b.revision <= last => Some(None),
                    (Some(_), Ok(b)) => {
                        *state = Some(b.revision);
                        let events: Vec<_> =
                            b.events.iter().filter(|e| e.key().starts_with(&prefix)).cloned().collect();
                        Some((!events.is_empty()).then_some(Ok(WatchBatch { revision: b.revision, events })))
                    }
                };
                futures::future::ready(out)
            })
            .filter_map(futures::future::ready);
        Ok(Box::pin(stream))
    }
}
