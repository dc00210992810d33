//! The long-running subcommands. The operator CLI lives in `crate::cli`.

pub mod agent;
pub mod bench;
pub mod demo;
pub mod server;
pub mod sim;
