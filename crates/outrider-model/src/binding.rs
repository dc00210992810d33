use serde::{Deserialize, Serialize};

use crate::UpgradeMode;

/// A service enables a sidecar at a desired version with a default upgrade mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The sidecar (filled from the path; may be omitted in a request body).
    #[serde(default)]
    pub sidecar: String,
    /// Whether instances of the service run the sidecar.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The version they must run.
    pub version: String,
    /// How they get there when the version changes.
    #[serde(default = "default_mode")]
    pub mode: UpgradeMode,
}

fn yes() -> bool {
    true
}

fn default_mode() -> UpgradeMode {
    UpgradeMode::Restart
}
