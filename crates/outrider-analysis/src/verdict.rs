//! Per-metric verdicts of each service of a batch and their combination.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{Alternative, Direction, Effect, Method, MetricPolicy, Minimums, Policy, mann_whitney_u, normal};

/// One instance's samples of one metric (NaN and infinite values are ignored). Give one value
/// per instance (its mean over the bake, say) for an instance-level test, or many for a
/// sample-level one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSamples {
    /// The instance's id.
    pub instance: String,
    /// Its values.
    pub values: Vec<f64>,
}

/// One service's samples of one metric.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricSamples {
    /// The metric's name, as in [`MetricPolicy::metric`].
    pub metric: String,
    /// The upgraded instances during the bake.
    pub canary: Vec<InstanceSamples>,
    /// The same service's not-upgraded instances over the same time.
    pub baseline: Vec<InstanceSamples>,
    /// The upgraded instances before their upgrade (may be empty: not compared).
    pub before: Vec<InstanceSamples>,
}

/// One service of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSamples {
    /// The service's name.
    pub service: String,
    /// Its samples, one entry per metric (only the first entry of a metric is read).
    pub metrics: Vec<MetricSamples>,
}

/// Everything [`analyze`] judges: the services of one batch.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchSamples {
    /// The batch's services.
    pub services: Vec<ServiceSamples>,
}

/// What the canaries are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// The same service's not-upgraded instances.
    Baseline,
    /// The canaries' own values before the upgrade.
    Before,
}

impl Comparison {
    fn noun(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Before => "before",
        }
    }
}

/// A verdict (contract: `pass`, `fail`, `inconclusive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No regression of the size that matters.
    Pass,
    /// A significant regression beyond the floor.
    Fail,
    /// Not enough evidence either way.
    Inconclusive,
}

impl Outcome {
    /// `fail` over `inconclusive` over `pass`.
    fn worst(self, other: Self) -> Self {
        use Outcome::{Fail, Inconclusive, Pass};
        match (self, other) {
            (Fail, _) | (_, Fail) => Fail,
            (Inconclusive, _) | (_, Inconclusive) => Inconclusive,
            (Pass, Pass) => Pass,
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Instances with at least one sample.
    pub instances: usize,
    /// Their samples.
    pub samples: usize,
    /// The metric's [`Center`](crate::Center) over the samples (none without samples; pooled:
    /// the weighted mean of the services' values).
    pub value: Option<f64>,
}

/// The statistical test behind a p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Test {
    /// Mann-Whitney U of the canaries against the reference.
    MannWhitney {
        /// The tail tested (from the metric's direction).
        alternative: Alternative,
        /// Exact or normal approximation.
        method: Method,
    },
    /// Stouffer's Z over the services' one-sided Mann-Whitney p-values, each weighted by
    /// √(n·m / (n + m)).
    Stouffer {
        /// The tail tested.
        alternative: Alternative,
        /// How many services were pooled.
        services: usize,
    },
}

/// The verdict on one metric of one comparison: what was compared, on how many instances,
/// with which test, and the outcome with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    /// The metric.
    pub metric: String,
    /// What the canaries were compared with.
    pub comparison: Comparison,
    /// The canaries.
    pub canary: Side,
    /// The reference: not-upgraded instances, or the canaries before.
    pub baseline: Side,
    /// The test (none when a side has no samples).
    pub test: Option<Test>,
    /// The test's p-value.
    pub p_value: Option<f64>,
    /// The effect size.
    pub effect: Option<Effect>,
    /// The outcome.
    pub outcome: Outcome,
    /// Why, in a sentence.
    pub reason: String,
    /// Whether this verdict decides its metric: a conclusive baseline comparison decides over
    /// the before comparison (load changes over time hit canaries and baseline alike).
    pub decides: bool,
    /// The canary instances compared.
    pub instances: Vec<String>,
}

/// The verdict on one service of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceVerdict {
    /// The service.
    pub service: String,
    /// The worst outcome of its metrics (`inconclusive` with no metric to compare).
    pub outcome: Outcome,
    /// Its verdicts, per metric of the policy and comparison with samples.
    pub metrics: Vec<MetricVerdict>,
}

/// The verdict on a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchVerdict {
    /// `fail` if a service or a pooled metric fails; else `inconclusive` if a pooled metric
    /// is, or a service's metric is and its pooled verdict does not pass; else `pass`.
    pub outcome: Outcome,
    /// Why, in a sentence or a few.
    pub reason: String,
    /// Per service.
    pub services: Vec<ServiceVerdict>,
    /// Per metric and comparison, the evidence pooled over two or more services.
    pub pooled: Vec<MetricVerdict>,
}

impl BatchVerdict {
    /// The deciding failed verdicts with their service (none: pooled), the evidence of an
    /// incident.
    pub fn failures(&self) -> impl Iterator<Item = (Option<&str>, &MetricVerdict)> {
        let services = self.services.iter().flat_map(|s| s.metrics.iter().map(move |m| (Some(s.service.as_str()), m)));
        services.chain(self.pooled.iter().map(|m| (None, m))).filter(|(_, m)| m.decides && m.outcome == Outcome::Fail)
    }
}

/// Judges a batch: each service's metrics of `policy` against the service's baseline and
/// before samples, then the evidence pooled over services. See the crate documentation.
pub fn analyze(batch: &BatchSamples, policy: &Policy) -> BatchVerdict {
    let mut services = Vec::new();
    // Per metric of the policy and comparison: the evidence of every service.
    let mut evidence: Vec<Vec<(Comparison, Evidence)>> = vec![Vec::new(); policy.metrics.len()];
    // (service index, metric index) whose combined outcome is inconclusive.
    let mut open = Vec::new();
    for service in &batch.services {
        let mut verdicts = Vec::new();
        let mut outcome = None;
        for (mi, mp) in policy.metrics.iter().enumerate() {
            let Some(samples) = service.metrics.iter().find(|m| m.metric == mp.metric) else { continue };
            // A reference not supplied is not compared, but the baseline is reported missing when
            // no reference is supplied at all.
            let before = (!samples.before.is_empty())
                .then(|| compare(policy, mp, Comparison::Before, &samples.canary, &samples.before))
                .flatten();
            let base = (!samples.baseline.is_empty() || samples.before.is_empty())
                .then(|| compare(policy, mp, Comparison::Baseline, &samples.canary, &samples.baseline))
                .flatten();
            let base_decides = base.as_ref().is_some_and(|(v, _)| v.outcome != Outcome::Inconclusive);
            let mut metric_outcome = None;
            for (verdict, ev) in base.into_iter().chain(before.map(|(mut v, e)| {
                if base_decides {
                    v.decides = false;
                    v.reason.push_str(" (the baseline comparison decides)");
                }
                (v, e)
            })) {
                if verdict.decides {
                    if let Some(e) = ev {
                        evidence[mi].push((verdict.comparison, e));
                    }
                    metric_outcome = Some(match (metric_outcome, verdict.outcome) {
                        (None, o) | (Some(Outcome::Inconclusive), o) => o,
                        (Some(o), _) => o,
                    });
                }
                verdicts.push(verdict);
            }
            if let Some(o) = metric_outcome {
                if o == Outcome::Inconclusive {
                    open.push((services.len(), mi));
                }
                outcome = Some(outcome.map_or(o, |w: Outcome| w.worst(o)));
            }
        }
        services.push(ServiceVerdict {
            service: service.service.clone(),
            outcome: outcome.unwrap_or(Outcome::Inconclusive),
            metrics: verdicts,
        });
    }

    let mut pooled = Vec::new();
    let mut pooled_pass = vec![false; policy.metrics.len()];
    for (mi, mp) in policy.metrics.iter().enumerate() {
        for comparison in [Comparison::Baseline, Comparison::Before] {
            let items: Vec<&Evidence> = evidence[mi].iter().filter(|(c, _)| *c == comparison).map(|(_, e)| e).collect();
            if let Some(v) = pool(policy, mp, comparison, &items) {
                pooled_pass[mi] |= v.outcome == Outcome::Pass;
                pooled.push(v);
            }
        }
    }

    let failed: Vec<String> = services
        .iter()
        .flat_map(|s| {
            s.metrics
                .iter()
                .filter(|m| m.decides && m.outcome == Outcome::Fail)
                .map(|m| format!("{}: {}", s.service, m.reason))
        })
        .chain(pooled.iter().filter(|m| m.outcome == Outcome::Fail).map(|m| format!("pooled: {}", m.reason)))
        .collect();
    let unsure: Vec<String> = open
        .iter()
        .filter(|(_, mi)| !pooled_pass[*mi])
        .flat_map(|&(si, mi)| {
            let s = &services[si];
            s.metrics
                .iter()
                .filter(move |m| m.decides && m.metric == policy.metrics[mi].metric)
                .map(|m| format!("{}: {}", s.service, m.reason))
        })
        .chain(pooled.iter().filter(|m| m.outcome == Outcome::Inconclusive).map(|m| format!("pooled: {}", m.reason)))
        .chain(services.iter().filter(|s| s.metrics.is_empty()).map(|s| format!("{}: no samples", s.service)))
        .collect();
    let (outcome, reason) = if !failed.is_empty() {
        (Outcome::Fail, failed.join("; "))
    } else if services.is_empty() {
        (Outcome::Inconclusive, "no service to compare".to_owned())
    } else if !unsure.is_empty() {
        (Outcome::Inconclusive, unsure.join("; "))
    } else {
        let compared = services.iter().map(|s| s.metrics.len()).sum::<usize>();
        (Outcome::Pass, format!("{} services, {compared} comparisons: no regression", services.len()))
    };
    BatchVerdict { outcome, reason, services, pooled }
}

/// What one comparison contributes to the pooled evidence.
#[derive(Debug, Clone)]
struct Evidence {
    greater: f64,
    less: f64,
    canary: Side,
    reference: Side,
    effect: Effect,
    instances: Vec<String>,
}

impl Evidence {
    /// The squared Stouffer weight, n·m / (n + m): the effective sample size.
    fn weight2(&self) -> f64 {
        let (n, m) = (self.canary.samples as f64, self.reference.samples as f64);
        n * m / (n + m)
    }
}

/// The values of `set` and how many instances gave at least one.
fn flatten(set: &[InstanceSamples]) -> (Vec<f64>, usize) {
    let mut values = Vec::new();
    let mut instances = 0;
    for s in set {
        let before = values.len();
        values.extend(s.values.iter().copied().filter(|v| v.is_finite()));
        instances += usize::from(values.len() > before);
    }
    (values, instances)
}

/// The tail the metric's direction tests.
fn alternative(direction: Direction) -> Alternative {
    match direction {
        Direction::HigherIsBad => Alternative::Greater,
        Direction::LowerIsBad => Alternative::Less,
        Direction::Both => Alternative::TwoSided,
    }
}

/// The p-value of `alternative` from the two one-sided ones.
fn tail(alternative: Alternative, greater: f64, less: f64) -> f64 {
    match alternative {
        Alternative::Greater => greater,
        Alternative::Less => less,
        Alternative::TwoSided => (2.0 * greater.min(less)).min(1.0),
    }
}

/// A number to four significant digits.
fn num(v: f64) -> String {
    let digits = if v == 0.0 { 0 } else { (3 - v.abs().log10().floor() as i32).clamp(0, 12) };
    format!("{v:.*}", digits as usize)
}

/// "canary 0.29 vs baseline 0.001 (+28900 %)".
fn describe(comparison: Comparison, canary: &Side, reference: &Side, effect: &Effect) -> String {
    let change = match effect.relative {
        Some(r) => format!("{:+.1} %", r * 100.0),
        None => format!("{:+}", num(effect.absolute)),
    };
    format!(
        "canary {} vs {} {} ({change}, Cliff's δ {:+.2})",
        num(canary.value.unwrap_or(0.0)),
        comparison.noun(),
        num(reference.value.unwrap_or(0.0)),
        effect.cliffs_delta
    )
}

fn too_few(min: Minimums, side: &Side) -> bool {
    side.instances < min.instances || side.samples < min.samples
}

/// The outcome and reason of a comparison that has a test.
fn decide(
    mp: &MetricPolicy,
    alpha: f64,
    min: Minimums,
    [canary, reference]: [&Side; 2],
    p: f64,
    effect: &Effect,
    what: String,
) -> (Outcome, String) {
    if too_few(min, canary) || too_few(min, reference) {
        let reason = format!(
            "not enough evidence: {} canary samples from {} instances, {} reference samples from {} instances; \
             need {} samples from {} instances per side",
            canary.samples, canary.instances, reference.samples, reference.instances, min.samples, min.instances
        );
        return (Outcome::Inconclusive, reason);
    }
    match (mp.is_regression(effect), p < alpha) {
        (true, true) => (Outcome::Fail, format!("{what}: a regression, p = {p:.3e} < {alpha}")),
        (true, false) => (
            Outcome::Inconclusive,
            format!("{what}: beyond the effect floor but not significant, p = {p:.3e} ≥ {alpha}"),
        ),
        (false, _) => (Outcome::Pass, format!("{what}: no regression beyond the effect floor, p = {p:.3e}")),
    }
}

/// One comparison of the canaries with a reference; none when neither side has samples.
fn compare(
    policy: &Policy,
    mp: &MetricPolicy,
    comparison: Comparison,
    canary: &[InstanceSamples],
    reference: &[InstanceSamples],
) -> Option<(MetricVerdict, Option<Evidence>)> {
    let (c, ci) = flatten(canary);
    let (r, ri) = flatten(reference);
    if c.is_empty() && r.is_empty() {
        return None;
    }
    let side = |values: &[f64], instances| Side {
        instances,
        samples: values.len(),
        value: (!values.is_empty()).then(|| mp.center.of(values)),
    };
    let (cs, rs) = (side(&c, ci), side(&r, ri));
    let instances: Vec<String> =
        canary.iter().filter(|s| s.values.iter().any(|v| v.is_finite())).map(|s| s.instance.clone()).collect();
    let mut verdict = MetricVerdict {
        metric: mp.metric.clone(),
        comparison,
        canary: cs,
        baseline: rs,
        test: None,
        p_value: None,
        effect: None,
        outcome: Outcome::Inconclusive,
        reason: String::new(),
        decides: true,
        instances,
    };
    // Both sides have finite samples, so neither call can fail.
    let (Ok(greater), Ok(less)) =
        (mann_whitney_u(&c, &r, Alternative::Greater), mann_whitney_u(&c, &r, Alternative::Less))
    else {
        let missing = if c.is_empty() { "canary" } else { comparison.noun() };
        verdict.reason = format!("not enough evidence: no {missing} samples");
        return Some((verdict, None));
    };
    let alt = alternative(mp.direction);
    let p = tail(alt, greater.p_value, less.p_value);
    let effect = Effect::new(cs.value.unwrap_or(0.0), rs.value.unwrap_or(0.0), greater.u, (c.len() * r.len()) as f64);
    let what = describe(comparison, &cs, &rs, &effect);
    let (outcome, reason) = decide(mp, policy.alpha, policy.minimum_of(mp), [&cs, &rs], p, &effect, what);
    verdict.test = Some(Test::MannWhitney { alternative: alt, method: greater.method });
    verdict.p_value = Some(p);
    verdict.effect = Some(effect);
    verdict.outcome = outcome;
    verdict.reason = reason;
    let evidence = Evidence {
        greater: greater.p_value,
        less: less.p_value,
        canary: cs,
        reference: rs,
        effect,
        instances: verdict.instances.clone(),
    };
    Some((verdict, Some(evidence)))
}

/// Stouffer's weighted Z of one-sided p-values, as a one-sided p-value.
fn stouffer(items: &[&Evidence], p: impl Fn(&Evidence) -> f64) -> f64 {
    let (num, den) = items.iter().fold((0.0, 0.0), |(n, d), e| {
        let w2 = e.weight2();
        (n + w2.sqrt() * normal::isf(p(e)), d + w2)
    });
    normal::sf(num / den.sqrt())
}

/// The evidence of two or more services on one metric and comparison, pooled.
fn pool(policy: &Policy, mp: &MetricPolicy, comparison: Comparison, items: &[&Evidence]) -> Option<MetricVerdict> {
    if items.len() < 2 {
        return None;
    }
    let alt = alternative(mp.direction);
    let p = tail(alt, stouffer(items, |e| e.greater), stouffer(items, |e| e.less));
    let total: f64 = items.iter().map(|e| e.weight2()).sum();
    let mean = |f: &dyn Fn(&Evidence) -> f64| items.iter().map(|e| e.weight2() * f(e)).sum::<f64>() / total;
    let relative: Vec<(f64, f64)> = items.iter().filter_map(|e| e.effect.relative.map(|r| (e.weight2(), r))).collect();
    let effect = Effect {
        absolute: mean(&|e| e.effect.absolute),
        relative: (!relative.is_empty())
            .then(|| relative.iter().map(|(w, r)| w * r).sum::<f64>() / relative.iter().map(|(w, _)| w).sum::<f64>()),
        cliffs_delta: mean(&|e| e.effect.cliffs_delta),
    };
    let side = |pick: &dyn Fn(&Evidence) -> Side| Side {
        instances: items.iter().map(|e| pick(e).instances).sum(),
        samples: items.iter().map(|e| pick(e).samples).sum(),
        value: Some(mean(&|e| pick(e).value.unwrap_or(0.0))),
    };
    let (cs, rs) = (side(&|e| e.canary), side(&|e| e.reference));
    let what = format!("{} over {} services, {}", mp.metric, items.len(), describe(comparison, &cs, &rs, &effect));
    let (outcome, reason) = decide(mp, policy.pooled_alpha, policy.minimum_of(mp), [&cs, &rs], p, &effect, what);
    let instances: BTreeSet<&String> = items.iter().flat_map(|e| &e.instances).collect();
    Some(MetricVerdict {
        metric: mp.metric.clone(),
        comparison,
        canary: cs,
        baseline: rs,
        test: Some(Test::Stouffer { alternative: alt, services: items.len() }),
        p_value: Some(p),
        effect: Some(effect),
        outcome,
        reason,
        decides: true,
        instances: instances.into_iter().cloned().collect(),
    })
}

#[cfg(test)]
mod tests;
