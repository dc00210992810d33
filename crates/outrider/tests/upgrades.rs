//! End to end, the upgrade modes of PRODUCT.md §2 and §4 carried out by a real agent on the
//! real demo sidecar, under continuous HTTP load on its port: hot upgrades (agent-owned
//! sockets by `LISTEN_FDS`, `SCM_RIGHTS` handover, signal reload) fail no request; a new
//! version that never gets ready, or never completes its handover, leaves the old one
//! serving; an agent killed in the middle of a hot upgrade leaves no stray process and
//! keeps its sockets; warm upgrades drain, restart and put the instance back, and a failing
//! drain action changes nothing; on-deploy targets wait for the instance's next deploy.
//! Safe defaults: a hot upgrade to a version that exits at once (no probe, no `READY=1`)
//! fails on `min_ready` and leaves the old version serving every request; a version that
//! crash-loops after an upgrade falls back to the one it replaced; where no version can
//! serve, clients of the agent-owned socket are refused at once instead of waiting.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use outrider_devtools::harness::{Fleet, Sidecar, alive, load::Load};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The binary under test.
const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

/// Budget of one upgrade.
const UPGRADE: Duration = Duration::from_secs(30);

/// The demo sidecar with `handover`, readiness by `NOTIFY_SOCKET`, agent-owned sockets when
/// `owned_socket`, a 4 s startup deadline, and `extra` fields merged in.
fn sidecar_body(handover: Value, owned_socket: bool, extra: Value) -> Value {
    let health = "http://127.0.0.1:${label.port}/healthz";
    let mut body = json!({
        "name": "demo",
        "upgrade_modes": ["restart", "hot", "on-deploy"],
        "handover": handover,
        "notify_ready": true,
        "drain_time": "3s",
        "startup_probe": {"http": health, "deadline": "4s", "period": "100ms"},
        "liveness_probe": {"http": health, "period": "1s"},
    });
    if owned_socket {
        body["sockets"] = json!([{"name": "http", "listen": "127.0.0.1:${label.port}"}]);
    }
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// A fleet of one agent running demo 1.0.0 with `sidecar`, with 1.1.0, 1.2.0 and the
/// given faulty versions in the catalog.
async fn one_instance(sidecar: Value, faulty: &[(&str, &str)]) -> Fleet {
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    let mut versions: Vec<Value> = ["1.0.0", "1.1.0", "1.2.0"].iter().map(|v| f.demo_version(v, None)).collect();
    versions.extend(faulty.iter().map(|(v, fault)| f.demo_version(v, Some(fault))));
    f.create_catalog_with(sidecar, &versions).await;
    f.bind("1.0.0").await;
    f.start_agent(0);
    running(&f, "1.0.0").await;
    f
}

/// Waits until the agent runs demo `version`, ready; returns its status.
async fn running(f: &Fleet, version: &str) -> Sidecar {
    f.eventually(UPGRADE, &format!("demo@{version} running"), async || {
        let s = f.demo(0).await?;
        s.running(version)?;
        Ok(s)
    })
    .await
}

/// Hot-upgrades to `version` and waits until it runs under a new pid; returns the pid.
async fn hot_upgrade(f: &Fleet, version: &str, old_pid: u32) -> u32 {
    f.bind_mode(version, "hot").await;
    let s = f
        .eventually(UPGRADE, &format!("demo@{version} running after a hot upgrade"), async || {
            let s = f.demo(0).await?;
            let pid = s.running(version)?;
            if pid == old_pid {
                return Err(format!("still pid {old_pid}"));
            }
            Ok(s)
        })
        .await;
    assert_eq!(s.restarts, 0, "a hot upgrade is not a restart: {s:?}");
    s.pid.expect("running")
}

/// Upgrades back and forth `n` times under load and checks that no request failed, that
/// every generation answered, and that every old generation is gone.
async fn upgrades_drop_nothing(f: &Fleet, n: usize) {
    let mut pid = f.demo(0).await.expect("status").pid.expect("running");
    let load = Load::start(f.agents[0].sidecar_port, 4, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pids = vec![pid];
    for i in 0..n {
        let version = if i % 2 == 0 { "1.1.0" } else { "1.0.0" };
        pid = hot_upgrade(f, version, pid).await;
        pids.push(pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats = load.finish().await;
    assert_eq!(stats.failed, 0, "failed requests during {n} hot upgrades: {:?}", stats.errors);
    assert!(stats.ok > 100, "too little load to tell: {stats:?}");
    for p in &pids {
        assert!(stats.answered_by.iter().any(|(_, by)| *by == u64::from(*p)), "pid {p} never answered");
    }
    f.eventually(Duration::from_secs(10), "old generations to exit", async || {
        match pids[..n].iter().find(|p| alive(**p)) {
            Some(p) => Err(format!("old pid {p} still runs")),
            None => Ok(()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_upgrades_with_agent_owned_sockets_fail_no_request() {
    let f = one_instance(sidecar_body(json!({"kind": "listen-fds"}), true, json!({})), &[]).await;
    upgrades_drop_nothing(&f, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_upgrades_by_scm_rights_handover_fail_no_request() {
    let f = one_instance(sidecar_body(json!({"kind": "scm-rights"}), false, json!({})), &[]).await;
    upgrades_drop_nothing(&f, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_upgrades_by_signal_reload_fail_no_request() {
    let f = one_instance(sidecar_body(json!({"kind": "signal", "signal": "SIGUSR2"}), false, json!({})), &[]).await;
    upgrades_drop_nothing(&f, 4).await;
}

/// Hot-upgrades to a version that never gets ready: the old generation keeps serving every
/// request, the failure is reported, and the new process is gone.
async fn falls_back(f: &Fleet, bad: &str, why: &str) {
    let before = running(f, "1.0.0").await;
    let pid = before.pid.expect("running");
    let load = Load::start(f.agents[0].sidecar_port, 4, Duration::from_millis(2));
    f.bind_mode(bad, "hot").await;
    let failed = f
        .eventually(UPGRADE, "the hot upgrade to be reported failed", async || {
            let s = f.demo(0).await?;
            match &s.error {
                Some(e) if e.contains(&format!("hot upgrade to {bad} failed")) => Ok(s),
                _ => Err(format!("no failure reported yet: {s:?}")),
            }
        })
        .await;
    let stats = load.finish().await;
    assert_eq!(failed.running("1.0.0"), Ok(pid), "the old generation keeps serving: {failed:?}");
    assert!(failed.error.as_deref().is_some_and(|e| e.contains(why)), "{failed:?}");
    assert_eq!(stats.failed, 0, "failed requests during a failed hot upgrade: {:?}", stats.errors);
    assert!(stats.answered_by.iter().all(|(v, p)| v == "1.0.0" && *p == u64::from(pid)), "{:?}", stats.answered_by);
    // The manager is told which upgrade was given up, for the plan's judge.
    f.eventually(UPGRADE, "the manager to see the failed upgrade", async || {
        let instances = f.instances().await?;
        let demo = instances
            .iter()
            .flat_map(|i| i["sidecars"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == "demo")
            .ok_or("no demo sidecar")?;
        if demo["failed_upgrade"] == bad { Ok(()) } else { Err(format!("{demo}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_that_never_gets_ready_leaves_the_old_one_serving() {
    let f =
        one_instance(sidecar_body(json!({"kind": "listen-fds"}), true, json!({})), &[("1.9.0", "fail-health")]).await;
    falls_back(&f, "1.9.0", "NOTIFY_SOCKET").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handover_the_new_process_never_completes_leaves_the_old_one_serving() {
    let f = one_instance(sidecar_body(json!({"kind": "scm-rights"}), false, json!({})), &[("1.9.0", "handover-hang")])
        .await;
    falls_back(&f, "1.9.0", "NOTIFY_SOCKET").await;
}

/// The sidecar record of agent 0.
fn record(f: &Fleet) -> Value {
    let path = f.agents[0].data_dir.join("sidecars/demo.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_during_a_hot_upgrade_leaves_no_stray_process_and_keeps_its_sockets() {
    let f =
        one_instance(sidecar_body(json!({"kind": "listen-fds"}), true, json!({})), &[("1.9.0", "handover-hang")]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    let load = Load::start(f.agents[0].sidecar_port, 4, Duration::from_millis(2));
    // The new generation never gets ready; kill the agent while it waits for it.
    f.bind_mode("1.9.0", "hot").await;
    let successor = f
        .eventually(UPGRADE, "the new generation to be recorded", async || {
            record(&f)["successor"]["pid"].as_u64().ok_or_else(|| format!("record: {}", record(&f)))
        })
        .await;
    let successor = u32::try_from(successor).expect("pid");
    assert!(alive(successor));
    f.kill_agent(0);
    // Bring the good release while the agent is down; the restarted agent finds both
    // processes, keeps the old one, kills the unconfirmed new one, and upgrades hot.
    f.bind_mode("1.2.0", "hot").await;
    f.start_agent(0);
    let new = hot_upgrade(&f, "1.2.0", old).await;
    let stats = load.finish().await;
    assert!(!alive(successor), "the unconfirmed generation {successor} was killed");
    assert_ne!(new, successor);
    assert_eq!(stats.failed, 0, "failed requests across the agent restart: {:?}", stats.errors);
    assert!(stats.answered_by.iter().any(|(v, _)| v == "1.2.0"), "{:?}", stats.answered_by);
    f.eventually(Duration::from_secs(10), "the old generation to exit", async || {
        if alive(old) { Err(format!("pid {old} still runs")) } else { Ok(()) }
    })
    .await;
}

/// A warm sidecar whose drain and undrain actions append to `journal` (the drain fails if
/// `drain_fails`).
fn warm_body(journal: &Path, drain_fails: bool) -> Value {
    let journal = journal.display().to_string();
    let drain = if drain_fails {
        format!("echo drain-refused >> {journal}; exit 3")
    } else {
        format!("echo drain >> {journal}")
    };
    sidecar_body(
        json!({"kind": "listen-fds"}),
        true,
        json!({
            "upgrade_modes": ["restart", "warm"],
            "warm": {
                "drain": {"exec": ["/bin/sh", "-c", drain]},
                "undrain": {"exec": ["/bin/sh", "-c", format!("echo undrain >> {journal}")]},
                "wait": "1500ms",
            },
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_upgrade_drains_restarts_and_puts_the_instance_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let f = one_instance(warm_body(&journal, false), &[]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    f.bind_mode("1.1.0", "warm").await;
    f.eventually(UPGRADE, "the manager to show the instance draining", async || {
        let view = f.manager_demo().await?;
        match view.get("i-1") {
            Some(s) if s.state == "draining" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let s = running(&f, "1.1.0").await;
    assert_ne!(s.pid, Some(old));
    assert!(!alive(old));
    f.eventually(Duration::from_secs(5), "the undrain action", async || {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        if text == "drain\nundrain\n" { Ok(()) } else { Err(format!("journal: {text:?}")) }
    })
    .await;
    assert_eq!(f.hello(0).await.expect("GET /")["version"], "1.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_drain_action_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let f = one_instance(warm_body(&journal, true), &[]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    f.bind_mode("1.1.0", "warm").await;
    let s = f
        .eventually(UPGRADE, "the failed drain to be reported", async || {
            let s = f.demo(0).await?;
            match &s.error {
                Some(e) if e.contains("drain action failed") => Ok(s),
                _ => Err(format!("{s:?}")),
            }
        })
        .await;
    assert_eq!(s.running("1.0.0"), Ok(old), "{s:?}");
    assert!(s.error.as_deref().is_some_and(|e| e.contains("exit status: 3")), "{s:?}");
    let text = std::fs::read_to_string(&journal).unwrap_or_default();
    assert!(text.starts_with("drain-refused\nundrain\n"), "the undrain action is tried after a failed drain: {text:?}");
    assert_eq!(f.hello(0).await.expect("GET /")["pid"], old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_on_deploy_target_waits_for_the_next_deploy() {
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    let versions: Vec<Value> = ["1.0.0", "1.1.0"].iter().map(|v| f.demo_version(v, None)).collect();
    f.create_catalog(&versions).await;
    f.bind("1.0.0").await;
    f.start_agent_with(0, &["--deploy-id", "d1"]);
    let old = running(&f, "1.0.0").await.pid.expect("running");
    f.bind_mode("1.1.0", "on-deploy").await;
    f.consistently(Duration::from_secs(2), "1.0.0 to keep running before a deploy", async || {
        f.demo(0).await?.running("1.0.0").map(|pid| assert_eq!(pid, old))
    })
    .await;
    // An agent restart with the same deploy id is not a deploy.
    f.kill_agent(0);
    f.start_agent_with(0, &["--deploy-id", "d1"]);
    f.eventually(UPGRADE, "the restarted agent to reconnect", async || {
        let s = f.demo(0).await?;
        if s.connected { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    f.consistently(Duration::from_secs(2), "1.0.0 to keep running after an agent restart", async || {
        f.demo(0).await?.running("1.0.0").map(|pid| assert_eq!(pid, old))
    })
    .await;
    // A new deploy id is a deploy: the target applies.
    f.kill_agent(0);
    f.start_agent_with(0, &["--deploy-id", "d2"]);
    let s = running(&f, "1.1.0").await;
    assert_ne!(s.pid, Some(old));
}

/// Binds `version` in warm mode and waits until the agent reports the warm upgrade failed
/// with the sidecar running again; its status then.
async fn failed_warm_upgrade(f: &Fleet, version: &str) -> Sidecar {
    f.bind_mode(version, "warm").await;
    let failed = format!("warm upgrade to {version} failed");
    f.eventually(UPGRADE, "the failed warm upgrade to be reported", async || {
        let s = f.demo(0).await?;
        match &s.error {
            Some(e) if e.contains(&failed) && s.state == "running" => Ok(s),
            _ => Err(format!("{s:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_upgrade_to_a_version_that_never_gets_ready_goes_back_to_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let f = one_instance(warm_body(&journal, false), &[("1.9.0", "fail-health")]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    let s = failed_warm_upgrade(&f, "1.9.0").await;
    assert_eq!(s.version, "1.0.0", "back on the old version: {s:?}");
    assert_ne!(s.pid, Some(old), "the old version was started again");
    let text = std::fs::read_to_string(&journal).unwrap_or_default();
    assert!(text.starts_with("drain\nundrain\n"), "the instance was put back: {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_reload_sidecar_gets_a_changed_environment_by_restart() {
    let f = one_instance(
        sidecar_body(json!({"kind": "signal", "signal": "SIGUSR2"}), false, json!({})),
        &[("1.3.0", "latency=1ms")],
    )
    .await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    // 1.3.0 sets DEMO_FAULT: a re-executed process would keep the old environment.
    let new = hot_upgrade(&f, "1.3.0", old).await;
    let environ = outrider_procfs::environ(new).expect("environ of the new process");
    assert!(environ.iter().any(|v| v == "DEMO_FAULT=latency=1ms"), "the new environment applies: {environ:?}");
    assert!(!alive(old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_blocks_on_a_hot_upgrade_the_agent_gave_up_before_its_batch_timeout() {
    let f =
        one_instance(sidecar_body(json!({"kind": "listen-fds"}), true, json!({})), &[("1.9.0", "fail-health")]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    f.api_ok(reqwest::Method::POST, "/sidecars/demo/versions/1.9.0/admit", Some(json!({"evidence": "test"}))).await;
    let plan = f
        .api_ok(
            reqwest::Method::POST,
            "/plans",
            Some(json!({"sidecar": "demo", "target_version": "1.9.0", "phases": [
                {"name": "gray", "stage": "canary", "mode": "hot", "bake": "1s", "batch_timeout": "60s"}]})),
        )
        .await;
    let id = plan["id"].as_str().expect("plan id").to_owned();
    let started = std::time::Instant::now();
    let blocked = f
        .eventually(Duration::from_secs(45), "the plan to block", async || {
            let (_, p) = f.api(reqwest::Method::GET, &format!("/plans/{id}"), None).await?;
            if p["state"] == "blocked" { Ok(p) } else { Err(format!("plan state {}", p["state"])) }
        })
        .await;
    // The executor settles 5 s after the manager starts; the startup deadline is 4 s.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "blocked after {:?}, not at the batch timeout",
        started.elapsed()
    );
    let incident = &blocked["incidents"][0];
    assert_eq!(incident["metric"], "upgrade_failed", "{incident}");
    assert_eq!(blocked["blast_radius"], 0, "the new version never served: {blocked}");
    // The agent keeps trying (with backoff) while the plan is blocked; 1.0.0 keeps running.
    let s = f.demo(0).await.expect("status");
    assert_eq!((s.version.as_str(), s.pid), ("1.0.0", Some(old)), "{s:?}");
}

/// The demo sidecar with an agent-owned socket and neither a startup probe nor `notify_ready`:
/// a new generation counts as ready the moment it is spawned, so only `min_ready` (the
/// default unless `extra` sets it) keeps a version that exits at once from retiring the old
/// one.
fn bare_body(extra: Value) -> Value {
    let mut body = json!({
        "name": "demo",
        "upgrade_modes": ["restart", "hot", "on-deploy"],
        "sockets": [{"name": "http", "listen": "127.0.0.1:${label.port}"}],
        "drain_time": "3s",
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// The manager's view of the demo sidecar of the only instance.
async fn manager_view(f: &Fleet) -> Result<Value, String> {
    f.instances()
        .await?
        .iter()
        .flat_map(|i| i["sidecars"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == "demo")
        .ok_or_else(|| "no demo sidecar".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_upgrade_to_a_version_that_exits_at_once_leaves_the_old_one_serving_every_request() {
    let f = one_instance(bare_body(json!({})), &[("1.9.0", "exit-immediately")]).await;
    let pid = running(&f, "1.0.0").await.pid.expect("running");
    let load = Load::start(f.agents[0].sidecar_port, 4, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    f.bind_mode("1.9.0", "hot").await;
    let failed = f
        .eventually(UPGRADE, "the hot upgrade to be reported failed", async || {
            let s = f.demo(0).await?;
            match &s.error {
                Some(e) if e.contains("hot upgrade to 1.9.0 failed") => Ok(s),
                _ => Err(format!("no failure reported yet: {s:?}")),
            }
        })
        .await;
    let reported_after = started.elapsed();
    assert!(failed.error.as_deref().is_some_and(|e| e.contains("within min_ready (3s)")), "{failed:?}");
    // The agent retries with backoff (shown `upgrading` during each attempt); every attempt
    // fails the same way while 1.0.0 serves.
    f.consistently(Duration::from_secs(4), "1.0.0 to keep serving", async || {
        let s = f.demo(0).await?;
        if (s.version.as_str(), s.pid) == ("1.0.0", Some(pid)) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    let stats = load.finish().await;
    eprintln!(
        "hot upgrade to a version that exits at once: {} requests sent, {} failed, over {:?} (failure reported after {reported_after:?}); answered by {:?}",
        stats.ok + stats.failed,
        stats.failed,
        started.elapsed(),
        stats.answered_by
    );
    assert_eq!(stats.failed, 0, "failed requests during the attempts: {:?}", stats.errors);
    assert!(stats.ok > 100, "too little load to tell: {stats:?}");
    assert!(stats.answered_by.iter().all(|(v, p)| v == "1.0.0" && *p == u64::from(pid)), "{:?}", stats.answered_by);
    f.eventually(UPGRADE, "the manager to see the failed upgrade", async || {
        let demo = manager_view(&f).await?;
        if demo["failed_upgrade"] == "1.9.0" && demo["version"] == "1.0.0" { Ok(()) } else { Err(format!("{demo}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_crash_loops_after_a_restart_upgrade_falls_back_to_the_one_it_replaced() {
    let f =
        one_instance(sidecar_body(json!({"kind": "listen-fds"}), true, json!({})), &[("1.9.0", "exit-immediately")])
            .await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    f.bind_mode("1.9.0", "restart").await;
    let back = f
        .eventually(UPGRADE, "the agent to go back to 1.0.0", async || {
            let s = f.demo(0).await?;
            s.running("1.0.0")?;
            match &s.error {
                Some(e) if e.contains("upgrade to 1.9.0 failed") && s.pid != Some(old) => Ok(s),
                _ => Err(format!("not back yet: {s:?}")),
            }
        })
        .await;
    eprintln!("after the crash loop: {back:?}");
    assert!(back.error.as_deref().is_some_and(|e| e.contains("back on 1.0.0")), "{back:?}");
    assert!(!alive(old), "the restart upgrade stopped the old process");
    let demo = f
        .eventually(UPGRADE, "the manager to show the failed upgrade", async || {
            let demo = manager_view(&f).await?;
            let shown = demo["failed_upgrade"] == "1.9.0" && demo["version"] == "1.0.0" && demo["state"] == "running";
            if shown { Ok(demo) } else { Err(format!("{demo}")) }
        })
        .await;
    eprintln!("the manager's instance status: {demo}");
    // Given up: the same target is not tried again, 1.0.0 keeps serving.
    let pid = back.pid.expect("running");
    f.consistently(Duration::from_secs(3), "1.0.0 to stay", async || {
        f.demo(0).await?.running("1.0.0").map(|p| assert_eq!(p, pid))
    })
    .await;
    assert_eq!(f.hello(0).await.expect("GET /")["version"], "1.0.0");
}

/// How one client attempt on the sidecar's port ended.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Attempt {
    Refused,
    Reset,
    /// Connected, then the connection was closed without an answer.
    Closed,
    Answered,
    /// No answer within the bound: the client was left waiting.
    Hung,
}

/// Connects to `port`, sends `GET /` and reads, all within one second.
async fn attempt(port: u16) -> (Attempt, Duration) {
    let started = Instant::now();
    let run = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").await?;
        let mut buf = [0; 64];
        s.read(&mut buf).await
    };
    let how = match tokio::time::timeout(Duration::from_secs(1), run).await {
        Err(_) => Attempt::Hung,
        Ok(Ok(0)) => Attempt::Closed,
        Ok(Ok(_)) => Attempt::Answered,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Attempt::Refused,
        Ok(Err(_)) => Attempt::Reset,
    };
    (how, started.elapsed())
}

/// `n` attempts 100 ms apart; none may hang or be answered. Prints what they saw.
async fn refused_quickly(port: u16, n: usize, what: &str) {
    let mut seen = std::collections::BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let (how, took) = attempt(port).await;
        assert!(matches!(how, Attempt::Refused | Attempt::Reset | Attempt::Closed), "{what}: {how:?} after {took:?}");
        slowest = slowest.max(took);
        *seen.entry(how).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{what}: {n} clients, {seen:?}, slowest {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn where_no_version_can_serve_clients_of_the_agent_owned_socket_are_refused_at_once() {
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    let versions = [f.demo_version("1.0.0", None), f.demo_version("1.9.0", Some("exit-immediately"))];
    f.create_catalog_with(bare_body(json!({})), &versions).await;
    // The only version crash-loops: there is nothing to fall back to.
    f.bind("1.9.0").await;
    f.start_agent(0);
    let port = f.agents[0].sidecar_port;
    f.eventually(UPGRADE, "demo@1.9.0 in a crash loop", async || {
        let s = f.demo(0).await?;
        if s.state == "crash_loop" { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    refused_quickly(port, 30, "crash loop").await;
    // A version that starts takes the socket up again, on the same address.
    f.bind("1.0.0").await;
    running(&f, "1.0.0").await;
    assert_eq!(f.hello(0).await.expect("GET /")["version"], "1.0.0");
    assert_eq!(attempt(port).await.0, Attempt::Answered);
    // Stopped (the binding disabled): refused too.
    f.api_ok(
        reqwest::Method::PUT,
        "/services/checkout/sidecars/demo",
        Some(json!({"enabled": false, "version": "1.0.0", "mode": "restart"})),
    )
    .await;
    f.eventually(UPGRADE, "the sidecar to be stopped", async || match attempt(port).await {
        (Attempt::Refused, _) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    refused_quickly(port, 10, "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_crashes_soon_after_a_hot_upgrade_falls_back_to_the_one_it_replaced() {
    // Up long enough to pass min_ready and retire 1.0.0, then crashing again and again.
    let f = one_instance(bare_body(json!({"min_ready": "1s"})), &[("1.8.0", "crash-after=3s")]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    f.bind_mode("1.8.0", "hot").await;
    running(&f, "1.8.0").await;
    let back = f
        .eventually(Duration::from_secs(40), "the agent to go back to 1.0.0", async || {
            let s = f.demo(0).await?;
            s.running("1.0.0")?;
            match &s.error {
                Some(e) if e.contains("upgrade to 1.8.0 failed") => Ok(s),
                _ => Err(format!("not back yet: {s:?}")),
            }
        })
        .await;
    eprintln!("after the crash loop of a hot upgrade: {back:?}");
    assert_ne!(back.pid, Some(old), "1.0.0 was retired by the hot upgrade, then started again");
    f.eventually(UPGRADE, "the manager to show the failed upgrade", async || {
        let demo = manager_view(&f).await?;
        if demo["failed_upgrade"] == "1.8.0" && demo["version"] == "1.0.0" { Ok(()) } else { Err(format!("{demo}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_upgrade_to_a_version_that_exits_within_min_ready_goes_back_before_the_instance_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let mut body = warm_body(&journal, false);
    // No probe, no READY=1: the new process counts as ready at once; min_ready catches it.
    for field in ["startup_probe", "liveness_probe", "notify_ready"] {
        body.as_object_mut().expect("object").remove(field);
    }
    let f = one_instance(body, &[("1.9.0", "exit-immediately")]).await;
    let old = running(&f, "1.0.0").await.pid.expect("running");
    let s = failed_warm_upgrade(&f, "1.9.0").await;
    assert!(s.error.as_deref().is_some_and(|e| e.contains("within min_ready")), "{s:?}");
    assert_eq!(s.version, "1.0.0", "back on the old version: {s:?}");
    assert_ne!(s.pid, Some(old), "the old version was started again");
    let text = std::fs::read_to_string(&journal).unwrap_or_default();
    assert!(text.starts_with("drain\nundrain\n"), "the instance was put back after the old version: {text:?}");
}
