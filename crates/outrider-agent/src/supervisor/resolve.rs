//! Placeholder expansion of a desired sidecar for this instance: the command line, the
//! environment and the probe targets, with `${artifact}` bound to the cached executable.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use outrider_model::{
    Action, DesiredSidecar, InstanceLabels, PlaceholderContext, PlaceholderError, Probe, ProbeCheck, expand,
};
use thiserror::Error;

/// Why the settings of a desired sidecar cannot be made concrete on this instance.
#[derive(Debug, Error)]
pub(super) enum ResolveError {
    /// A placeholder in `field` cannot be expanded.
    #[error("cannot expand {field}: {error}")]
    Expand {
        /// The setting (`command`, `env.PORT`, `startup_probe`…).
        field: String,
        /// Why.
        error: PlaceholderError,
    },
    /// The cached artifact's path cannot be put in a command line.
    #[error("artifact path {} is not UTF-8", .0.display())]
    ArtifactPath(PathBuf),
    /// The command line is empty, or names an empty program.
    #[error("command is empty")]
    EmptyCommand,
    /// A probe sets none or several of its kinds.
    #[error("{0} must set exactly one of tcp, http, exec")]
    ProbeKind(&'static str),
    /// A warm-upgrade action sets none or both of its kinds.
    #[error("{0} must set exactly one of http, exec")]
    ActionKind(&'static str),
}

/// A desired sidecar with every placeholder expanded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Resolved {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The version's environment.
    pub env: BTreeMap<String, String>,
    /// Startup check.
    pub startup: Option<ResolvedProbe>,
    /// Liveness check.
    pub liveness: Option<ResolvedProbe>,
    /// Agent-owned sockets: `(name, address)`.
    pub sockets: Vec<(String, String)>,
}

/// A warm-upgrade action with its placeholders expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ResolvedAction {
    /// Call this URL with this method.
    Http { method: String, url: String },
    /// Run this command.
    Exec(Vec<String>),
}

/// A probe with its target expanded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResolvedProbe {
    check: OwnedCheck,
    /// Time one attempt may take.
    pub timeout: Duration,
    /// Time between attempts.
    pub period: Duration,
    /// Startup only: time the sidecar has to pass.
    pub deadline: Duration,
    /// Liveness only: consecutive failures before the process is killed.
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum OwnedCheck {
    Tcp(String),
    Http(String),
    Exec(Vec<String>),
}

impl ResolvedProbe {
    /// The check to hand to [`crate::probe::run`].
    pub(super) fn check(&self) -> ProbeCheck<'_> {
        match &self.check {
            OwnedCheck::Tcp(a) => ProbeCheck::Tcp(a),
            OwnedCheck::Http(u) => ProbeCheck::Http(u),
            OwnedCheck::Exec(c) => ProbeCheck::Exec(c),
        }
    }
}

/// Who this instance is, for placeholders.
pub(super) struct Identity<'a> {
    pub instance: &'a str,
    pub service: &'a str,
    pub labels: &'a InstanceLabels,
}

/// Expands every placeholder of `d`; the error names the field and the placeholder.
pub(super) fn resolve(who: &Identity<'_>, d: &DesiredSidecar, artifact: &Path) -> Result<Resolved, ResolveError> {
    let artifact = artifact.to_str().ok_or_else(|| ResolveError::ArtifactPath(artifact.to_owned()))?;
    let ctx = PlaceholderContext { instance: who.instance, service: who.service, labels: who.labels, artifact };
    let x =
        |field: &str, s: &str| expand(s, &ctx).map_err(|error| ResolveError::Expand { field: field.to_owned(), error });
    let argv = d.command.iter().map(|s| x("command", s)).collect::<Result<Vec<_>, _>>()?;
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(ResolveError::EmptyCommand);
    }
    let env = d
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), x(&format!("env.{k}"), v)?)))
        .collect::<Result<BTreeMap<_, _>, ResolveError>>()?;
    let probe = |field: &'static str, p: &Probe| -> Result<ResolvedProbe, ResolveError> {
        let check = match p.check() {
            Some(ProbeCheck::Tcp(a)) => OwnedCheck::Tcp(x(field, a)?),
            Some(ProbeCheck::Http(u)) => OwnedCheck::Http(x(field, u)?),
            Some(ProbeCheck::Exec(c)) => OwnedCheck::Exec(c.iter().map(|s| x(field, s)).collect::<Result<_, _>>()?),
            None => return Err(ResolveError::ProbeKind(field)),
        };
        Ok(ResolvedProbe {
            check,
            timeout: p.timeout.0,
            period: p.period.0.max(Duration::from_millis(10)),
            deadline: p.deadline.0,
            failure_threshold: p.failure_threshold.max(1),
        })
    };
    let startup = d.lifecycle.startup_probe.as_ref().map(|p| probe("startup_probe", p)).transpose()?;
    let liveness = d.lifecycle.liveness_probe.as_ref().map(|p| probe("liveness_probe", p)).transpose()?;
    let sockets = d
        .lifecycle
        .sockets
        .iter()
        .map(|s| Ok((s.name.clone(), x("sockets.listen", &s.listen)?)))
        .collect::<Result<_, ResolveError>>()?;
    Ok(Resolved { argv, env, startup, liveness, sockets })
}

/// Expands the placeholders of `s`, a setting outside the command line (`${artifact}` is
/// not available there); the error names `field`.
pub(super) fn expand_setting(who: &Identity<'_>, field: &str, s: &str) -> Result<String, ResolveError> {
    let ctx = PlaceholderContext { instance: who.instance, service: who.service, labels: who.labels, artifact: "" };
    expand(s, &ctx).map_err(|error| ResolveError::Expand { field: field.to_owned(), error })
}

/// Expands the placeholders of a warm-upgrade action.
pub(super) fn resolve_action(
    who: &Identity<'_>,
    field: &'static str,
    a: &Action,
) -> Result<ResolvedAction, ResolveError> {
    let x = |s: &str| expand_setting(who, field, s);
    match (&a.http, &a.exec) {
        (Some(url), None) => Ok(ResolvedAction::Http { method: a.method.clone(), url: x(url)? }),
        (None, Some(cmd)) if !cmd.is_empty() => {
            Ok(ResolvedAction::Exec(cmd.iter().map(|s| x(s)).collect::<Result<_, _>>()?))
        }
        _ => Err(ResolveError::ActionKind(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredSidecar {
        let mut d = outrider_model::testing::desired_sidecar("mesh", "1.0.0");
        d.command.push("--port=${label.port}".into());
        d.env.insert("ID".into(), "${service}/${instance}".into());
        d.lifecycle.startup_probe = Some(Probe::http("http://127.0.0.1:${label.port}/healthz"));
        d
    }

    #[test]
    fn expands_command_env_and_probes() {
        let mut labels = InstanceLabels::default();
        labels.labels.insert("port".into(), "8080".into());
        let who = Identity { instance: "i-1", service: "checkout", labels: &labels };
        let r = resolve(&who, &desired(), Path::new("/cache/abc")).unwrap();
        assert_eq!(r.argv, ["/cache/abc", "--port=8080"]);
        assert_eq!(r.env["ID"], "checkout/i-1");
        assert_eq!(r.startup.unwrap().check(), ProbeCheck::Http("http://127.0.0.1:8080/healthz"));
        assert!(r.liveness.is_none());
    }

    #[test]
    fn a_missing_label_is_an_error_naming_it() {
        let labels = InstanceLabels::default();
        let who = Identity { instance: "i-1", service: "checkout", labels: &labels };
        let err = resolve(&who, &desired(), Path::new("/cache/abc")).unwrap_err().to_string();
        assert!(err.contains("command") && err.contains("port"), "{err}");
    }
}
