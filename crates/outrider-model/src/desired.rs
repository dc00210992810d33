use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Artifact, Binding, Lifecycle, Sidecar, UpgradeMode, Version};

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
    /// How to run, check, stop and upgrade its processes (the sidecar's, flattened).
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
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
                lifecycle: s.lifecycle.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HumanDuration, NewVersion};

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
        assert_eq!(got[0].lifecycle, sc.lifecycle);
    }

    #[test]
    fn the_lifecycle_fields_sit_at_the_top_level_of_the_json() {
        let mut d = crate::testing::desired_sidecar("mesh", "1.0.0");
        d.lifecycle.startup_probe = Some(crate::Probe::http("http://x/healthz"));
        let json = serde_json::to_value(&d).unwrap();
        let expected = serde_json::json!({
            "name": "mesh",
            "version": "1.0.0",
            "mode": "restart",
            "artifact": {"url": "file:///bin/sh", "sha256": "a".repeat(64)},
            "command": ["${artifact}"],
            "env": {},
            "startup_probe": {"http": "http://x/healthz", "timeout": "1s", "period": "500ms", "deadline": "30s", "failure_threshold": 3},
            "drain_time": "1s",
            "handover": {"kind": "listen-fds"},
            "notify_ready": false,
            "min_ready": "3s",
        });
        assert_eq!(json, expected);
        assert_eq!(serde_json::from_value::<DesiredSidecar>(expected).unwrap(), d);

        let body = serde_json::json!({
            "name": "mesh",
            "owner": "",
            "description": "",
            "upgrade_modes": ["hot"],
            "metrics": [],
            "drain_time": "3s",
            "sockets": [{"name": "http", "listen": "127.0.0.1:${label.port}"}],
            "handover": {"kind": "listen-fds"},
            "notify_ready": true,
            "min_ready": "2s",
            "warm": {"drain": {"http": "http://x/drain", "method": "POST", "timeout": "5s"}, "wait": "1s"},
        });
        let sc: Sidecar = serde_json::from_value(body.clone()).unwrap();
        assert_eq!((sc.lifecycle.drain_time, sc.lifecycle.sockets.len()), (HumanDuration::from_secs(3), 1));
        assert_eq!(serde_json::to_value(&sc).unwrap(), body);
    }
}
