//! What the demo puts in the catalog: the demo sidecar and its scrape setting, its versions,
//! the upgrade plan and its analysis, the binding.

use super::*;

/// The sidecar's metadata: probes on `${label.port}`, a short drain time, and the scrape of its
/// own metrics ([`demo_scrape`]).
pub(super) fn demo_sidecar() -> Sidecar {
    let health = "http://127.0.0.1:${label.port}/healthz";
    Sidecar {
        name: SIDECAR.into(),
        owner: "outrider demo".into(),
        description: "The reference sidecar: GET / answers its version.".into(),
        upgrade_modes: vec![UpgradeMode::Restart, UpgradeMode::Hot, UpgradeMode::OnDeploy],
        metrics: Vec::new(),
        analysis: None,
        lifecycle: Lifecycle {
            startup_probe: Some(Probe {
                period: HumanDuration::from_millis(100),
                deadline: HumanDuration::from_secs(10),
                ..Probe::http(health)
            }),
            liveness_probe: Some(Probe { period: HumanDuration::from_secs(2), ..Probe::http(health) }),
            drain_time: HumanDuration(DRAIN),
            sockets: vec![ListenSocket { name: "http".into(), listen: "127.0.0.1:${label.port}".into() }],
            handover: Handover::ListenFds,
            notify_ready: true,
            warm: None,
            scrape: Some(demo_scrape()),
            ..Lifecycle::default()
        },
    }
}

/// What the agents derive from the demo sidecar's `/metrics` every [`SCRAPE_INTERVAL`]: the
/// error ratio (`errors_total` over `requests_total`, from their increase over the interval)
/// and the 99th percentile of `request_duration_seconds` in milliseconds. The names are those
/// of the judge's built-in metrics (`error_ratio`, `latency_p99_ms`).
pub fn demo_scrape() -> Scrape {
    let family = |name: &str| MetricRef { family: name.into(), ..MetricRef::default() };
    let series = |name: &str| Series {
        name: name.into(),
        ratio: None,
        quantile: None,
        rate: None,
        gauge: None,
        scale: 1.0,
        min: None,
        max: None,
        for_scrapes: 3,
        restart: false,
    };
    Scrape {
        url: "http://127.0.0.1:${label.port}/metrics".into(),
        interval: SCRAPE_INTERVAL,
        timeout: Some(HumanDuration::from_millis(500)),
        series: vec![
            Series {
                ratio: Some(Ratio { numerator: family("errors_total"), denominator: family("requests_total") }),
                ..series("error_ratio")
            },
            Series {
                quantile: Some(Quantile { histogram: family("request_duration_seconds"), q: 0.99 }),
                scale: 1000.0,
                ..series("latency_p99_ms")
            },
        ],
    }
}

/// A version of the demo sidecar: the same executable, listening on `${label.port}`, with
/// `DEMO_FAULT` set to `fault` if given.
pub(super) fn demo_version(version: &str, artifact: Artifact, fault: Option<&str>) -> NewVersion {
    let mut env = BTreeMap::from([("PORT".into(), "${label.port}".into())]);
    let mut notes = format!("demo release {version}");
    if let Some(fault) = fault {
        env.insert("DEMO_FAULT".into(), fault.into());
        notes.push_str(&format!(" (defective: DEMO_FAULT={fault})"));
    }
    NewVersion { version: version.into(), artifact, command: vec!["${artifact}".into()], env, notes }
}

/// The plan: `PHASES` from [`OLD`] to `target` on the service.
pub(super) fn plan_spec(target: &str) -> PlanSpec {
    let phases = PHASES
        .iter()
        .map(|(name, stage, batching, bake, mode)| PhaseSpec {
            name: (*name).into(),
            stage: (*stage).into(),
            mode: *mode,
            batching: batching.clone(),
            max_per_batch: Caps::default(),
            max_per_day: Caps::default(),
            bake: *bake,
            region_parallelism: 1,
            batch_timeout: BATCH_TIMEOUT,
            deadline: None,
        })
        .collect();
    PlanSpec {
        name: format!("outrider demo: {SIDECAR} to {target}"),
        sidecar: SIDECAR.into(),
        target_version: target.into(),
        from_versions: vec![OLD.into()],
        selector: Selector { services: vec![SERVICE.into()], ..Selector::default() },
        region_order: Vec::new(),
        feature_services: FeatureServices::default(),
        windows: Vec::new(),
        phases,
        // The built-in metrics, with fewer samples than the default asks for: the demo's
        // bakes last seconds, at a report a second.
        analysis: Some(AnalysisSpec {
            metrics: Some(demo_metrics()),
            min_samples: Some(MIN_SAMPLES),
            max_extensions: Some(MAX_EXTENSIONS),
            ..AnalysisSpec::default()
        }),
        supersedes: None,
        on_fail: Default::default(),
    }
}

/// The judge's built-in metrics, `latency_p99_ms` with an absolute floor of
/// [`LATENCY_FLOOR_MS`] besides its relative one.
pub(super) fn demo_metrics() -> Vec<MetricPolicy> {
    let mut metrics = outrider_model::default_metrics();
    for m in metrics.iter_mut().filter(|m| m.metric == "latency_p99_ms") {
        m.floor.absolute = Some(LATENCY_FLOOR_MS);
    }
    metrics
}

/// The binding of the demo sidecar to the service.
pub(super) fn binding(enabled: bool, version: &str) -> Binding {
    Binding { sidecar: SIDECAR.into(), enabled, version: version.into(), mode: UpgradeMode::Restart }
}
