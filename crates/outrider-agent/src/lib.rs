//! Outrider's agent: runs on every instance, registers it with the manager, keeps the sync
//! stream, persists the last desired state, and supervises the sidecars.
//!
//! Architecture invariant: the agent never talks to the store; everything it knows comes
//! from the sync stream or from its own data dir. The process supervisor knows nothing of
//! the manager: it converges the processes on this host towards a desired set.

pub mod agent;
pub mod artifact;
pub mod atomic_file;
pub mod backoff;
pub mod claim;
pub mod http;
pub mod probe;
pub mod runtime;
pub mod scrape;
pub mod secrets;
pub mod supervisor;
pub mod sync;

pub use runtime::{Runtime, ScrapeCounters};
