//! Fixtures for tests of the crates that use the model (the `testing` feature): one place
//! that spells out a whole value, so tests only name what they care about.

use crate::{Artifact, DesiredSidecar, HumanDuration, Lifecycle, UpgradeMode};

/// A desired sidecar `name` at `version`: restarted on upgrade, `/bin/sh` as its artifact
/// (with a placeholder hash), run as plain `${artifact}`, no environment, no probes, a 1 s
/// drain time and the default handover. Change what a test needs with struct update syntax
/// or by assigning fields.
pub fn desired_sidecar(name: &str, version: &str) -> DesiredSidecar {
    DesiredSidecar {
        name: name.into(),
        version: version.into(),
        mode: UpgradeMode::Restart,
        artifact: Artifact { url: "file:///bin/sh".into(), sha256: "a".repeat(64) },
        command: vec!["${artifact}".into()],
        env: Default::default(),
        lifecycle: Lifecycle { drain_time: HumanDuration::from_secs(1), ..Lifecycle::default() },
    }
}
