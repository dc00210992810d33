//! End to end: `outrider server`, `outrider agent` and the demo sidecar as separate
//! processes, killed with SIGKILL in every way an operator may meet, and the fleet
//! converging every time (PRODUCT.md §3–§6).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use outrider_devtools::harness::{AgentFlags, Child, Fleet, PROCESS_GRACE, Sidecar, alive, free_ports, kill9};
use reqwest::Method;
use serde_json::Value;

/// The binary under test.
const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

/// Budget of one convergence (artifact fetch and start, or an upgrade with its drain time).
const CONVERGE: Duration = Duration::from_secs(30);

/// Every agent of `f` runs demo `version`, connected, answering `GET /` with that version
/// from the reported pid. Returns what each agent reports.
async fn converged(f: &Fleet, version: &str) -> Vec<Sidecar> {
    f.eventually(CONVERGE, &format!("every agent to run demo@{version}"), async || {
        let mut out = Vec::new();
        for i in 0..f.agents.len() {
            let s = f.demo(i).await?;
            let pid = s.running(version)?;
            if !s.connected {
                return Err(format!("agent {i} is not connected: {s:?}"));
            }
            let hello = f.hello(i).await?;
            if hello["version"] != version || hello["pid"] != pid {
                return Err(format!("agent {i}: sidecar pid {pid} of {version} expected, GET / says {hello}"));
            }
            out.push(s);
        }
        Ok(out)
    })
    .await
}

/// The manager lists every agent's instance as connected, running demo `version` with the
/// given pids.
async fn manager_sees(f: &Fleet, version: &str, pids: &[u32]) {
    f.eventually(CONVERGE, &format!("the manager to see demo@{version} with pids {pids:?}"), async || {
        let view = f.manager_demo().await?;
        for (a, &pid) in f.agents.iter().zip(pids) {
            let s = view.get(&a.instance).ok_or_else(|| format!("no instance {}: {view:?}", a.instance))?;
            if !s.connected || s.running(version)? != pid {
                return Err(format!("instance {}: want connected, pid {pid}; have {s:?}", a.instance));
            }
        }
        Ok(())
    })
    .await;
}

fn pids(v: &[Sidecar]) -> Vec<u32> {
    v.iter().map(|s| s.pid.expect("running sidecars have a pid")).collect()
}

/// Every agent still runs exactly `pids` at `version`, with no restarts.
async fn unchanged(f: &Fleet, version: &str, pids: &[u32]) -> Result<(), String> {
    for (i, &want) in pids.iter().enumerate() {
        let s = f.demo(i).await?;
        if s.running(version)? != want || s.restarts != 0 {
            return Err(format!("agent {i}: want pid {want} with 0 restarts, have {s:?}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn fleet_converges_through_upgrades_and_kills() {
    let started = Instant::now();
    let f = Fleet::new(OUTRIDER, 3);
    f.start_server().await;
    f.create_catalog(&[f.demo_version("1.0.0", None), f.demo_version("1.1.0", None)]).await;
    for i in 0..3 {
        f.start_agent(i);
    }

    // Enable the sidecar: every instance runs 1.0.0.
    f.bind("1.0.0").await;
    let v1 = pids(&converged(&f, "1.0.0").await);
    eprintln!("[{:?}] all agents run demo@1.0.0: {v1:?}", started.elapsed());

    // Change its version: every instance runs 1.1.0 in a new process.
    f.bind("1.1.0").await;
    let v2 = converged(&f, "1.1.0").await;
    let v2_pids = pids(&v2);
    for (i, s) in v2.iter().enumerate() {
        assert_ne!(s.pid, Some(v1[i]), "agent {i} still runs the 1.0.0 process");
        assert_eq!(s.restarts, 0, "an upgrade is not a restart: {s:?}");
        assert!(!alive(v1[i]), "the 1.0.0 process {} of agent {i} is still alive", v1[i]);
    }
    manager_sees(&f, "1.1.0", &v2_pids).await;
    eprintln!("[{:?}] all agents run demo@1.1.0: {v2_pids:?}", started.elapsed());

    // kill -9 the manager: the agents notice, keep their sidecars.
    f.kill_server();
    f.eventually(Duration::from_secs(15), "the agents to notice the manager is gone", async || {
        for i in 0..3 {
            if f.status(i).await?["connected"] != false {
                return Err(format!("agent {i} still says connected"));
            }
        }
        Ok(())
    })
    .await;
    unchanged(&f, "1.1.0", &v2_pids).await.expect("sidecars keep running without the manager");

    // Restart it on the same data dir and port: everything it acknowledged is there.
    f.start_server().await;
    let sidecar = f.api_ok(Method::GET, "/sidecars/demo", None).await;
    assert_eq!(sidecar["name"], "demo", "{sidecar}");
    let versions = f.api_ok(Method::GET, "/sidecars/demo/versions", None).await;
    for v in ["1.0.0", "1.1.0"] {
        let found = versions.as_array().and_then(|a| a.iter().find(|x| x["version"] == v));
        let found = found.unwrap_or_else(|| panic!("version {v} lost in the restart: {versions}"));
        assert_eq!(found["artifact"]["sha256"], f.demo_sha256(), "{found}");
    }
    let service = f.api_ok(Method::GET, "/services/checkout", None).await;
    assert_eq!(service["name"], "checkout", "{service}");
    let bindings = f.api_ok(Method::GET, "/services/checkout/sidecars", None).await;
    let binding = bindings.as_array().and_then(|a| a.iter().find(|b| b["sidecar"] == "demo"));
    let binding = binding.unwrap_or_else(|| panic!("binding lost in the restart: {bindings}"));
    assert_eq!(binding["version"], "1.1.0", "{binding}");
    assert_eq!(binding["enabled"], true, "{binding}");

    // The agents reconnect, and nothing restarts.
    converged(&f, "1.1.0").await;
    manager_sees(&f, "1.1.0", &v2_pids).await;
    f.consistently(Duration::from_millis(1500), "same sidecars after the manager restart", async || {
        unchanged(&f, "1.1.0", &v2_pids).await
    })
    .await;
    eprintln!("[{:?}] manager restarted, agents reconnected, no restarts", started.elapsed());

    // kill -9 a sidecar: its agent restarts it.
    kill9(v2_pids[0]);
    let restarted = f
        .eventually(CONVERGE, "the killed sidecar of agent 0 to be restarted", async || {
            let s = f.demo(0).await?;
            let pid = s.running("1.1.0")?;
            if pid == v2_pids[0] || s.restarts < 1 {
                return Err(format!("want a new pid and restarts >= 1, have {s:?}"));
            }
            let hello = f.hello(0).await?;
            if hello["version"] != "1.1.0" || hello["pid"] != pid {
                return Err(format!("GET / answers {hello}"));
            }
            Ok(pid)
        })
        .await;
    let mut now_pids = v2_pids.clone();
    now_pids[0] = restarted;
    manager_sees(&f, "1.1.0", &now_pids).await;
    for (i, &pid) in v2_pids.iter().enumerate().skip(1) {
        let s = f.demo(i).await.unwrap();
        assert_eq!((s.pid, s.restarts), (Some(pid), 0), "agent {i} was not touched: {s:?}");
    }
    eprintln!("[{:?}] killed sidecar restarted as {restarted}", started.elapsed());

    // kill -9 an agent: its sidecar lives on; restarted, the agent re-adopts it.
    let agent_pid = f.agent_pid(1).expect("agent 1 runs");
    f.kill_agent(1);
    assert!(!alive(agent_pid), "agent 1 ({agent_pid}) survived kill -9");
    assert!(alive(v2_pids[1]), "the sidecar of agent 1 died with its agent");
    let hello = f.hello(1).await.expect("the sidecar of a dead agent still serves");
    assert_eq!(hello["pid"], v2_pids[1], "{hello}");
    f.start_agent(1);
    let adopted = f
        .eventually(CONVERGE, "the restarted agent 1 to report its sidecar", async || {
            let s = f.demo(1).await?;
            s.running("1.1.0")?;
            if !s.connected {
                return Err(format!("not connected yet: {s:?}"));
            }
            Ok(s)
        })
        .await;
    assert_eq!(adopted.pid, Some(v2_pids[1]), "the restarted agent did not re-adopt its sidecar: {adopted:?}");
    assert_eq!(adopted.restarts, 0, "re-adoption is not a restart: {adopted:?}");
    manager_sees(&f, "1.1.0", &now_pids).await;
    f.consistently(Duration::from_millis(1500), "the re-adopted sidecar keeps running", async || {
        let s = f.demo(1).await?;
        if s.running("1.1.0")? != v2_pids[1] || s.restarts != 0 {
            return Err(format!("{s:?}"));
        }
        let hello = f.hello(1).await?;
        if hello["pid"] != v2_pids[1] {
            return Err(format!("GET / answers {hello}"));
        }
        Ok(())
    })
    .await;
    eprintln!("[{:?}] agent 1 restarted and re-adopted pid {}", started.elapsed(), v2_pids[1]);

    // The re-adopted sidecar is supervised like any other: killed, it is restarted.
    kill9(v2_pids[1]);
    let replaced = f
        .eventually(CONVERGE, "the killed re-adopted sidecar of agent 1 to be restarted", async || {
            let s = f.demo(1).await?;
            let pid = s.running("1.1.0")?;
            if pid == v2_pids[1] || s.restarts != 1 {
                return Err(format!("want a new pid and 1 restart, have {s:?}"));
            }
            let hello = f.hello(1).await?;
            if hello["version"] != "1.1.0" || hello["pid"] != pid {
                return Err(format!("GET / answers {hello}"));
            }
            Ok(pid)
        })
        .await;
    now_pids[1] = replaced;
    manager_sees(&f, "1.1.0", &now_pids).await;
    eprintln!("[{:?}] killed re-adopted sidecar restarted as {replaced}", started.elapsed());
}

#[tokio::test]
async fn agents_keep_sidecars_running_while_the_manager_is_down() {
    let started = Instant::now();
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    f.create_catalog(&[f.demo_version("1.0.0", None), f.demo_version("1.1.0", None)]).await;
    f.start_agent(0);
    f.bind("1.0.0").await;
    converged(&f, "1.0.0").await;
    f.bind("1.1.0").await;
    let before = converged(&f, "1.1.0").await[0].pid.expect("pid");

    f.kill_server();
    f.eventually(Duration::from_secs(15), "the agent to notice the manager is gone", async || {
        match f.status(0).await?["connected"].as_bool() {
            Some(false) => Ok(()),
            c => Err(format!("connected: {c:?}")),
        }
    })
    .await;

    // A sidecar dying during the outage is restarted at the last desired version.
    kill9(before);
    let after = f
        .eventually(CONVERGE, "the sidecar to be restarted without the manager", async || {
            let s = f.demo(0).await?;
            let pid = s.running("1.1.0")?;
            if pid == before || s.restarts < 1 {
                return Err(format!("want a new pid and restarts >= 1, have {s:?}"));
            }
            if s.connected {
                return Err("the agent claims to be connected to a dead manager".into());
            }
            let hello = f.hello(0).await?;
            if hello["version"] != "1.1.0" || hello["pid"] != pid {
                return Err(format!("GET / answers {hello}"));
            }
            Ok(pid)
        })
        .await;
    eprintln!("[{:?}] restarted {before} as {after} while the manager was down", started.elapsed());

    // The manager comes back and hears about it.
    f.start_server().await;
    f.eventually(CONVERGE, "the manager to see the restarted sidecar", async || {
        let view = f.manager_demo().await?;
        let s = view.get("i-1").ok_or_else(|| format!("no instance i-1: {view:?}"))?;
        if !s.connected || s.running("1.1.0")? != after || s.restarts < 1 {
            return Err(format!("want connected, pid {after}, restarts >= 1; have {s:?}"));
        }
        Ok(())
    })
    .await;
    // The agent marks itself connected a moment after the manager has registered the stream.
    f.eventually(CONVERGE, "the agent to see itself connected", async || {
        let s = f.demo(0).await?;
        if (s.pid, s.connected) == (Some(after), true) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    eprintln!("[{:?}] manager back, convergence reported", started.elapsed());
}

#[tokio::test]
async fn a_crashing_version_ends_in_crash_loop_with_growing_backoff() {
    let started = Instant::now();
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    f.create_catalog(&[f.demo_version("1.0.0", None), f.demo_version("1.2.0", Some("crash-after=300ms"))]).await;
    f.start_agent(0);
    f.eventually(Duration::from_secs(15), "the agent to connect", async || {
        match f.status(0).await?["connected"].as_bool() {
            Some(true) => Ok(()),
            c => Err(format!("connected: {c:?}")),
        }
    })
    .await;
    f.bind("1.2.0").await;

    // From the first process on, watch the restarts for a while.
    f.eventually(CONVERGE, "the first process of the crashing version", async || {
        let s = f.demo(0).await?;
        if s.version == "1.2.0" && (s.pid.is_some() || s.exits > 0) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    let window = Duration::from_millis(7000);
    let t0 = Instant::now();
    let mut increments: Vec<(Duration, u64)> = Vec::new();
    let mut last_restarts = 0;
    let mut states = Vec::new();
    let mut last = Sidecar::default();
    while t0.elapsed() < window {
        let s = f.demo(0).await.expect("agent status");
        if s.restarts != last_restarts {
            increments.push((t0.elapsed(), s.restarts));
            last_restarts = s.restarts;
        }
        if states.last() != Some(&s.state) {
            states.push(s.state.clone());
        }
        last = s;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("[{:?}] crash loop: restarts {increments:?}, states {states:?}, last {last:?}", started.elapsed());
    assert_eq!(last.state, "crash_loop", "states seen {states:?}");
    assert!(last.restarts >= 3, "the crashing sidecar is restarted: {increments:?}");
    assert!(
        last.restarts <= 8,
        "{} restarts in {window:?} is a busy loop, not a backoff: {increments:?}",
        last.restarts
    );
    // Restarts wait 250 ms, 500 ms, 1 s, 2 s… after each exit (plus the 300 ms the process
    // lives): the gaps between them must grow.
    let gaps: Vec<Duration> = increments.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.len() >= 2, "too few restarts to see the backoff: {increments:?}");
    for g in gaps.windows(2) {
        assert!(g[1] > g[0], "the restart backoff does not grow: gaps {gaps:?}");
    }
    if let [first, .., last] = gaps[..]
        && gaps.len() >= 3
    {
        assert!(last >= first * 2, "the restart backoff does not grow exponentially: gaps {gaps:?}");
    }
    f.eventually(CONVERGE, "the manager to see the crash loop", async || {
        let view = f.manager_demo().await?;
        match view.get("i-1") {
            Some(s) if s.state == "crash_loop" && s.version == "1.2.0" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A healthy version recovers at once.
    f.bind("1.0.0").await;
    let s = converged(&f, "1.0.0").await;
    f.consistently(Duration::from_millis(1000), "the healthy version keeps running", async || {
        let now = f.demo(0).await?;
        if now.running("1.0.0")? != s[0].pid.unwrap_or_default() {
            return Err(format!("{now:?}"));
        }
        Ok(())
    })
    .await;
    manager_sees(&f, "1.0.0", &pids(&s)).await;
    eprintln!("[{:?}] recovered to demo@1.0.0", started.elapsed());
}

#[tokio::test]
async fn an_artifact_with_the_wrong_hash_is_refused_and_the_old_version_keeps_running() {
    let started = Instant::now();
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    let wrong = "0123456789abcdef".repeat(4);
    f.create_catalog(&[f.demo_version("1.0.0", None), f.demo_version_with_sha("1.1.0", None, &wrong)]).await;
    f.start_agent(0);
    f.bind("1.0.0").await;
    let old = converged(&f, "1.0.0").await[0].pid.expect("pid");

    f.bind("1.1.0").await;
    let refused = f
        .eventually(CONVERGE, "the agent to report the refused artifact", async || {
            let s = f.demo(0).await?;
            match &s.error {
                Some(e) if e.contains("sha256 mismatch") => Ok(s),
                _ if s.state == "failed" => Ok(s),
                _ => Err(format!("no hash error yet: {s:?}")),
            }
        })
        .await;
    eprintln!("[{:?}] refused: {refused:?}", started.elapsed());
    assert!(refused.error.as_deref().is_some_and(|e| e.contains(&wrong)), "the error names the hash: {refused:?}");
    assert_eq!(refused.running("1.0.0"), Ok(old), "the old version keeps running: {refused:?}");
    f.consistently(Duration::from_millis(1500), "the old version keeps running", async || {
        let s = f.demo(0).await?;
        if s.running("1.0.0")? != old || s.restarts != 0 {
            return Err(format!("{s:?}"));
        }
        let hello: Value = f.hello(0).await?;
        if hello["version"] != "1.0.0" || hello["pid"] != old {
            return Err(format!("GET / answers {hello}"));
        }
        Ok(())
    })
    .await;
    assert!(alive(old));
    let view = f.manager_demo().await.expect("instances");
    let s = &view["i-1"];
    assert_eq!(s.running("1.0.0"), Ok(old), "the manager sees the old version running: {s:?}");
}

/// Waits until agent `i` runs demo `version` and returns its pid.
async fn runs(f: &Fleet, i: usize, version: &str) -> u32 {
    f.eventually(CONVERGE, &format!("agent {i} to run demo@{version}"), async || f.demo(i).await?.running(version))
        .await
}

#[tokio::test]
async fn a_real_instance_that_joins_an_upgraded_cell_starts_on_the_target_and_is_rolled_back_with_it() {
    let f = Fleet::new(OUTRIDER, 2);
    f.start_server().await;
    f.create_catalog(&[f.demo_version("1.0.0", None), f.demo_version("1.1.0", None)]).await;
    f.api_ok(Method::POST, "/sidecars/demo/versions/1.1.0/admit", Some(serde_json::json!({"evidence": "e2e"}))).await;
    f.bind("1.0.0").await;
    f.start_agent(0);
    runs(&f, 0, "1.0.0").await;

    // A plan whose one batch (the canary cell boe/prod/canary of checkout) bakes for long.
    let body = serde_json::json!({
        "sidecar": "demo", "target_version": "1.1.0", "feature_services": {"per_trait_value": 0},
        "phases": [{"name": "gray", "stage": "canary", "mode": "restart",
                    "batching": {"strategy": "linear", "size": 1}, "bake": "10m", "batch_timeout": "30s"}]
    });
    let plan = f.api_ok(Method::POST, "/plans", Some(body)).await;
    let id = plan["id"].as_str().unwrap().to_owned();
    runs(&f, 0, "1.1.0").await;
    f.eventually(CONVERGE, "the batch to bake", async || {
        let p = f.api_ok(Method::GET, &format!("/plans/{id}"), None).await;
        (p["phases"][0]["batches"][0]["state"] == "baking").then_some(()).ok_or_else(|| format!("{}", p["phases"]))
    })
    .await;

    // A second instance of the same cell registers mid-plan: it starts on the target.
    f.start_agent(1);
    runs(&f, 1, "1.1.0").await;

    // The rollback takes both back, and says rolled_back only once both run 1.0.0.
    let rolled = f.api_ok(Method::POST, &format!("/plans/{id}/rollback"), Some(serde_json::json!({}))).await;
    assert_eq!(rolled["state"], "running");
    let done = f
        .eventually(CONVERGE, "the plan to say rolled_back", async || {
            let p = f.api_ok(Method::GET, &format!("/plans/{id}"), None).await;
            (p["state"] == "rolled_back")
                .then_some(p.clone())
                .ok_or_else(|| format!("{} ({})", p["state"], p["reason"]))
        })
        .await;
    for i in 0..2 {
        let s = f.demo(i).await.expect("agent status");
        assert!(s.running("1.0.0").is_ok(), "plan said rolled_back while agent {i} reports {s:?}: {}", done["reason"]);
    }
}

#[tokio::test]
async fn a_second_agent_with_a_live_instance_s_id_is_refused_and_the_holder_comes_back_at_once() {
    let f = Fleet::new(OUTRIDER, 1);
    f.start_server().await;
    f.create_catalog(&[f.demo_version("1.0.0", None)]).await;
    f.start_agent(0);
    f.bind("1.0.0").await;
    let held = pids(&converged(&f, "1.0.0").await);

    // Another host (another data dir, so another claim) with the same instance id.
    let dir = tempfile::tempdir().unwrap();
    let [listen, port] = free_ports(2).unwrap()[..] else { unreachable!() };
    let (manager, token_file) = (f.base(), f.token_file());
    let flags = AgentFlags {
        manager: &manager,
        token_file: &token_file,
        data_dir: &dir.path().join("agent"),
        service: "checkout",
        instance: &f.agents[0].instance,
        region: "boe",
        env: "prod",
        stage: "full",
        labels: vec![("port".into(), port.to_string())],
        listen,
    };
    let mut impostor = Child::spawn("impostor", Path::new(OUTRIDER), flags.args(), dir.path().join("log")).unwrap();
    f.eventually(CONVERGE, "the second agent to be refused", async || {
        let url = format!("http://127.0.0.1:{listen}/status");
        let status: Value =
            f.http.get(url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
        let error = status["last_error"].as_str().unwrap_or_default();
        if error.contains("PermissionDenied") && error.contains("delete the instance") {
            Ok(())
        } else {
            Err(format!("status: {status}"))
        }
    })
    .await;
    let instances = f.instances().await.unwrap();
    assert_eq!((instances.len(), &instances[0]["stage"]), (1, &Value::from("canary")), "untouched: {instances:?}");
    manager_sees(&f, "1.0.0", &held).await;
    impostor.stop(PROCESS_GRACE).await;

    // The holder restarted on its data dir gets its instance back at once, sidecar untouched.
    f.kill_agent(0);
    f.start_agent(0);
    manager_sees(&f, "1.0.0", &held).await;
    unchanged(&f, "1.0.0", &held).await.unwrap();
}
