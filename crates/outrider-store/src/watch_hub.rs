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

fn batch_bytes(b: &WatchBatch) -> usize {
    b.events
        .iter()
        .map(|e| match e {
            crate::WatchEvent::Put(kv) => kv.key.len() + kv.value.len(),
            crate::WatchEvent::Delete { key, .. } => key.len(),
        })
        .sum()
}

/// Committed batches, kept for late watchers and broadcast to live ones.
pub(crate) struct WatchHub {
    inner: Mutex<History>,
    tx: broadcast::Sender<Arc<WatchBatch>>,
}

struct History {
    batches: VecDeque<Arc<WatchBatch>>,
    capacity: usize,
    /// Bytes of keys and values held; history is also bounded by this.
    bytes: usize,
    max_bytes: usize,
    /// Revision current when the hub was created: nothing at or before it is in history.
    base_revision: u64,
}

impl WatchHub {
    pub(crate) fn new(current_revision: u64, capacity: usize, max_bytes: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        let history =
            History { batches: VecDeque::new(), capacity, bytes: 0, max_bytes, base_revision: current_revision };
        Self { inner: Mutex::new(history), tx }
    }

    /// Records a committed batch. Called in commit order, under the writer lock.
    pub(crate) fn publish(&self, batch: WatchBatch) {
        let batch = Arc::new(batch);
        let size = batch_bytes(&batch);
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        h.bytes += size;
        h.batches.push_back(batch.clone());
        while h.batches.len() > h.capacity || (h.bytes > h.max_bytes && h.batches.len() > 1) {
            let Some(old) = h.batches.pop_front() else { break };
            h.bytes -= batch_bytes(&old);
            h.base_revision = old.revision;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyValue, WatchEvent};

    fn batch(revision: u64, value_len: usize) -> WatchBatch {
        let kv = KeyValue { key: "k".into(), value: vec![0; value_len], create_revision: 1, mod_revision: revision };
        WatchBatch { revision, events: vec![WatchEvent::Put(kv)] }
    }

    #[test]
    fn history_is_bounded_by_bytes_as_well_as_count() {
        let hub = WatchHub::new(0, 100, 1000);
        for r in 1..=5 {
            hub.publish(batch(r, 399));
        }
        // 400 bytes each, 1000 allowed: only the last two stay.
        assert!(matches!(hub.watch("", 3, 5), Err(StoreError::Compacted { oldest: 4, .. })));
        assert!(hub.watch("", 4, 5).is_ok());
        // One batch larger than the bound is still kept, alone.
        hub.publish(batch(6, 5000));
        assert!(hub.watch("", 6, 6).is_ok());
        assert!(hub.watch("", 5, 6).is_err());
    }
}
