//! Outrider's manager: the REST API, agent sync over gRPC on the same port, the catalog
//! mirror that turns bindings into per-instance desired state, and the live fleet registry.
//!
//! Data flow: an API write is one store transaction (the object plus its event-log entry).
//! The catalog watch sees the committed change, updates the in-memory catalog, and pushes
//! new desired state to the connected agents of the affected services. Agents acknowledge
//! revisions and report status; the fleet persists instance records write-behind.
//!
//! Architecture invariant: handlers never push to agents directly — only the catalog watch
//! does, so what agents receive is always derived from committed store state.

pub mod api;
mod auth;
mod binding_admission;
mod catalog;
mod chunked;
mod clock;
mod codec;
mod error;
mod event_log;
pub mod executor;
pub mod fleet;
mod history;
mod keys;
mod leadership;
mod live_plans;
pub mod metrics;
mod plans;
mod repo;
mod retention;
mod serve;
mod server;
mod state;
mod sync;
#[cfg(test)]
mod test_store;
mod tokens;
mod told;
mod webhooks;

pub use error::{Error, StartError};
pub use fleet::InstanceRetention;
pub use retention::Retention;
pub use serve::{
    ServeLimits,
    tls::{TlsError, TlsFiles, agent_uri},
};
pub use server::{ManagerConfig, RunningManager, Tuning, start, start_with, start_with_clock};
pub use told::Told;
pub use webhooks::Delivery as WebhookDelivery;
