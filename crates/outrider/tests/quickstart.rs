//! The README's quick starts run as pasted.
//!
//! The fenced `sh` block under "## Quick start" (and the ones under "## Quick start with TLS"
//! and "## Quick start with several managers", which needs etcd)
//! in README.md runs with `bash -e -o pipefail` (so
//! every step must succeed, not only the last) in a fresh directory, changed mechanically:
//!
//! - the `cargo build --release` line becomes a no-op, and `./target/release` in that directory
//!   is a link to the directory of the binaries under test, so `PATH` and every
//!   `target/release/…` path find this build's `outrider` and `outrider-demo-sidecar`;
//! - the fixed ports (7070 the manager, 18081 the sidecar, 19081 the agent; 7443, 18082 and
//!   19082 with TLS; etcd's 2479 and 2480 and the managers' 7171–7173 with several managers)
//!   become free loopback ports;
//! - the block's last line, the commented clean-up, runs too: nothing may be left running after
//!   it.
//!
//! Bash runs in a session of its own (`setsid` turns the test's child, which leads no process
//! group, into a session leader in place, so bash's pid is the session id). Whatever is still
//! in that session at the end — background jobs, and the sidecars, which the agent starts in
//! process groups of their own — is killed, on failure too.

use std::{
    fs::{self, File},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// How long the whole block may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long what the clean-up line stopped may take to exit.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// What the `cargo build --release` line becomes.
const NO_BUILD: &str = "true  # cargo build --release: the binaries under test are used instead";
/// The ports the quick start uses, replaced by free ones.
const PORTS: [&str; 3] = ["7070", "18081", "19081"];
/// The ports the quick start with TLS uses.
const TLS_PORTS: [&str; 3] = ["7443", "18082", "19082"];
/// The ports the quick start with several managers uses (etcd's two, the three managers').
const HA_PORTS: [&str; 5] = ["2479", "2480", "7171", "7172", "7173"];

/// The lines of the fenced `sh` block under `heading` in `readme`.
fn quick_start<'a>(readme: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading).skip(1);
    assert!(lines.any(|l| l.trim() == "```sh"), "README.md has no ```sh block under {heading:?}");
    let block: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    assert!(!block.is_empty(), "the quick start block of README.md is empty");
    block
}

/// `block` made into the script this test runs (see the module documentation).
fn script(block: &[&str], fixed: &[&str], ports: &[u16]) -> String {
    let build = block.iter().filter(|l| l.trim() == "cargo build --release").count();
    assert_eq!(build, 1, "the quick start must build with one `cargo build --release` line");
    let cleanup = block.last().and_then(|l| l.strip_prefix("# ")).filter(|l| l.contains("kill"));
    let cleanup = cleanup.expect("the quick start must end with a commented clean-up line (`# kill …`)");
    let mut text = String::new();
    for line in block {
        let line = if line.trim() == "cargo build --release" { NO_BUILD } else { line };
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(cleanup);
    text.push('\n');
    for (old, new) in fixed.iter().zip(ports) {
        assert!(text.contains(old), "the quick start no longer uses port {old}: update this test");
        text = text.replace(old, &new.to_string());
    }
    text
}

/// `n` distinct loopback ports that are free now.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

/// The live (not zombie) processes of session `sid`.
fn session_processes(sid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // After the command name in parentheses: state, ppid, pgrp, session.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(3).and_then(|s| s.parse().ok()) == Some(sid)
        })
        .collect()
}

/// A run of the script: its directory, and bash in its own session.
struct Run {
    dir: PathBuf,
    bash: Child,
}

impl Run {
    /// The processes of the run's session, other than bash itself.
    fn leftovers(&self) -> Vec<u32> {
        session_processes(self.bash.id()).into_iter().filter(|&p| p != self.bash.id()).collect()
    }

    /// The process lines of `pids`, for a message.
    fn describe(pids: &[u32]) -> String {
        let line = |p: &u32| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " ").trim())
        };
        pids.iter().map(line).collect::<Vec<_>>().join("\n")
    }

    /// The tail of one of the output files.
    fn output(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let cut = text.char_indices().rev().nth(8_000).map_or(0, |(i, _)| i);
        text[cut..].to_owned()
    }

    /// Waits for bash to exit, up to `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.bash.try_wait().expect("wait for bash") {
                return Some(status);
            }
            sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Run {
    /// Kills whatever is left of the session, then removes the directory.
    fn drop(&mut self) {
        let _ = self.bash.kill();
        let _ = self.bash.wait();
        for _ in 0..50 {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            let _ = Command::new("kill").arg("-KILL").args(left.iter().map(u32::to_string)).status();
            sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A finished run of a quick start: the run (its session), its stdout, a report for failures,
/// the ports it used.
struct Ran {
    run: Run,
    out: String,
    report: String,
    ports: Vec<u16>,
}

/// Runs the block under `heading` with its `fixed` ports replaced; panics unless it succeeds.
fn run_quick_start(heading: &str, fixed: &[&str]) -> Ran {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_outrider")).parent().expect("the binary's directory");
    let sidecar = bin_dir.join("outrider-demo-sidecar");
    assert!(
        sidecar.is_file(),
        "{} is missing: run this test with `cargo test --workspace` (or `cargo build -p outrider-demo-sidecar` first)",
        sidecar.display()
    );
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("read README.md");
    let ports = free_ports(fixed.len());
    let text = script(&quick_start(&readme, heading), fixed, &ports);

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("outrider-quickstart-{}-{stamp}", std::process::id()));
    fs::create_dir_all(dir.join("target")).expect("create the run directory");
    std::os::unix::fs::symlink(bin_dir, dir.join("target/release")).expect("link target/release");
    fs::write(dir.join("quickstart.sh"), &text).expect("write the script");
    let stdout = File::create(dir.join("stdout.txt")).expect("create stdout.txt");
    let stderr = File::create(dir.join("stderr.txt")).expect("create stderr.txt");
    let mut command = Command::new("setsid");
    command
        .args(["bash", "-e", "-o", "pipefail", "-x", "quickstart.sh"])
        .current_dir(&dir)
        .stdout(stdout)
        .stderr(stderr);
    for var in [
        "OUTRIDER_MANAGER",
        "OUTRIDER_TOKEN",
        "OUTRIDER_TOKEN_FILE",
        "OUTRIDER_TENANT",
        "OUTRIDER_DATA_DIR",
        "OUTRIDER_LISTEN",
        "OUTRIDER_CA_FILE",
        "OUTRIDER_CERT",
        "OUTRIDER_KEY",
    ] {
        command.env_remove(var);
    }
    let bash = command.spawn().expect("run setsid bash (util-linux)");
    let mut run = Run { dir, bash };

    let started = Instant::now();
    let status = run.wait(SCRIPT_TIMEOUT);
    let took = started.elapsed();
    let (out, err) = (run.output("stdout.txt"), run.output("stderr.txt"));
    let report = format!("script:\n{text}\n--- stdout (tail):\n{out}\n--- stderr (tail):\n{err}");
    let status = status.unwrap_or_else(|| panic!("the quick start did not finish within {SCRIPT_TIMEOUT:?}\n{report}"));
    assert!(status.success(), "the quick start failed ({status}) after {took:?}\n{report}");
    eprintln!("the quick start ran in {took:?}");
    let out = fs::read_to_string(run.dir.join("stdout.txt")).expect("read stdout.txt");
    Ran { run, out, report, ports }
}

/// The clean-up line stopped everything; the manager may take a moment to exit.
fn nothing_left(ran: &Ran) {
    let deadline = Instant::now() + EXIT_GRACE;
    let mut left = ran.run.leftovers();
    while !left.is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(100));
        left = ran.run.leftovers();
    }
    assert!(left.is_empty(), "still running after the clean-up line:\n{}\n{}", Run::describe(&left), ran.report);
}

#[test]
fn the_readme_quick_start_runs_as_pasted() {
    let ran = run_quick_start("## Quick start", &PORTS);
    let (out, report, ports) = (&ran.out, &ran.report, &ran.ports);
    let manager = format!("the manager at http://127.0.0.1:{} is ready", ports[0]);
    for want in [
        manager.as_str(),
        "instance i-1: demo@1.0.0 running",
        r#""version":"1.0.0","instance":"i-1""#,
        "instance.deployed",
        "connected at stop",
        r#""p50_ms""#,
    ] {
        assert!(out.contains(want), "{want:?} missing from the output\n{report}");
    }
    let listed =
        out.lines().any(|l| l.starts_with("i-1 ") && l.contains("checkout") && l.contains("demo@1.0.0 running"));
    assert!(listed, "`instance list` does not show i-1 running demo@1.0.0\n{report}");
    nothing_left(&ran);
}

#[test]
fn the_readme_quick_start_with_tls_runs_as_pasted() {
    let ran = run_quick_start("## Quick start with TLS", &TLS_PORTS);
    let (out, report) = (&ran.out, &ran.report);
    let manager = format!("the manager at https://127.0.0.1:{} is ready", ran.ports[0]);
    for want in [
        manager.as_str(),
        "plain HTTP is refused",
        "instance i-1: demo@1.0.0 running",
        r#""version":"1.0.0","instance":"i-1""#,
    ] {
        assert!(out.contains(want), "{want:?} missing from the output\n{report}");
    }
    let listed =
        out.lines().any(|l| l.starts_with("i-1 ") && l.contains("checkout") && l.contains("demo@1.0.0 running"));
    assert!(listed, "`instance list` does not show i-1 running demo@1.0.0\n{report}");
    nothing_left(&ran);
}

#[test]
fn the_readme_quick_start_with_several_managers_runs_as_pasted() {
    if outrider_store::test_etcd::etcd_or_skip().is_none() {
        return;
    }
    let ran = run_quick_start("## Quick start with several managers", &HA_PORTS);
    let (out, report) = (&ran.out, &ran.report);
    assert!(out.contains("m1: outrider_leader 1"), "the first manager did not lead\n{report}");
    let leaders: Vec<&str> =
        out.lines().filter(|l| l.ends_with(": outrider_leader 1") && !l.starts_with("m1")).collect();
    assert_eq!(leaders.len(), 1, "not exactly one of the managers left leads\n{report}");
    assert!(out.lines().any(|l| l.trim() == "60"), "not every agent is connected after the kill\n{report}");
    assert!(out.contains("connected at stop"), "the simulated fleet's summary is missing\n{report}");
    nothing_left(&ran);
}
