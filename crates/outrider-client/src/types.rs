//! Answers and queries of the REST API that have no type in `outrider-model`.

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

/// Filters of `GET …/instances`; `None` (or an empty string) does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Only instances of this service.
    pub service: Option<String>,
    /// Only instances that run this sidecar.
    pub sidecar: Option<String>,
    /// Only instances that run this version (of `sidecar`).
    pub version: Option<String>,
    /// Only instances in this region.
    pub region: Option<String>,
    /// Only instances in this env (`preview`, `prod`).
    pub env: Option<String>,
    /// Only instances in this stage (`canary`, `single-dc`, `full`).
    pub stage: Option<String>,
}

impl InstanceFilter {
    pub(crate) fn pairs(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("service", self.service.as_deref()),
            ("sidecar", self.sidecar.as_deref()),
            ("version", self.version.as_deref()),
            ("region", self.region.as_deref()),
            ("env", self.env.as_deref()),
            ("stage", self.stage.as_deref()),
        ]
    }
}

/// Parameters of `GET …/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events after this sequence number.
    pub since: Option<u64>,
    /// Only events of this plan.
    pub plan: Option<String>,
}
