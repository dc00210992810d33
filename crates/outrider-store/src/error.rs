use thiserror::Error;

/// What can go wrong in a store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The requested revision is older than the history kept for watches.
    #[error("revision {requested} is compacted (oldest watchable revision is {oldest}); resync with a range")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// The storage engine failed.
    #[error("storage engine: {0}")]
    Backend(String),
    /// A store URL names no store this build can open.
    #[error("store URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's server cannot be reached or did not answer in time; a write that timed
    /// out may still have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        Self::Backend(e.to_string())
    }
}
