//! The Mann-Whitney U test (Wilcoxon rank-sum): does one sample tend to be larger than the
//! other?

use serde::{Deserialize, Serialize};

use crate::{StatsError, normal};

/// Which difference the test looks for, from the first sample's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alternative {
    /// Either sample tends to be larger.
    TwoSided,
    /// The first sample tends to be larger.
    Greater,
    /// The first sample tends to be smaller.
    Less,
}

/// How a p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The exact distribution of U (small samples without ties).
    Exact,
    /// The normal approximation with tie and continuity corrections.
    Normal,
}

/// The result of [`mann_whitney_u`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// U of the first sample: the pairs (x, y) with x > y, ties counting one half.
    pub u: f64,
    /// The p-value under `alternative`.
    pub p_value: f64,
    /// How `p_value` was computed.
    pub method: Method,
}

/// Samples with `len(x) · len(y)` up to this and no ties get the exact distribution (if
/// the arrangements are also few enough to count exactly in an `f64`).
const EXACT_MAX_PAIRS: usize = 10_000;

/// Whether C(m + n, m), the number of arrangements, is at most 2⁵³, so the exact counts
/// stay exact integers in an `f64`.
fn countable(m: usize, n: usize) -> bool {
    let k = m.min(n);
    let mut c = 1.0f64;
    for i in 1..=k {
        // C(n' + i, i) = C(n' + i - 1, i - 1) · (n' + i) / i, with n' = max(m, n).
        c = c * (m.max(n) + i) as f64 / i as f64;
        if c > 9_007_199_254_740_992.0 {
            return false;
        }
    }
    true
}

/// The Mann-Whitney U test of `x` against `y`.
///
/// Exact for small samples without ties (`len(x) · len(y)` ≤ 10 000 and at most 2⁵³
/// arrangements, such as 28 against 28 or 8 against 300); otherwise the normal
/// approximation with the tie correction of the variance and a continuity correction of ½
/// (SciPy's `mannwhitneyu(method="asymptotic")`).
///
/// # Errors
/// [`StatsError::EmptySample`] if either sample is empty, [`StatsError::NotFinite`] if a
/// value is NaN or infinite.
pub fn mann_whitney_u(x: &[f64], y: &[f64], alternative: Alternative) -> Result<MannWhitney, StatsError> {
    let ranked = Ranked::new(x, y)?;
    let (n1, n2) = (x.len(), y.len());
    let u = ranked.u;
    let (method, less, greater) = if ranked.ties == 0.0 && n1 * n2 <= EXACT_MAX_PAIRS && countable(n1, n2) {
        let counts = u_distribution(n1, n2);
        let total: f64 = counts.iter().sum();
        // U of untied samples is an integer.
        let k = u as usize;
        let less = counts[..=k].iter().sum::<f64>() / total;
        let greater = counts[k..].iter().sum::<f64>() / total;
        (Method::Exact, less, greater)
    } else {
        let (a, b) = (n1 as f64, n2 as f64);
        let n = a + b;
        let mean = a * b / 2.0;
        let var = a * b / 12.0 * ((n + 1.0) - ranked.ties / (n * (n - 1.0)));
        if var <= 0.0 {
            // Every value is the same: no evidence either way.
            return Ok(MannWhitney { u, p_value: 1.0, method: Method::Normal });
        }
        let sd = var.sqrt();
        let greater = normal::sf((u - mean - 0.5) / sd);
        let less = normal::cdf((u - mean + 0.5) / sd);
        (Method::Normal, less, greater)
    };
    let p = match alternative {
        Alternative::TwoSided => 2.0 * less.min(greater),
        Alternative::Greater => greater,
        Alternative::Less => less,
    };
    Ok(MannWhitney { u, p_value: p.clamp(0.0, 1.0), method })
}

/// U of the first sample and the tie term Σ (t³ - t) over groups of tied values.
struct Ranked {
    u: f64,
    ties: f64,
}

impl Ranked {
    fn new(x: &[f64], y: &[f64]) -> Result<Self, StatsError> {
        if x.is_empty() || y.is_empty() {
            return Err(StatsError::EmptySample);
        }
        if x.iter().chain(y).any(|v| !v.is_finite()) {
            return Err(StatsError::NotFinite);
        }
        let mut all: Vec<(f64, bool)> = x.iter().map(|&v| (v, true)).chain(y.iter().map(|&v| (v, false))).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rank_sum, mut ties) = (0.0, 0.0);
        let mut i = 0;
        while i < all.len() {
            let j = i + all[i..].iter().take_while(|(v, _)| *v == all[i].0).count();
            // Ranks i+1 ..= j share their mean.
            let mean_rank = (i + 1 + j) as f64 / 2.0;
            let t = (j - i) as f64;
            ties += t * t * t - t;
            rank_sum += mean_rank * all[i..j].iter().filter(|(_, first)| *first).count() as f64;
            i = j;
        }
        let n1 = x.len() as f64;
        Ok(Self { u: rank_sum - n1 * (n1 + 1.0) / 2.0, ties })
    }
}

/// How many arrangements of `m` and `n` untied values give each U = 0 ..= m·n: the
/// coefficients of the Gaussian binomial [m+n choose m]_q, built as
/// Π_{i=1..m} (1 - q^{n+i}) / (1 - q^i).
fn u_distribution(m: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n + 1];
    c[0] = 1.0;
    for i in 1..=m {
        // Multiply by (1 - q^{n+i}), highest power first.
        for k in (n + i..c.len()).rev() {
            c[k] -= c[k - n - i];
        }
        // Divide by (1 - q^i): a running sum with stride i.
        for k in i..c.len() {
            c[k] += c[k - i];
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(x: &[f64], y: &[f64], alt: Alternative) -> MannWhitney {
        mann_whitney_u(x, y, alt).unwrap()
    }

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 5e-7, "p = {got}, want {want}");
    }

    #[test]
    fn matches_the_reference_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [6.5, 7.0, 8.0, 9.0, 10.0, 11.0];
        let r = p(&x, &y, Alternative::TwoSided);
        assert_eq!((r.u, r.method), (0.0, Method::Exact));
        close(r.p_value, 0.002165);
        close(p(&x, &y, Alternative::Less).p_value, 0.001082);
        close(p(&x, &y, Alternative::Greater).p_value, 1.0);
        close(p(&y, &x, Alternative::Greater).p_value, 0.001082);

        let r = p(&x, &[3.5, 4.5, 7.0, 8.0, 9.0, 10.0], Alternative::TwoSided);
        assert_eq!(r.u, 5.0);
        close(r.p_value, 0.041126);

        let odd = [1.0, 3.0, 5.0, 7.0, 9.0];
        let even: Vec<f64> = (1..=7).map(|i| f64::from(2 * i)).collect();
        let r = p(&odd, &even, Alternative::TwoSided);
        assert_eq!(r.u, 10.0);
        close(r.p_value, 0.267677);
    }

    #[test]
    fn ties_use_the_corrected_normal_approximation() {
        // Ranks 1, 3, 3 | 3, 6.5 ×3 | 6.5, 9.5, 9.5, 11.5, 11.5: U = 26.5 - 21 = 5.5; tie groups
        // of 3, 4, 2, 2 give Σ(t³ - t) = 96; σ² = 36/12 · (13 - 96/132); z = (18 - 5.5 - 0.5)/σ.
        let r = p(&[1.0, 2.0, 2.0, 3.0, 3.0, 3.0], &[2.0, 3.0, 4.0, 4.0, 5.0, 5.0], Alternative::TwoSided);
        assert_eq!((r.u, r.method), (5.5, Method::Normal));
        close(r.p_value, 2.0 * normal::sf(12.0 / (3.0f64 * (13.0 - 96.0 / 132.0)).sqrt()));
        close(r.p_value, 0.047968);
        // All values equal: no evidence.
        assert_eq!(p(&[1.0; 4], &[1.0; 5], Alternative::Greater).p_value, 1.0);
    }

    #[test]
    fn large_samples_use_the_normal_approximation() {
        let x: Vec<f64> = (0..60).map(f64::from).collect();
        let y: Vec<f64> = (0..60).map(|i| f64::from(i) + 0.5).collect();
        let r = p(&x, &y, Alternative::TwoSided);
        assert_eq!(r.method, Method::Normal);
        // U = 1770 of 3600; z = (1800 - 1770 - 0.5) / σ, σ = sqrt(3600 · 121 / 12).
        close(r.p_value, 2.0 * normal::sf(29.5 / (3600.0f64 * 121.0 / 12.0).sqrt()));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(mann_whitney_u(&[], &[1.0], Alternative::Less), Err(StatsError::EmptySample));
        assert_eq!(mann_whitney_u(&[f64::NAN], &[1.0], Alternative::Less), Err(StatsError::NotFinite));
    }

    #[test]
    fn the_exact_distribution_counts_every_arrangement() {
        // C(m+n, m) arrangements, symmetric around m·n/2.
        let c = u_distribution(4, 6);
        assert_eq!(c.iter().sum::<f64>(), 210.0);
        assert!(c.iter().zip(c.iter().rev()).all(|(a, b)| a == b));
        assert_eq!(&c[..4], &[1.0, 1.0, 2.0, 3.0]);
        // Fully separated 20 against 80: one arrangement of C(100, 20) would overflow exact
        // counts, so the normal approximation answers, still far below any level.
        assert!(!countable(20, 80) && countable(28, 28) && countable(8, 300) && !countable(8, 400));
        let x: Vec<f64> = (0..20).map(|i| f64::from(i) + 1000.0).collect();
        let y: Vec<f64> = (0..80).map(f64::from).collect();
        let r = p(&x, &y, Alternative::Greater);
        assert!(r.method == Method::Normal && r.p_value > 0.0 && r.p_value < 1e-10, "{r:?}");
        // 8 against 30, separated: exactly 1 / C(38, 8).
        let r = p(&x[..8], &y[..30], Alternative::Greater);
        assert_eq!(r.method, Method::Exact);
        assert!((r.p_value * 48_903_492.0 - 1.0).abs() < 1e-9, "{r:?}");
    }

    fn sample() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(prop_oneof![(-50i32..50).prop_map(f64::from), -50.0..50.0f64], 1..40)
    }

    proptest! {
        #[test]
        fn p_is_a_probability_and_symmetric(x in sample(), y in sample()) {
            let two = p(&x, &y, Alternative::TwoSided);
            let greater = p(&x, &y, Alternative::Greater);
            let less = p(&x, &y, Alternative::Less);
            for r in [two, greater, less] {
                prop_assert!((0.0..=1.0).contains(&r.p_value));
            }
            // Swapping the samples swaps the tails and keeps the two-sided p.
            prop_assert!((p(&y, &x, Alternative::TwoSided).p_value - two.p_value).abs() < 1e-12);
            prop_assert!((p(&y, &x, Alternative::Less).p_value - greater.p_value).abs() < 1e-12);
            prop_assert_eq!(two.u + p(&y, &x, Alternative::TwoSided).u, (x.len() * y.len()) as f64);
            prop_assert!(two.p_value >= greater.p_value.min(less.p_value) - 1e-12);
        }

        #[test]
        // Continuous values: a shift then changes no ties, so both p-values use one method.
        fn shifting_the_first_sample_up_never_raises_p_greater(
            x in prop::collection::vec(-50.0..50.0f64, 1..40),
            y in prop::collection::vec(-50.0..50.0f64, 1..40),
            shift in 0.0..30.0f64,
        ) {
            let shifted: Vec<f64> = x.iter().map(|v| v + shift).collect();
            let before = p(&x, &y, Alternative::Greater).p_value;
            let after = p(&shifted, &y, Alternative::Greater).p_value;
            prop_assert!(after <= before + 1e-9, "{} → {}", before, after);
        }
    }
}
