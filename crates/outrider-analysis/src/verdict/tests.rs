use super::*;
use crate::{Center, EffectFloor};

/// A small deterministic generator: uniform by SplitMix64, normal by Box-Muller.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// `instances` instances of `samples` values each around `mean`.
    fn set(&mut self, prefix: &str, instances: usize, samples: usize, mean: f64, sd: f64) -> Vec<InstanceSamples> {
        (0..instances)
            .map(|i| InstanceSamples {
                instance: format!("{prefix}-{i}"),
                values: (0..samples).map(|_| self.normal(mean, sd)).collect(),
            })
            .collect()
    }
}

fn latency_policy() -> Policy {
    let floor = EffectFloor { relative: Some(0.2), ..EffectFloor::default() };
    Policy::new(vec![MetricPolicy::new("latency_p99_ms", Direction::HigherIsBad).with_floor(floor)])
}

fn service(name: &str, canary: Vec<InstanceSamples>, baseline: Vec<InstanceSamples>) -> ServiceSamples {
    ServiceSamples {
        service: name.to_owned(),
        metrics: vec![MetricSamples { metric: "latency_p99_ms".into(), canary, baseline, before: Vec::new() }],
    }
}

fn batch(services: Vec<ServiceSamples>) -> BatchSamples {
    BatchSamples { services }
}

#[test]
fn a_clear_regression_fails_with_its_evidence() {
    let mut n = Noise(1);
    let b = batch(vec![service("pay", n.set("c", 2, 10, 185.0, 15.0), n.set("b", 8, 10, 20.0, 2.0))]);
    let v = analyze(&b, &latency_policy());
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
    let failures: Vec<_> = v.failures().collect();
    assert_eq!(failures.len(), 1);
    let (svc, m) = failures[0];
    assert_eq!((svc, m.metric.as_str(), m.comparison), (Some("pay"), "latency_p99_ms", Comparison::Baseline));
    assert_eq!((m.canary.instances, m.canary.samples, m.baseline.instances, m.baseline.samples), (2, 20, 8, 80));
    assert_eq!(m.instances, ["c-0", "c-1"]);
    assert!(m.p_value.unwrap() < 1e-9 && m.effect.unwrap().cliffs_delta == 1.0);
    assert!(matches!(m.test, Some(Test::MannWhitney { alternative: Alternative::Greater, method: Method::Normal })));
    assert!(v.reason.starts_with("pay: canary 18") && v.reason.contains("vs baseline 2"), "{}", v.reason);
    // The verdict is data: it round-trips through JSON.
    let json = serde_json::to_string(&v).unwrap();
    let back: BatchVerdict = serde_json::from_str(&json).unwrap();
    assert_eq!((back.outcome, &back.reason, back.failures().count()), (v.outcome, &v.reason, 1));
}

#[test]
fn the_good_direction_passes() {
    let mut n = Noise(2);
    let b = batch(vec![service("pay", n.set("c", 2, 10, 10.0, 1.0), n.set("b", 8, 10, 20.0, 2.0))]);
    let v = analyze(&b, &latency_policy());
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
}

#[test]
fn a_tiny_but_significant_shift_passes() {
    let mut n = Noise(3);
    // +2 % on thousands of samples: significant, but below the 20 % floor.
    let b = batch(vec![service("pay", n.set("c", 20, 200, 20.4, 0.5), n.set("b", 20, 200, 20.0, 0.5))]);
    let v = analyze(&b, &latency_policy());
    let m = &v.services[0].metrics[0];
    assert!(m.p_value.unwrap() < 1e-6, "{m:?}");
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
}

#[test]
fn a_noisy_shift_is_inconclusive_not_passed() {
    // A 60 % worse median, but the values of both sides are all over the place.
    let set = |prefix: &str, values: &[f64]| {
        values
            .chunks(4)
            .enumerate()
            .map(|(i, v)| InstanceSamples { instance: format!("{prefix}-{i}"), values: v.to_vec() })
            .collect::<Vec<_>>()
    };
    let canary = set("c", &[5.0, 40.0, 90.0, 12.0, 60.0, 35.0, 8.0, 70.0]);
    let baseline =
        set("b", &[3.0, 50.0, 20.0, 8.0, 45.0, 25.0, 12.0, 30.0, 60.0, 15.0, 28.0, 5.0, 40.0, 22.0, 35.0, 18.0]);
    let b = batch(vec![service("pay", canary, baseline)]);
    let v = analyze(&b, &latency_policy());
    let m = &v.services[0].metrics[0];
    assert!(m.effect.unwrap().relative.unwrap() > 0.2 && m.p_value.unwrap() >= 0.01, "{m:?}");
    assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.reason);
    assert!(v.reason.contains("not significant"), "{}", v.reason);
}

#[test]
fn too_few_samples_or_instances_is_inconclusive() {
    let mut n = Noise(5);
    let mut policy = latency_policy();
    let b = batch(vec![service("pay", n.set("c", 1, 3, 185.0, 1.0), n.set("b", 4, 4, 20.0, 1.0))]);
    let v = analyze(&b, &policy);
    assert_eq!(v.outcome, Outcome::Inconclusive);
    assert!(v.reason.contains("not enough evidence: 3 canary samples from 1 instances"), "{}", v.reason);

    policy.minimum = Minimums { instances: 2, samples: 2 };
    let b = batch(vec![service("pay", n.set("c", 1, 30, 185.0, 1.0), n.set("b", 4, 4, 20.0, 1.0))]);
    assert_eq!(analyze(&b, &policy).outcome, Outcome::Inconclusive);

    // No reference at all.
    let b = batch(vec![service("pay", n.set("c", 2, 30, 185.0, 1.0), Vec::new())]);
    let v = analyze(&b, &latency_policy());
    assert_eq!(v.outcome, Outcome::Inconclusive);
    assert!(v.reason.contains("no baseline samples"), "{}", v.reason);
    assert_eq!(analyze(&BatchSamples::default(), &latency_policy()).outcome, Outcome::Inconclusive);
}

#[test]
fn a_regression_spread_thinly_over_small_services_is_caught_by_pooling() {
    let mut n = Noise(6);
    // 30 services, each with one canary of 3 samples: alone, none has enough evidence.
    let services: Vec<_> = (0..30)
        .map(|i| service(&format!("s{i}"), n.set(&format!("s{i}-c"), 1, 3, 26.0, 3.0), n.set("b", 3, 3, 20.0, 3.0)))
        .collect();
    let v = analyze(&batch(services), &latency_policy());
    assert!(v.services.iter().all(|s| s.outcome != Outcome::Fail));
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
    let (svc, m) = v.failures().next().unwrap();
    assert_eq!(svc, None);
    assert!(matches!(m.test, Some(Test::Stouffer { services: 30, .. })), "{m:?}");
    assert_eq!(m.instances.len(), 30);
    assert!(v.reason.starts_with("pooled: latency_p99_ms over 30 services"), "{}", v.reason);
}

#[test]
fn small_healthy_services_pass_together() {
    let mut n = Noise(7);
    let services: Vec<_> =
        (0..30).map(|i| service(&format!("s{i}"), n.set("c", 1, 3, 20.0, 3.0), n.set("b", 3, 3, 20.0, 3.0))).collect();
    let v = analyze(&batch(services), &latency_policy());
    assert!(v.services.iter().all(|s| s.outcome == Outcome::Inconclusive));
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
}

#[test]
fn healthy_noise_rarely_fails() {
    let mut n = Noise(8);
    let policy = latency_policy();
    let mut failed = 0;
    for _ in 0..300 {
        let services: Vec<_> = (0..5)
            .map(|i| {
                let level = 15.0 + 5.0 * f64::from(i);
                service(
                    &format!("s{i}"),
                    n.set("c", 2, 10, level, level * 0.15),
                    n.set("b", 6, 10, level, level * 0.15),
                )
            })
            .collect();
        failed += usize::from(analyze(&batch(services), &policy).outcome == Outcome::Fail);
    }
    assert!(failed <= 3, "{failed} of 300 healthy batches failed");
}

#[test]
fn the_baseline_decides_over_before_and_before_decides_alone() {
    let mut n = Noise(9);
    let policy = latency_policy();
    // Load rose for everyone: canaries are worse than before, but like their peers now.
    let mut s = service("pay", n.set("c", 2, 10, 40.0, 2.0), n.set("b", 6, 10, 40.0, 2.0));
    s.metrics[0].before = n.set("c", 2, 10, 20.0, 2.0);
    let v = analyze(&batch(vec![s]), &policy);
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
    let before = v.services[0].metrics.iter().find(|m| m.comparison == Comparison::Before).unwrap();
    assert_eq!((before.outcome, before.decides), (Outcome::Fail, false));
    assert!(before.reason.ends_with("(the baseline comparison decides)"));
    assert_eq!(v.failures().count(), 0);

    // The whole service was upgraded: the canaries' past is the only reference.
    let mut s = service("pay", n.set("c", 2, 10, 40.0, 2.0), Vec::new());
    s.metrics[0].before = n.set("c", 2, 10, 20.0, 2.0);
    let v = analyze(&batch(vec![s]), &policy);
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
    assert_eq!(v.failures().next().unwrap().1.comparison, Comparison::Before);
}

#[test]
fn error_ratios_use_the_mean_and_an_absolute_floor() {
    let floor = EffectFloor { absolute: Some(0.005), ..EffectFloor::default() };
    let metric = MetricPolicy::new("error_ratio", Direction::HigherIsBad).with_floor(floor).with_center(Center::Mean);
    let policy = Policy::new(vec![metric]);
    let ratios = |prefix: &str, instances: usize, bad_every: usize, bad: f64| -> Vec<InstanceSamples> {
        (0..instances)
            .map(|i| InstanceSamples {
                instance: format!("{prefix}-{i}"),
                values: (0..20).map(|k| if k % bad_every == 0 { bad } else { 0.0 }).collect(),
            })
            .collect()
    };
    let samples = |canary, baseline| {
        batch(vec![ServiceSamples {
            service: "pay".into(),
            metrics: vec![MetricSamples { metric: "error_ratio".into(), canary, baseline, before: Vec::new() }],
        }])
    };
    // Errors in a quarter of the canary's samples: the median is 0, the mean 0.05.
    let v = analyze(&samples(ratios("c", 2, 4, 0.2), ratios("b", 6, 20, 0.01)), &policy);
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.reason);
    // 0.0005 → 0.002: quadrupled, but below half a point.
    let v = analyze(&samples(ratios("c", 2, 4, 0.008), ratios("b", 6, 20, 0.01)), &policy);
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
}

#[test]
fn metrics_outside_the_policy_and_non_finite_values_are_ignored() {
    let mut n = Noise(10);
    let mut s = service("pay", n.set("c", 2, 10, 20.0, 1.0), n.set("b", 6, 10, 20.0, 1.0));
    s.metrics[0].canary[0].values.push(f64::NAN);
    s.metrics.push(MetricSamples {
        metric: "unjudged".into(),
        canary: n.set("c", 2, 10, 1e6, 1.0),
        baseline: n.set("b", 2, 10, 1.0, 1.0),
        before: Vec::new(),
    });
    let v = analyze(&batch(vec![s]), &latency_policy());
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
    assert_eq!(v.services[0].metrics.len(), 1);
    assert_eq!(v.services[0].metrics[0].canary.samples, 20);
}
