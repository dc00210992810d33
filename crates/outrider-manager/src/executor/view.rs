//! What a plan step sees: one tenant's catalog mirror (with its overrides and freezes) and the
//! live fleet, read in place — no copy of the fleet per step.

use outrider_model::{Binding, CellTarget, Freeze, Instance, Override, Service, Sidecar, Version};
use outrider_rollout::reconcile::{CellRef, View};
use time::OffsetDateTime;

use super::queries::Fetched;
use crate::{catalog::TenantCatalog, fleet::Fleet};

/// The reconciler's [`View`] of one tenant.
pub struct TenantView<'a> {
    /// Tenant name.
    pub tenant: &'a str,
    /// Its catalog.
    pub catalog: &'a TenantCatalog,
    /// The live fleet.
    pub fleet: &'a Fleet,
    /// What the plan's Prometheus queries returned for this step, if it runs any.
    pub external: Option<&'a Fetched>,
}

impl View for TenantView<'_> {
    fn version(&self, sidecar: &str, version: &str) -> Option<&Version> {
        self.catalog.version(sidecar, version)
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.catalog.service(name)
    }

    fn binding(&self, service: &str, sidecar: &str) -> Option<&Binding> {
        self.catalog.binding(service, sidecar)
    }

    fn overrides_of_plan(&self, plan: &str) -> Vec<(&str, &str, &Override)> {
        self.catalog.overrides_of_plan(plan)
    }

    fn targets_of_plan(&self, plan: &str) -> Vec<(CellRef, &CellTarget)> {
        let of_plan = self.catalog.targets_of_plan(plan).into_iter();
        of_plan
            .map(|(service, c, t)| {
                let cell = CellRef {
                    service: service.to_owned(),
                    sidecar: c.sidecar.clone(),
                    region: c.region.clone(),
                    env: c.env.clone(),
                    stage: c.stage.clone(),
                };
                (cell, t)
            })
            .collect()
    }

    fn freezes(&self) -> &[Freeze] {
        self.catalog.freezes()
    }

    fn for_each_instance(&self, service: &str, f: &mut dyn FnMut(&Instance)) {
        self.fleet.for_each_of_service(self.tenant, service, f);
    }

    fn sidecar(&self, name: &str) -> Option<&Sidecar> {
        self.catalog.sidecar(name)
    }

    fn versions(
        &self,
        instance: &str,
        sidecar: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str),
    ) {
        self.fleet.with_history(self.tenant, instance, &mut |h| h.versions(sidecar, from, to, f));
    }

    fn samples(
        &self,
        instance: &str,
        sidecar: &str,
        metric: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str, f64),
    ) {
        let queried = self.external.and_then(|e| e.samples.get(&(instance.to_owned(), metric.to_owned())));
        match queried {
            // Prometheus's points, with the version the agent reported at that time.
            Some(points) => self.fleet.with_history_or_none(self.tenant, instance, &mut |h| {
                for &(at, value) in points.iter().filter(|(at, _)| *at >= from && *at <= to) {
                    f(at, h.and_then(|h| h.version_at(sidecar, at)).unwrap_or(""), value);
                }
            }),
            None => self.fleet.with_history(self.tenant, instance, &mut |h| h.samples(sidecar, metric, from, to, f)),
        }
    }

    fn unreadable(&self, metric: &str) -> Option<&str> {
        self.external.and_then(|e| e.errors.get(metric)).map(String::as_str)
    }

    fn deployed_at(&self, instance: &str) -> Option<OffsetDateTime> {
        self.fleet.deployed_at(self.tenant, instance)
    }
}
