use serde::{Deserialize, Serialize};

use crate::{UpgradeMode, ValidationError, service::MAX_REASON};

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

/// The body of `PUT /services/{service}/sidecars/{sidecar}`: the binding, and whether to make
/// the change despite admission (`force`, which needs a `reason`). `force` and `reason` are
/// recorded in the event log, never stored in the binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingChange {
    /// The sidecar (filled from the path; may be omitted).
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
    /// Make the change although admission refuses it (a freeze, a protected period, a
    /// version not admitted); needs a `reason`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Why the change is made (required with `force`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl BindingChange {
    /// Checks `reason` (bounded, single line; required with `force`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate_text("reason", &self.reason, MAX_REASON, false)?;
        if self.force && self.reason.trim().is_empty() {
            return Err(ValidationError::new("reason", "say why the change is forced"));
        }
        Ok(())
    }

    /// The binding to store.
    pub fn binding(&self) -> Binding {
        Binding { sidecar: self.sidecar.clone(), enabled: self.enabled, version: self.version.clone(), mode: self.mode }
    }
}

impl From<Binding> for BindingChange {
    fn from(b: Binding) -> Self {
        Self {
            sidecar: b.sidecar,
            enabled: b.enabled,
            version: b.version,
            mode: b.mode,
            force: false,
            reason: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(json: &str) -> Result<BindingChange, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn force_and_reason_are_optional_and_unknown_fields_refused() {
        let c = change(r#"{"version":"1.0.0"}"#).unwrap();
        assert!(!c.force && c.reason.is_empty());
        c.validate().unwrap();
        assert_eq!(c.binding(), serde_json::from_str::<Binding>(r#"{"version":"1.0.0"}"#).unwrap());
        assert!(change(r#"{"version":"1.0.0","forced":true}"#).is_err());
    }

    #[test]
    fn force_needs_a_reason_and_the_reason_is_bounded() {
        assert_eq!(change(r#"{"version":"1.0.0","force":true}"#).unwrap().validate().unwrap_err().field, "reason");
        assert_eq!(
            change(r#"{"version":"1.0.0","force":true,"reason":"  "}"#).unwrap().validate().unwrap_err().field,
            "reason"
        );
        change(r#"{"version":"1.0.0","force":true,"reason":"hotfix"}"#).unwrap().validate().unwrap();
        change(r#"{"version":"1.0.0","reason":"routine"}"#).unwrap().validate().unwrap();
        let long = BindingChange { reason: "x".repeat(MAX_REASON + 1), ..change(r#"{"version":"1.0.0"}"#).unwrap() };
        assert_eq!(long.validate().unwrap_err().field, "reason");
    }

    #[test]
    fn a_plain_binding_serializes_without_force_or_reason() {
        let c = BindingChange::from(change(r#"{"version":"1.0.0"}"#).unwrap().binding());
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("force").is_none() && json.get("reason").is_none(), "{json}");
    }
}
