//! Typed async client of the Outrider manager's REST API (`{manager}/api/v1`).
//!
//! Every tenant-scoped call takes the tenant as its first argument. Names are percent-encoded
//! into their own path segment, so no name can reach another route. Failures are
//! [`ClientError`]s: API errors carry the manager's `code` and `message`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), outrider_client::ClientError> {
//! use outrider_client::Client;
//! let token = Client::token_from(Some("/var/lib/outrider/admin.token".as_ref()), None)?;
//! let client = Client::new("http://127.0.0.1:7070", token)?;
//! for sidecar in client.list_sidecars("default").await? {
//!     println!("{}", sidecar.name);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Architecture invariant: this crate knows the REST API's paths and shapes and nothing of the
//! manager's internals; `http://` or `https://` (rustls, with an optional extra CA).

mod client;
#[cfg(feature = "clap")]
mod connect;
mod error;
mod follow;
mod ndjson;
mod path;
#[cfg(test)]
mod tests;
mod types;

pub use client::{Client, EventStream};
#[cfg(feature = "clap")]
pub use connect::{ConnectArgs, OutputFormat};
pub use error::ClientError;
pub use follow::{FollowOptions, PlanFollower, PlanUpdate};
pub use outrider_model::InstanceFilter;
pub use types::{Distribution, EventQuery, PlanAction, VersionCount};
