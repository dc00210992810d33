//! A deterministic generator of a realistic fleet, as plain data (no I/O), so that the
//! simulated fleet and the planner benchmark build the same fleets from the same seed.
//!
//! The mix: priorities about 10 % `P0`, 30 % `P1`, 60 % `P2`; traits `lang`, `framework`
//! (which follows the language) and `protocol` (which follows the framework), and
//! `http.compression` on some HTTP services; instance counts per service heavy-tailed (a few
//! big services, many small ones, every service at least one instance); about 10 % of the
//! instances in the offline region `boe`, the rest spread over the service's online regions;
//! about 15 % of the online instances in env `preview`; in `prod`, 5 % `canary` instances
//! but at least one for every service with two instances or more (so 5–11 % of the fleet,
//! the more the smaller the services), about 20 % of the rest `single-dc`, the rest `full`.

use std::collections::BTreeMap;

use outrider_model::{InstanceLabels, Priority, Service};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::SimError;

/// The offline (test) region.
pub const OFFLINE_REGION: &str = "boe";
/// The online regions, in the order plans usually walk them.
pub const ONLINE_REGIONS: [&str; 3] = ["cn-north", "cn-east", "sg"];

/// Share of `P0` and `P1` services (the rest is `P2`).
const PRIORITY_WEIGHTS: [(Priority, u32); 3] = [(Priority::P0, 10), (Priority::P1, 30), (Priority::P2, 60)];
/// Languages and their share.
const LANGS: [(&str, u32); 5] = [("go", 40), ("java", 25), ("python", 15), ("cpp", 10), ("rust", 10)];
/// Business domains, for readable service names.
const DOMAINS: [&str; 12] =
    ["payment", "feed", "search", "ads", "user", "im", "video", "live", "ecom", "risk", "infra", "data"];
/// Service roles, for readable service names.
const ROLES: [&str; 10] =
    ["api", "gateway", "worker", "rpc", "cache", "scheduler", "indexer", "ranker", "auth", "profile"];
/// Share of offline (`boe`) instances.
const OFFLINE_SHARE: f64 = 0.10;
/// Services with this many instances or more have at least one offline instance.
const OFFLINE_FROM: usize = 5;
/// Share of `preview` instances among a service's online instances.
const PREVIEW_SHARE: f64 = 0.15;
/// Share of `canary` instances among a service's online `prod` instances.
const CANARY_SHARE: f64 = 0.05;
/// Share of `single-dc` instances among the other online `prod` instances.
const SINGLE_DC_SHARE: f64 = 0.20;
/// Pareto shape of the instance-count distribution (about 80/20).
const PARETO_ALPHA: f64 = 1.16;
/// Largest weight of one service relative to the smallest possible one.
const MAX_WEIGHT: f64 = 200.0;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetParams {
    /// Number of services.
    pub services: usize,
    /// Number of instances (at least one per service).
    pub instances: usize,
    /// Seed of the generator: the same parameters give the same fleet.
    pub seed: u64,
}

/// A generated fleet: the services to create and the instances their agents register.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    /// Services, with priorities and traits.
    pub services: Vec<Service>,
    /// Instances, grouped by service.
    pub instances: Vec<SimInstance>,
}

/// One instance of a generated fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInstance {
    /// Instance id (unique within the tenant).
    pub id: String,
    /// Its service.
    pub service: String,
    /// Region, env and stage.
    pub labels: InstanceLabels,
}

impl SimInstance {
    /// An instance of `service` with the given region, env and stage and no other label.
    pub fn new(id: impl Into<String>, service: impl Into<String>, region: &str, env: &str, stage: &str) -> Self {
        Self {
            id: id.into(),
            service: service.into(),
            labels: InstanceLabels {
                region: region.to_owned(),
                env: env.to_owned(),
                stage: stage.to_owned(),
                ..InstanceLabels::default()
            },
        }
    }
}

/// Picks one item of `choices` with probability proportional to its weight.
fn weighted<T: Copy>(rng: &mut StdRng, choices: &[(T, u32)]) -> T {
    let total: u32 = choices.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for &(item, w) in choices {
        if pick < w {
            return item;
        }
        pick -= w;
    }
    choices[choices.len() - 1].0
}

/// `x` rounded down or up at random, so that the expected value is `x`.
fn stochastic_round(rng: &mut StdRng, x: f64) -> usize {
    let floor = x.floor();
    // `x` is a small non-negative share of an instance count: the cast is exact.
    floor as usize + usize::from(rng.random_bool((x - floor).clamp(0.0, 1.0)))
}

/// A framework fitting `lang`.
fn framework(rng: &mut StdRng, lang: &str) -> &'static str {
    let choices: &[(&'static str, u32)] = match lang {
        "go" => &[("kitex", 50), ("hertz", 30), ("grpc-go", 20)],
        "java" => &[("spring", 60), ("dubbo", 25), ("grpc-java", 15)],
        "python" => &[("django", 40), ("flask", 30), ("fastapi", 30)],
        "cpp" => &[("brpc", 60), ("thrift-cpp", 40)],
        _ => &[("volo", 50), ("axum", 30), ("tonic", 20)],
    };
    weighted(rng, choices)
}

/// The wire protocol a service built with `framework` speaks.
fn protocol(rng: &mut StdRng, framework: &str) -> &'static str {
    match framework {
        "kitex" | "volo" => weighted(rng, &[("thrift", 85), ("grpc", 15)]),
        "thrift-cpp" => "thrift",
        "grpc-go" | "grpc-java" | "dubbo" | "brpc" | "tonic" => "grpc",
        _ => "http",
    }
}

fn service(rng: &mut StdRng, index: usize) -> Service {
    let name = format!("{}.{}-{index:05}", DOMAINS[rng.random_range(0..DOMAINS.len())], ROLES[index % ROLES.len()]);
    let lang = weighted(rng, &LANGS);
    let framework = framework(rng, lang);
    let protocol = protocol(rng, framework);
    let mut traits = BTreeMap::from([
        ("lang".to_owned(), lang.to_owned()),
        ("framework".to_owned(), framework.to_owned()),
        ("protocol".to_owned(), protocol.to_owned()),
    ]);
    if protocol == "http" && rng.random_bool(0.3) {
        let compression = weighted(rng, &[("gzip", 60), ("brotli", 40)]);
        traits.insert("http.compression".to_owned(), compression.to_owned());
    }
    Service {
        name,
        priority: weighted(rng, &PRIORITY_WEIGHTS),
        traits,
        protected: false,
        protected_periods: Vec::new(),
    }
}

/// Instance counts per service: one each, plus the rest shared out by heavy-tailed weights
/// (largest-remainder rounding, so the counts add up exactly).
fn instance_counts(rng: &mut StdRng, services: usize, instances: usize) -> Vec<usize> {
    let weights: Vec<f64> = (0..services)
        .map(|_| {
            // Pareto(1, alpha) by inversion; 1 - u is in (0, 1].
            let u: f64 = rng.random();
            (1.0 - u).powf(-1.0 / PARETO_ALPHA).min(MAX_WEIGHT)
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let extra = instances - services;
    let shares: Vec<f64> = weights.iter().map(|w| w / total * extra as f64).collect();
    // Shares are non-negative and at most `extra`: the casts are exact after floor().
    let mut counts: Vec<usize> = shares.iter().map(|s| 1 + s.floor() as usize).collect();
    let mut left = instances - counts.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..services).collect();
    by_remainder.sort_by(|&a, &b| (shares[b] - shares[b].floor()).total_cmp(&(shares[a] - shares[a].floor())));
    for &i in by_remainder.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// The (region, env, stage) of each of the `n` instances of one service.
fn placements(rng: &mut StdRng, n: usize, largest: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    // The largest service always has an offline instance, so every fleet with more instances
    // than services has one; a small service has one with a probability of OFFLINE_SHARE × n.
    let min_offline = usize::from(n >= OFFLINE_FROM || (largest && n >= 2));
    let offline = stochastic_round(rng, n as f64 * OFFLINE_SHARE).max(min_offline).min(n - 1);
    let online = n - offline;
    let preview = stochastic_round(rng, online as f64 * PREVIEW_SHARE).min(online.saturating_sub(1));
    let prod = online - preview;
    let canary = if n >= 2 { stochastic_round(rng, prod as f64 * CANARY_SHARE).clamp(1, prod) } else { 0 };
    let single_dc = stochastic_round(rng, (prod - canary) as f64 * SINGLE_DC_SHARE);
    let mut regions = vec![ONLINE_REGIONS[0]];
    if rng.random_bool(0.7) {
        regions.push(ONLINE_REGIONS[1]);
    }
    if rng.random_bool(0.3) {
        regions.push(ONLINE_REGIONS[2]);
    }
    let mut out = Vec::with_capacity(n);
    out.extend((0..offline).map(|_| (OFFLINE_REGION, "prod", "full")));
    for i in 0..online {
        let region = regions[rng.random_range(0..regions.len())];
        let (env, stage) = match i {
            i if i < preview => ("preview", "full"),
            i if i < preview + canary => ("prod", "canary"),
            i if i < preview + canary + single_dc => ("prod", "single-dc"),
            _ => ("prod", "full"),
        };
        out.push((region, env, stage));
    }
    out.shuffle(rng);
    out
}

impl FleetSpec {
    /// Generates a fleet. The same parameters always give the same fleet. Fails when there
    /// are no services or fewer instances than services.
    pub fn generate(params: FleetParams) -> Result<Self, SimError> {
        let (services, instances) = Self::generate_into(
            params,
            |_| Vec::with_capacity(params.instances),
            |instances, svc, k, region, env, stage| {
                instances.push(SimInstance::new(format!("{}-i{k}", svc.name), &svc.name, region, env, stage));
            },
        )?;
        Ok(Self { services, instances })
    }

    /// The same fleet as [`FleetSpec::generate`], streamed: `init` sees the services first and
    /// makes the accumulator, then `each` receives every instance (its service, its index in
    /// the service — the id is `{service}-i{index}` — region, env and stage) in the same order,
    /// without any instance being kept. Millions of instances then cost no memory of their own.
    pub fn generate_into<S>(
        params: FleetParams,
        init: impl FnOnce(&[Service]) -> S,
        mut each: impl FnMut(&mut S, &Service, usize, &'static str, &'static str, &'static str),
    ) -> Result<(Vec<Service>, S), SimError> {
        let FleetParams { services: n_services, instances: n_instances, seed } = params;
        if n_services == 0 {
            return Err(SimError::Invalid("a fleet needs at least one service".into()));
        }
        if n_instances < n_services {
            return Err(SimError::Invalid(format!(
                "{n_instances} instances cannot cover {n_services} services (every service needs one)"
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let services: Vec<Service> = (0..n_services).map(|i| service(&mut rng, i)).collect();
        let counts = instance_counts(&mut rng, n_services, n_instances);
        let largest = counts.iter().enumerate().max_by_key(|&(i, c)| (c, std::cmp::Reverse(i))).map_or(0, |(i, _)| i);
        let mut acc = init(&services);
        for (i, (svc, &n)) in services.iter().zip(&counts).enumerate() {
            for (k, (region, env, stage)) in placements(&mut rng, n, i == largest).into_iter().enumerate() {
                each(&mut acc, svc, k, region, env, stage);
            }
        }
        Ok((services, acc))
    }

    /// The traits of each service, by name (for [`crate::SimFleetOptions::service_traits`]).
    pub fn service_traits(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.services.iter().map(|s| (s.name.clone(), s.traits.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn generate(services: usize, instances: usize, seed: u64) -> FleetSpec {
        FleetSpec::generate(FleetParams { services, instances, seed }).unwrap()
    }

    fn share(count: usize, total: usize) -> f64 {
        count as f64 / total as f64
    }

    #[test]
    fn same_seed_same_fleet() {
        assert_eq!(generate(50, 500, 7), generate(50, 500, 7));
        assert_ne!(generate(50, 500, 7), generate(50, 500, 8));
    }

    #[test]
    fn names_and_labels_are_valid_and_unique() {
        let spec = generate(300, 3_000, 1);
        let mut ids = HashSet::new();
        for s in &spec.services {
            outrider_model::validate_name("service", &s.name).unwrap();
            for key in ["lang", "framework", "protocol"] {
                assert!(s.traits.contains_key(key), "{} has no {key}", s.name);
            }
        }
        for i in &spec.instances {
            outrider_model::validate_name("instance", &i.id).unwrap();
            i.labels.validate().unwrap();
            assert!(ids.insert(i.id.clone()), "duplicate id {}", i.id);
        }
        let names: HashSet<_> = spec.services.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), spec.services.len());
    }

    #[test]
    fn honours_the_mix() {
        let spec = generate(1_000, 10_000, 42);
        assert_eq!(spec.services.len(), 1_000);
        assert_eq!(spec.instances.len(), 10_000);

        let mut per_service: HashMap<&str, Vec<&SimInstance>> = HashMap::new();
        for i in &spec.instances {
            per_service.entry(&i.service).or_default().push(i);
        }
        for s in &spec.services {
            let mine = per_service.get(s.name.as_str()).map_or(&[][..], Vec::as_slice);
            assert!(!mine.is_empty(), "{} has no instance", s.name);
            if mine.len() >= 2 {
                assert!(
                    mine.iter().any(|i| i.labels.stage == "canary" && i.labels.env == "prod"),
                    "{} ({} instances) has no prod canary",
                    s.name,
                    mine.len()
                );
            }
        }
        // Skewed: the biggest service is far above the mean, the median below it.
        let mut sizes: Vec<usize> = per_service.values().map(Vec::len).collect();
        sizes.sort_unstable();
        assert!(sizes[sizes.len() - 1] >= 50, "largest service has {} instances", sizes[sizes.len() - 1]);
        assert!(sizes[sizes.len() / 2] < 10, "median service has {} instances", sizes[sizes.len() / 2]);

        let n = spec.instances.len();
        let count = |f: &dyn Fn(&SimInstance) -> bool| spec.instances.iter().filter(|i| f(i)).count();
        let boe = share(count(&|i| i.labels.region == OFFLINE_REGION), n);
        let preview = share(count(&|i| i.labels.env == "preview"), n);
        let canary = share(count(&|i| i.labels.stage == "canary"), n);
        assert!((0.05..=0.15).contains(&boe), "boe share {boe}");
        assert!((0.08..=0.20).contains(&preview), "preview share {preview}");
        assert!((0.04..=0.12).contains(&canary), "canary share {canary}");
        for region in ONLINE_REGIONS {
            assert!(spec.instances.iter().any(|i| i.labels.region == region), "no instance in {region}");
        }

        let prio = |p: Priority| share(spec.services.iter().filter(|s| s.priority == p).count(), spec.services.len());
        assert!((0.06..=0.14).contains(&prio(Priority::P0)), "P0 share {}", prio(Priority::P0));
        assert!((0.25..=0.35).contains(&prio(Priority::P1)), "P1 share {}", prio(Priority::P1));
        let protocols: HashSet<_> = spec.services.iter().map(|s| s.traits["protocol"].as_str()).collect();
        assert_eq!(protocols, HashSet::from(["http", "grpc", "thrift"]));
    }

    #[test]
    fn small_fleets_still_have_offline_and_canary_instances() {
        for seed in 0..20 {
            let spec = generate(20, 200, seed);
            assert!(spec.instances.iter().any(|i| i.labels.region == OFFLINE_REGION), "seed {seed}: no boe");
            assert!(spec.instances.iter().any(|i| i.labels.stage == "canary"), "seed {seed}: no canary");
        }
        let tiny = generate(3, 4, 0);
        assert!(tiny.instances.iter().any(|i| i.labels.region == OFFLINE_REGION));
    }

    #[test]
    fn refuses_impossible_fleets() {
        assert!(FleetSpec::generate(FleetParams { services: 0, instances: 10, seed: 0 }).is_err());
        assert!(FleetSpec::generate(FleetParams { services: 10, instances: 9, seed: 0 }).is_err());
        let one_each = generate(10, 10, 0);
        assert_eq!(one_each.instances.len(), 10);
    }
}
