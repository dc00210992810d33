//! The process supervisor against real processes: `/bin/sh` is the artifact and short shell
//! scripts are the sidecars. Every test uses its own data dir and a unique instance id; a
//! guard SIGKILLs every process carrying that id in its environment when the test ends, so
//! nothing is left behind even when an assertion fails.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use outrider_agent::{
    Runtime,
    backoff::Backoff,
    supervisor::{Supervisor, SupervisorConfig},
};
use outrider_model::{
    Artifact, DesiredSidecar, HumanDuration, InstanceLabels, Lifecycle, Probe, SidecarState, SidecarStatus,
    testing::desired_sidecar,
};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, sleep};

/// A test's data dir and process guard.
struct Harness {
    dir: tempfile::TempDir,
    instance: String,
    sh_sha256: String,
}

impl Harness {
    fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Self {
            dir: tempfile::tempdir().unwrap(),
            instance: format!("t-{test}-{}-{nanos}", std::process::id()),
            sh_sha256: hex::encode(Sha256::digest(std::fs::read("/bin/sh").unwrap())),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A file for scripts to write to.
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> SupervisorConfig {
        let mut labels = InstanceLabels {
            region: "boe".into(),
            env: "preview".into(),
            stage: "canary".into(),
            ..Default::default()
        };
        labels.labels.insert("port".into(), "8080".into());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut c = SupervisorConfig::new(self.data_dir(), self.instance.clone(), "checkout", labels, http);
        c.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2), 2);
        c.stable_after = Duration::from_secs(1);
        c.crash_loop_threshold = 3;
        c.stats_interval = Duration::from_millis(100);
        c.adopted_poll_interval = Duration::from_millis(50);
        c
    }

    fn start(&self) -> Arc<Supervisor> {
        Supervisor::start(self.config()).unwrap()
    }

    /// A sidecar that runs `script` with `/bin/sh` (fetched as an artifact). Scripts must
    /// write shell variables as `$VAR`: `${...}` is an Outrider placeholder.
    fn sidecar(&self, name: &str, version: &str, script: &str) -> DesiredSidecar {
        DesiredSidecar {
            artifact: Artifact { url: "file:///bin/sh".into(), sha256: self.sh_sha256.clone() },
            command: vec!["${artifact}".into(), "-c".into(), script.into()],
            lifecycle: Lifecycle { drain_time: HumanDuration::from_millis(500), ..Lifecycle::default() },
            ..desired_sidecar(name, version)
        }
    }

    /// Pids of live processes carrying this test's instance id.
    fn own_processes(&self) -> Vec<i32> {
        let needle = format!("OUTRIDER_INSTANCE={}", self.instance);
        outrider_procfs::pids()
            .unwrap_or_default()
            .into_iter()
            .filter(|&pid| outrider_procfs::environ(pid).is_ok_and(|env| env.iter().any(|var| *var == *needle)))
            .filter(|&pid| alive(pid))
            .map(|pid| i32::try_from(pid).unwrap())
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for pid in self.own_processes() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    outrider_procfs::is_alive(pid)
}

fn start_time_of(pid: u32) -> u64 {
    outrider_procfs::stat(pid).unwrap().start_time
}

fn status_of(rt: &dyn Runtime, name: &str) -> Option<SidecarStatus> {
    rt.status().into_iter().find(|s| s.name == name)
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `within`.
async fn eventually<T>(rt: &dyn Runtime, what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}; status: {:#?}", rt.status());
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `name` is running and returns its status.
async fn running(rt: &dyn Runtime, name: &str) -> SidecarStatus {
    eventually(rt, &format!("{name} running"), Duration::from_secs(10), || {
        status_of(rt, name).filter(|s| s.state == SidecarState::Running && s.pid.is_some())
    })
    .await
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_a_sidecar_with_its_environment_and_stops_it() {
    let h = Harness::new("start");
    let sup = h.start();
    let mut changes = sup.changes();
    let out = h.out("env.txt");
    let mut d = h.sidecar("mesh", "1.0.0", "echo \"$OUTRIDER_VERSION $OUTRIDER_SIDECAR $OUTRIDER_INSTANCE $OUTRIDER_SERVICE $PORT\" > \"$OUT\"; exec sleep 30");
    d.env.insert("OUT".into(), out.display().to_string());
    d.env.insert("PORT".into(), "${label.port}".into());
    sup.apply(&[d]);

    let st = running(sup.as_ref(), "mesh").await;
    assert!(changes.has_changed().unwrap(), "status changes are signalled");
    changes.mark_unchanged();
    assert_eq!(st.version, "1.0.0");
    assert_eq!((st.restarts, st.exits, st.error.as_deref()), (0, 0, None));
    let pid = st.pid.unwrap();
    assert!(alive(pid));
    let env = eventually(sup.as_ref(), "env file", Duration::from_secs(5), || {
        std::fs::read_to_string(&out).ok().filter(|s| s.ends_with('\n'))
    })
    .await;
    assert_eq!(env.trim(), format!("1.0.0 mesh {} checkout 8080", h.instance));
    assert!(h.data_dir().join("sidecars/mesh.json").exists(), "record persisted");
    assert!(h.data_dir().join("logs/mesh.log").exists(), "log file created");

    sup.stop_all().await;
    assert!(!alive(pid), "stopped");
    assert!(sup.status().is_empty());
    assert!(!h.data_dir().join("sidecars/mesh.json").exists(), "record deleted");
    assert!(changes.has_changed().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_cpu_and_memory() {
    let h = Harness::new("stats");
    let sup = h.start();
    sup.apply(&[h.sidecar("burner", "1.0.0", "while :; do :; done")]);
    running(sup.as_ref(), "burner").await;
    let st = eventually(sup.as_ref(), "cpu and rss sampled", Duration::from_secs(5), || {
        status_of(sup.as_ref(), "burner").filter(|s| s.cpu_percent > 20.0 && s.rss_bytes > 0)
    })
    .await;
    assert!(st.cpu_percent < 150.0, "one busy shell is about one core: {}", st.cpu_percent);
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_is_restarted_with_a_new_pid() {
    let h = Harness::new("kill9");
    let sup = h.start();
    sup.apply(&[h.sidecar("mesh", "1.0.0", "exec sleep 30")]);
    let first = running(sup.as_ref(), "mesh").await.pid.unwrap();
    sigkill(first);
    let st = eventually(sup.as_ref(), "restart", Duration::from_secs(10), || {
        status_of(sup.as_ref(), "mesh")
            .filter(|s| s.state == SidecarState::Running && s.pid.is_some_and(|p| p != first))
    })
    .await;
    assert!(st.restarts >= 1 && st.exits >= 1, "{st:?}");
    assert!(!h.data_dir().join("sidecars/mesh.json").exists() || alive(st.pid.unwrap()));
    sup.stop_all().await;
    eventually(sup.as_ref(), "nothing left", Duration::from_secs(2), || h.own_processes().is_empty().then_some(()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_sidecar_goes_into_crash_loop_with_growing_backoff() {
    let h = Harness::new("crashloop");
    let sup = h.start();
    sup.apply(&[h.sidecar("mesh", "1.0.0", "exit 1")]);

    let started = Instant::now();
    let mut exit_times = Vec::new();
    let mut last_exits = 0;
    let mut saw_crash_loop = false;
    while started.elapsed() < Duration::from_millis(3000) {
        if let Some(s) = status_of(sup.as_ref(), "mesh") {
            if s.exits > last_exits {
                exit_times.push(Instant::now());
                last_exits = s.exits;
            }
            saw_crash_loop |= s.state == SidecarState::CrashLoop;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let st = status_of(sup.as_ref(), "mesh").unwrap();
    assert!(saw_crash_loop, "crash_loop reported: {st:?}");
    assert!(st.error.as_deref().is_some_and(|e| e.contains("exit status: 1")), "{st:?}");
    // Delays 50, 100, 200, 400, 800, 1600 ms: about six exits in three seconds, not hundreds.
    assert!((4..=9).contains(&st.exits), "exits in 3 s: {}", st.exits);
    assert!(st.restarts >= st.exits - 1, "{st:?}");
    let gaps: Vec<Duration> = exit_times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 3, "{gaps:?}");
    assert!(gaps.last().unwrap() >= &(gaps[0] * 3), "backoff grows: {gaps:?}");
    for pair in gaps.windows(2) {
        // Scheduling noise aside, a gap is never shorter than the one before.
        assert!(pair[1] + Duration::from_millis(100) >= pair[0], "gaps never shrink: {gaps:?}");
    }
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_change_replaces_the_process() {
    let h = Harness::new("upgrade");
    let sup = h.start();
    let out = h.out("version.txt");
    let desired = |version: &str| {
        let mut d = h.sidecar("mesh", version, "echo $OUTRIDER_VERSION > \"$OUT\"; exec sleep 30");
        d.env.insert("OUT".into(), out.display().to_string());
        d
    };
    sup.apply(&[desired("1.0.0")]);
    let old = running(sup.as_ref(), "mesh").await.pid.unwrap();

    sup.apply(&[desired("2.0.0")]);
    let st = eventually(sup.as_ref(), "2.0.0 running", Duration::from_secs(10), || {
        status_of(sup.as_ref(), "mesh").filter(|s| s.version == "2.0.0" && s.state == SidecarState::Running)
    })
    .await;
    let new = st.pid.unwrap();
    assert_ne!(new, old);
    assert!(!alive(old), "old process gone");
    assert!(alive(new));
    assert_eq!(st.restarts, 0, "an upgrade is not a restart");
    eventually(sup.as_ref(), "new version writes its file", Duration::from_secs(5), || {
        (std::fs::read_to_string(&out).ok()?.trim() == "2.0.0").then_some(())
    })
    .await;
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_artifact_leaves_the_old_version_running() {
    let h = Harness::new("badsha");
    let sup = h.start();
    sup.apply(&[h.sidecar("mesh", "1.0.0", "exec sleep 30")]);
    let old = running(sup.as_ref(), "mesh").await.pid.unwrap();

    let mut bad = h.sidecar("mesh", "2.0.0", "exec sleep 30");
    bad.artifact.sha256 = "0".repeat(64);
    sup.apply(&[bad]);
    let st = eventually(sup.as_ref(), "error reported", Duration::from_secs(10), || {
        status_of(sup.as_ref(), "mesh").filter(|s| s.error.is_some())
    })
    .await;
    let err = st.error.as_deref().unwrap();
    assert!(err.contains("sha256 mismatch") && err.contains(&"0".repeat(64)) && err.contains(&h.sh_sha256), "{err}");
    assert_eq!((st.version.as_str(), st.state, st.pid), ("1.0.0", SidecarState::Running, Some(old)));

    // Retries (with backoff) keep failing and never touch the old process.
    sleep(Duration::from_millis(500)).await;
    let st = status_of(sup.as_ref(), "mesh").unwrap();
    assert_eq!((st.version.as_str(), st.state, st.pid), ("1.0.0", SidecarState::Running, Some(old)));
    assert!(alive(old));
    assert!(!h.data_dir().join("artifacts").join("0".repeat(64)).exists(), "nothing cached");
    sup.stop_all().await;
}

fn exec_probe(script: &str, period_ms: u64, deadline_ms: u64) -> Probe {
    Probe {
        tcp: None,
        http: None,
        exec: Some(vec!["${artifact}".into(), "-c".into(), script.into()]),
        timeout: HumanDuration::from_secs(2),
        period: HumanDuration::from_millis(period_ms),
        deadline: HumanDuration::from_millis(deadline_ms),
        failure_threshold: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_probe_gates_running() {
    let h = Harness::new("startup-ok");
    let sup = h.start();
    let ready = h.out("ready");
    let mut d = h.sidecar("mesh", "1.0.0", "sleep 0.4; touch \"$OUT\"; exec sleep 30");
    d.env.insert("OUT".into(), ready.display().to_string());
    d.lifecycle.startup_probe = Some(exec_probe(&format!("test -f {}", ready.display()), 50, 10_000));
    sup.apply(&[d]);
    let st = eventually(sup.as_ref(), "starting with a pid", Duration::from_secs(5), || {
        status_of(sup.as_ref(), "mesh").filter(|s| s.pid.is_some())
    })
    .await;
    assert_eq!(st.state, SidecarState::Starting, "not running before the probe passes");
    let st = running(sup.as_ref(), "mesh").await;
    assert!(ready.exists());
    assert_eq!(st.restarts, 0);
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_probe_that_never_passes_fails_the_sidecar() {
    let h = Harness::new("startup-fail");
    let sup = h.start();
    let mut d = h.sidecar("mesh", "1.0.0", "exec sleep 30");
    d.lifecycle.startup_probe = Some(exec_probe("exit 1", 50, 300));
    sup.apply(&[d]);
    let started = Instant::now();
    let mut first_pid = None;
    let st = eventually(sup.as_ref(), "startup failure reported", Duration::from_secs(5), || {
        let s = status_of(sup.as_ref(), "mesh")?;
        assert_ne!(s.state, SidecarState::Running, "{s:?}");
        first_pid = first_pid.or(s.pid);
        s.error.as_deref().is_some_and(|e| e.contains("startup probe did not pass within 300ms")).then_some(s)
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(st.state, SidecarState::Failed | SidecarState::Starting | SidecarState::CrashLoop), "{st:?}");
    assert!(!alive(first_pid.expect("a process was started")), "the unready process was killed");
    // It is retried (with backoff), and never reported running.
    let st = eventually(sup.as_ref(), "a retry", Duration::from_secs(5), || {
        let s = status_of(sup.as_ref(), "mesh")?;
        assert_ne!(s.state, SidecarState::Running, "{s:?}");
        (s.restarts >= 1).then_some(s)
    })
    .await;
    assert!(st.error.is_some());
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_sidecar() {
    let h = Harness::new("liveness");
    let sup = h.start();
    let healthy = h.out("healthy");
    let mut d = h.sidecar("mesh", "1.0.0", "touch \"$OUT\"; exec sleep 30");
    d.env.insert("OUT".into(), healthy.display().to_string());
    d.lifecycle.liveness_probe = Some(exec_probe(&format!("test -f {}", healthy.display()), 50, 0));
    sup.apply(&[d]);
    let first = running(sup.as_ref(), "mesh").await.pid.unwrap();
    eventually(sup.as_ref(), "health file", Duration::from_secs(5), || healthy.exists().then_some(())).await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(status_of(sup.as_ref(), "mesh").unwrap().pid, Some(first), "healthy: not restarted");

    std::fs::remove_file(&healthy).unwrap();
    let st = eventually(sup.as_ref(), "liveness restart", Duration::from_secs(10), || {
        status_of(sup.as_ref(), "mesh").filter(|s| s.restarts >= 1 && s.pid.is_some_and(|p| p != first))
    })
    .await;
    assert!(st.error.as_deref().is_some_and(|e| e.contains("liveness probe failed 2 times")), "{st:?}");
    assert!(!alive(first));
    sup.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_terminates_with_sigterm_then_sigkill_after_the_drain_time() {
    let h = Harness::new("removal");
    let sup = h.start();
    let term_seen = h.out("term");
    let mut polite =
        h.sidecar("polite", "1.0.0", "trap 'echo term > \"$OUT\"; exit 0' TERM; while :; do sleep 0.05; done");
    polite.env.insert("OUT".into(), term_seen.display().to_string());
    polite.lifecycle.drain_time = HumanDuration::from_millis(2000);
    let mut stubborn = h.sidecar("stubborn", "1.0.0", "trap '' TERM; while :; do sleep 0.05; done");
    stubborn.lifecycle.drain_time = HumanDuration::from_millis(600);
    sup.apply(&[polite.clone(), stubborn.clone()]);
    let polite_pid = running(sup.as_ref(), "polite").await.pid.unwrap();
    let stubborn_pid = running(sup.as_ref(), "stubborn").await.pid.unwrap();
    sleep(Duration::from_millis(100)).await; // let the shells install their traps

    let t0 = Instant::now();
    sup.apply(&[]);
    eventually(sup.as_ref(), "polite gone", Duration::from_secs(5), || {
        status_of(sup.as_ref(), "polite").is_none().then_some(())
    })
    .await;
    let polite_took = t0.elapsed();
    eventually(sup.as_ref(), "stubborn gone", Duration::from_secs(5), || {
        status_of(sup.as_ref(), "stubborn").is_none().then_some(())
    })
    .await;
    let stubborn_took = t0.elapsed();
    assert!(polite_took < Duration::from_millis(1500), "SIGTERM honoured quickly: {polite_took:?}");
    assert_eq!(std::fs::read_to_string(&term_seen).unwrap().trim(), "term");
    assert!(stubborn_took >= Duration::from_millis(600), "SIGKILL only after the drain time: {stubborn_took:?}");
    assert!(!alive(polite_pid) && !alive(stubborn_pid));
    // SIGKILLed group members may take a moment to die on a busy machine.
    eventually(sup.as_ref(), "whole process groups ended", Duration::from_secs(2), || {
        h.own_processes().is_empty().then_some(())
    })
    .await;
    assert!(!h.data_dir().join("sidecars/polite.json").exists());
    assert!(!h.data_dir().join("sidecars/stubborn.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_readopts_running_sidecars() {
    let h = Harness::new("readopt");
    let d = h.sidecar("mesh", "1.0.0", "exec sleep 30");
    let a = h.start();
    a.apply(std::slice::from_ref(&d));
    let pid = running(a.as_ref(), "mesh").await.pid.unwrap();
    drop(a);
    sleep(Duration::from_millis(200)).await;
    assert!(alive(pid), "dropping the supervisor leaves sidecars running");

    let b = h.start();
    let st = status_of(b.as_ref(), "mesh").expect("adopted at start");
    assert_eq!((st.state, st.pid, st.version.as_str()), (SidecarState::Running, Some(pid), "1.0.0"));
    sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(b.as_ref(), "mesh").unwrap().pid, Some(pid), "kept as is before any apply");

    b.apply(std::slice::from_ref(&d));
    sleep(Duration::from_millis(300)).await;
    let st = status_of(b.as_ref(), "mesh").unwrap();
    assert_eq!((st.state, st.pid), (SidecarState::Running, Some(pid)), "same desired: not restarted");
    assert!(alive(pid));

    b.apply(&[]);
    eventually(b.as_ref(), "adopted sidecar stopped", Duration::from_secs(5), || {
        status_of(b.as_ref(), "mesh").is_none().then_some(())
    })
    .await;
    assert!(!alive(pid));
    assert!(!h.data_dir().join("sidecars/mesh.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_of_an_adopted_sidecar_is_noticed_and_it_is_restarted() {
    let h = Harness::new("adopted-exit");
    let a = h.start();
    a.apply(&[h.sidecar("mesh", "1.0.0", "exec sleep 30")]);
    let pid = running(a.as_ref(), "mesh").await.pid.unwrap();
    drop(a);

    let b = h.start();
    assert_eq!(status_of(b.as_ref(), "mesh").unwrap().pid, Some(pid));
    sigkill(pid);
    let st = eventually(b.as_ref(), "restart after adopted exit", Duration::from_secs(10), || {
        status_of(b.as_ref(), "mesh").filter(|s| s.state == SidecarState::Running && s.pid.is_some_and(|p| p != pid))
    })
    .await;
    assert!(st.restarts >= 1 && st.exits >= 1, "{st:?}");
    assert!(st.error.as_deref().is_some_and(|e| e.contains("adopted")), "{st:?}");
    b.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_pid_is_another_process_is_not_adopted_nor_signalled() {
    let h = Harness::new("foreign");
    // A process that is not a sidecar, but whose pid ends up in a record.
    let mut stranger = tokio::process::Command::new("sleep")
        .arg("30")
        .env("OUTRIDER_INSTANCE", &h.instance)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stranger_pid = stranger.id().unwrap();
    let true_start = start_time_of(stranger_pid);
    let d = h.sidecar("mesh", "1.0.0", "exec sleep 30");
    let record = |name: &str, pid: u32, start: u64| {
        let mut d = d.clone();
        d.name = name.into();
        serde_json::json!({"name": name, "version": "1.0.0", "pid": pid, "start_time_ticks": start,
                           "restarts": 0, "exits": 0, "desired": d})
    };
    let sidecars = h.data_dir().join("sidecars");
    std::fs::create_dir_all(&sidecars).unwrap();
    let write = |name: &str, v: serde_json::Value| {
        std::fs::write(sidecars.join(format!("{name}.json")), v.to_string()).unwrap()
    };
    write("mesh", record("mesh", stranger_pid, true_start + 12_345));
    // And a record of a process that is gone altogether.
    write("gone", record("gone", u32::MAX - 1, 1));

    let sup = h.start();
    assert!(sup.status().is_empty(), "nothing adopted: {:?}", sup.status());
    assert!(!sidecars.join("mesh.json").exists() && !sidecars.join("gone.json").exists(), "stale records dropped");

    sup.apply(&[]);
    sleep(Duration::from_millis(300)).await;
    assert!(alive(stranger_pid), "the stranger was not signalled");

    sup.apply(&[d]);
    let st = running(sup.as_ref(), "mesh").await;
    assert_ne!(st.pid, Some(stranger_pid), "started fresh");
    sup.stop_all().await;
    assert!(alive(stranger_pid), "still not signalled");
    assert!(stranger.try_wait().unwrap().is_none());
    stranger.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_placeholder_fails_the_sidecar_with_a_clear_error() {
    let h = Harness::new("placeholder");
    let sup = h.start();
    let mut d = h.sidecar("mesh", "1.0.0", "exec sleep 30");
    d.command.push("${label.zone}".into());
    sup.apply(&[d]);
    let st = eventually(sup.as_ref(), "failure", Duration::from_secs(5), || {
        status_of(sup.as_ref(), "mesh").filter(|s| s.state == SidecarState::Failed)
    })
    .await;
    assert!(st.error.as_deref().is_some_and(|e| e.contains("zone")), "{st:?}");
    assert_eq!(st.pid, None);
    sup.stop_all().await;
    assert!(sup.status().is_empty());
}

#[test]
fn the_data_dir_layout_is_created() {
    let h = Harness::new("layout");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _sup = rt.block_on(async { h.start() });
    for sub in ["sidecars", "artifacts", "logs"] {
        assert!(Path::new(&h.data_dir()).join(sub).is_dir(), "{sub}");
    }
}

/// Serves `GET` with the current `body` as Prometheus text; returns its `/metrics` URL.
async fn metrics_server(body: Arc<std::sync::Mutex<String>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let text = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", text.len());
                let _ = conn.write_all(format!("{head}{text}").as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_series_are_reported_and_a_breach_restarts_only_when_asked() {
    let h = Harness::new("scrape");
    let body = Arc::new(std::sync::Mutex::new("g 5\n".to_owned()));
    let url = metrics_server(body.clone()).await;
    let rt = h.start();
    let mut d = h.sidecar("scraped", "1.0.0", "sleep 600");
    d.lifecycle.scrape = Some(
        serde_json::from_value(serde_json::json!({
            "url": url, "interval": "1s",
            "series": [
                {"name": "g", "gauge": "g", "max": 10, "for": 1, "restart": true},
                {"name": "g_report_only", "gauge": "g", "max": 10, "for": 1},
            ]
        }))
        .unwrap(),
    );
    rt.apply(std::slice::from_ref(&d));
    let first = running(rt.as_ref(), "scraped").await;
    let within = Duration::from_secs(10);
    eventually(rt.as_ref(), "the gauge reported", within, || {
        status_of(rt.as_ref(), "scraped").filter(|s| s.metrics.get("g") == Some(&5.0) && s.error.is_none())
    })
    .await;

    // A malformed exposition: no values, the sidecar untouched.
    *body.lock().unwrap() = "g{ 5\n".to_owned();
    let s = eventually(rt.as_ref(), "the metrics left out", within, || {
        status_of(rt.as_ref(), "scraped").filter(|s| s.metrics.is_empty())
    })
    .await;
    assert_eq!((s.pid, s.restarts, s.state), (first.pid, 0, SidecarState::Running));
    let counters = rt.scrape_counters();
    assert!(counters[0].failures >= 1, "{counters:?}");

    // Out of bounds: reported, and restarted because one series asks for it.
    *body.lock().unwrap() = "g 50\n".to_owned();
    let s = eventually(rt.as_ref(), "a restart on the breach", within, || {
        status_of(rt.as_ref(), "scraped").filter(|s| s.restarts >= 1)
    })
    .await;
    assert!(s.error.as_deref().is_some_and(|e| e.contains("g = 50 above max 10")), "{s:?}");
    assert_ne!(s.pid, first.pid);
    let counters = rt.scrape_counters();
    assert!(counters[0].breaches.get("g").is_some_and(|n| *n >= 1), "{counters:?}");
    rt.stop_all().await;
}
