use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One entry of the event log: a change of desired state, a plan transition, a verdict, an
/// operator action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log (the store revision that wrote it).
    pub seq: u64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Tenant it concerns.
    pub tenant: String,
    /// What happened (`binding.updated`, `version.admitted`…).
    pub kind: String,
    /// Who did it (`admin`, `agent:<id>`, `executor`).
    pub actor: String,
    /// What it concerns (`service/checkout/sidecar/mesh-proxy`).
    pub object: String,
    /// Why, in words.
    #[serde(default)]
    pub reason: String,
    /// Plan it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Details (old and new values).
    #[serde(default)]
    pub detail: serde_json::Value,
}
