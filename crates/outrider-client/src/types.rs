//! Answers and queries of the REST API that have no type in `outrider-model`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The answer of `GET …/sidecars/{sidecar}/distribution`: instances per running version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    /// The sidecar.
    pub sidecar: String,
    /// Instances running the sidecar at any version.
    pub total: u64,
    /// One entry per running version.
    pub versions: Vec<VersionCount>,
}

/// How many instances run one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCount {
    /// The version.
    pub version: String,
    /// Instances running it.
    pub instances: u64,
}

/// Parameters of `GET …/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events after this sequence number.
    pub since: Option<u64>,
    /// Only events of this plan.
    pub plan: Option<String>,
}

/// An operator action on a plan: `POST …/plans/{id}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanAction {
    /// Stop a moving plan; it stays where it is until resumed.
    Pause,
    /// Let a paused plan move again.
    Resume,
    /// Stop the plan for good; what was done stays.
    Abort,
    /// Return every instance the plan changed to its previous version.
    Rollback,
    /// Call a blocking incident a false alarm and let the plan go on.
    Approve,
}

impl PlanAction {
    /// Every action.
    pub const ALL: [Self; 5] = [Self::Pause, Self::Resume, Self::Abort, Self::Rollback, Self::Approve];

    /// The last path segment (`pause`, `resume`, `abort`, `rollback`, `approve`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
            Self::Approve => "approve",
        }
    }
}

impl fmt::Display for PlanAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown plan action {s:?}: use pause, resume, abort, rollback or approve"))
    }
}

/// The query pairs of an instance filter.
pub(crate) fn filter_pairs(f: &outrider_model::InstanceFilter) -> [(&'static str, Option<&str>); 6] {
    [
        ("service", f.service.as_deref()),
        ("sidecar", f.sidecar.as_deref()),
        ("version", f.version.as_deref()),
        ("region", f.region.as_deref()),
        ("env", f.env.as_deref()),
        ("stage", f.stage.as_deref()),
    ]
}
