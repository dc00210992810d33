//! The last state read of a remote store: every key under the store's root as of a revision,
//! kept current from a watch, so reads can still be answered while the remote is away.

use std::collections::BTreeMap;

use crate::{KeyValue, Range, WatchBatch, WatchEvent};

/// Keys and values as of `revision`; empty and not `loaded` until the first full read.
#[derive(Debug, Default)]
pub(crate) struct LastState {
    kvs: BTreeMap<String, KeyValue>,
    revision: u64,
    loaded: bool,
}

impl LastState {
    /// Replaces everything with a full read.
    pub(crate) fn reset(&mut self, range: Range) {
        self.kvs = range.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        self.revision = range.revision;
        self.loaded = true;
    }

    /// Applies one committed transaction (batches at or before the state's revision are
    /// already in it).
    pub(crate) fn apply(&mut self, batch: WatchBatch) {
        if !self.loaded || batch.revision <= self.revision {
            return;
        }
        for event in batch.events {
            match event {
                WatchEvent::Put(kv) => {
                    self.kvs.insert(kv.key.clone(), kv);
                }
                WatchEvent::Delete { key, .. } => {
                    self.kvs.remove(&key);
                }
            }
        }
        self.revision = batch.revision;
    }

    /// Whether a full read has been taken.
    pub(crate) fn loaded(&self) -> bool {
        self.loaded
    }

    pub(crate) fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).cloned()
    }

    /// At most `limit` keys under `prefix` after `after` (all of them when `None`).
    pub(crate) fn range_page(&self, prefix: &str, after: Option<&str>, limit: Option<usize>) -> Range {
        let kvs = self
            .under(prefix)
            .filter(|kv| after.is_none_or(|a| kv.key.as_str() > a))
            .take(limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Range { kvs, revision: self.revision }
    }

    pub(crate) fn count(&self, prefix: &str) -> u64 {
        self.under(prefix).count() as u64
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.kvs
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .map(|(_, kv)| kv)
            .take_while(move |kv| kv.key.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, revision: u64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision: revision, mod_revision: revision }
    }

    #[test]
    fn follows_puts_and_deletes_after_a_full_read() {
        let mut s = LastState::default();
        s.apply(WatchBatch { revision: 1, events: vec![WatchEvent::Put(kv("a/x", "early", 1))] });
        assert!(!s.loaded() && s.get("a/x").is_none(), "nothing before the first full read");
        s.reset(Range { kvs: vec![kv("a/1", "1", 2), kv("a/2", "2", 3), kv("b", "b", 3)], revision: 3 });
        s.apply(WatchBatch { revision: 3, events: vec![WatchEvent::Delete { key: "a/1".into(), mod_revision: 3 }] });
        assert!(s.get("a/1").is_some(), "a batch already in the read changes nothing");
        s.apply(WatchBatch {
            revision: 4,
            events: vec![WatchEvent::Delete { key: "a/1".into(), mod_revision: 4 }, WatchEvent::Put(kv("a/3", "3", 4))],
        });
        let keys = |r: Range| r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        assert_eq!(keys(s.range_page("a/", None, None)), ["a/2", "a/3"]);
        assert_eq!(keys(s.range_page("a/", Some("a/2"), Some(5))), ["a/3"]);
        assert_eq!(keys(s.range_page("", None, Some(1))), ["a/2"]);
        assert_eq!((s.count("a/"), s.count(""), s.range_page("", None, None).revision), (2, 3, 4));
    }
}
