use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Artifact, Binding, Handover, HumanDuration, ListenSocket, Probe, Sidecar, UpgradeMode, Version, Warm};

/// What one instance must run for one sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredSidecar {
    /// Sidecar name.
    pub name: String,
    /// Version to run.
    pub version: String,
    /// How to move to it from another version.
    pub mode: UpgradeMode,
    /// Executable.
    pub artifact: Artifact,
    /// Command line (unexpanded).
    pub command: Vec<String>,
    /// Environment (unexpanded).
    pub env: BTreeMap<String, String>,
    /// Startup check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Liveness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// SIGTERM-to-SIGKILL time.
    pub drain_time: HumanDuration,
    /// Agent-owned listening sockets (`LISTEN_FDS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<ListenSocket>,
    /// How a hot upgrade hands the sockets over.
    #[serde(default)]
    pub handover: Handover,
    /// Readiness comes as `READY=1` on `NOTIFY_SOCKET`.
    #[serde(default)]
    pub notify_ready: bool,
    /// Drain and undrain actions of a warm upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<Warm>,
}

/// Everything one instance must run, at a manager revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DesiredState {
    /// Store revision the state was computed at; agents acknowledge it.
    pub revision: u64,
    /// Sidecars, sorted by name.
    pub sidecars: Vec<DesiredSidecar>,
}

/// Desired sidecars of every instance of a service, from its bindings. A binding whose sidecar
/// or version is missing is left out (the API refuses to create such bindings).
pub fn desired_for_service<'a>(
    bindings: impl IntoIterator<Item = &'a Binding>,
    sidecar: impl Fn(&str) -> Option<&'a Sidecar>,
    version: impl Fn(&str, &str) -> Option<&'a Version>,
) -> Vec<DesiredSidecar> {
    let mut out: Vec<DesiredSidecar> = bindings
        .into_iter()
        .filter(|b| b.enabled)
        .filter_map(|b| {
            let s = sidecar(&b.sidecar)?;
            let v = version(&b.sidecar, &b.version)?;
            Some(DesiredSidecar {
                name: s.name.clone(),
                version: v.version.clone(),
                mode: b.mode,
                artifact: v.artifact.clone(),
                command: v.command.clone(),
                env: v.env.clone(),
                startup_probe: s.startup_probe.clone(),
                liveness_probe: s.liveness_probe.clone(),
                drain_time: s.drain_time,
                sockets: s.sockets.clone(),
                handover: s.handover.clone(),
                notify_ready: s.notify_ready,
                warm: s.warm.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewVersion;

    #[test]
    fn only_enabled_resolvable_bindings_count() {
        let sc: Sidecar = serde_json::from_str(r#"{"name":"mesh"}"#).unwrap();
        let nv = NewVersion {
            version: "1.0.0".into(),
            artifact: Artifact { url: "file:///x".into(), sha256: "a".repeat(64) },
            command: vec!["${artifact}".into()],
            env: BTreeMap::new(),
            notes: String::new(),
        };
        let v = Version::new("mesh", nv, time::OffsetDateTime::UNIX_EPOCH);
        let b = |s: &str, ver: &str, en: bool| Binding {
            sidecar: s.into(),
            enabled: en,
            version: ver.into(),
            mode: UpgradeMode::Restart,
        };
        let bindings =
            [b("mesh", "1.0.0", true), b("mesh", "9.9.9", true), b("logs", "1.0.0", true), b("mesh", "1.0.0", false)];
        let got = desired_for_service(
            &bindings,
            |n| (n == "mesh").then_some(&sc),
            |n, ver| (n == "mesh" && ver == "1.0.0").then_some(&v),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].version, "1.0.0");
    }
}
