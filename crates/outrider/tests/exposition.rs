//! The manager's, the agent's and the demo sidecar's `/metrics` pass `promtool check
//! metrics` (Debian's `prometheus` package; `.ci/run` installs it). Without promtool the
//! test says so and passes, unless `OUTRIDER_REQUIRE_PROMTOOL` is set (as in CI).

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use outrider_devtools::{
    demo::demo_scrape,
    harness::{Fleet, demo_sidecar_body},
};

/// The binary under test.
const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run promtool: {e}"))?;
    child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test]
async fn every_metrics_endpoint_passes_promtool() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("OUTRIDER_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here: apt-get install prometheus"
        );
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus; .ci/run installs it)");
        return;
    }
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    // Scraped by the agent, so that its /metrics has the derived series and their counters:
    // the demo's own series (`outrider demo`: error ratio and p99 latency), and more.
    let mut sidecar = demo_sidecar_body();
    let mut scrape = serde_json::to_value(demo_scrape()).expect("scrape setting as JSON");
    let series = scrape["series"].as_array_mut().expect("series");
    series.push(serde_json::json!({"name": "rps", "rate": "requests_total"}));
    // A bound every value breaks, so that the breach counter has a sample.
    series.push(serde_json::json!({"name": "inflight", "gauge": "requests_in_flight", "max": -1, "for": 1}));
    sidecar["scrape"] = scrape;
    // A version that fails some requests, as `outrider demo --defect errors` does: its
    // `errors_total` counts, and the agent derives a ratio from it.
    f.create_catalog_with(sidecar, &[f.demo_version("1.0.0", Some("error-rate=0.5"))]).await;
    f.start_agent(0);
    f.bind("1.0.0").await;
    f.eventually(Duration::from_secs(30), "the agent to run demo@1.0.0", async || f.demo(0).await?.running("1.0.0"))
        .await;
    // Served requests (half of them failed), so that the sidecar's counters and histogram have
    // samples, over more than one scrape, so that the agent derives the ratio and the quantile.
    let sidecar_root = format!("http://127.0.0.1:{}/", f.agents[0].sidecar_port);
    let http = f.http.clone();
    let load = tokio::spawn(async move {
        for _ in 0..300 {
            let _ = http.get(&sidecar_root).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let agent_metrics = format!("http://127.0.0.1:{}/metrics", f.agents[0].listen);
    f.eventually(Duration::from_secs(20), "the agent to expose the scraped series", async || {
        let text = f
            .http
            .get(&agent_metrics)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let want = [
            "series=\"error_ratio\"",
            "series=\"latency_p99_ms\"",
            "outrider_agent_sidecar_series{",
            "outrider_agent_sidecar_series_breaches_total{",
            "outrider_agent_sidecar_scrapes_total{",
        ];
        if want.iter().all(|w| text.contains(w)) { Ok(()) } else { Err(text) }
    })
    .await;

    // Which exposes counters, whose names promtool used to reject.
    let endpoints = [
        ("manager", format!("{}/metrics", f.base()), true),
        ("agent", format!("http://127.0.0.1:{}/metrics", f.agents[0].listen), false),
        ("demo sidecar", format!("http://127.0.0.1:{}/metrics", f.agents[0].sidecar_port), true),
    ];
    for (who, url, counters) in endpoints {
        let resp = f.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "{who}: GET {url}: {}", resp.status());
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8", "{who}");
        let text = resp.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(!counters || text.contains("_total counter\n"), "{who} exposes no counter:\n{text}");
        if let Err(e) = promtool_check(&text) {
            panic!("{who} ({url}):\n{e}\n--- exposition:\n{text}");
        }
        // The failed requests are counted, and the demo's series derived from them.
        let has = |line: &str| text.lines().any(|l| l.starts_with(line));
        match who {
            "demo sidecar" => assert!(!has("errors_total 0") && has("errors_total "), "{who}:\n{text}"),
            "agent" => assert!(has("outrider_agent_sidecar_series{") && text.contains("error_ratio"), "{who}:\n{text}"),
            _ => {}
        }
    }
    load.abort();
}
