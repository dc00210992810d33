//! What the API handlers, the sync service and the background tasks share.

use std::sync::{Arc, RwLock};

use crate::{
    auth::Auth, catalog::Catalog, clock::Clock, fleet::Fleet, metrics::Metrics, repo::Repo, webhooks::Webhooks,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Typed store access.
    pub repo: Repo,
    /// The live fleet.
    pub fleet: Arc<Fleet>,
    /// The catalog mirror.
    pub catalog: Arc<RwLock<Catalog>>,
    /// Token checks.
    pub auth: Auth,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Pokes the executor to look at the plans now.
    pub wake: Arc<tokio::sync::Notify>,
    /// The running webhooks (their delivery attempts).
    pub webhooks: Arc<Webhooks>,
    /// The manager's clock (the executor's): what "now" is for freezes and protected periods.
    pub clock: Arc<dyn Clock>,
}
