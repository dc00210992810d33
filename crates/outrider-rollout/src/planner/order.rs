//! The order of cells, least risky first: region (in the plan's order), env (`preview` before
//! `prod`), feature services before the others, priority `P2` → `P1` → `P0`, then the
//! service's name.

use std::cmp::Ordering;

use outrider_model::Priority;

use crate::fleet_view::{FleetView, Sym};

/// The offline (test) region, first in the default region order.
const OFFLINE_REGION: &str = "boe";

/// Sort key of a cell; every phase plans its cells in increasing key order. Two cells of one
/// phase never share a key (a service, region and env make one cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OrderKey {
    /// Rank of the region in the region order.
    pub(super) region: u32,
    /// Rank of the env (`preview`, `prod`, then any other by name).
    env: u32,
    /// 0 for a feature service, 1 for the others.
    feature: u8,
    /// 0 for `P2`, 1 for `P1`, 2 for `P0`.
    priority: u8,
    /// Rank of the service's name.
    name: u32,
}

/// Rank of a priority in the order: the least important first.
pub(super) fn priority_rank(p: Priority) -> u8 {
    match p {
        Priority::P2 => 0,
        Priority::P1 => 1,
        Priority::P0 => 2,
    }
}

/// What has cells in at least one phase: the ranks are computed over these only.
#[derive(Debug)]
pub(super) struct Used {
    /// Per service.
    pub(super) services: Vec<bool>,
    /// Per symbol, as a region.
    pub(super) regions: Vec<bool>,
    /// Per symbol, as an env.
    pub(super) envs: Vec<bool>,
}

impl Used {
    /// Nothing used yet.
    pub(super) fn new(fleet: &FleetView) -> Self {
        Self {
            services: vec![false; fleet.services().len()],
            regions: vec![false; fleet.symbol_count()],
            envs: vec![false; fleet.symbol_count()],
        }
    }
}

/// Lookup tables giving the [`OrderKey`] of a cell.
#[derive(Debug)]
pub(super) struct Order {
    regions: Vec<u32>,
    envs: Vec<u32>,
    names: Vec<u32>,
    priorities: Vec<u8>,
    features: Vec<bool>,
}

impl Order {
    /// The order over what `used` marks, with `region_order` (empty: the default order) and
    /// the feature services marked in `features`.
    pub(super) fn new(fleet: &FleetView, region_order: &[String], used: &Used, features: &[bool]) -> Self {
        let present =
            |flags: &[bool]| -> Vec<(Sym, &str)> { fleet.symbols().filter(|(s, _)| flags[s.index()]).collect() };
        let mut regions = present(&used.regions);
        regions.sort_by(|a, b| compare_regions(region_order, a.1, b.1));
        let mut envs = present(&used.envs);
        envs.sort_by_key(|&(_, e)| (env_class(e), e));
        let mut services: Vec<u32> =
            (0..fleet.services().len() as u32).filter(|&s| used.services[s as usize]).collect();
        services.sort_by(|&a, &b| fleet.service(a).name.cmp(&fleet.service(b).name));
        Self {
            regions: ranks(fleet.symbol_count(), regions.iter().map(|(s, _)| s.index())),
            envs: ranks(fleet.symbol_count(), envs.iter().map(|(s, _)| s.index())),
            names: ranks(fleet.services().len(), services.iter().map(|&s| s as usize)),
            priorities: fleet.services().iter().map(|s| priority_rank(s.priority)).collect(),
            features: features.to_vec(),
        }
    }

    /// The key of the cell of `service` in `region` and `env`.
    pub(super) fn key(&self, service: u32, region: Sym, env: Sym) -> OrderKey {
        let s = service as usize;
        OrderKey {
            region: self.regions[region.index()],
            env: self.envs[env.index()],
            feature: u8::from(!self.features[s]),
            priority: self.priorities[s],
            name: self.names[s],
        }
    }
}

/// `table[i]` = position of `i` in `sorted` (`u32::MAX` for what is not there).
fn ranks(len: usize, sorted: impl Iterator<Item = usize>) -> Vec<u32> {
    let mut table = vec![u32::MAX; len];
    for (rank, i) in sorted.enumerate() {
        table[i] = rank as u32;
    }
    table
}

/// Region order: the regions listed in `order` by their position there, then the others by
/// name; with no order, `boe` first and the others by name.
fn compare_regions(order: &[String], a: &str, b: &str) -> Ordering {
    let place = |r: &str| -> (u8, usize) {
        if order.is_empty() {
            (u8::from(r != OFFLINE_REGION), 0)
        } else {
            order.iter().position(|o| o == r).map_or((1, 0), |p| (0, p))
        }
    };
    place(a).cmp(&place(b)).then_with(|| a.cmp(b))
}

/// `preview` before `prod`, before anything else.
fn env_class(env: &str) -> u8 {
    match env {
        "preview" => 0,
        "prod" => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(order: &[&str], regions: &[&str]) -> Vec<String> {
        let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
        let mut r: Vec<&str> = regions.to_vec();
        r.sort_by(|a, b| compare_regions(&order, a, b));
        r.into_iter().map(String::from).collect()
    }

    #[test]
    fn default_region_order_is_boe_then_by_name() {
        assert_eq!(sorted(&[], &["sg", "cn-north", "boe", "cn-east"]), ["boe", "cn-east", "cn-north", "sg"]);
    }

    #[test]
    fn unlisted_regions_follow_the_listed_ones_by_name() {
        assert_eq!(
            sorted(&["cn-north", "boe"], &["sg", "cn-north", "boe", "cn-east", "ap-1"]),
            ["cn-north", "boe", "ap-1", "cn-east", "sg"]
        );
    }

    #[test]
    fn priorities_rank_least_important_first() {
        assert!(priority_rank(Priority::P2) < priority_rank(Priority::P1));
        assert!(priority_rank(Priority::P1) < priority_rank(Priority::P0));
    }
}
