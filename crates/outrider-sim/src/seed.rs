//! Writes a generated fleet's catalog to a manager over the REST API: services, and
//! optionally one sidecar version bound to all of them.

use std::{
    collections::BTreeMap,
    fmt,
    hash::{Hash, Hasher},
    str::FromStr,
};

use futures::{StreamExt, TryStreamExt, stream};
use outrider_client::{Client, ClientError};
use outrider_model::{
    Action, Artifact, Binding, Handover, Lifecycle, ListenSocket, NewVersion, Service, Sidecar, UpgradeMode, Warm,
    validate_name, validate_version,
};

use crate::{FleetSpec, SimError};

/// REST writes in flight at once while seeding.
pub const SEED_PARALLELISM: usize = 24;

/// A sidecar at a version, written `NAME@VERSION` (`mesh-proxy@1.0.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarRef {
    /// Sidecar name.
    pub name: String,
    /// Version.
    pub version: String,
}

impl FromStr for SidecarRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, version) = s.split_once('@').ok_or_else(|| format!("{s:?} is not NAME@VERSION"))?;
        validate_name("sidecar", name).map_err(|e| e.to_string())?;
        validate_version(version).map_err(|e| e.to_string())?;
        Ok(Self { name: name.to_owned(), version: version.to_owned() })
    }
}

impl fmt::Display for SidecarRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// What [`seed_catalog`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeedReport {
    /// Services created.
    pub services_created: usize,
    /// Services that existed already (left as they were).
    pub services_existing: usize,
    /// Services bound to the sidecar version.
    pub bound: usize,
}

/// Whether `e` is the manager's answer to creating something that exists.
fn already_exists(e: &ClientError) -> bool {
    e.status() == Some(409) && e.code() == Some("conflict")
}

fn api(what: impl Into<String>) -> impl FnOnce(ClientError) -> SimError {
    let what = what.into();
    move |source| SimError::Api { what, source }
}

/// The body of a simulated version: a `file://` artifact that is never fetched (simulated
/// runtimes run no process) with a well-formed hash derived from the name and version.
pub fn sim_version(sidecar: &str, version: &str) -> NewVersion {
    let mut sha256 = String::with_capacity(64);
    for part in 0u8..4 {
        let mut h = std::hash::DefaultHasher::new();
        (sidecar, version, part).hash(&mut h);
        sha256.push_str(&format!("{:016x}", h.finish()));
    }
    NewVersion {
        version: version.to_owned(),
        artifact: Artifact { url: format!("file:///opt/outrider-sim/{sidecar}-{version}"), sha256 },
        command: vec!["${artifact}".to_owned()],
        env: BTreeMap::new(),
        notes: "simulated".to_owned(),
    }
}

/// Creates sidecar `name` supporting every upgrade mode, or returns the existing one.
pub async fn ensure_sidecar(client: &Client, tenant: &str, name: &str) -> Result<Sidecar, SimError> {
    let body = Sidecar {
        name: name.to_owned(),
        owner: "outrider-sim".to_owned(),
        description: "simulated sidecar".to_owned(),
        upgrade_modes: vec![UpgradeMode::Restart, UpgradeMode::Hot, UpgradeMode::Warm, UpgradeMode::OnDeploy],
        metrics: Vec::new(),
        analysis: None,
        lifecycle: Lifecycle {
            startup_probe: None,
            liveness_probe: None,
            drain_time: outrider_model::HumanDuration::from_secs(1),
            // Simulated agents carry these out instantly; they only have to be valid.
            sockets: vec![ListenSocket { name: "http".to_owned(), listen: "127.0.0.1:${label.port}".to_owned() }],
            handover: Handover::ListenFds,
            notify_ready: false,
            warm: Some(Warm {
                drain: Action {
                    http: Some("http://127.0.0.1:${label.port}/drain".to_owned()),
                    method: "POST".to_owned(),
                    exec: None,
                    timeout: outrider_model::HumanDuration::from_secs(5),
                },
                undrain: None,
                wait: outrider_model::HumanDuration::from_secs(1),
            }),
            scrape: None,
            ..Lifecycle::default()
        },
    };
    match client.create_sidecar(tenant, &body).await {
        Ok(s) => Ok(s),
        Err(e) if already_exists(&e) => {
            client.get_sidecar(tenant, name).await.map_err(api(format!("cannot read sidecar {name:?}")))
        }
        Err(e) => Err(api(format!("cannot create sidecar {name:?}"))(e)),
    }
}

/// Creates version `version` of `sidecar` (see [`sim_version`]) unless it exists; whether
/// this call created it.
pub async fn ensure_version(client: &Client, tenant: &str, sidecar: &str, version: &str) -> Result<bool, SimError> {
    match client.create_version(tenant, sidecar, &sim_version(sidecar, version)).await {
        Ok(_) => Ok(true),
        Err(e) if already_exists(&e) => Ok(false),
        Err(e) => Err(api(format!("cannot create version {version} of sidecar {sidecar:?}"))(e)),
    }
}

/// Creates `service`; `Ok(false)` when it existed already.
pub async fn ensure_service(client: &Client, tenant: &str, service: &Service) -> Result<bool, SimError> {
    match client.create_service(tenant, service).await {
        Ok(_) => Ok(true),
        Err(e) if already_exists(&e) => Ok(false),
        Err(e) => Err(api(format!("cannot create service {:?}", service.name))(e)),
    }
}

/// The mode to bind `sidecar` with: `restart` when it supports it, else its first mode.
pub fn binding_mode(sidecar: &Sidecar) -> UpgradeMode {
    if sidecar.upgrade_modes.contains(&UpgradeMode::Restart) {
        UpgradeMode::Restart
    } else {
        sidecar.upgrade_modes.first().copied().unwrap_or(UpgradeMode::Restart)
    }
}

/// Creates the services of `spec` in `tenant` (existing ones are left as they are) and, with
/// `sidecar`, creates that sidecar and version if missing (admitting a version it creates:
/// a simulated version has no tests to pass; one that existed must be admitted already) and
/// binds every service of `spec` to it. Writes run [`SEED_PARALLELISM`] at a time.
pub async fn seed_catalog(
    client: &Client,
    tenant: &str,
    spec: &FleetSpec,
    sidecar: Option<&SidecarRef>,
) -> Result<SeedReport, SimError> {
    let binding = match sidecar {
        Some(r) => {
            let sc = ensure_sidecar(client, tenant, &r.name).await?;
            if ensure_version(client, tenant, &r.name, &r.version).await? {
                client
                    .admit_version(tenant, &r.name, &r.version, &"simulated: created by outrider sim".into())
                    .await
                    .map_err(api(format!("cannot admit version {} of sidecar {:?}", r.version, r.name)))?;
            }
            Some(Binding {
                sidecar: r.name.clone(),
                enabled: true,
                version: r.version.clone(),
                mode: binding_mode(&sc),
            })
        }
        None => None,
    };
    let binding = binding.as_ref();
    let outcomes: Vec<bool> = stream::iter(&spec.services)
        .map(|svc| async move {
            let created = ensure_service(client, tenant, svc).await?;
            if let Some(b) = binding {
                client
                    .set_binding(tenant, &svc.name, b)
                    .await
                    .map_err(api(format!("cannot bind service {:?} to {}@{}", svc.name, b.sidecar, b.version)))?;
            }
            Ok::<_, SimError>(created)
        })
        .buffer_unordered(SEED_PARALLELISM)
        .try_collect()
        .await?;
    let created = outcomes.iter().filter(|c| **c).count();
    Ok(SeedReport {
        services_created: created,
        services_existing: outcomes.len() - created,
        bound: if binding.is_some() { outcomes.len() } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_refs_parse() {
        let r: SidecarRef = "mesh-proxy@1.2.0".parse().unwrap();
        assert_eq!(r, SidecarRef { name: "mesh-proxy".into(), version: "1.2.0".into() });
        assert_eq!(r.to_string(), "mesh-proxy@1.2.0");
        for bad in ["mesh-proxy", "@1.0.0", "mesh@", "Mesh@1.0.0", "mesh@one"] {
            assert!(bad.parse::<SidecarRef>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sim_versions_are_valid() {
        let v = sim_version("mesh-proxy", "1.0.0");
        v.validate().unwrap();
        assert_ne!(v.artifact.sha256, sim_version("mesh-proxy", "1.0.1").artifact.sha256);
    }
}
