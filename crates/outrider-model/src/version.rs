use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ValidationError;

/// Where a version's executable comes from, and the hash it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `file://`, `http://` or `https://` URL.
    pub url: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

impl Artifact {
    fn validate(&self) -> Result<(), ValidationError> {
        let scheme_ok = ["file://", "http://", "https://"].iter().any(|s| self.url.starts_with(s));
        if !scheme_ok || self.url.len() > 2048 {
            return Err(ValidationError::new("artifact.url", "must be a file://, http:// or https:// URL"));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
            return Err(ValidationError::new("artifact.sha256", "must be 64 lower-case hex digits"));
        }
        Ok(())
    }
}

/// Lifecycle of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// May be used.
    Active,
    /// Must never again be a target; its installations should be recalled.
    Defective,
    /// No longer offered.
    Retired,
}

/// The body of `POST …/versions`: what a release engineer supplies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    /// Semantic version (`1.2.0`).
    pub version: String,
    /// The executable.
    pub artifact: Artifact,
    /// Command line; `${artifact}` is the fetched file. Placeholders are expanded by the agent.
    #[serde(default = "NewVersion::default_command")]
    pub command: Vec<String>,
    /// Environment added to the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Release notes.
    #[serde(default)]
    pub notes: String,
}

impl NewVersion {
    fn default_command() -> Vec<String> {
        vec!["${artifact}".to_owned()]
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_version(&self.version)?;
        self.artifact.validate()?;
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(ValidationError::new("command", "must name the program to run"));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ValidationError::new("env", format!("{k:?} is not a variable name")));
            }
        }
        Ok(())
    }
}

/// Checks that `v` is a semantic version.
pub fn validate_version(v: &str) -> Result<semver::Version, ValidationError> {
    semver::Version::parse(v)
        .map_err(|e| ValidationError::new("version", format!("{v:?} is not a semantic version: {e}")))
}

/// One release of a sidecar, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Sidecar it belongs to.
    pub sidecar: String,
    /// Semantic version.
    pub version: String,
    /// The executable.
    pub artifact: Artifact,
    /// Command line (unexpanded).
    pub command: Vec<String>,
    /// Environment (unexpanded).
    pub env: BTreeMap<String, String>,
    /// Release notes.
    pub notes: String,
    /// True once the version has passed its tests (change admission).
    pub admitted: bool,
    /// What admitted it.
    #[serde(default)]
    pub admission_evidence: serde_json::Value,
    /// Lifecycle state.
    pub state: VersionState,
    /// Why it was marked defective.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defect_reason: Option<String>,
    /// Once defective: the last known good version its recall goes to, which instances not
    /// running it get instead wherever it would still be delivered (a binding naming it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_to: Option<String>,
    /// Once defective without a version to recall to: why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_skipped: Option<String>,
    /// The last plan that targeted this version and completed: it went through gray and
    /// reached every instance in scope (what makes a version known good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_plan: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Version {
    /// A new active, not yet admitted version of `sidecar`.
    pub fn new(sidecar: &str, v: NewVersion, now: OffsetDateTime) -> Self {
        Self {
            sidecar: sidecar.to_owned(),
            version: v.version,
            artifact: v.artifact,
            command: v.command,
            env: v.env,
            notes: v.notes,
            admitted: false,
            admission_evidence: serde_json::Value::Null,
            state: VersionState::Active,
            defect_reason: None,
            recall_to: None,
            recall_skipped: None,
            completed_plan: None,
            created_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: &str, sha: &str) -> NewVersion {
        NewVersion {
            version: v.into(),
            artifact: Artifact { url: "file:///bin/true".into(), sha256: sha.into() },
            command: vec!["${artifact}".into()],
            env: BTreeMap::new(),
            notes: String::new(),
        }
    }

    #[test]
    fn valid_version_passes() {
        body("1.2.0", &"a".repeat(64)).validate().unwrap();
    }

    #[test]
    fn bad_versions_and_hashes_are_refused() {
        assert_eq!(body("1.2", &"a".repeat(64)).validate().unwrap_err().field, "version");
        assert_eq!(body("1.2.0", "abc").validate().unwrap_err().field, "artifact.sha256");
        assert_eq!(body("1.2.0", &"A".repeat(64)).validate().unwrap_err().field, "artifact.sha256");
        let mut b = body("1.2.0", &"a".repeat(64));
        b.artifact.url = "ftp://x".into();
        assert_eq!(b.validate().unwrap_err().field, "artifact.url");
    }

    #[test]
    fn server_managed_fields_are_unknown_in_a_new_version() {
        let j = format!(
            r#"{{"version":"1.0.0","artifact":{{"url":"file:///x","sha256":"{}"}},"admitted":true}}"#,
            "a".repeat(64)
        );
        assert!(serde_json::from_str::<NewVersion>(&j).is_err());
    }
}
