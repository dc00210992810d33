//! The README's first command: `outrider demo` runs the whole loop and exits cleanly.

use std::process::Command;

#[test]
fn demo_upgrades_three_instances_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_outrider")).arg("demo").output().expect("run outrider demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("3 of 3 instances upgraded demo 1.0.0 -> 1.1.0"), "{stdout}");
    assert!(stdout.contains("no sidecar process left"), "{stdout}");
    assert!(stdout.contains("removed /tmp/outrider-demo-") || stdout.contains("removed "), "{stdout}");
}
