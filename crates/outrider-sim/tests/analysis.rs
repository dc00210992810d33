//! The judge end to end, in real time: a manager, a simulated fleet reporting twice a second
//! and plans with bakes of seconds. A defective version blocks its plan in its first batch
//! with an incident on the metric it hurts, read from the agents' reports or from a real
//! Prometheus scraping the sim; a healthy one completes with every batch compared; a batch
//! that cannot gather enough evidence extends its bake, then waits for a human.

mod support;

use std::{collections::BTreeSet, time::Duration};

use outrider_client::{Client, PlanAction};
use outrider_devtools::harness::{Prometheus, free_ports, prometheus_or_skip};
use outrider_model::{BatchState, Comparison, Outcome, Plan, PlanSpec, PlanState};
use outrider_sim::{
    FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, ensure_version, seed_catalog,
};
use serde_json::{Value, json};
use support::until;

const TENANT: &str = "default";
const SIDECAR: &str = "mesh-proxy";

/// A manager (querying `prometheus` if given), a fleet of `services` × `instances` on 1.0.0
/// with `defect`, reporting twice a second; 1.1.0 admitted.
struct Env {
    manager: outrider_manager::RunningManager,
    client: Client,
    fleet: SimFleet,
    spec: FleetSpec,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(defect: Option<&str>, prometheus: Option<&str>, metrics: Option<std::net::SocketAddr>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = outrider_manager::ManagerConfig::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap());
        config.prometheus = prometheus.map(str::to_owned);
        let manager = outrider_manager::start(config).await.unwrap();
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_owned();
        let client = Client::new(&format!("http://{}", manager.addr), Some(token.clone())).unwrap();
        let spec = FleetSpec::generate(FleetParams { services: 4, instances: 48, seed: 11 }).unwrap();
        seed_catalog(&client, TENANT, &spec, Some(&SidecarRef { name: SIDECAR.into(), version: "1.0.0".into() }))
            .await
            .unwrap();
        ensure_version(&client, TENANT, SIDECAR, "1.1.0").await.unwrap();
        client.admit_version(TENANT, SIDECAR, "1.1.0", &json!({"tests": "passed"})).await.unwrap();
        let options = SimFleetOptions {
            report_interval: Duration::from_millis(500),
            runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::ZERO },
            defects: defect.map(|d| vec![d.parse().unwrap()]).unwrap_or_default(),
            service_traits: spec.service_traits(),
            ..SimFleetOptions::default()
        };
        let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options).unwrap();
        if let Some(addr) = metrics {
            fleet.serve_metrics(addr).await.unwrap();
        }
        let n = spec.instances.len();
        until(&client, Duration::from_secs(20), "every instance reporting 1.0.0 with metrics", |list| {
            list.len() == n
                && list.iter().all(|i| {
                    i.sidecars.iter().any(|s| s.name == SIDECAR && s.version == "1.0.0" && !s.metrics.is_empty())
                })
        })
        .await;
        Self { manager, client, fleet, spec, _dir: dir }
    }

    /// Starts a plan to 1.1.0 over the whole fleet, two cells a batch, judged by `analysis`.
    async fn plan(&self, analysis: Value, bake: &str) -> Plan {
        let body: PlanSpec = serde_json::from_value(json!({
            "sidecar": SIDECAR, "target_version": "1.1.0",
            "phases": [{"name": "all", "batching": {"strategy": "linear", "size": 2}, "bake": bake,
                        "batch_timeout": "20s"}],
            "analysis": analysis
        }))
        .unwrap();
        self.client.create_plan(TENANT, &body).await.unwrap()
    }

    async fn wait(&self, id: &str, timeout: Duration, what: &str, done: impl Fn(&Plan) -> bool) -> Plan {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let plan = self.client.get_plan(TENANT, id).await.unwrap();
            if done(&plan) {
                return plan;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {} ({}) {:#?}",
                plan.state,
                plan.reason,
                plan.phases[0].batches.iter().map(|b| (&b.state, &b.analysis)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn shutdown(self) {
        self.fleet.shutdown().await;
        self.manager.shutdown().await;
    }
}

/// Blocks a plan to 1.1.0 with `defect` and checks the incident: in the first batch, on
/// `metric`, against the not-upgraded instances of the same service, with its test.
async fn blocks_on(defect: &str, metric: &str) {
    let env = Env::start(Some(defect), None, None).await;
    let plan = env.plan(json!({}), "6s").await;
    let blocked = env.wait(&plan.id, Duration::from_secs(60), "blocked", |p| p.state == PlanState::Blocked).await;
    let first = &blocked.phases[0].batches[0];
    assert_eq!(first.state, BatchState::Failed, "{blocked:#?}");
    assert!(blocked.phases[0].batches[1..].iter().all(|b| b.state == BatchState::Pending));
    let incident = blocked.incidents.iter().find(|i| i.metric == metric).unwrap_or_else(|| {
        panic!("an incident on {metric}: {:#?}", blocked.incidents);
    });
    assert_eq!(incident.batch, 0);
    let canaries: BTreeSet<&str> = env
        .spec
        .instances
        .iter()
        .filter(|i| {
            first.cells.iter().any(|c| c.service == i.service && c.region == i.labels.region && c.env == i.labels.env)
        })
        .map(|i| i.id.as_str())
        .collect();
    assert!(!incident.instances.is_empty() && incident.instances.iter().all(|i| canaries.contains(i.as_str())));
    assert!(incident.p_value.is_some_and(|p| p < 0.01), "{incident:#?}");
    assert!(incident.effect.is_some() && incident.canary.is_some() && incident.baseline.is_some(), "{incident:#?}");
    assert!(incident.canary_value > incident.baseline_value, "{incident:#?}");
    assert!(incident.test.starts_with("mann-whitney u"), "{incident:#?}");
    let analysis = first.analysis.as_ref().expect("the failed batch's analysis");
    assert_eq!(analysis.outcome, Outcome::Fail);
    // Nothing beyond the first batch ran the bad version.
    let on_target = env.client.list_instances(TENANT, &Default::default()).await.unwrap();
    let upgraded: BTreeSet<&str> =
        on_target.iter().filter(|i| i.sidecars.iter().any(|s| s.version == "1.1.0")).map(|i| i.id.as_str()).collect();
    assert!(upgraded.is_subset(&canaries), "{upgraded:?} beyond {canaries:?}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_errors_block_the_first_batch_on_the_error_ratio() {
    blocks_on("version=1.1.0,effect=errors:0.05", "error_ratio").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slower_answers_block_the_first_batch_on_the_latency() {
    blocks_on("version=1.1.0,effect=latency:2", "latency_p99_ms").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_cpu_blocks_the_first_batch_on_the_cpu() {
    blocks_on("version=1.1.0,effect=cpu:40", "cpu_percent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_blocks_the_first_batch_on_the_memory_growth() {
    blocks_on("version=1.1.0,effect=memory:5", "rss_growth_mib_s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_version_completes_with_every_batch_compared() {
    let env = Env::start(None, None, None).await;
    let plan = env.plan(json!({}), "5s").await;
    let done = env.wait(&plan.id, Duration::from_secs(120), "completed", |p| p.state == PlanState::Completed).await;
    assert!(done.incidents.is_empty(), "{:#?}", done.incidents);
    for b in &done.phases[0].batches {
        assert_eq!(b.state, BatchState::Passed);
        let analysis = b.analysis.as_ref().expect("each batch's analysis");
        assert_eq!(analysis.outcome, Outcome::Pass, "{analysis:#?}");
        // The first batch is compared with the rest of its services (the manager keeps no
        // samples of a service before a plan watches it); later ones also with their
        // canaries' own values before.
        let comparison = if b.index == 0 { Comparison::Baseline } else { Comparison::Before };
        let compared: BTreeSet<&str> = analysis
            .metrics
            .iter()
            .filter(|e| e.verdict.comparison == comparison && e.verdict.outcome == Outcome::Pass)
            .map(|e| e.verdict.metric.as_str())
            .collect();
        for m in ["error_ratio", "latency_p99_ms", "cpu_percent", "rss_mib"] {
            assert!(compared.contains(m), "{m} not compared in batch {}: {analysis:#?}", b.index);
        }
    }
    let list = env.client.list_instances(TENANT, &Default::default()).await.unwrap();
    assert!(list.iter().flat_map(|i| &i.sidecars).all(|s| s.version == "1.1.0"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_evidence_extends_the_bake_then_waits_for_a_human() {
    let env = Env::start(None, None, None).await;
    // More samples than a bake can hold: every comparison is inconclusive.
    let plan = env.plan(json!({"min_samples": 100000, "max_extensions": 2}), "2s").await;
    let blocked = env.wait(&plan.id, Duration::from_secs(30), "blocked", |p| p.state == PlanState::Blocked).await;
    assert!(blocked.reason.contains("not enough evidence"), "{}", blocked.reason);
    let first = &blocked.phases[0].batches[0];
    assert_eq!((first.state, first.extensions), (BatchState::Baking, 2), "{first:#?}");
    let baked = first.finished_at.unwrap_or_else(time::OffsetDateTime::now_utc) - first.started_at.unwrap();
    assert!(baked >= time::Duration::seconds(6), "three bakes of 2 s before blocking, not {baked}");
    assert_eq!(first.analysis.as_ref().map(|a| a.outcome), Some(Outcome::Inconclusive));
    // A human decides: the plan goes on to the next batch.
    env.client.plan_action(TENANT, &plan.id, PlanAction::Approve, Some("looked at it")).await.unwrap();
    env.wait(&plan.id, Duration::from_secs(15), "the second batch", |p| {
        p.phases[0].batches[0].state == BatchState::Passed && p.phases[0].batches[1].started_at.is_some()
    })
    .await;
    env.client.plan_action(TENANT, &plan.id, PlanAction::Abort, Some("done")).await.unwrap();
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_query_blocks_the_version_its_service_metrics_show_failing() {
    let Some(binary) = prometheus_or_skip() else { return };
    // Prometheus first, scraping where the sim's endpoint will be; the manager queries it.
    let port = free_ports(1).unwrap()[0];
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut prometheus = Prometheus::start(&binary, &[metrics.to_string()], Duration::from_secs(20)).await.unwrap();
    let env = Env::start(Some("version=1.1.0,effect=errors:0.05"), Some(prometheus.url()), Some(metrics)).await;
    prometheus.wait_targets_up(Duration::from_secs(15)).await.unwrap();
    let services: BTreeSet<&str> = env.spec.instances.iter().map(|i| i.service.as_str()).collect();
    assert!(services.len() > 1);
    // Judged on the service metric only: the agents' own error_ratio is not among them.
    let plan = env.plan(error_query(), "6s").await;
    let blocked = env.wait(&plan.id, Duration::from_secs(60), "blocked", |p| p.state == PlanState::Blocked).await;
    assert_eq!(blocked.phases[0].batches[0].state, BatchState::Failed, "{blocked:#?}");
    let incident = blocked.incidents.iter().find(|i| i.metric == "service_error_ratio").expect("an incident");
    assert!(incident.p_value.is_some_and(|p| p < 0.01) && incident.canary_value > incident.baseline_value);
    assert!(incident.canary.as_ref().is_some_and(|c| c.samples >= 8), "{incident:#?}");
    prometheus.stop().await;
    env.shutdown().await;
}

/// Analysis on one Prometheus query of the sim's error ratio, per instance of the service.
fn error_query() -> Value {
    json!({
        "metrics": [],
        "queries": [{
            "metric": "service_error_ratio",
            "query": "outrider_sim_error_ratio{service=\"${service}\",sidecar=\"${sidecar}\",instance=~\"${instances}\"}",
            "floor": {"absolute": 0.01}
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_the_manager_cannot_run_never_passes() {
    let env = Env::start(None, None, None).await;
    let mut analysis = error_query();
    analysis["max_extensions"] = json!(0);
    let plan = env.plan(analysis, "1s").await;
    let blocked = env.wait(&plan.id, Duration::from_secs(20), "blocked", |p| p.state == PlanState::Blocked).await;
    let first = blocked.phases[0].batches[0].analysis.as_ref().expect("the batch's analysis");
    assert_eq!(first.outcome, Outcome::Inconclusive, "{first:#?}");
    assert!(first.reason.contains("--prometheus"), "{}", first.reason);
    env.client.plan_action(TENANT, &plan.id, PlanAction::Abort, Some("done")).await.unwrap();
    env.shutdown().await;
}
