//! End to end with a real Prometheus: a manager, a simulated fleet whose version 1.1.0 fails
//! 20 % more requests in region `boe`, its `/metrics` scraped by Debian's `prometheus`, and
//! per-instance series read back with `outrider-prometheus` through a query template.
//! Without the `prometheus` binary the test says so and passes, unless
//! `OUTRIDER_REQUIRE_PROMTOOL` is set (as in CI).

mod support;

use std::{collections::BTreeSet, time::Duration};

use outrider_devtools::harness::{Prometheus, prometheus_or_skip};
use outrider_model::{Binding, UpgradeMode};
use outrider_prometheus::{Vars, expand};
use outrider_sim::{
    FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, ensure_version, seed_catalog,
};
use support::{boot, until};
use time::OffsetDateTime;

const TENANT: &str = "default";
const SIDECAR: &str = "mesh-proxy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_shows_the_defective_instances_errors_above_the_others() {
    let Some(binary) = prometheus_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (manager, client, token) = boot(dir.path()).await;
    let spec = FleetSpec::generate(FleetParams { services: 3, instances: 12, seed: 8 }).unwrap();
    let ids = |service: &str, boe: bool| -> BTreeSet<String> {
        let of = spec.instances.iter().filter(|i| i.service == service && (i.labels.region == "boe") == boe);
        of.map(|i| i.id.clone()).collect()
    };
    // A service with instances in boe (defective on 1.1.0) and elsewhere (healthy on it).
    let service = spec
        .services
        .iter()
        .map(|s| s.name.clone())
        .find(|s| !ids(s, true).is_empty() && !ids(s, false).is_empty())
        .expect("a service in boe and in another region");
    let (defective, healthy) = (ids(&service, true), ids(&service, false));

    seed_catalog(&client, TENANT, &spec, Some(&SidecarRef { name: SIDECAR.into(), version: "1.0.0".into() }))
        .await
        .unwrap();
    ensure_version(&client, TENANT, SIDECAR, "1.1.0").await.unwrap();
    client.admit_version(TENANT, SIDECAR, "1.1.0", &serde_json::json!({"tests": "passed"})).await.unwrap();
    let options = SimFleetOptions {
        // Fresh figures for every scrape.
        report_interval: Duration::from_secs(1),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::ZERO },
        defects: vec!["version=1.1.0,effect=errors:0.2,region=boe".parse().unwrap()],
        service_traits: spec.service_traits(),
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options).unwrap();
    let metrics = fleet.serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let binding =
        Binding { sidecar: SIDECAR.into(), enabled: true, version: "1.1.0".into(), mode: UpgradeMode::Restart };
    client.set_binding(TENANT, &service, &binding).await.unwrap();
    until(&client, Duration::from_secs(15), "the service's instances reporting 1.1.0", |list| {
        let of = list.iter().filter(|i| i.service == service);
        of.clone().count() == defective.len() + healthy.len()
            && of.flat_map(|i| &i.sidecars).all(|s| s.version == "1.1.0" && s.metrics.contains_key("error_ratio"))
    })
    .await;

    let mut prometheus = Prometheus::start(&binary, &[metrics.to_string()], Duration::from_secs(20)).await.unwrap();
    prometheus.wait_targets_up(Duration::from_secs(15)).await.unwrap();
    let prom = prometheus.client();

    let all: Vec<String> = defective.union(&healthy).cloned().collect();
    let vars = Vars {
        service: Some(service.clone()),
        sidecar: Some(SIDECAR.into()),
        version: Some("1.1.0".into()),
        instances: all.clone(),
        window: Some(Duration::from_secs(3)),
        ..Vars::default()
    };
    let selector = r#"outrider_sim_error_ratio{service="${service}",sidecar="${sidecar}",version="${version}",instance=~"${instances}"}"#;
    let query = expand(selector, &vars).unwrap();

    // Every instance of the service on 1.1.0, scraped, with its own instance label.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let samples = loop {
        let samples = prom.query(&query, OffsetDateTime::now_utc()).await.unwrap();
        if samples.len() == all.len() {
            break samples;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {} instances in {query}", samples.len(), all.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mean = |ids: &BTreeSet<String>| {
        let values: Vec<f64> =
            samples.iter().filter(|s| ids.contains(&s.labels["instance"])).map(|s| s.value).collect();
        assert_eq!(values.len(), ids.len(), "{ids:?} in {samples:?}");
        values.iter().sum::<f64>() / values.len() as f64
    };
    for s in &samples {
        let (instance, value) = (&s.labels["instance"], s.value);
        assert_eq!((s.labels["service"].as_str(), s.labels["version"].as_str()), (service.as_str(), "1.1.0"));
        if defective.contains(instance) {
            assert!((0.19..0.23).contains(&value), "defective {instance}: {value}");
        } else {
            assert!(healthy.contains(instance) && value < 0.02, "healthy {instance}: {value}");
        }
    }
    let above = mean(&defective) - mean(&healthy);
    assert!((0.18..0.22).contains(&above), "defective instances {above} above the others");

    // The same over a range, averaged over ${window}: one series per instance.
    let query = expand(&format!("avg_over_time({selector}[${{window}}])"), &vars).unwrap();
    let now = OffsetDateTime::now_utc();
    let series = prom.query_range(&query, now - time::Duration::seconds(2), now, Duration::from_secs(1)).await.unwrap();
    let seen: BTreeSet<String> = series.iter().map(|s| s.labels["instance"].clone()).collect();
    assert_eq!(seen, all.iter().cloned().collect::<BTreeSet<_>>());
    for s in &series {
        let last = s.points.last().expect("a point").1;
        let want = if defective.contains(&s.labels["instance"]) { 0.19..0.23 } else { 0.0..0.02 };
        assert!(want.contains(&last), "{s:?}");
    }

    prometheus.stop().await;
    fleet.shutdown().await;
    manager.shutdown().await;
}
