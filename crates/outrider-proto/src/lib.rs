//! The agent sync protocol (see `proto/sync.proto` for the message order), generated with
//! tonic, plus conversions to and from the domain model.

/// Generated messages and services of `outrider.sync.v1`.
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("outrider.sync.v1");
}

pub mod batched_writes;
mod convert;
pub mod server;

pub use convert::ConvertError;
