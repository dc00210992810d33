//! The agent scrapes the demo sidecar's own metrics (the sidecar's `scrape` setting) while
//! real requests flow, and reports the derived error ratio: about 0.3 for a version with
//! `DEMO_FAULT=error-rate=0.3`, 0 for a healthy one, in its local status, on its
//! `/metrics` and through the manager's `GET /instances`; a real Prometheus scraping the agent
//! and the sidecar reads the same ratio.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use outrider_devtools::harness::{Fleet, Prometheus, demo_sidecar_body, prometheus_or_skip};
use serde_json::{Value, json};

/// The binary under test.
const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

/// `series` of the demo sidecar's status, from the agent's `/status` or the manager.
fn series(sidecar: &Value, name: &str) -> Option<f64> {
    sidecar["metrics"][name].as_f64()
}

/// The demo sidecar in agent 0's `/status`, if it runs `version`.
async fn local_demo(f: &Fleet, version: &str) -> Result<Value, String> {
    let status = f.status(0).await?;
    let demo = status["sidecars"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "demo")).cloned();
    match demo {
        Some(d) if d["version"] == version && d["state"] == "running" => Ok(d),
        other => Err(format!("want demo@{version} running, have {other:?}")),
    }
}

/// Sends `GET /` to agent 0's sidecar from 8 tasks until `stop` is set.
fn load(f: &Arc<Fleet>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|_| {
            let (f, stop) = (f.clone(), stop.clone());
            tokio::spawn(async move {
                let url = format!("http://127.0.0.1:{}/", f.agents[0].sidecar_port);
                while !stop.load(Ordering::Relaxed) {
                    // 500s are the point; connection errors during a restart are expected.
                    let _ = f.http.get(&url).send().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

/// Waits until agent 0 reports an `error_ratio` in `range` for demo@`version`.
async fn error_ratio_within(f: &Fleet, version: &str, range: std::ops::RangeInclusive<f64>) -> f64 {
    let what = format!("an error_ratio in {range:?} for demo@{version}");
    f.eventually(Duration::from_secs(30), &what, async || {
        let d = local_demo(f, version).await?;
        match series(&d, "error_ratio") {
            Some(r) if range.contains(&r) => Ok(r),
            other => Err(format!("error_ratio {other:?} in {d}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_the_error_ratio_it_scrapes_from_the_sidecar() {
    let f = Arc::new(Fleet::new(OUTRIDER, 1));
    f.start_server().await;
    let mut sidecar = demo_sidecar_body();
    sidecar["scrape"] = json!({
        "url": "http://127.0.0.1:${label.port}/metrics",
        "interval": "1s",
        "series": [
            {"name": "error_ratio", "ratio": {"numerator": "errors_total", "denominator": "requests_total"},
             "max": 0.1, "for": 2},
            {"name": "latency_p99_ms", "quantile": {"histogram": "request_duration_seconds", "q": 0.99}, "scale": 1000},
            {"name": "rps", "rate": "requests_total"},
            {"name": "inflight", "gauge": "requests_in_flight"},
        ]
    });
    let versions = [f.demo_version("1.0.0", None), f.demo_version("2.0.0", Some("error-rate=0.3"))];
    f.create_catalog_with(sidecar, &versions).await;
    f.start_agent(0);
    f.bind("1.0.0").await;
    f.eventually(Duration::from_secs(30), "the agent to run demo@1.0.0", async || local_demo(&f, "1.0.0").await).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&f, &stop);

    // Healthy: no errors, and the other series have values.
    assert_eq!(error_ratio_within(&f, "1.0.0", 0.0..=0.0).await, 0.0);
    let d = f
        .eventually(Duration::from_secs(10), "rps and latency", async || {
            let d = local_demo(&f, "1.0.0").await?;
            match (series(&d, "rps"), series(&d, "latency_p99_ms")) {
                (Some(rps), Some(_)) if rps > 0.0 => Ok(d),
                _ => Err(format!("{d}")),
            }
        })
        .await;
    assert!(series(&d, "latency_p99_ms").is_some_and(|p| p > 0.0 && p < 1000.0), "{d}");
    assert!(series(&d, "inflight").is_some(), "{d}");
    assert!(d["error"].is_null(), "no breach while healthy: {d}");
    let reported = f
        .eventually(Duration::from_secs(20), "the manager to show the error ratio", async || {
            let demo =
                f.instances().await?.into_iter().find_map(|i| {
                    i["sidecars"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "demo")).cloned()
                });
            demo.as_ref().and_then(|d| series(d, "error_ratio")).ok_or_else(|| format!("{demo:?}"))
        })
        .await;
    assert_eq!(reported, 0.0);

    // Defective, upgraded hot (the new generation is the one scraped): about 0.3, a breach
    // of max 0.1 reported (not restarted: restart is opt-in).
    f.bind_mode("2.0.0", "hot").await;
    let ratio = error_ratio_within(&f, "2.0.0", 0.2..=0.4).await;
    let d = f
        .eventually(Duration::from_secs(15), "the breach to be reported", async || {
            let d = local_demo(&f, "2.0.0").await?;
            match d["error"].as_str() {
                Some(e) if e.contains("error_ratio") && e.contains("above max 0.1") => Ok(d),
                _ => Err(format!("{d}")),
            }
        })
        .await;
    assert_eq!(d["restarts"], 0, "a breach without restart: true only reports: {d}");

    let text = f
        .http
        .get(format!("http://127.0.0.1:{}/metrics", f.agents[0].listen))
        .send()
        .await
        .expect("agent /metrics")
        .text()
        .await
        .expect("agent /metrics body");
    assert!(text.contains("outrider_agent_sidecar_series{sidecar=\"demo\",series=\"error_ratio\"}"), "{text}");
    assert!(
        text.contains("outrider_agent_sidecar_series_breaches_total{sidecar=\"demo\",series=\"error_ratio\"} "),
        "{text}"
    );

    // A real Prometheus scraping the agent and the sidecar sees the same.
    if let Some(binary) = prometheus_or_skip() {
        let targets = [format!("127.0.0.1:{}", f.agents[0].listen), format!("127.0.0.1:{}", f.agents[0].sidecar_port)];
        let mut prometheus = Prometheus::start(&binary, &targets, Duration::from_secs(20)).await.expect("prometheus");
        if let Err(e) = prometheus.wait_targets_up(Duration::from_secs(15)).await {
            let targets = f.http.get(format!("{}/api/v1/targets", prometheus.url())).send().await;
            let targets = match targets {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            panic!("the agent and the sidecar are not scraped: {e}: {targets}");
        }
        let prom = prometheus.client();
        for query in [
            r#"outrider_agent_sidecar_series{sidecar="demo",series="error_ratio"}"#,
            "sum(rate(errors_total[4s])) / sum(rate(requests_total[4s]))",
        ] {
            let value = f
                .eventually(Duration::from_secs(20), query, async || {
                    let samples =
                        prom.query(query, time::OffsetDateTime::now_utc()).await.map_err(|e| e.to_string())?;
                    match samples.as_slice() {
                        [s] if (0.2..=0.4).contains(&s.value) => Ok(s.value),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await;
            eprintln!("{query} in Prometheus: {value}");
        }
        prometheus.stop().await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    eprintln!("error ratio scraped from the defective version: {ratio}");
}
