//! The labelled corpus of `outrider bench analysis`: one case per plan, seeded. A case is a
//! healthy target version, or one whose instances of a random trait subset of services show
//! one effect at one magnitude.

use std::{collections::BTreeMap, fmt, time::Duration};

use outrider_sim::{Effect, FleetParams, FleetSpec};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The effects and magnitudes of the corpus, in the order the figures list them.
pub const EFFECTS: [Effect; 14] = [
    Effect::Errors(0.005),
    Effect::Errors(0.01),
    Effect::Errors(0.02),
    Effect::Errors(0.05),
    Effect::Latency(1.2),
    Effect::Latency(1.5),
    Effect::Latency(2.0),
    Effect::Cpu(15.0),
    Effect::Cpu(30.0),
    Effect::Cpu(50.0),
    Effect::Memory(1.0),
    Effect::Memory(2.0),
    Effect::Memory(5.0),
    Effect::Crash,
];

/// Of every this many plans, one is healthy (the others go through [`EFFECTS`] in turn).
const HEALTHY_EVERY: u32 = 4;

/// What a case's target version does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Nothing: a healthy version.
    Healthy,
    /// This effect on the instances of the selected services.
    Defect(Effect),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => f.write_str("healthy"),
            Self::Defect(e) => f.write_str(&label(*e)),
        }
    }
}

/// An effect with its magnitude, as the figures name it: `errors +0.01`, `latency x1.5`,
/// `cpu +30`, `memory 2 MiB/s`, `crash`.
pub fn label(e: Effect) -> String {
    match e {
        Effect::Crash => "crash".to_owned(),
        Effect::Errors(r) => format!("errors +{r}"),
        Effect::Latency(f) => format!("latency x{f}"),
        Effect::Cpu(p) => format!("cpu +{p}"),
        Effect::Memory(m) => format!("memory {m} MiB/s"),
    }
}

/// Whether the targets hold a defect of this size to ≥ 95 % recall: errors ≥ +1 %
/// absolute, latency ≥ ×1.5, CPU ≥ +30 points, leaks ≥ 2 MiB/s (and any crash).
pub fn in_target(e: Effect) -> bool {
    match e {
        Effect::Crash => true,
        Effect::Errors(r) => r >= 0.01,
        Effect::Latency(f) => f >= 1.5,
        Effect::Cpu(p) => p >= 30.0,
        Effect::Memory(m) => m >= 2.0,
    }
}

/// One plan of the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Its position in the corpus (0-based).
    pub index: u32,
    /// What its target version does.
    pub kind: Kind,
    /// The services whose instances show the defect: those with all of these traits (empty
    /// for a healthy case).
    pub traits: BTreeMap<String, String>,
    /// Seed of its fleet (services, instances, noise).
    pub seed: u64,
    /// Where on the fleet's daily load curve the plan starts.
    pub time_of_day: Duration,
}

/// The fleet shape every case is generated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Services of each fleet.
    pub services: usize,
    /// Instances of each fleet.
    pub instances: usize,
}

impl Shape {
    /// The fleet of a case with this seed.
    pub fn fleet(self, seed: u64) -> Result<FleetSpec, outrider_sim::SimError> {
        FleetSpec::generate(FleetParams { services: self.services, instances: self.instances, seed })
    }
}

/// `plans` cases from `seed`: every [`HEALTHY_EVERY`]th healthy, the others cycling through
/// [`EFFECTS`], each defect on a random trait subset of its fleet's services (one trait, or
/// two at once, selecting at least one service and not all of them where the fleet allows).
pub fn generate(plans: u32, seed: u64, shape: Shape) -> Result<Vec<Case>, outrider_sim::SimError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut defects = 0usize;
    let mut cases = Vec::with_capacity(plans as usize);
    for index in 0..plans {
        let kind = if index % HEALTHY_EVERY == 0 {
            Kind::Healthy
        } else {
            defects += 1;
            Kind::Defect(EFFECTS[(defects - 1) % EFFECTS.len()])
        };
        let case_seed = rng.random::<u64>();
        let time_of_day = Duration::from_secs(rng.random_range(0..24 * 3600));
        let traits = match kind {
            Kind::Healthy => BTreeMap::new(),
            Kind::Defect(_) => pick_traits(&mut rng, &shape.fleet(case_seed)?),
        };
        cases.push(Case { index, kind, traits, seed: case_seed, time_of_day });
    }
    Ok(cases)
}

/// A random trait subset of `spec`'s services.
fn pick_traits(rng: &mut StdRng, spec: &FleetSpec) -> BTreeMap<String, String> {
    let total = spec.services.len();
    let selects = |traits: &BTreeMap<String, String>| {
        spec.services.iter().filter(|s| traits.iter().all(|(k, v)| s.traits.get(k) == Some(v))).count()
    };
    let mut pairs: Vec<(String, String)> =
        spec.services.iter().flat_map(|s| s.traits.iter().map(|(k, v)| (k.clone(), v.clone()))).collect();
    pairs.sort();
    pairs.dedup();
    let proper: Vec<&(String, String)> = pairs
        .iter()
        .filter(|p| {
            let n = selects(&BTreeMap::from([(p.0.clone(), p.1.clone())]));
            n >= 1 && (n < total || total == 1)
        })
        .collect();
    let Some(first) = (!proper.is_empty()).then(|| proper[rng.random_range(0..proper.len())]) else {
        // No trait tells services apart: every service.
        return BTreeMap::new();
    };
    let mut traits = BTreeMap::from([first.clone()]);
    if rng.random_bool(0.3) {
        let second = proper[rng.random_range(0..proper.len())];
        let mut both = traits.clone();
        both.insert(second.0.clone(), second.1.clone());
        if both.len() == 2 && selects(&both) >= 1 {
            traits = both;
        }
    }
    traits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_seeded_mixes_healthy_and_every_effect_and_selects_some_services() {
        let shape = Shape { services: 12, instances: 80 };
        let cases = generate(60, 3, shape).unwrap();
        assert_eq!(cases, generate(60, 3, shape).unwrap(), "the same seed gives the same corpus");
        assert_ne!(cases, generate(60, 4, shape).unwrap());
        assert_eq!(cases.iter().filter(|c| c.kind == Kind::Healthy).count(), 15);
        for e in EFFECTS {
            assert!(cases.iter().filter(|c| c.kind == Kind::Defect(e)).count() >= 3, "{e}");
        }
        for c in cases.iter().filter(|c| c.kind != Kind::Healthy) {
            let spec = shape.fleet(c.seed).unwrap();
            let hit = spec.services.iter().filter(|s| c.traits.iter().all(|(k, v)| s.traits.get(k) == Some(v)));
            let n = hit.count();
            assert!(n >= 1 && n < spec.services.len(), "{:?} selects {n} of {}", c.traits, spec.services.len());
        }
        assert!(cases.iter().any(|c| c.traits.len() == 2), "some defects select by two traits");
    }

    #[test]
    fn labels_and_targets() {
        assert_eq!(label(Effect::Errors(0.01)), "errors +0.01");
        assert_eq!(label(Effect::Latency(1.5)), "latency x1.5");
        assert_eq!(label(Effect::Memory(2.0)), "memory 2 MiB/s");
        assert!(in_target(Effect::Errors(0.01)) && !in_target(Effect::Errors(0.005)));
        assert!(in_target(Effect::Cpu(30.0)) && !in_target(Effect::Cpu(15.0)));
        assert!(in_target(Effect::Latency(2.0)) && !in_target(Effect::Latency(1.2)));
        assert!(in_target(Effect::Memory(5.0)) && !in_target(Effect::Memory(1.0)));
    }
}
