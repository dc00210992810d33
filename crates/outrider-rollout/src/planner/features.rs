//! Feature services: representatives of every trait value that go first in each region and env.

use std::collections::BTreeMap;

use super::order::priority_rank;
use crate::{fleet_view::FleetView, hash::stable_hash};

/// Marks the feature services among the `used` ones (those with cells in the plan).
///
/// For each trait `key=value` carried by a used service, the `per_value` services ranked first
/// by (priority, least important first; then the stable hash of the name; then the name) are
/// picked: the least important services represent their trait value, and among equals the
/// hash spreads the choice over the name space instead of always taking the alphabetically
/// first ones. The services in `named` join them when they are used; a named service with
/// nothing to upgrade (protected, outside the selector, already on the target) is not a
/// feature service.
pub(super) fn pick(fleet: &FleetView, used: &[bool], per_value: u32, named: &[u32]) -> Vec<bool> {
    let mut by_value: BTreeMap<(&str, &str), Vec<u32>> = BTreeMap::new();
    for (id, service) in fleet.services().iter().enumerate() {
        if used[id] {
            for (k, v) in &service.traits {
                by_value.entry((k, v)).or_default().push(id as u32);
            }
        }
    }
    let mut features = vec![false; fleet.services().len()];
    for candidates in by_value.values_mut() {
        candidates.sort_by_cached_key(|&id| {
            let s = fleet.service(id);
            (priority_rank(s.priority), stable_hash(&s.name), s.name.as_str())
        });
        for &id in candidates.iter().take(per_value as usize) {
            features[id as usize] = true;
        }
    }
    for &id in named {
        features[id as usize] |= used[id as usize];
    }
    features
}
