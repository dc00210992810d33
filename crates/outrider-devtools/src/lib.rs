//! Outrider's dev tooling, run by the `outrider` binary: the one-command [`demo`], the
//! benchmarks ([`bench`]) and the [`harness`] that runs a manager, agents and the demo
//! sidecar as child processes on loopback (also used by the end-to-end tests).
//!
//! Architecture invariant: nothing here is part of a role the product runs in production;
//! the manager and the agent never depend on this crate.

pub mod bench;
pub mod demo;
pub mod harness;
