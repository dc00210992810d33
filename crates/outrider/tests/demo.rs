//! The README's first commands: `outrider demo` runs a two-phase plan on a real manager, three
//! agents and the demo sidecar, and exits cleanly; `outrider demo --defect` shows the plan
//! stopping itself on a defective release and rolling back.

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
