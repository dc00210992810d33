//! Effect sizes: how large a difference is, apart from whether it is significant.

use serde::{Deserialize, Serialize};

/// How large the canary's difference from its reference is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// Canary value minus reference value, in the metric's unit.
    pub absolute: f64,
    /// `absolute` relative to the reference value (0.5: 50 % more); none when the reference
    /// value is 0.
    pub relative: Option<f64>,
    /// Cliff's delta in [-1, 1]: P(canary > reference) - P(canary < reference) over all pairs.
    pub cliffs_delta: f64,
}

impl Effect {
    /// The effect of `canary` over `reference` (their [`Center`] values) with `u`, the
    /// Mann-Whitney U of canary against reference from `n_canary · n_reference` pairs.
    pub(crate) fn new(canary: f64, reference: f64, u: f64, pairs: f64) -> Self {
        let absolute = canary - reference;
        let relative = (reference != 0.0).then(|| absolute / reference.abs());
        Self { absolute, relative, cliffs_delta: 2.0 * u / pairs - 1.0 }
    }
}

/// Which value of a sample stands for it in verdicts and effect sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Center {
    /// The median: robust to spikes (latency, CPU).
    #[default]
    Median,
    /// The mean: for ratios that are mostly 0 with rare bursts (error ratios).
    Mean,
}

impl Center {
    /// The center of `values` (not empty, finite).
    pub(crate) fn of(self, values: &[f64]) -> f64 {
        match self {
            Self::Mean => values.iter().sum::<f64>() / values.len() as f64,
            Self::Median => {
                let mut v = values.to_vec();
                v.sort_by(f64::total_cmp);
                let mid = v.len() / 2;
                if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centers() {
        assert_eq!(Center::Median.of(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(Center::Median.of(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(Center::Mean.of(&[0.0, 0.0, 0.0, 4.0]), 1.0);
    }

    #[test]
    fn effects() {
        let e = Effect::new(15.0, 10.0, 6.0, 8.0);
        assert_eq!((e.absolute, e.relative, e.cliffs_delta), (5.0, Some(0.5), 0.5));
        assert_eq!(Effect::new(1.0, 0.0, 8.0, 8.0).relative, None);
        assert_eq!(Effect::new(-1.0, -2.0, 8.0, 8.0).relative, Some(0.5));
    }
}
