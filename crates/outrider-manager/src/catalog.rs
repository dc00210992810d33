//! An in-memory mirror of the catalog (tenants, sidecars, versions, services, bindings, plan
//! overrides, freezes), fed by the store watch, from which desired state is computed and the
//! executor reads without store reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use outrider_model::{
    Binding, CellTarget, DesiredSidecar, Freeze, InstanceLabels, Override, Service, Sidecar, Version, VersionState,
    desired_for_service,
};
use outrider_store::{KeyValue, WatchEvent};

use crate::keys::{self, CatalogKey, TargetCell};

impl From<TargetCell<'_>> for CellKey {
    fn from(c: TargetCell<'_>) -> Self {
        Self { sidecar: c.sidecar.into(), region: c.region.into(), env: c.env.into(), stage: c.stage.into() }
    }
}

/// One tenant's catalog.
#[derive(Debug, Default)]
pub struct TenantCatalog {
    sidecars: HashMap<String, Sidecar>,
    versions: HashMap<(String, String), Version>,
    services: HashMap<String, Service>,
    /// service → sidecar → binding.
    bindings: HashMap<String, BTreeMap<String, Binding>>,
    /// service → (instance, sidecar) → a plan's override.
    overrides: HashMap<String, HashMap<(String, String), Override>>,
    /// service → cell (sidecar, region, env, stage) → a plan's target.
    targets: HashMap<String, BTreeMap<CellKey, CellTarget>>,
    /// Change freezes, by id.
    freezes: Vec<Freeze>,
}

/// An owned [`keys::TargetCell`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    /// Sidecar.
    pub sidecar: String,
    /// Region.
    pub region: String,
    /// Env.
    pub env: String,
    /// Stage filter (`all` or a stage).
    pub stage: String,
}

impl CellKey {
    /// Whether an instance with `labels` is a member of the cell.
    pub fn covers(&self, labels: &InstanceLabels) -> bool {
        self.region == labels.region && self.env == labels.env && (self.stage == "all" || self.stage == labels.stage)
    }
}

impl TenantCatalog {
    /// Whether the service exists.
    pub fn has_service(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// Desired sidecars of every instance of `service`, from its bindings.
    pub fn desired_for_service(&self, service: &str) -> Vec<DesiredSidecar> {
        let Some(bindings) = self.bindings.get(service) else { return Vec::new() };
        desired_for_service(
            bindings.values(),
            |s| self.sidecars.get(s),
            |s, v| self.versions.get(&(s.to_owned(), v.to_owned())),
        )
    }

    /// The desired sidecar for `sidecar` at `version`, with the given binding's mode.
    pub fn desired_at_version(&self, base: &DesiredSidecar, version: &str) -> Option<DesiredSidecar> {
        let v = self.versions.get(&(base.name.clone(), version.to_owned()))?;
        Some(DesiredSidecar {
            version: v.version.clone(),
            artifact: v.artifact.clone(),
            command: v.command.clone(),
            env: v.env.clone(),
            ..base.clone()
        })
    }

    /// The version that replaces `sidecar` `version` for instances not running it: its
    /// `recall_to` once it is defective.
    pub fn recalled_to(&self, sidecar: &str, version: &str) -> Option<&str> {
        let v = self.version(sidecar, version)?;
        (v.state == VersionState::Defective).then_some(v.recall_to.as_deref()).flatten()
    }

    /// Whether any override or cell target exists for `service`.
    pub fn has_overrides(&self, service: &str) -> bool {
        self.overrides.get(service).is_some_and(|o| !o.is_empty())
            || self.targets.get(service).is_some_and(|t| !t.is_empty())
    }

    /// The cell target that an instance of `service` with `labels` follows for `sidecar`,
    /// while the binding still names the version it was made against: of the cells covering
    /// the instance, the one of the latest phase.
    pub fn target_for(&self, service: &str, labels: &InstanceLabels, sidecar: &str) -> Option<&CellTarget> {
        let current = self.binding(service, sidecar).map(|b| b.version.as_str());
        self.targets
            .get(service)?
            .iter()
            .filter(|(cell, t)| {
                cell.sidecar == sidecar && cell.covers(labels) && current == Some(t.base_version.as_str())
            })
            .map(|(_, t)| t)
            .max_by_key(|t| (t.phase, t.batch))
    }

    /// Every cell target of `plan`: (service, cell, target).
    pub fn targets_of_plan(&self, plan: &str) -> Vec<(&str, &CellKey, &CellTarget)> {
        self.targets
            .iter()
            .flat_map(|(svc, m)| m.iter().map(move |(c, t)| (svc.as_str(), c, t)))
            .filter(|(_, _, t)| t.plan == plan)
            .collect()
    }

    /// The overrides of one instance of `service` that still apply (their binding is unchanged).
    pub fn overrides_of<'a>(
        &'a self,
        service: &str,
        instance: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Override)> {
        let bindings = self.bindings.get(service);
        self.overrides.get(service).into_iter().flat_map(move |m| {
            m.iter().filter_map(move |((i, s), o)| {
                let current = bindings.and_then(|b| b.get(s)).map(|b| b.version.as_str());
                (i == instance && current == Some(o.base_version.as_str())).then_some((s.as_str(), o))
            })
        })
    }

    /// Every override of `plan`, with its service and instance.
    pub fn overrides_of_plan(&self, plan: &str) -> Vec<(&str, &str, &Override)> {
        self.overrides
            .iter()
            .flat_map(|(svc, m)| m.iter().map(move |((i, _), o)| (svc.as_str(), i.as_str(), o)))
            .filter(|(_, _, o)| o.plan == plan)
            .collect()
    }

    /// The binding of `sidecar` on `service`.
    pub fn binding(&self, service: &str, sidecar: &str) -> Option<&Binding> {
        self.bindings.get(service)?.get(sidecar)
    }

    /// A version of a sidecar.
    pub fn version(&self, sidecar: &str, version: &str) -> Option<&Version> {
        self.versions.get(&(sidecar.to_owned(), version.to_owned()))
    }

    /// Every version of a sidecar.
    pub fn versions_of(&self, sidecar: &str) -> Vec<&Version> {
        self.versions.iter().filter(|((s, _), _)| s == sidecar).map(|(_, v)| v).collect()
    }

    /// A sidecar.
    pub fn sidecar(&self, name: &str) -> Option<&Sidecar> {
        self.sidecars.get(name)
    }

    /// A service.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// Every service.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The tenant's change freezes, by id.
    pub fn freezes(&self) -> &[Freeze] {
        &self.freezes
    }

    /// Services that bind `sidecar`.
    fn services_binding(&self, sidecar: &str) -> impl Iterator<Item = &String> {
        self.bindings.iter().filter(|(_, b)| b.contains_key(sidecar)).map(|(s, _)| s)
    }
}

/// The whole catalog, as of a store revision.
#[derive(Debug, Default)]
pub struct Catalog {
    tenants: HashMap<String, TenantCatalog>,
    /// Revision of the last change applied.
    pub revision: u64,
}

/// A (tenant, service) pair whose desired state may have changed.
pub type ServiceRef = (String, String);

impl Catalog {
    /// A tenant's catalog.
    pub fn tenant(&self, t: &str) -> Option<&TenantCatalog> {
        self.tenants.get(t)
    }

    /// Loads one key from a full read.
    pub fn load(&mut self, kv: &KeyValue) {
        self.put(kv);
    }

    /// Applies a watched change; returns the services whose desired state may have changed.
    pub fn apply(&mut self, event: &WatchEvent, touched: &mut BTreeSet<ServiceRef>) {
        match event {
            WatchEvent::Put(kv) => {
                self.mark(&kv.key, touched);
                self.put(kv);
                self.mark(&kv.key, touched);
            }
            WatchEvent::Delete { key, .. } => {
                self.mark(key, touched);
                self.remove(key);
            }
        }
    }

    fn mark(&self, key: &str, touched: &mut BTreeSet<ServiceRef>) {
        let Some(k) = keys::parse_catalog(key) else { return };
        let (tenant, sidecar) = match k {
            CatalogKey::Binding { tenant, service, .. }
            | CatalogKey::Override { tenant, service, .. }
            | CatalogKey::Target { tenant, service, .. } => {
                touched.insert((tenant.to_owned(), service.to_owned()));
                return;
            }
            CatalogKey::Service { .. } => return,
            CatalogKey::Sidecar { tenant, sidecar } | CatalogKey::Version { tenant, sidecar, .. } => (tenant, sidecar),
        };
        if let Some(tc) = self.tenants.get(tenant) {
            touched.extend(tc.services_binding(sidecar).map(|s| (tenant.to_owned(), s.clone())));
        }
    }

    fn put(&mut self, kv: &KeyValue) {
        if let Some(t) = kv.key.strip_prefix(keys::TENANTS) {
            self.tenants.entry(t.to_owned()).or_default();
            return;
        }
        if let Some((tenant, _)) = keys::parse_freeze(&kv.key) {
            match serde_json::from_slice::<Freeze>(&kv.value) {
                Ok(f) => {
                    let freezes = &mut self.tenants.entry(tenant.to_owned()).or_default().freezes;
                    freezes.retain(|g| g.id != f.id);
                    let at = freezes.partition_point(|g| g.id < f.id);
                    freezes.insert(at, f);
                }
                Err(e) => tracing::error!(key = %kv.key, error = %e, "unreadable freeze"),
            }
            return;
        }
        let Some(k) = keys::parse_catalog(&kv.key) else { return };
        let parse_err = |e: serde_json::Error| tracing::error!(key = %kv.key, error = %e, "unreadable catalog value");
        match k {
            CatalogKey::Sidecar { tenant, sidecar } => match serde_json::from_slice(&kv.value) {
                Ok(v) => {
                    self.tenants.entry(tenant.to_owned()).or_default().sidecars.insert(sidecar.to_owned(), v);
                }
                Err(e) => parse_err(e),
            },
            CatalogKey::Version { tenant, sidecar, version } => match serde_json::from_slice(&kv.value) {
                Ok(v) => {
                    let tc = self.tenants.entry(tenant.to_owned()).or_default();
                    tc.versions.insert((sidecar.to_owned(), version.to_owned()), v);
                }
                Err(e) => parse_err(e),
            },
            CatalogKey::Service { tenant, service } => match serde_json::from_slice(&kv.value) {
                Ok(v) => {
                    self.tenants.entry(tenant.to_owned()).or_default().services.insert(service.to_owned(), v);
                }
                Err(e) => parse_err(e),
            },
            CatalogKey::Binding { tenant, service, sidecar } => match serde_json::from_slice(&kv.value) {
                Ok(v) => {
                    let tc = self.tenants.entry(tenant.to_owned()).or_default();
                    tc.bindings.entry(service.to_owned()).or_default().insert(sidecar.to_owned(), v);
                }
                Err(e) => parse_err(e),
            },
            CatalogKey::Override { tenant, service, instance, sidecar } => match serde_json::from_slice(&kv.value) {
                Ok(v) => {
                    let tc = self.tenants.entry(tenant.to_owned()).or_default();
                    let m = tc.overrides.entry(service.to_owned()).or_default();
                    m.insert((instance.to_owned(), sidecar.to_owned()), v);
                }
                Err(e) => parse_err(e),
            },
            CatalogKey::Target { tenant, service, cell } => match serde_json::from_slice(&kv.value) {
                Ok(v) => {
                    let tc = self.tenants.entry(tenant.to_owned()).or_default();
                    tc.targets.entry(service.to_owned()).or_default().insert(cell.into(), v);
                }
                Err(e) => parse_err(e),
            },
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(t) = key.strip_prefix(keys::TENANTS) {
            self.tenants.remove(t);
            return;
        }
        if let Some((tenant, id)) = keys::parse_freeze(key) {
            if let Some(t) = self.tenants.get_mut(tenant) {
                t.freezes.retain(|f| f.id != id);
            }
            return;
        }
        let Some(k) = keys::parse_catalog(key) else { return };
        match k {
            CatalogKey::Sidecar { tenant, sidecar } => {
                self.tenants.get_mut(tenant).map(|t| t.sidecars.remove(sidecar));
            }
            CatalogKey::Version { tenant, sidecar, version } => {
                self.tenants.get_mut(tenant).map(|t| t.versions.remove(&(sidecar.to_owned(), version.to_owned())));
            }
            CatalogKey::Service { tenant, service } => {
                self.tenants.get_mut(tenant).map(|t| t.services.remove(service));
            }
            CatalogKey::Binding { tenant, service, sidecar } => {
                self.tenants.get_mut(tenant).and_then(|t| t.bindings.get_mut(service)).map(|b| b.remove(sidecar));
            }
            CatalogKey::Override { tenant, service, instance, sidecar } => {
                self.tenants
                    .get_mut(tenant)
                    .and_then(|t| t.overrides.get_mut(service))
                    .map(|m| m.remove(&(instance.to_owned(), sidecar.to_owned())));
            }
            CatalogKey::Target { tenant, service, cell } => {
                self.tenants.get_mut(tenant).and_then(|t| t.targets.get_mut(service)).map(|m| m.remove(&cell.into()));
            }
        }
    }
}
