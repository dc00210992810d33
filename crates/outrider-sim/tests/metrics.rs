//! The fleet's `/metrics`: text 0.0.4 that `promtool check metrics` accepts, one series set per
//! instance and sidecar, with exactly the figures the manager received from the agents, and
//! no new figures drawn by a scrape. Without promtool the check says so and is skipped,
//! unless `OUTRIDER_REQUIRE_PROMTOOL` is set (as in CI).

mod support;

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use outrider_client::InstanceFilter;
use outrider_sim::{FleetParams, FleetSpec, SidecarRef, SimFleet, SimFleetOptions, SimRuntimeOptions, seed_catalog};
use support::{boot, until};

const TENANT: &str = "default";
const SIDECAR: &str = "mesh-proxy";

/// `promtool check metrics` on `text`; `None` when promtool is not installed (and not
/// required).
fn promtool_check(text: &str) -> Option<Result<(), String>> {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("OUTRIDER_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here: apt-get install prometheus"
        );
        eprintln!("SKIPPED the promtool check: promtool is not installed (apt-get install prometheus)");
        return None;
    };
    child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
}

/// The samples of `metric` in `text` by their `instance` label.
fn samples(text: &str, metric: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{'))
        .map(|rest| {
            let instance = rest.split("instance=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
            let value = rest.rsplit(' ').next().unwrap().parse().unwrap();
            (instance.to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_shows_what_the_agents_reported_and_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, client, token) = boot(dir.path()).await;
    let spec = FleetSpec::generate(FleetParams { services: 3, instances: 12, seed: 8 }).unwrap();
    seed_catalog(&client, TENANT, &spec, Some(&SidecarRef { name: SIDECAR.into(), version: "1.0.0".into() }))
        .await
        .unwrap();
    let options = SimFleetOptions {
        // No periodic report while the test compares: only the reports of the start.
        report_interval: Duration::from_secs(600),
        runtime: SimRuntimeOptions { apply_delay: Duration::from_millis(20), jitter: Duration::ZERO },
        ..SimFleetOptions::default()
    };
    let fleet = SimFleet::start(client.base_url(), &token, TENANT, &spec.instances, &options).unwrap();
    let addr = fleet.serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{addr}/metrics");
    let http = reqwest::Client::new();
    let scrape = async || {
        let resp = http.get(&url).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        resp.text().await.unwrap()
    };

    // Once every instance runs with metrics, the endpoint and the manager agree (to the last
    // bit or so: the REST client's JSON parser may round the last digit).
    until(&client, Duration::from_secs(15), "every instance running 1.0.0 with metrics", |list| {
        list.len() == 12
            && list
                .iter()
                .all(|i| i.sidecars.iter().any(|s| s.version == "1.0.0" && s.metrics.contains_key("error_ratio")))
    })
    .await;
    let same = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
        a.len() == b.len() && a.iter().zip(b).all(|((i, x), (j, y))| i == j && (x - y).abs() <= 1e-12 * y.abs())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape().await;
        let list = client.list_instances(TENANT, &InstanceFilter::default()).await.unwrap();
        let reported = |metric: &str, scale: f64| -> BTreeMap<String, f64> {
            list.iter()
                .filter_map(|i| Some((i.id.clone(), *i.sidecars.first()?.metrics.get(metric)? * scale)))
                .collect()
        };
        let status = |figure: fn(&outrider_model::SidecarStatus) -> f64| -> BTreeMap<String, f64> {
            list.iter().filter_map(|i| Some((i.id.clone(), figure(i.sidecars.first()?)))).collect()
        };
        let pairs = [
            ("outrider_sim_error_ratio", reported("error_ratio", 1.0)),
            ("outrider_sim_latency_p99_seconds", reported("latency_p99_ms", 0.001)),
            ("outrider_sim_requests_total", reported("requests_total", 1.0)),
            ("outrider_sim_errors_total", reported("errors_total", 1.0)),
            ("outrider_sim_cpu_percent", status(|s| s.cpu_percent)),
            ("outrider_sim_rss_bytes", status(|s| s.rss_bytes as f64)),
        ];
        if pairs.iter().all(|(metric, want)| same(&samples(&text, metric), want)) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "the endpoint and the manager disagree:\n{text}\n{list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(samples(&text, "outrider_sim_error_ratio").len(), 12, "{text}");
    // A scrape draws no new figures, and the same figures give the same text.
    assert_eq!(scrape().await, text);

    let first = text.lines().find(|l| l.starts_with("outrider_sim_cpu_percent{")).unwrap();
    for label in ["instance=", "service=", "sidecar=\"mesh-proxy\"", "version=\"1.0.0\"", "region=", "env=", "stage="] {
        assert!(first.contains(label), "{label} missing in {first}");
    }
    for family in ["error_ratio", "latency_p99_seconds", "cpu_percent", "rss_bytes"] {
        assert!(text.contains(&format!("# TYPE outrider_sim_{family} gauge\n")), "{family}:\n{text}");
    }
    for family in ["requests_total", "errors_total"] {
        assert!(text.contains(&format!("# TYPE outrider_sim_{family} counter\n")), "{family}:\n{text}");
    }
    if let Some(Err(e)) = promtool_check(&text) {
        panic!("promtool check metrics:\n{e}\n--- exposition:\n{text}");
    }

    fleet.shutdown().await;
    assert!(http.get(&url).send().await.is_err(), "the endpoint outlived the fleet");
    manager.shutdown().await;
}
