//! Event log retention: the newest events of each tenant are kept, older ones deleted with
//! their index keys. `since` cursors keep working: they name a sequence number, and only
//! older events go; a cursor older than the log is told so (`outrider-events-trimmed`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Error, event_log, keys, repo::Repo};

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

/// The tenants in the store.
async fn tenants(repo: &Repo) -> Result<Vec<String>, Error> {
    let tenants = repo.store().range(keys::TENANTS).await?;
    Ok(tenants.kvs.iter().filter_map(|t| t.key.strip_prefix(keys::TENANTS).map(str::to_owned)).collect())
}

/// Deletes the oldest events of every tenant over `keep`; returns how many went.
async fn trim(repo: &Repo, keep: usize) -> Result<usize, Error> {
    let mut deleted = 0;
    for tenant in tenants(repo).await? {
        deleted += event_log::trim(repo.store().as_ref(), &tenant, u64::try_from(keep).unwrap_or(u64::MAX)).await?;
    }
    Ok(deleted)
}

/// Moves every tenant's events of an older layout into the indexed one (once, at start).
pub(crate) async fn migrate(repo: &Repo) -> Result<(), Error> {
    for tenant in tenants(repo).await? {
        let moved = event_log::migrate(repo.store().as_ref(), &tenant).await?;
        if moved > 0 {
            tracing::info!(tenant, moved, "moved events into the indexed event log");
        }
    }
    Ok(())
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
