//! What the agent derives from a sidecar's own metrics (the `scrape` setting): one
//! [`Observation`] per series from each scrape, then a value from two consecutive
//! observations, and the breaches of the series' bounds (dynamic self-health).
//!
//! Counters are read as deltas over the interval: a ratio is Δnumerator / Δdenominator (no
//! value without traffic), a rate Δ / Δt per second, a quantile is interpolated linearly
//! within the bucket it falls in (as Prometheus' `histogram_quantile`) over the buckets'
//! deltas; a gauge is its current value. A counter that went down (a new process) skips
//! the interval. Values that are not finite are never reported.

use std::{cmp::Ordering, time::Duration};

use outrider_model::{Derivation, MetricRef, Series};
use outrider_promtext::Sample;

/// What one scrape says about one series, before derivation. A family that has no
/// matching series is `None` (a ratio's numerator is then 0: a labelled counter such as
/// `errors_total{code="500"}` typically appears with its first event).
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Sums of the numerator and the denominator.
    Ratio(f64, Option<f64>),
    /// Sum of a counter.
    Counter(Option<f64>),
    /// Sum of a gauge.
    Gauge(Option<f64>),
    /// A histogram's cumulative bucket counts by upper bound (`le`), ascending, summed over
    /// the matching series; empty without any.
    Buckets(Vec<(f64, f64)>),
}

fn matches(s: &Sample<'_>, name: &str, r: &MetricRef) -> bool {
    s.name == name && r.matchers.iter().all(|(k, v)| s.label(k) == Some(v.as_str()))
}

/// The sum of the samples of `r`, `None` if none matches.
fn sum(samples: &[Sample<'_>], r: &MetricRef) -> Option<f64> {
    samples.iter().filter(|s| matches(s, &r.family, r)).map(|s| s.value).reduce(|a, b| a + b)
}

/// The buckets of histogram `r`, summed by `le`; a bucket with an unreadable `le` is left out.
fn buckets(samples: &[Sample<'_>], r: &MetricRef) -> Vec<(f64, f64)> {
    let name = format!("{}_bucket", r.family);
    let mut out: Vec<(f64, f64)> = Vec::new();
    for s in samples.iter().filter(|s| matches(s, &name, r)) {
        let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()).filter(|le| !le.is_nan()) else {
            continue;
        };
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some((_, count)) => *count += s.value,
            None => out.push((le, s.value)),
        }
    }
    out.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    out
}

/// What `samples` say about `series`.
pub fn observe(series: &Series, samples: &[Sample<'_>]) -> Option<Observation> {
    Some(match series.derivation()? {
        Derivation::Ratio(r) => {
            Observation::Ratio(sum(samples, &r.numerator).unwrap_or(0.0), sum(samples, &r.denominator))
        }
        Derivation::Rate(r) => Observation::Counter(sum(samples, r)),
        Derivation::Gauge(r) => Observation::Gauge(sum(samples, r)),
        Derivation::Quantile(q) => Observation::Buckets(buckets(samples, &q.histogram)),
    })
}

/// The value of `series` from the observation before (`prev`, `elapsed` earlier) and the
/// current one, scaled; `None` when there is none (no traffic, a reset, a family missing,
/// not finite).
pub fn derive(series: &Series, prev: Option<&Observation>, cur: &Observation, elapsed: Duration) -> Option<f64> {
    let delta = |before: f64, now: f64| Some(now - before).filter(|d| *d >= 0.0);
    let value = match (series.derivation()?, prev, cur) {
        (Derivation::Gauge(_), _, Observation::Gauge(v)) => (*v)?,
        (Derivation::Ratio(_), Some(Observation::Ratio(n0, d0)), Observation::Ratio(n1, d1)) => {
            let dn = delta(*n0, *n1)?;
            let dd = delta((*d0)?, (*d1)?)?;
            if dd == 0.0 {
                return None;
            }
            dn / dd
        }
        (Derivation::Rate(_), Some(Observation::Counter(c0)), Observation::Counter(c1)) => {
            let secs = elapsed.as_secs_f64();
            if secs <= 0.0 {
                return None;
            }
            delta((*c0)?, (*c1)?)? / secs
        }
        (Derivation::Quantile(q), Some(Observation::Buckets(b0)), Observation::Buckets(b1)) => {
            quantile(q.q, &bucket_deltas(b0, b1)?)?
        }
        _ => return None,
    };
    Some(value * series.scale).filter(|v| v.is_finite())
}

/// The per-bucket increase from `before` to `now`; `None` if the buckets changed or a count
/// went down (a reset).
fn bucket_deltas(before: &[(f64, f64)], now: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    if before.len() != now.len() {
        return None;
    }
    before.iter().zip(now).map(|((le0, c0), (le1, c1))| (le0 == le1 && c1 >= c0).then_some((*le1, c1 - c0))).collect()
}

/// The `q` quantile of cumulative `buckets` (ascending `le`, the last one `+Inf`), as
/// Prometheus' `histogram_quantile`: `None` without observations or without a `+Inf`
/// bucket; the highest finite bound when the rank falls in `+Inf`.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let (last_le, total) = *buckets.last()?;
    if last_le != f64::INFINITY || buckets.len() < 2 || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    // Counts read at slightly different moments may not be monotonic: make them so.
    let mut running = 0.0_f64;
    let cumulative: Vec<(f64, f64)> = buckets
        .iter()
        .map(|&(le, c)| {
            running = running.max(c);
            (le, running)
        })
        .collect();
    let rank = q * total;
    let i = cumulative.iter().position(|&(_, c)| c >= rank)?;
    let (upper, count) = cumulative[i];
    if upper == f64::INFINITY {
        return Some(cumulative[cumulative.len() - 2].0);
    }
    let (lower, below) = match i {
        0 if upper <= 0.0 => return Some(upper),
        0 => (0.0, 0.0),
        _ => cumulative[i - 1],
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

/// The consecutive out-of-bounds scrapes of every series of a scrape setting.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Per series: consecutive scrapes out of bounds, and the last value.
    streaks: Vec<(u32, f64)>,
}

/// A series whose value has been out of bounds for its `for` scrapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// Index of the series.
    pub index: usize,
    /// Whether this scrape started it.
    pub new: bool,
    /// What to report.
    pub message: String,
}

impl Health {
    /// Takes in the values of one scrape (`None`: no value, which neither extends nor ends a
    /// breach) and returns the breaches in effect.
    pub fn update(&mut self, series: &[Series], values: &[Option<f64>]) -> Vec<Breach> {
        self.streaks.resize(series.len(), (0, 0.0));
        let mut out = Vec::new();
        for (i, (s, v)) in series.iter().zip(values).enumerate() {
            let Some(streak) = self.streaks.get_mut(i) else { continue };
            let mut grew = false;
            if let Some(v) = *v {
                grew = s.out_of_bounds(v);
                *streak = if grew { (streak.0.saturating_add(1), v) } else { (0, v) };
            }
            if s.for_scrapes > 0 && streak.0 >= s.for_scrapes {
                let bound = match (s.min, s.max) {
                    (Some(min), _) if streak.1 < min => format!("below min {min}"),
                    (_, Some(max)) => format!("above max {max}"),
                    _ => "out of bounds".to_owned(),
                };
                let scrapes = if streak.0 == 1 { "scrape" } else { "scrapes" };
                let message = format!("{} = {} {bound} for {} {scrapes}", s.name, streak.1, streak.0);
                out.push(Breach { index: i, new: grew && streak.0 == s.for_scrapes, message });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use outrider_promtext::{Limits, parse};

    use super::*;

    fn series(json: serde_json::Value) -> Series {
        serde_json::from_value(json).unwrap()
    }

    fn observe_text(s: &Series, text: &str) -> Observation {
        observe(s, &parse(text, &Limits::default()).unwrap()).unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn ratio_is_the_delta_of_two_counters_and_absent_without_traffic() {
        let s = series(
            serde_json::json!({"name": "error_ratio", "ratio": {"numerator": "errors_total", "denominator": "requests_total"}}),
        );
        let a = observe_text(&s, "requests_total 100\nerrors_total 10\n");
        let b = observe_text(&s, "requests_total 200\nerrors_total 40\n");
        assert_eq!(derive(&s, Some(&a), &b, SEC), Some(0.3));
        assert_eq!(derive(&s, Some(&b), &b, SEC), None, "no traffic: no value");
        assert_eq!(derive(&s, None, &b, SEC), None, "first scrape: nothing to compare with");
        let no_errors_yet = observe_text(&s, "requests_total 100\n");
        assert_eq!(no_errors_yet, Observation::Ratio(0.0, Some(100.0)));
        assert_eq!(derive(&s, Some(&no_errors_yet), &b, SEC), Some(0.4));
        let restarted = observe_text(&s, "requests_total 5\nerrors_total 1\n");
        assert_eq!(derive(&s, Some(&b), &restarted, SEC), None, "a reset skips the interval");
        let no_denominator = observe_text(&s, "errors_total 1\n");
        assert_eq!(derive(&s, Some(&no_denominator), &no_denominator, SEC), None);
    }

    #[test]
    fn matchers_select_and_sum_series() {
        let s = series(serde_json::json!({"name": "e", "ratio": {
            "numerator": {"family": "http_total", "match": {"code": "500"}}, "denominator": "http_total"}}));
        let a = observe_text(&s, "http_total{code=\"200\",path=\"/\"} 10\nhttp_total{code=\"500\",path=\"/\"} 0\n");
        let b = observe_text(
            &s,
            "http_total{code=\"200\",path=\"/\"} 16\nhttp_total{code=\"500\",path=\"/\"} 1\nhttp_total{code=\"500\",path=\"/x\"} 3\n",
        );
        assert_eq!(derive(&s, Some(&a), &b, SEC), Some(0.4));
    }

    #[test]
    fn rate_is_per_second_and_gauge_is_current_both_scaled() {
        let s = series(serde_json::json!({"name": "rps", "rate": "requests_total"}));
        let a = observe_text(&s, "requests_total 10\n");
        let b = observe_text(&s, "requests_total 30\n");
        assert_eq!(derive(&s, Some(&a), &b, Duration::from_secs(2)), Some(10.0));
        assert_eq!(derive(&s, Some(&b), &a, SEC), None, "reset");
        assert_eq!(derive(&s, Some(&a), &observe_text(&s, "other 1\n"), SEC), None, "family missing");
        let g = series(serde_json::json!({"name": "inflight", "gauge": "requests_in_flight", "scale": 2}));
        assert_eq!(derive(&g, None, &observe_text(&g, "requests_in_flight 3\n"), SEC), Some(6.0));
        assert_eq!(derive(&g, None, &observe_text(&g, "requests_in_flight NaN\n"), SEC), None);
        assert_eq!(derive(&g, None, &observe_text(&g, "x 1\n"), SEC), None);
    }

    fn histogram(counts: [u32; 4]) -> String {
        let les = ["0.1", "0.2", "0.4", "+Inf"];
        les.iter()
            .zip(counts)
            .map(|(le, c)| format!("lat_bucket{{le=\"{le}\"}} {c}\n"))
            .chain([format!("lat_count {}\n", counts[3])])
            .collect()
    }

    #[test]
    fn quantile_interpolates_over_the_bucket_deltas() {
        let s = series(serde_json::json!({"name": "p", "quantile": {"histogram": "lat", "q": 0.5}, "scale": 1000}));
        let a = observe_text(&s, &histogram([50, 50, 50, 50]));
        // 100 new observations: 10 below 0.1, 40 in 0.1..0.2, 50 in 0.2..0.4.
        let b = observe_text(&s, &histogram([60, 100, 150, 150]));
        // Rank 50: 40 into the second bucket of 40 → its upper bound, 0.2 s.
        let p50 = derive(&s, Some(&a), &b, SEC).unwrap();
        assert!((p50 - 200.0).abs() < 1e-9, "{p50}");
        let q = |q: f64, b: &[(f64, f64)]| quantile(q, b);
        let buckets = [(0.1, 10.0), (0.2, 50.0), (0.4, 100.0), (f64::INFINITY, 100.0)];
        assert!((q(0.99, &buckets).unwrap() - 0.396).abs() < 1e-9);
        assert!((q(0.05, &buckets).unwrap() - 0.05).abs() < 1e-9, "first bucket from 0");
        let overflow = [(0.1, 10.0), (f64::INFINITY, 100.0)];
        assert_eq!(q(0.99, &overflow), Some(0.1), "in +Inf: the highest finite bound");
        assert_eq!(q(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None, "no observations");
        assert_eq!(q(0.5, &[(0.1, 5.0), (0.2, 5.0)]), None, "no +Inf bucket");
        assert_eq!(derive(&s, Some(&b), &a, SEC), None, "reset");
        let other_buckets = observe_text(&s, "lat_bucket{le=\"1\"} 1\nlat_bucket{le=\"+Inf\"} 1\n");
        assert_eq!(derive(&s, Some(&a), &other_buckets, SEC), None, "the buckets changed");
    }

    #[test]
    fn a_breach_needs_for_consecutive_scrapes_and_gaps_do_not_end_it() {
        let s = vec![series(serde_json::json!({"name": "e", "gauge": "g", "max": 0.1, "for": 2}))];
        let mut h = Health::default();
        assert!(h.update(&s, &[Some(0.5)]).is_empty());
        let b = h.update(&s, &[Some(0.5)]);
        assert_eq!((b.len(), b[0].new), (1, true));
        assert_eq!(b[0].message, "e = 0.5 above max 0.1 for 2 scrapes");
        let b = h.update(&s, &[None]);
        assert_eq!((b.len(), b[0].new), (1, false), "no value: the breach goes on");
        assert!(h.update(&s, &[Some(0.05)]).is_empty());
        let low = vec![series(serde_json::json!({"name": "rps", "gauge": "g", "min": 1, "for": 1}))];
        assert_eq!(Health::default().update(&low, &[Some(0.0)])[0].message, "rps = 0 below min 1 for 1 scrape");
    }
}
