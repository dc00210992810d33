//! Event log retention: the newest events of each tenant are kept, older ones deleted.
//! `since` cursors keep working: they name a sequence number, and only older events go.

use std::time::Duration;

use outrider_store::{Op, Txn};
use tokio_util::sync::CancellationToken;

use crate::{Error, keys, repo::Repo};

/// Deletions per transaction.
const CHUNK: usize = 500;

/// How many events are kept and how often the log is trimmed.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Events kept per tenant (the newest).
    pub events_per_tenant: usize,
    /// Time between two trims.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { events_per_tenant: 100_000, every: Duration::from_secs(60) }
    }
}

/// Deletes the oldest events of every tenant over `keep`; returns how many went.
async fn trim(repo: &Repo, keep: usize) -> Result<usize, Error> {
    let store = repo.store();
    let tenants = store.range(keys::TENANTS).await?;
    let mut deleted = 0;
    for t in &tenants.kvs {
        let Some(tenant) = t.key.strip_prefix(keys::TENANTS) else { continue };
        let events = store.range(&keys::events(tenant)).await?;
        // Keys are time-ordered: the first ones are the oldest.
        let over = events.kvs.len().saturating_sub(keep);
        for chunk in events.kvs[..over].chunks(CHUNK) {
            let ops = chunk.iter().map(|kv| Op::delete(&kv.key)).collect();
            store.txn(Txn::when(Vec::new(), ops)).await?;
            deleted += chunk.len();
        }
    }
    Ok(deleted)
}

/// Trims the event log every `r.every` until `cancel`.
pub(crate) async fn run(repo: Repo, r: Retention, cancel: CancellationToken) {
    loop {
        match trim(&repo, r.events_per_tenant).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, keep = r.events_per_tenant, "trimmed the event log"),
            Err(e) => tracing::warn!(error = %e, "cannot trim the event log"),
        }
        tokio::select! {
            () = tokio::time::sleep(r.every) => {}
            () = cancel.cancelled() => return,
        }
    }
}
