//! The README's first commands: `outrider demo` runs a two-phase plan on a real manager, three
//! agents and the demo sidecar, judged on the metrics the agents scrape, and exits cleanly;
//! `outrider demo --defect` shows the plan stopping itself on a release that crashes and
//! rolling back; `outrider demo --defect errors` the same on a release that fails some of its
//! requests under real HTTP load, stopped by the error ratio.

use std::process::{Command, Output};

/// Runs `outrider demo <args>` and returns its output, asserting it succeeded.
fn demo(args: &[&str]) -> String {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_outrider")).arg("demo").args(args).output().expect("run outrider demo");
    let (stdout, stderr) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    assert!(status.success(), "demo {args:?} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout.into_owned()
}

/// Every line of `expected` occurs in `stdout`.
fn assert_contains(stdout: &str, expected: &[&str]) {
    for e in expected {
        assert!(stdout.contains(e), "missing {e:?} in:\n{stdout}");
    }
}

#[test]
fn demo_runs_a_two_phase_plan_and_cleans_up() {
    let stdout = demo(&[]);
    assert_contains(
        &stdout,
        &[
            "gray  batch 0  applying  1 instance (checkout/boe/prod)",
            "gray  batch 0  passed",
            "full  batch 0  applying  2 instances (checkout/cn-north/prod)",
            "full  batch 0  passed",
            "plan completed: every batch passed",
            "blast radius 3",
            "plan.created",
            "phase.completed",
            "moved 3 of 3 instances of checkout from demo 1.0.0 to 1.1.0 in 2 phases (gray, then full)",
            "no sidecar process left",
            "removed /tmp/outrider-demo-",
        ],
    );
    // Both batches were judged on metrics, the scraped ones included: the canary against the
    // instances not upgraded, the others against themselves before.
    for metric in ["error_ratio", "latency_p99_ms", "cpu_percent"] {
        let judged: Vec<&str> =
            stdout.lines().filter(|l| l.contains(&format!(" {metric} ")) && l.contains(" canary ")).collect();
        assert!(
            judged.len() == 2
                && judged[0].contains(" vs baseline ")
                && judged[1].contains(" vs before ")
                && judged.iter().all(|l| l.ends_with(": pass")),
            "{metric} was not judged in both batches: {judged:?}\n{stdout}"
        );
    }
    // The canary's batch passed before the full phase started.
    let gray_passed = stdout.find("gray  batch 0  passed").unwrap_or_default();
    let full_applying = stdout.find("full  batch 0  applying").unwrap_or_default();
    assert!(gray_passed < full_applying, "the full phase started before the gray batch passed:\n{stdout}");
    // The canary moved by a hot upgrade: its sidecar answered every request meanwhile.
    let canary = stdout.lines().find(|l| l.starts_with("  i-1  pid")).unwrap_or_default();
    assert!(canary.contains(", failed 0") && canary.contains("1.0.0 -> 1.1.0"), "canary: {canary:?}\n{stdout}");
}

#[test]
fn demo_defect_blocks_itself_and_rolls_back() {
    let stdout = demo(&["--defect"]);
    assert_contains(
        &stdout,
        &[
            "gray  batch 0  applying  1 instance (checkout/boe/prod)",
            "gray  batch 0  failed",
            "incident: ",
            "plan blocked:",
            "i-2  untouched: demo 1.0.0 running",
            "i-3  untouched: demo 1.0.0 running",
            "rolling back:",
            "plan rolled_back:",
            "i-1  demo 1.2.0 -> 1.0.0",
            "blast radius 1",
            "the defective version reached 1 of 3 instances before the plan stopped itself; rolled back in",
            "no sidecar process left",
        ],
    );
    assert!(!stdout.contains("full  batch 0  applying"), "the full phase started:\n{stdout}");
    let incident = stdout.lines().find(|l| l.contains("incident: ")).unwrap_or_default();
    assert!(incident.contains(" on i-1 (gray batch 0)"), "the incident is not about the canary: {incident}");
}

#[test]
fn demo_defect_errors_blocks_on_the_error_ratio_and_rolls_back() {
    let stdout = demo(&["--defect", "errors"]);
    assert_contains(
        &stdout,
        &[
            "DEMO_FAULT=error-rate=0.1",
            "gray  batch 0  applying  1 instance (checkout/boe/prod)",
            "gray  batch 0  failed",
            "incident: error_ratio on i-1 (gray batch 0, service checkout)",
            "the same service's instances not upgraded",
            "test: mann-whitney u, one-sided (greater)",
            "plan blocked: error_ratio regressed on checkout with demo 1.2.0",
            "i-2  untouched: demo 1.0.0 running",
            "i-3  untouched: demo 1.0.0 running",
            "rolling back: POST /plans/",
            "plan rolled_back:",
            "i-1  demo 1.2.0 -> 1.0.0",
            "blast radius 1",
            "the defective version reached 1 of 3 instances before the plan stopped itself; rolled back in",
            "as expected: demo 1.2.0",
            "stopped itself in batch 0 of gray on error_ratio",
            "no sidecar process left",
        ],
    );
    assert!(!stdout.contains("full  batch 0  applying"), "the full phase started:\n{stdout}");
    // The evidence: the canary's error ratio, well above the baseline's, with its p-value.
    let canary = stdout.lines().find(|l| l.contains("canary   ") && l.ends_with("error_ratio on i-1"));
    let ratio: f64 = canary
        .and_then(|l| l.split("canary").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no canary error ratio in:\n{stdout}"));
    assert!((0.02..=0.3).contains(&ratio), "canary error ratio {ratio}:\n{stdout}");
    let p_value: f64 = stdout
        .lines()
        .find_map(|l| l.split("; p-value ").nth(1))
        .and_then(|r| r.split(';').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no p-value in:\n{stdout}"));
    assert!(p_value < 0.01, "p-value {p_value}:\n{stdout}");
    // The sidecar failed requests of the load, and only the canary's did.
    let five = |id: &str| stdout.lines().find(|l| l.starts_with(&format!("  {id}  "))).unwrap_or_default().to_owned();
    assert!(five("i-1").contains(", 5xx "), "the canary failed no request: {:?}\n{stdout}", five("i-1"));
    for id in ["i-2", "i-3"] {
        assert!(!five(id).contains("5xx"), "{id} failed requests: {:?}", five(id));
    }
    // Every instance answers with the old version again after the rollback (and did before).
    assert_eq!(stdout.matches("-> version 1.0.0").count(), 6, "not every instance is back on 1.0.0:\n{stdout}");
}
