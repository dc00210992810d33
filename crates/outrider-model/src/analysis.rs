//! How a plan's batches are judged on metrics (PRODUCT.md §2 "Analysis"): which metrics, which
//! way is bad, how large a change matters, where service metrics come from (PromQL), and how
//! long the judge may wait for evidence. Set on a sidecar (`analysis`), overridable field by
//! field in a plan body (`analysis`); what neither sets has the built-in default.

use std::time::Duration;

pub use outrider_analysis::{
    BatchVerdict, Center, Comparison, Direction, Effect, EffectFloor, MetricPolicy, MetricVerdict, Minimums, Outcome,
    Policy, Side, Test,
};
use serde::{Deserialize, Serialize};

use crate::{HumanDuration, ValidationError, validate_text};

/// Metrics a setting may judge, queries it may run.
const MAX_METRICS: usize = 32;
const MAX_QUERIES: usize = 16;
const MAX_QUERY_LEN: usize = 4096;
const MAX_EXTENSIONS: u32 = 10;
const MAX_WARMUP: Duration = Duration::from_secs(3600);
const MAX_MIN_SAMPLES: usize = 100_000;
const MAX_MIN_INSTANCES: usize = 10_000;

/// The metric the judge derives from `rss_mib`: its growth between reports, in MiB a second
/// (a leak shows as a steady positive growth).
pub const RSS_GROWTH: &str = "rss_growth_mib_s";

/// A service metric read from Prometheus: a PromQL query template whose result has one series
/// per instance, told apart by `instance_label`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricQuery {
    /// The metric's name in verdicts.
    pub metric: String,
    /// PromQL with placeholders: `${service}`, `${sidecar}`, `${version}`, `${plan}`,
    /// `${window}` (a PromQL duration), `${instances}` (a regex alternation of the compared
    /// instances). Each series of the result must carry the instance id in `instance_label`.
    pub query: String,
    /// The label holding the instance id (default `instance`).
    #[serde(default = "MetricQuery::default_instance_label")]
    pub instance_label: String,
    /// Which change is a regression (default: more is worse).
    #[serde(default = "MetricQuery::higher_is_bad")]
    pub direction: Direction,
    /// How large a change must be to fail.
    #[serde(default)]
    pub floor: EffectFloor,
    /// The value that stands for a sample.
    #[serde(default)]
    pub center: Center,
}

impl MetricQuery {
    fn default_instance_label() -> String {
        "instance".into()
    }

    fn higher_is_bad() -> Direction {
        Direction::HigherIsBad
    }

    /// The policy this query's metric is judged with.
    pub fn policy(&self) -> MetricPolicy {
        MetricPolicy::new(self.metric.clone(), self.direction).with_floor(self.floor).with_center(self.center)
    }
}

/// The analysis settings of a sidecar or a plan body; every field is optional and a plan's
/// field replaces the sidecar's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// The metrics judged. Absent: the built-in ones ([`default_metrics`]) and the sidecar's
    /// `metrics`. Empty, with no queries: metrics are not judged, only process signals
    /// (exits, crash loops, failed upgrades) — a choice the plan records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<MetricPolicy>>,
    /// Service metrics from Prometheus (the manager's `--prometheus`), judged beside `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<Vec<MetricQuery>>,
    /// Significance level of one service's comparison, and of the evidence pooled over the
    /// batch's services (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Least samples per side of a comparison (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<usize>,
    /// Least instances per side of a comparison (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<usize>,
    /// How many times an inconclusive batch's bake is extended (by one bake each) before the
    /// plan blocks for a human with "not enough evidence" (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_extensions: Option<u32>,
    /// Samples of the first moments after an upgrade that are not judged (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<HumanDuration>,
}

/// The settings a batch is judged with, once the plan's, the sidecar's and the defaults are
/// resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Judging {
    /// Metrics, levels and minimums (queries' metrics included).
    pub policy: Policy,
    /// Service metrics from Prometheus.
    pub queries: Vec<MetricQuery>,
    /// Bake extensions before an inconclusive batch blocks.
    pub max_extensions: u32,
    /// Samples right after the upgrade left out.
    pub warmup: Duration,
}

impl Judging {
    /// Whether anything is judged on metrics.
    pub fn judges_metrics(&self) -> bool {
        !self.policy.metrics.is_empty()
    }
}

/// The built-in metrics: the sidecar process's CPU (`cpu_percent`, +15 points), resident
/// memory (`rss_mib`, +64 MiB and +50 %) and its growth ([`RSS_GROWTH`], +1 MiB/s), and the
/// figures sidecars commonly report: `error_ratio` (+0.5 points) and `latency_p99_ms`
/// (+25 %). A metric nobody reports is simply not compared.
pub fn default_metrics() -> Vec<MetricPolicy> {
    let floor = |absolute: Option<f64>, relative: Option<f64>| EffectFloor { absolute, relative, dominance: None };
    let higher = |name: &str| MetricPolicy::new(name, Direction::HigherIsBad);
    vec![
        higher("cpu_percent").with_floor(floor(Some(15.0), None)),
        higher("rss_mib").with_floor(floor(Some(64.0), Some(0.5))),
        higher(RSS_GROWTH).with_floor(floor(Some(1.0), None)),
        higher("error_ratio").with_floor(floor(Some(0.005), None)),
        higher("latency_p99_ms").with_floor(floor(None, Some(0.25))),
    ]
}

/// The policy of a custom metric a sidecar names in `metrics`: more is worse, by 25 % and with
/// a large dominance (Cliff's δ ≥ 0.5).
fn named_metric(name: &str) -> MetricPolicy {
    MetricPolicy::new(name, Direction::HigherIsBad).with_floor(EffectFloor {
        absolute: None,
        relative: Some(0.25),
        dominance: Some(0.5),
    })
}

impl AnalysisSpec {
    /// Checks names, bounds, floors and levels (`field` is the setting's JSON name).
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let f = |name: &str| format!("{field}.{name}");
        let metrics = self.metrics.as_deref().unwrap_or_default();
        let queries = self.queries.as_deref().unwrap_or_default();
        if metrics.len() > MAX_METRICS {
            return Err(ValidationError::new(f("metrics"), format!("at most {MAX_METRICS} metrics")));
        }
        if queries.len() > MAX_QUERIES {
            return Err(ValidationError::new(f("queries"), format!("at most {MAX_QUERIES} queries")));
        }
        for m in metrics.iter().map(|m| &m.metric).chain(queries.iter().map(|q| &q.metric)) {
            validate_metric_name(&f("metrics"), m)?;
        }
        for q in queries {
            validate_text(&f("queries.query"), &q.query, MAX_QUERY_LEN, false)?;
            if q.query.trim().is_empty() {
                return Err(ValidationError::new(f("queries.query"), "a query cannot be empty"));
            }
            validate_metric_name(&f("queries.instance_label"), &q.instance_label)?;
        }
        if let Some(a) = self.alpha
            && !(a > 0.0 && a <= 0.5)
        {
            return Err(ValidationError::new(f("alpha"), format!("{a} must be above 0 and at most 0.5, such as 0.01")));
        }
        bounded(&f("min_samples"), self.min_samples, 1, MAX_MIN_SAMPLES)?;
        bounded(&f("min_instances"), self.min_instances, 1, MAX_MIN_INSTANCES)?;
        if self.max_extensions.is_some_and(|e| e > MAX_EXTENSIONS) {
            return Err(ValidationError::new(f("max_extensions"), format!("at most {MAX_EXTENSIONS}")));
        }
        if self.warmup.is_some_and(|w| w.0 > MAX_WARMUP) {
            return Err(ValidationError::new(f("warmup"), "at most 1h"));
        }
        let policy = Policy::new(metrics.iter().cloned().chain(queries.iter().map(MetricQuery::policy)).collect());
        policy.validate().map_err(|e| ValidationError::new(f("metrics"), e.to_string()))
    }

    /// The settings of a batch: `plan`'s fields over `sidecar`'s over the defaults;
    /// `named` are the sidecar's `metrics` (judged as [`named_metric`] when no setting lists
    /// the metrics).
    pub fn resolve(plan: Option<&Self>, sidecar: Option<&Self>, named: &[String]) -> Judging {
        let pick = |f: &dyn Fn(&Self) -> bool| plan.filter(|p| f(p)).or(sidecar.filter(|s| f(s)));
        let metrics = match pick(&|s| s.metrics.is_some()).and_then(|s| s.metrics.clone()) {
            Some(m) => m,
            None => {
                let mut m = default_metrics();
                for n in named {
                    if !m.iter().any(|p| &p.metric == n) {
                        m.push(named_metric(n));
                    }
                }
                m
            }
        };
        let queries = pick(&|s| s.queries.is_some()).and_then(|s| s.queries.clone()).unwrap_or_default();
        let mut all = metrics;
        for q in &queries {
            all.retain(|m| m.metric != q.metric);
            all.push(q.policy());
        }
        let mut policy = Policy::new(all);
        if let Some(a) = pick(&|s| s.alpha.is_some()).and_then(|s| s.alpha) {
            policy.alpha = a;
            policy.pooled_alpha = a;
        }
        if let Some(n) = pick(&|s| s.min_samples.is_some()).and_then(|s| s.min_samples) {
            policy.minimum.samples = n;
        }
        if let Some(n) = pick(&|s| s.min_instances.is_some()).and_then(|s| s.min_instances) {
            policy.minimum.instances = n;
        }
        Judging {
            policy,
            queries,
            max_extensions: pick(&|s| s.max_extensions.is_some()).and_then(|s| s.max_extensions).unwrap_or(2),
            warmup: pick(&|s| s.warmup.is_some()).and_then(|s| s.warmup).map_or(Duration::ZERO, |w| w.0),
        }
    }
}

fn bounded(field: &str, v: Option<usize>, min: usize, max: usize) -> Result<(), ValidationError> {
    match v {
        Some(v) if v < min || v > max => {
            Err(ValidationError::new(field, format!("{v} must be between {min} and {max}")))
        }
        _ => Ok(()),
    }
}

/// A Prometheus-style metric or label name.
pub(crate) fn validate_metric_name(field: &str, m: &str) -> Result<(), ValidationError> {
    let ok = !m.is_empty()
        && m.len() <= 128
        && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !m.starts_with(|c: char| c.is_ascii_digit());
    if ok { Ok(()) } else { Err(ValidationError::new(field, format!("{m:?} is not a metric name"))) }
}

/// The judge's evidence on one metric of a batch: a service's comparison, or (no service) the
/// evidence pooled over the batch's services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The service compared; none: pooled over the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What was compared, on how many instances, the test and the outcome.
    #[serde(flatten)]
    pub verdict: MetricVerdict,
}

/// What the judge found in a batch: the outcome, why, and per metric the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAnalysis {
    /// `pass`, `fail` or `inconclusive`.
    pub outcome: Outcome,
    /// Why, in a sentence or a few.
    pub reason: String,
    /// Per metric and comparison: the pooled evidence where two or more services were
    /// compared, else the one service's; then every other failing comparison.
    pub metrics: Vec<Evidence>,
}

/// Instance ids kept in one piece of evidence (the rest are counted in its sides).
const MAX_LISTED: usize = 20;

impl BatchAnalysis {
    /// The summary of `verdict` kept with the batch: bounded whatever the batch's size.
    pub fn of(verdict: &BatchVerdict) -> Self {
        let mut metrics: Vec<Evidence> = Vec::new();
        let keep = |service: Option<&str>, v: &MetricVerdict| {
            let mut v = v.clone();
            v.instances.truncate(MAX_LISTED);
            Evidence { service: service.map(str::to_owned), verdict: v }
        };
        let rank = |o: Outcome| match o {
            Outcome::Fail => 2,
            Outcome::Inconclusive => 1,
            Outcome::Pass => 0,
        };
        // One row per metric and comparison: the pooled one, or the worst service's.
        for s in &verdict.services {
            for v in &s.metrics {
                let pooled = verdict.pooled.iter().find(|p| p.metric == v.metric && p.comparison == v.comparison);
                if let Some(p) = pooled {
                    if !metrics.iter().any(|e| {
                        e.service.is_none() && e.verdict.metric == p.metric && e.verdict.comparison == p.comparison
                    }) {
                        metrics.push(keep(None, p));
                    }
                    continue;
                }
                match metrics.iter_mut().find(|e| e.verdict.metric == v.metric && e.verdict.comparison == v.comparison)
                {
                    Some(e) if rank(v.outcome) > rank(e.verdict.outcome) => *e = keep(Some(&s.service), v),
                    Some(_) => {}
                    None => metrics.push(keep(Some(&s.service), v)),
                }
            }
        }
        // Every deciding failure of a service, so that an incident's evidence is complete.
        for (service, v) in verdict.failures() {
            if let Some(service) = service
                && metrics.len() < MAX_METRICS * 4
                && !metrics.iter().any(|e| {
                    e.service.as_deref() == Some(service)
                        && e.verdict.metric == v.metric
                        && e.verdict.comparison == v.comparison
                })
            {
                metrics.push(keep(Some(service), v));
            }
        }
        Self { outcome: verdict.outcome, reason: truncate(&verdict.reason, 2000), metrics }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_overrides_the_sidecar_field_by_field() {
        let sidecar: AnalysisSpec =
            serde_json::from_str(r#"{"metrics": [{"metric": "queue_depth"}], "alpha": 0.05, "max_extensions": 1}"#)
                .unwrap();
        let plan: AnalysisSpec = serde_json::from_str(r#"{"alpha": 0.001}"#).unwrap();
        let j = AnalysisSpec::resolve(Some(&plan), Some(&sidecar), &[]);
        assert_eq!(j.policy.alpha, 0.001);
        assert_eq!(j.max_extensions, 1);
        assert_eq!(j.policy.metrics.len(), 1);
        assert_eq!(j.policy.metrics[0].direction, Direction::HigherIsBad, "more is worse by default");
    }

    #[test]
    fn defaults_judge_process_and_common_metrics_plus_named_ones() {
        let j = AnalysisSpec::resolve(None, None, &["queue_depth".into(), "cpu_percent".into()]);
        let names: Vec<&str> = j.policy.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(names, ["cpu_percent", "rss_mib", RSS_GROWTH, "error_ratio", "latency_p99_ms", "queue_depth"]);
        assert_eq!((j.max_extensions, j.warmup), (2, Duration::ZERO));
        assert!(j.judges_metrics());
        let off: AnalysisSpec = serde_json::from_str(r#"{"metrics": []}"#).unwrap();
        assert!(!AnalysisSpec::resolve(Some(&off), None, &[]).judges_metrics(), "an explicit empty list opts out");
    }

    #[test]
    fn queries_join_the_policy_and_bad_settings_are_refused() {
        let spec: AnalysisSpec = serde_json::from_str(
            r#"{"queries": [{"metric": "http_5xx_ratio", "query": "sum(rate(x{service=\"${service}\"}[1m]))",
                "floor": {"absolute": 0.01}}]}"#,
        )
        .unwrap();
        spec.validate("analysis").unwrap();
        let j = AnalysisSpec::resolve(Some(&spec), None, &[]);
        assert!(j.policy.metrics.iter().any(|m| m.metric == "http_5xx_ratio"));
        assert_eq!(j.queries[0].instance_label, "instance");
        for bad in [
            r#"{"alpha": 0}"#,
            r#"{"alpha": 0.9}"#,
            r#"{"min_samples": 0}"#,
            r#"{"max_extensions": 1000}"#,
            r#"{"warmup": "2h"}"#,
            r#"{"metrics": [{"metric": "a b"}]}"#,
            r#"{"metrics": [{"metric": "a", "floor": {"relative": -1}}]}"#,
            r#"{"queries": [{"metric": "a", "query": " "}]}"#,
        ] {
            let s: AnalysisSpec = serde_json::from_str(bad).unwrap();
            assert!(s.validate("analysis").is_err(), "{bad} must be refused");
        }
        assert!(serde_json::from_str::<AnalysisSpec>(r#"{"metrics": [{"metric": "a", "colour": 1}]}"#).is_err());
    }
}
