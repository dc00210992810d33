//! Outrider's rollout planning: from the fleet and a plan body, the phases' ordered cells and
//! batches ([`plan`]); change windows, freezes and protected periods ([`Windows`],
//! [`blocked_until`]); the predicted schedule of a plan on a virtual clock ([`simulate`]); and
//! the executor's step, a pure reconciler from a plan and a view of the world to the writes
//! of its next step ([`reconcile`]).
//!
//! Architecture invariant: this crate performs no I/O, runs nothing asynchronously and never
//! reads the clock — time is always passed in. The same input always gives the same output.

mod fleet_view;
mod hash;
mod planner;
pub mod reconcile;
mod simulate;
mod window;

pub use fleet_view::{FleetView, InstanceView};
pub use planner::{PlanError, Planned, plan};
pub use simulate::{SimAssumptions, simulate};
pub use window::{Windows, blocked_until};
