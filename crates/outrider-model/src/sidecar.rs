use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AnalysisSpec, HumanDuration, Lifecycle, ValidationError, validate_name, validate_text};

/// Bytes of a description.
const MAX_DESCRIPTION: usize = 4_096;
/// Bytes of an owner, a probe address or a probe argument.
const MAX_ARG: usize = 2_048;
/// Metrics a sidecar names.
const MAX_METRICS: usize = 256;

/// How an instance moves from one version of a sidecar to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Stop the old process, start the new one.
    Restart,
    /// Start the new process beside the old one and hand over the listening sockets.
    Hot,
    /// Take the instance out of traffic, restart the sidecar, put it back.
    Warm,
    /// Record the target; switch at the instance's next deploy.
    OnDeploy,
}

impl fmt::Display for UpgradeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Restart => "restart",
            Self::Hot => "hot",
            Self::Warm => "warm",
            Self::OnDeploy => "on-deploy",
        })
    }
}

impl std::str::FromStr for UpgradeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| format!("unknown upgrade mode {s:?}: use restart, hot, warm or on-deploy"))
    }
}

/// One way to check a sidecar's health. Exactly one of `tcp`, `http`, `exec` is set; each may
/// hold placeholders (`${label.port}`) that the agent expands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// `host:port` that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// URL that must answer `GET` with a 2xx status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Command that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Time one attempt may take.
    #[serde(default = "Probe::default_timeout")]
    pub timeout: HumanDuration,
    /// Time between attempts.
    #[serde(default = "Probe::default_period")]
    pub period: HumanDuration,
    /// Startup probe: how long the sidecar may take to become ready. Liveness probe: ignored.
    #[serde(default = "Probe::default_deadline")]
    pub deadline: HumanDuration,
    /// Liveness probe: consecutive failures before the sidecar is restarted.
    #[serde(default = "Probe::default_failures")]
    pub failure_threshold: u32,
}

/// The check a probe performs, resolved from its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck<'a> {
    /// Connect to this address.
    Tcp(&'a str),
    /// GET this URL.
    Http(&'a str),
    /// Run this command.
    Exec(&'a [String]),
}

impl Probe {
    fn default_timeout() -> HumanDuration {
        HumanDuration::from_secs(1)
    }
    fn default_period() -> HumanDuration {
        HumanDuration::from_millis(500)
    }
    fn default_deadline() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    fn default_failures() -> u32 {
        3
    }

    /// A probe that GETs `url`, with default timings.
    pub fn http(url: impl Into<String>) -> Self {
        Self {
            tcp: None,
            http: Some(url.into()),
            exec: None,
            timeout: Self::default_timeout(),
            period: Self::default_period(),
            deadline: Self::default_deadline(),
            failure_threshold: Self::default_failures(),
        }
    }

    /// The one check this probe performs.
    pub fn check(&self) -> Option<ProbeCheck<'_>> {
        match (&self.tcp, &self.http, &self.exec) {
            (Some(a), None, None) => Some(ProbeCheck::Tcp(a)),
            (None, Some(u), None) => Some(ProbeCheck::Http(u)),
            (None, None, Some(c)) if !c.is_empty() => Some(ProbeCheck::Exec(c)),
            _ => None,
        }
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.check().is_none() {
            return Err(ValidationError::new(field, "set exactly one of tcp, http, exec (non-empty)"));
        }
        if self.timeout.0.is_zero() || self.period.0.is_zero() {
            return Err(ValidationError::new(field, "timeout and period must be above zero"));
        }
        if self.failure_threshold == 0 {
            return Err(ValidationError::new(field, "failure_threshold must be at least 1"));
        }
        let args = self.exec.iter().flatten().chain(&self.tcp).chain(&self.http);
        for a in args {
            validate_text(field, a, MAX_ARG, false)?;
        }
        Ok(())
    }
}

/// A kind of auxiliary process that runs beside service instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Unique name within the tenant (`mesh-proxy`).
    pub name: String,
    /// Owning team or person.
    #[serde(default)]
    pub owner: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Upgrade modes it supports.
    #[serde(default = "Sidecar::default_modes")]
    pub upgrade_modes: Vec<UpgradeMode>,
    /// Custom metric names that anomaly detection watches (more is worse, by 25 %).
    #[serde(default)]
    pub metrics: Vec<String>,
    /// How its plans' batches are judged (a plan body's `analysis` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// How the agent runs, checks, stops and upgrades its processes; its fields sit at the
    /// top level of the JSON.
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
}

impl Sidecar {
    fn default_modes() -> Vec<UpgradeMode> {
        vec![UpgradeMode::Restart, UpgradeMode::OnDeploy]
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        validate_text("owner", &self.owner, MAX_ARG, false)?;
        validate_text("description", &self.description, MAX_DESCRIPTION, true)?;
        if self.upgrade_modes.is_empty() {
            return Err(ValidationError::new("upgrade_modes", "list at least one mode"));
        }
        if let Some(m) =
            self.upgrade_modes.iter().enumerate().find_map(|(i, m)| self.upgrade_modes[..i].contains(m).then_some(m))
        {
            return Err(ValidationError::new("upgrade_modes", format!("{m} is listed twice")));
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(ValidationError::new("metrics", format!("at most {MAX_METRICS} metrics")));
        }
        for m in &self.metrics {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                return Err(ValidationError::new("metrics", format!("{m:?} is not a metric name")));
            }
        }
        if let Some(a) = &self.analysis {
            a.validate("analysis")?;
        }
        self.lifecycle
            .validate(self.upgrade_modes.contains(&UpgradeMode::Hot), self.upgrade_modes.contains(&UpgradeMode::Warm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_sidecar_gets_defaults() {
        let s: Sidecar = serde_json::from_str(r#"{"name":"mesh-proxy"}"#).unwrap();
        s.validate().unwrap();
        assert_eq!(s.lifecycle.drain_time, HumanDuration::from_secs(10));
        assert!(s.upgrade_modes.contains(&UpgradeMode::Restart));
    }

    #[test]
    fn unknown_fields_and_bad_probes_are_refused() {
        assert!(serde_json::from_str::<Sidecar>(r#"{"name":"a","colour":1}"#).is_err());
        let s: Sidecar =
            serde_json::from_str(r#"{"name":"a","startup_probe":{"tcp":"x:1","http":"http://x"}}"#).unwrap();
        assert_eq!(s.validate().unwrap_err().field, "startup_probe");
    }

    #[test]
    fn duplicate_modes_long_descriptions_and_probe_newlines_are_refused() {
        let s: Sidecar = serde_json::from_str(r#"{"name":"a","upgrade_modes":["restart","restart"]}"#).unwrap();
        assert_eq!(s.validate().unwrap_err().field, "upgrade_modes");
        let long = format!(r#"{{"name":"a","description":"{}"}}"#, "x".repeat(600_000));
        assert_eq!(serde_json::from_str::<Sidecar>(&long).unwrap().validate().unwrap_err().field, "description");
        let probe = r#"{"name":"a","startup_probe":{"http":"http://x/\r\nHost: evil"}}"#;
        assert_eq!(serde_json::from_str::<Sidecar>(probe).unwrap().validate().unwrap_err().field, "startup_probe");
    }

    #[test]
    fn scrape_sits_at_the_top_level_and_is_validated() {
        let body = r#"{"name":"a","scrape":{"url":"http://127.0.0.1:${label.port}/metrics","interval":"1s",
            "series":[{"name":"rps","rate":"requests_total"}]}}"#;
        let s: Sidecar = serde_json::from_str(body).unwrap();
        s.validate().unwrap();
        assert_eq!(s.lifecycle.scrape.as_ref().unwrap().series[0].name, "rps");
        let bad = body.replace(r#""interval":"1s""#, r#""interval":"1h""#);
        assert_eq!(serde_json::from_str::<Sidecar>(&bad).unwrap().validate().unwrap_err().field, "scrape.interval");
        let none: Sidecar = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert!(!serde_json::to_string(&none).unwrap().contains("scrape"));
    }

    #[test]
    fn modes_parse_in_kebab_case() {
        assert_eq!("on-deploy".parse::<UpgradeMode>().unwrap(), UpgradeMode::OnDeploy);
        assert!("sideways".parse::<UpgradeMode>().is_err());
    }
}
