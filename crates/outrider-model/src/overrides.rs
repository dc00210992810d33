//! What a plan changes: the target of a cell ([`CellTarget`], which every instance that is or
//! becomes a member of the cell follows) and its record of each instance it moved
//! ([`Override`]: what the instance ran before, for rollback and the judge).

use serde::{Deserialize, Serialize};

use crate::UpgradeMode;

/// A plan's change to one instance's sidecar. It applies while the service's binding still
/// names `base_version` (a later binding change supersedes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// Plan that wrote it.
    pub plan: String,
    /// Phase index in the plan.
    pub phase: u32,
    /// Batch index in the phase.
    pub batch: u32,
    /// Version to run.
    pub version: String,
    /// How to get there.
    pub mode: UpgradeMode,
    /// What the instance ran before (for rollback).
    pub previous: String,
    /// The binding's version when the override was written.
    pub base_version: String,
    /// The sidecar's exit count when the override was written (the judge counts new exits).
    #[serde(default)]
    pub exits_before: u32,
}

/// A plan's target for one cell: every instance of `service` in `region` and `env` (and of
/// `stage`, unless it is `all`) runs `version` — those registered later too — while the
/// service's binding still names `base_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellTarget {
    /// Plan that wrote it.
    pub plan: String,
    /// Phase index in the plan.
    pub phase: u32,
    /// Batch index in the phase.
    pub batch: u32,
    /// Version to run.
    pub version: String,
    /// How to get there.
    pub mode: UpgradeMode,
    /// The binding's version when the target was written.
    pub base_version: String,
}
