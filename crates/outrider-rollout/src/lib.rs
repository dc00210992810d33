//! Outrider's rollout planning: from the fleet and a plan body, the phases' ordered cells and
//! batches ([`plan`]); change windows, freezes and protected periods ([`Windows`],
//! [`blocked_until`]); and the predicted schedule of a plan on a virtual clock ([`simulate`]).
//!
//! Architecture invariant: this crate performs no I/O, runs nothing asynchronously and never
//! reads the clock — time is always passed in. The same input always gives the same output.

mod fleet_view;
mod hash;
mod planner;
mod simulate;
mod window;

pub use fleet_view::{FleetView, InstanceView};
pub use planner::{PlanError, Planned, plan};
pub use simulate::{SimAssumptions, simulate};
pub use window::{Windows, blocked_until};
