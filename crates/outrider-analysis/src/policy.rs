//! What a batch is judged on: per metric, which way is bad and how large a change matters.

use serde::{Deserialize, Serialize};

use crate::{Center, Effect, PolicyError};

/// Which change of a metric is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// More is worse (error ratio, latency, CPU, memory).
    HigherIsBad,
    /// Less is worse (success ratio, throughput).
    LowerIsBad,
    /// A change either way is suspect.
    Both,
}

/// How large a change must be to matter. Every floor that is set must be reached; none set:
/// any change in the bad direction matters.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectFloor {
    /// Least |canary - reference| in the metric's unit (error ratio: 0.005 is half a point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute: Option<f64>,
    /// Least |canary - reference| / |reference| (latency: 0.2 is 20 %). A reference of 0
    /// reaches any relative floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
    /// Least |Cliff's delta| (0.33 is a "medium" effect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dominance: Option<f64>,
}

impl EffectFloor {
    /// Whether `effect` reaches every floor that is set.
    pub fn reached_by(&self, effect: &Effect) -> bool {
        self.absolute.is_none_or(|f| effect.absolute.abs() >= f)
            && self.relative.is_none_or(|f| effect.relative.is_none_or(|r| r.abs() >= f))
            && self.dominance.is_none_or(|f| effect.cliffs_delta.abs() >= f)
    }
}

/// The least evidence on each side of a comparison: fewer gives `inconclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Minimums {
    /// Instances with at least one sample.
    pub instances: usize,
    /// Samples over those instances.
    pub samples: usize,
}

impl Default for Minimums {
    /// One instance and eight samples per side (the exact one-sided p of 8 against 8 can
    /// reach 1/12 870).
    fn default() -> Self {
        Self { instances: 1, samples: 8 }
    }
}

/// How one metric is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricPolicy {
    /// The metric's name, as in [`MetricSamples::metric`](crate::MetricSamples::metric).
    pub metric: String,
    /// Which change is a regression (default: more is worse).
    #[serde(default = "MetricPolicy::higher_is_bad")]
    pub direction: Direction,
    /// How large a change must be to fail.
    #[serde(default)]
    pub floor: EffectFloor,
    /// The value that stands for a sample.
    #[serde(default)]
    pub center: Center,
    /// This metric's minimums (none: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<Minimums>,
}

impl MetricPolicy {
    fn higher_is_bad() -> Direction {
        Direction::HigherIsBad
    }

    /// `metric` judged in `direction`, with no floor, the median and the policy's minimums.
    pub fn new(metric: impl Into<String>, direction: Direction) -> Self {
        Self { metric: metric.into(), direction, floor: EffectFloor::default(), center: Center::Median, minimum: None }
    }

    /// The same with `floor`.
    pub fn with_floor(self, floor: EffectFloor) -> Self {
        Self { floor, ..self }
    }

    /// The same with `center`.
    pub fn with_center(self, center: Center) -> Self {
        Self { center, ..self }
    }

    /// Whether `effect` is a regression of the size that matters.
    pub fn is_regression(&self, effect: &Effect) -> bool {
        let bad_way = match self.direction {
            Direction::HigherIsBad => effect.absolute > 0.0,
            Direction::LowerIsBad => effect.absolute < 0.0,
            Direction::Both => effect.absolute != 0.0,
        };
        bad_way && self.floor.reached_by(effect)
    }
}

/// The judge's settings for a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The metrics judged; samples of other metrics are ignored.
    pub metrics: Vec<MetricPolicy>,
    /// Significance level of one service's comparison.
    pub alpha: f64,
    /// Significance level of the evidence pooled over the batch's services.
    pub pooled_alpha: f64,
    /// Minimums of metrics that set none.
    pub minimum: Minimums,
}

impl Policy {
    /// `metrics` at α = 0.01 per service and pooled, with [`Minimums::default`].
    pub fn new(metrics: Vec<MetricPolicy>) -> Self {
        Self { metrics, alpha: 0.01, pooled_alpha: 0.01, minimum: Minimums::default() }
    }

    /// Checks the levels, the floors and that each metric is named once.
    ///
    /// # Errors
    /// The first [`PolicyError`] found.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (name, alpha) in [("alpha", self.alpha), ("pooled_alpha", self.pooled_alpha)] {
            if !(alpha > 0.0 && alpha < 1.0) {
                return Err(PolicyError::Alpha { name, value: alpha });
            }
        }
        for (i, m) in self.metrics.iter().enumerate() {
            if self.metrics[..i].iter().any(|o| o.metric == m.metric) {
                return Err(PolicyError::DuplicateMetric(m.metric.clone()));
            }
            let f = m.floor;
            if [f.absolute, f.relative, f.dominance].into_iter().flatten().any(|v| !(v.is_finite() && v >= 0.0))
                || f.dominance.is_some_and(|d| d > 1.0)
            {
                return Err(PolicyError::Floor(m.metric.clone()));
            }
        }
        Ok(())
    }

    /// The minimums of `metric`.
    pub(crate) fn minimum_of(&self, metric: &MetricPolicy) -> Minimums {
        metric.minimum.unwrap_or(self.minimum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(absolute: f64, relative: Option<f64>, cliffs_delta: f64) -> Effect {
        Effect { absolute, relative, cliffs_delta }
    }

    #[test]
    fn direction_and_floor_decide_what_is_a_regression() {
        let floor = EffectFloor { absolute: Some(0.01), relative: Some(0.5), dominance: None };
        let higher = MetricPolicy::new("error_ratio", Direction::HigherIsBad).with_floor(floor);
        assert!(higher.is_regression(&effect(0.02, Some(2.0), 0.9)));
        assert!(!higher.is_regression(&effect(-0.02, Some(-2.0), -0.9)), "fewer errors are fine");
        assert!(!higher.is_regression(&effect(0.005, Some(5.0), 0.9)), "below the absolute floor");
        assert!(!higher.is_regression(&effect(0.02, Some(0.1), 0.9)), "below the relative floor");
        assert!(higher.is_regression(&effect(0.02, None, 0.9)), "from zero: any relative change");
        let lower = MetricPolicy::new("success_ratio", Direction::LowerIsBad);
        assert!(lower.is_regression(&effect(-0.001, Some(-0.001), -0.1)));
        assert!(!lower.is_regression(&effect(0.001, Some(0.001), 0.1)));
        let both = MetricPolicy::new("rps", Direction::Both)
            .with_floor(EffectFloor { dominance: Some(0.33), ..EffectFloor::default() });
        assert!(both.is_regression(&effect(-5.0, Some(-0.5), -0.5)));
        assert!(!both.is_regression(&effect(-5.0, Some(-0.5), -0.2)));
        assert!(!both.is_regression(&effect(0.0, Some(0.0), 0.0)));
    }

    #[test]
    fn validate_names_the_problem() {
        let m = MetricPolicy::new("a", Direction::Both);
        assert_eq!(Policy::new(vec![m.clone()]).validate(), Ok(()));
        let p = Policy { alpha: 0.0, ..Policy::new(vec![]) };
        assert_eq!(p.validate(), Err(PolicyError::Alpha { name: "alpha", value: 0.0 }));
        let p = Policy::new(vec![m.clone(), m.clone()]);
        assert_eq!(p.validate(), Err(PolicyError::DuplicateMetric("a".into())));
        let bad = m.with_floor(EffectFloor { relative: Some(-1.0), ..EffectFloor::default() });
        assert_eq!(Policy::new(vec![bad]).validate(), Err(PolicyError::Floor("a".into())));
    }
}
