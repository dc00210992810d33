/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision that last changed it.
    pub mod_revision: u64,
}

/// The answer of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Matching keys in key order.
    pub kvs: Vec<KeyValue>,
    /// Revision of the snapshot read.
    pub revision: u64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this (0: the key must not exist).
    ModRevision {
        /// Key compared.
        key: String,
        /// Expected revision.
        revision: u64,
    },
    /// The key exists.
    Exists(String),
}

impl Compare {
    /// The key must not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self::ModRevision { key: key.into(), revision: 0 }
    }

    /// The key must be unchanged since `revision`.
    pub fn unchanged(key: impl Into<String>, revision: u64) -> Self {
        Self::ModRevision { key: key.into(), revision }
    }
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Set the key `key` names once [`Op::REVISION`] in it is replaced by the revision this
    /// transaction commits at (20 digits, zero-padded): keys that sort in commit order, such
    /// as an append-only log's.
    PutStamped {
        /// Key, with [`Op::REVISION`] somewhere in it.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove `key` (no-op when absent).
    Delete {
        /// Key.
        key: String,
    },
}

impl Op {
    /// The placeholder of a [`Op::PutStamped`] key for the commit revision.
    pub const REVISION: &'static str = "{revision}";

    /// The key of a [`Op::PutStamped`] once the transaction commits at `revision`.
    pub fn stamp(key: &str, revision: u64) -> String {
        key.replace(Self::REVISION, &format!("{revision:020}"))
    }

    /// A put at a key stamped with the commit revision (see [`Op::PutStamped`]).
    pub fn put_stamped(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::PutStamped { key: key.into(), value: value.into() }
    }

    /// `groups` packed in order into batches of at most `limit` operations, never splitting a
    /// group (a group longer than `limit` is a batch of its own): writes that may go in
    /// separate transactions, each group together.
    pub fn batches(groups: Vec<Vec<Op>>, limit: usize) -> Vec<Vec<Op>> {
        let mut out: Vec<Vec<Op>> = Vec::new();
        for group in groups.into_iter().filter(|g| !g.is_empty()) {
            match out.last_mut() {
                Some(last) if last.len() + group.len() <= limit => last.extend(group),
                _ => out.push(group),
            }
        }
        out
    }

    /// A put.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put { key: key.into(), value: value.into() }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }
}

/// A compare-and-swap transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Writes when they hold.
    pub success: Vec<Op>,
    /// Writes when one does not.
    pub failure: Vec<Op>,
}

impl Txn {
    /// Unconditional writes.
    pub fn ops(ops: Vec<Op>) -> Self {
        Self { compare: Vec::new(), success: ops, failure: Vec::new() }
    }

    /// Writes applied only if every compare holds.
    pub fn when(compare: Vec<Compare>, success: Vec<Op>) -> Self {
        Self { compare, success, failure: Vec::new() }
    }
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held.
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: u64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written.
    Put(KeyValue),
    /// The key was removed.
    Delete {
        /// Key.
        key: String,
        /// Revision of the removal.
        mod_revision: u64,
    },
}

impl WatchEvent {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            Self::Put(kv) => &kv.key,
            Self::Delete { key, .. } => key,
        }
    }
}

/// The changes of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision the transaction produced.
    pub revision: u64,
    /// Its changes (filtered by the watch prefix).
    pub events: Vec<WatchEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_groups_whole_and_in_order() {
        let group = |keys: &[&str]| keys.iter().map(|k| Op::delete(*k)).collect::<Vec<_>>();
        fn keys(b: &[Op]) -> Vec<&str> {
            b.iter().map(|op| if let Op::Delete { key } = op { key.as_str() } else { "" }).collect()
        }
        let out =
            Op::batches(vec![group(&["a", "b"]), group(&["c"]), group(&[]), group(&["d", "e"]), group(&["f"])], 3);
        let out: Vec<Vec<&str>> = out.iter().map(|b| keys(b)).collect();
        assert_eq!(out, [vec!["a", "b", "c"], vec!["d", "e", "f"]]);
        let long = Op::batches(vec![group(&["a"]), group(&["b", "c", "d"]), group(&["e"])], 2);
        assert_eq!(long.iter().map(Vec::len).collect::<Vec<_>>(), [1, 3, 1], "a long group alone");
        assert!(Op::batches(Vec::new(), 5).is_empty());
    }
}
