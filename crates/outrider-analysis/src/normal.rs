//! The standard normal distribution: tail probabilities and quantiles.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// The complementary error function, to about 1e-15 relative precision.
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.0 {
        // erf(x) = 2/√π · e^{-x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1)): every term positive.
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        return 1.0 - 2.0 / PI.sqrt() * (-x * x).exp() * sum;
    }
    // Continued fraction: erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))).
    let mut t = x;
    for k in (1..=120).rev() {
        t = x + f64::from(k) / 2.0 / t;
    }
    (-x * x).exp() / (PI.sqrt() * t)
}

/// P(Z > z) for a standard normal Z.
pub(crate) fn sf(z: f64) -> f64 {
    0.5 * erfc(z * FRAC_1_SQRT_2)
}

/// P(Z ≤ z) for a standard normal Z.
pub(crate) fn cdf(z: f64) -> f64 {
    sf(-z)
}

/// The z with P(Z > z) = p, for p in (0, 1) (clamped away from 0 and 1).
pub(crate) fn isf(p: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    // Acklam's rational approximation of the lower quantile of q = 1 - p, then one Halley
    // step against `sf`, which brings it to about full precision.
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    const LOW: f64 = 0.02425;
    let tail = |r: f64| {
        let s = (-2.0 * r.ln()).sqrt();
        (((((C[0] * s + C[1]) * s + C[2]) * s + C[3]) * s + C[4]) * s + C[5])
            / ((((D[0] * s + D[1]) * s + D[2]) * s + D[3]) * s + 1.0)
    };
    // `q` is the lower-tail probability: z = Φ⁻¹(q) with q = 1 - p.
    let q = 1.0 - p;
    let mut z = if q < LOW {
        tail(q)
    } else if p < LOW {
        -tail(p)
    } else {
        let r = q - 0.5;
        let s = r * r;
        (((((A[0] * s + A[1]) * s + A[2]) * s + A[3]) * s + A[4]) * s + A[5]) * r
            / (((((B[0] * s + B[1]) * s + B[2]) * s + B[3]) * s + B[4]) * s + 1.0)
    };
    // Halley: f(z) = sf(z) - p, f' = -φ(z).
    let e = sf(z) - p;
    let u = e * (2.0 * PI).sqrt() * (z * z / 2.0).exp();
    z += u / (1.0 + z * u / 2.0);
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let close = |a: f64, b: f64, tol: f64| assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
        close(sf(0.0), 0.5, 1e-15);
        close(sf(1.959963984540054), 0.025, 1e-12);
        close(cdf(-1.0), 0.15865525393145707, 1e-12);
        close(sf(3.0), 0.0013498980316301035, 1e-12);
        close(sf(6.0), 9.865876450376946e-10, 1e-10);
        close(sf(10.0), 7.61985302416047e-24, 1e-9);
        close(isf(0.025), 1.959963984540054, 1e-12);
        close(isf(0.5).abs() + 1.0, 1.0, 1e-12);
        close(isf(0.975), -1.959963984540054, 1e-12);
        close(isf(1e-10), 6.361340902404056, 1e-10);
    }

    #[test]
    fn isf_inverts_sf() {
        for i in 1..1000 {
            let p = f64::from(i) / 1000.0;
            let back = sf(isf(p));
            assert!((back - p).abs() < 1e-13, "{p}: {back}");
        }
    }
}
