use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ValidationError, validate_name};

/// State of one sidecar on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SidecarState {
    /// Started, startup check not yet passed.
    #[default]
    Starting,
    /// Ready and healthy.
    Running,
    /// Moving to another version.
    Upgrading,
    /// Out of traffic, finishing in-flight work.
    Draining,
    /// Not running, on purpose.
    Stopped,
    /// Crashing repeatedly; restarts are backed off.
    CrashLoop,
    /// Cannot run (artifact refused, command missing, startup check failed).
    Failed,
}

impl fmt::Display for SidecarState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(v.as_str().unwrap_or_default())
    }
}

/// What an agent reports about one sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SidecarStatus {
    /// Sidecar name.
    pub name: String,
    /// Version it runs (or is starting).
    pub version: String,
    /// State.
    pub state: SidecarState,
    /// Process id when a process runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Restarts after unexpected exits.
    #[serde(default)]
    pub restarts: u32,
    /// Unexpected exits seen.
    #[serde(default)]
    pub exits: u32,
    /// CPU use in percent of one core.
    #[serde(default)]
    pub cpu_percent: f64,
    /// Resident memory in bytes.
    #[serde(default)]
    pub rss_bytes: u64,
    /// The last error (artifact refused, startup check failed…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A version the agent tried to upgrade to and gave up on, keeping the running version
    /// (a hot upgrade whose new process never got ready, a failed drain…); cleared once a
    /// new process runs. `error` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_upgrade: Option<String>,
    /// Custom metrics scraped from the sidecar.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// The labels an agent registers its instance with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceLabels {
    /// Region (`boe` is the offline region).
    pub region: String,
    /// `preview` or `prod`.
    pub env: String,
    /// `canary`, `single-dc` or `full`.
    pub stage: String,
    /// `blue` / `green`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Traffic lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Any other label (`port=8080`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl InstanceLabels {
    /// Checks region, env and stage.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("region", &self.region)?;
        if !matches!(self.env.as_str(), "preview" | "prod") {
            return Err(ValidationError::new("env", format!("{:?} must be preview or prod", self.env)));
        }
        if !matches!(self.stage.as_str(), "canary" | "single-dc" | "full") {
            return Err(ValidationError::new("stage", format!("{:?} must be canary, single-dc or full", self.stage)));
        }
        if let Some(c) = &self.color
            && !matches!(c.as_str(), "blue" | "green")
        {
            return Err(ValidationError::new("color", "must be blue or green"));
        }
        if self.labels.len() > 64 {
            return Err(ValidationError::new("labels", "at most 64 labels"));
        }
        for (k, v) in self.lane.iter().map(|l| ("lane", l)).chain(self.labels.iter().map(|(k, v)| (k.as_str(), v))) {
            crate::validate_text("labels", k, 128, false)?;
            crate::validate_text("labels", v, 256, false)?;
        }
        Ok(())
    }

    /// The value of label `key`, looking at the named labels first.
    pub fn get(&self, key: &str) -> Option<&str> {
        match key {
            "region" => Some(&self.region),
            "env" => Some(&self.env),
            "stage" => Some(&self.stage),
            "color" => self.color.as_deref(),
            "lane" => self.lane.as_deref(),
            _ => self.labels.get(key).map(String::as_str),
        }
    }
}

/// One running copy of a service, as the manager knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique id within the tenant.
    pub id: String,
    /// Its service.
    pub service: String,
    /// Region, env, stage and other labels.
    #[serde(flatten)]
    pub labels: InstanceLabels,
    /// The deploy it belongs to; a new one is a deploy.
    #[serde(default)]
    pub deploy_id: String,
    /// Whether its agent is connected now.
    #[serde(default)]
    pub connected: bool,
    /// Whether its agent has been away longer than the manager's instance TTL: the instance
    /// no longer counts in plans and is removed after the retention period (its agent
    /// simply registers again if it comes back).
    #[serde(default)]
    pub gone: bool,
    /// Last time its agent spoke.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Revision of the desired state last sent to it.
    #[serde(default)]
    pub desired_revision: u64,
    /// Revision of the desired state it has applied.
    #[serde(default)]
    pub acked_revision: u64,
    /// Its sidecars as reported.
    #[serde(default)]
    pub sidecars: Vec<SidecarStatus>,
}

/// Filters of `GET /instances`; `None` (or an empty string) does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFilter {
    /// Only instances of this service.
    #[serde(default)]
    pub service: Option<String>,
    /// Only instances that run this sidecar.
    #[serde(default)]
    pub sidecar: Option<String>,
    /// Only instances that run this version (of `sidecar`, or of any sidecar).
    #[serde(default)]
    pub version: Option<String>,
    /// Only instances in this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Only instances in this env (`preview`, `prod`).
    #[serde(default)]
    pub env: Option<String>,
    /// Only instances in this stage (`canary`, `single-dc`, `full`).
    #[serde(default)]
    pub stage: Option<String>,
}

impl InstanceFilter {
    /// Whether `i` passes every filter that is set.
    pub fn matches(&self, i: &Instance) -> bool {
        let eq = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f.is_empty() || f == v);
        let sidecar_ok = match (&self.sidecar, &self.version) {
            (None, None) => true,
            (s, v) => i.sidecars.iter().any(|sc| eq(s, &sc.name) && eq(v, &sc.version)),
        };
        eq(&self.service, &i.service)
            && eq(&self.region, &i.labels.region)
            && eq(&self.env, &i.labels.env)
            && eq(&self.stage, &i.labels.stage)
            && sidecar_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        let mut l =
            InstanceLabels { region: "boe".into(), env: "prod".into(), stage: "canary".into(), ..Default::default() };
        l.validate().unwrap();
        l.env = "staging".into();
        assert_eq!(l.validate().unwrap_err().field, "env");
    }

    #[test]
    fn states_print_in_contract_spelling() {
        assert_eq!(SidecarState::CrashLoop.to_string(), "crash_loop");
    }
}
