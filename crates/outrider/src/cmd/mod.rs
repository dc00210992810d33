//! The long-running subcommands. The operator CLI lives in `crate::cli`.

pub mod agent;
pub mod bench;
mod bench_upgrade;
pub mod demo;
mod local;
pub mod server;
pub mod sim;
