//! The manager's, the agent's and the demo sidecar's `/metrics` pass `promtool check
//! metrics` (Debian's `prometheus` package; `.ci/run` installs it). Without promtool the
//! test says so and passes, unless `OUTRIDER_REQUIRE_PROMTOOL` is set (as in CI).

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use outrider_devtools::harness::{Fleet, demo_sidecar_body};

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
    // Scraped by the agent, so that its /metrics has the derived series and their counters.
    let mut sidecar = demo_sidecar_body();
    sidecar["scrape"] = serde_json::json!({
        "url": "http://127.0.0.1:${label.port}/metrics",
        "interval": "1s",
        "series": [
            {"name": "rps", "rate": "requests_total"},
            // A bound every value breaks, so that the breach counter has a sample.
            {"name": "inflight", "gauge": "requests_in_flight", "max": -1, "for": 1},
        ]
    });
    f.create_catalog_with(sidecar, &[f.demo_version("1.0.0", None)]).await;
    f.start_agent(0);
    f.bind("1.0.0").await;
    f.eventually(Duration::from_secs(30), "the agent to run demo@1.0.0", async || f.demo(0).await?.running("1.0.0"))
        .await;
    // Served requests, so that the sidecar's counters and histogram have samples.
    for _ in 0..3 {
        f.hello(0).await.expect("GET / of the demo sidecar");
    }
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
    }
}
