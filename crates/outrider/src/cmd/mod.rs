//! The long-running subcommands. The operator CLI lives in `crate::cli`.

pub mod agent;
pub mod server;
