//! The planner: from the fleet and a plan body, the phases' ordered cells and batches.
//!
//! Pure and deterministic: the same fleet and body always give the same plan.

mod batch;
mod features;
mod order;
mod scope;

use std::collections::BTreeMap;

use outrider_model::{Cell, Phase, PhaseSpec, PlanSpec, ProtectedPeriod, ValidationError};

use self::{
    order::{Order, OrderKey, Used},
    scope::Scope,
};
use crate::fleet_view::{FleetView, Sym};

/// A planned plan: the feature services and the phases with their batches, all `pending`.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The feature services, sorted by name.
    pub feature_services: Vec<String>,
    /// One phase per phase of the body, in order; a phase with nothing in scope has no batch.
    pub phases: Vec<Phase>,
    /// The protected periods of the services with cells in the plan, by service
    /// (services without any are left out): batches touching them wait for their end.
    pub protected_periods: BTreeMap<String, Vec<ProtectedPeriod>>,
}

impl Planned {
    /// Instances over every phase (an instance moved by two phases counts twice).
    pub fn instance_count(&self) -> u64 {
        self.phases.iter().flat_map(|p| &p.batches).map(|b| b.instance_count()).sum()
    }
}

/// Why a plan body cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The body is invalid (see [`PlanSpec::validate`]).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The body names a service the fleet does not have.
    #[error("{field}: there is no service {name:?}")]
    UnknownService {
        /// `selector.services` or `feature_services.services`.
        field: &'static str,
        /// The name.
        name: String,
    },
}

impl PlanError {
    fn unknown(field: &'static str, name: &str) -> Self {
        Self::UnknownService { field, name: name.to_owned() }
    }
}

/// Plans `spec` over `fleet` (a view built for `spec.sidecar`).
///
/// - Scope: an instance is in scope when its service is selected (named in
///   `selector.services` if that is set, with every trait of `selector.traits`) and not
///   `protected`, its region and env are selected (when the selector lists them), and it runs
///   the sidecar at a version that is not the target and matches `from_versions` (any entry;
///   none: any version). An empty scope is not an error: every phase then has no batch.
/// - Cells: per phase, the in-scope instances of the phase's stage (`all`: every stage)
///   counted by (service, region, env). An instance belongs to the first phase whose stage
///   takes it and to later phases with the same stage filter (e.g. `converge` after `full`),
///   so `full` does not count again the canaries `gray` upgrades.
/// - Order: by region (in `region_order`; default `boe` first; unlisted regions after the
///   listed ones, by name), env (`preview`, `prod`), feature services first, priority `P2` →
///   `P1` → `P0`, then the service's name.
/// - Lanes: with `region_parallelism` = k, the region at position i among the phase's regions
///   (in the order above) is in lane i mod k, so the first k regions start side by side and
///   region k + 1 follows the first in lane 0. Each lane keeps the order.
/// - Batches: each lane is cut by the phase's batching and `max_per_batch` (cells are never
///   split: a cell over the instance cap is a batch alone); lanes are interleaved (lane 0's
///   first batch, lane 1's first batch, …). `max_per_day` is a time cap, left to the simulator
///   and the executor.
pub fn plan(spec: &PlanSpec, fleet: &FleetView) -> Result<Planned, PlanError> {
    spec.validate()?;
    let scope = Scope::new(spec, fleet)?;
    let named = spec
        .feature_services
        .services
        .iter()
        .map(|n| fleet.service_id(n).ok_or_else(|| PlanError::unknown("feature_services.services", n)))
        .collect::<Result<Vec<u32>, _>>()?;

    // Phase filters: `None` = every stage; `Some(None)` = a stage no instance has.
    let stages: Vec<Option<Option<Sym>>> =
        spec.phases.iter().map(|p| (p.stage != "all").then(|| fleet.lookup(&p.stage))).collect();
    let mut raw: Vec<Vec<RawCell>> = vec![Vec::new(); spec.phases.len()];
    let mut used = Used::new(fleet);
    for (key, instances) in fleet.groups() {
        if !scope.admits(key) {
            continue;
        }
        // An instance belongs to the first phase whose stage takes it, and to later phases
        // with that same stage filter (a `converge` after `full`): `full` does not count
        // again the canaries that `gray` upgrades.
        let mut first: Option<usize> = None;
        for (i, (stage, cells)) in stages.iter().zip(&mut raw).enumerate() {
            if !stage.is_none_or(|s| s == Some(key.stage)) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(f) if spec.phases[f].stage == spec.phases[i].stage => {}
                Some(_) => continue,
            }
            cells.push(RawCell { service: key.service, region: key.region, env: key.env, instances });
            used.services[key.service as usize] = true;
            used.regions[key.region.index()] = true;
            used.envs[key.env.index()] = true;
        }
    }

    let features = features::pick(fleet, &used.services, spec.feature_services.per_trait_value, &named);
    let order = Order::new(fleet, &spec.region_order, &used, &features);
    let mut feature_services: Vec<String> =
        features.iter().enumerate().filter(|&(_, &f)| f).map(|(id, _)| fleet.service(id as u32).name.clone()).collect();
    feature_services.sort_unstable();
    let protected_periods = fleet
        .services()
        .iter()
        .zip(&used.services)
        .filter(|(s, used)| **used && !s.protected_periods.is_empty())
        .map(|(s, _)| (s.name.clone(), s.protected_periods.clone()))
        .collect();
    let phases = spec.phases.iter().zip(raw).map(|(p, cells)| plan_phase(p, cells, &order, fleet)).collect();
    Ok(Planned { feature_services, phases, protected_periods })
}

/// Instances of one (service, region, env) of one (stage, version) group.
#[derive(Debug, Clone, Copy)]
struct RawCell {
    service: u32,
    region: Sym,
    env: Sym,
    instances: u64,
}

/// Orders one phase's cells, splits them into lanes and batches.
fn plan_phase(spec: &PhaseSpec, raw: Vec<RawCell>, order: &Order, fleet: &FleetView) -> Phase {
    let mut keyed: Vec<(OrderKey, RawCell)> =
        raw.into_iter().map(|c| (order.key(c.service, c.region, c.env), c)).collect();
    keyed.sort_unstable_by_key(|&(k, _)| k);
    // Groups of other stages and versions of the same cell have the same key: merge them.
    keyed.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1.instances += next.1.instances;
        }
        same
    });

    // Lanes beyond the number of regions would stay empty: never allocate more than that.
    let regions = 1 + keyed.windows(2).filter(|w| w[0].0.region != w[1].0.region).count();
    let k = (spec.region_parallelism.max(1) as usize).min(regions);
    let mut lanes: Vec<Vec<Cell>> = vec![Vec::new(); k];
    let mut region_position = 0;
    let mut last_region = None;
    for (key, c) in keyed {
        if last_region.is_some_and(|r| r != key.region) {
            region_position += 1;
        }
        last_region = Some(key.region);
        lanes[region_position % k].push(Cell {
            service: fleet.service(c.service).name.clone(),
            region: fleet.symbol(c.region).to_owned(),
            env: fleet.symbol(c.env).to_owned(),
            instances: c.instances,
        });
    }
    let lanes = lanes
        .into_iter()
        .map(|cells| {
            let counts: Vec<u64> = cells.iter().map(|c| c.instances).collect();
            let mut cells = cells.into_iter();
            batch::cut(&counts, &spec.batching, spec.max_per_batch)
                .into_iter()
                .map(|len| cells.by_ref().take(len).collect())
                .collect()
        })
        .collect();
    Phase {
        name: spec.name.clone(),
        stage: spec.stage.clone(),
        mode: spec.mode,
        bake: spec.bake,
        batches: batch::interleave(lanes),
    }
}

#[cfg(test)]
mod tests;
