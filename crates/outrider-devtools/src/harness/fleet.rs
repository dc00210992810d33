//! A fleet for end-to-end tests: a manager and agents as real processes (the `outrider`
//! binary), the demo sidecar as their artifact, everything under one temporary directory.
//!
//! Ports are picked free on the loopback, so tests run in parallel. Process output goes to
//! log files whose tails are printed when a test fails. Dropping a [`Fleet`] SIGKILLs every
//! process it started and every process that runs from the fleet's directory (the sidecars
//! the agents recorded, reported or just started): no test leaves processes behind. Failures
//! panic: this is for tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{Binaries, Child, cleanup, free_ports, process::manager_args, sha256_file};

/// Where the tenant's REST API lives, relative to the server.
const TENANT: &str = "/api/v1/tenants/default";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `POST /sidecars` body of the demo sidecar: an agent-owned socket on `${label.port}`
/// (hot upgrades by `LISTEN_FDS`), readiness by `NOTIFY_SOCKET`, short probes. Tests that
/// need other settings add them and pass it to [`Fleet::create_catalog_with`].
pub fn demo_sidecar_body() -> Value {
    json!({
        "name": "demo",
        "upgrade_modes": ["restart", "hot", "on-deploy"],
        "sockets": [{"name": "http", "listen": "127.0.0.1:${label.port}"}],
        "notify_ready": true,
        "drain_time": "2s",
        "startup_probe": {"http": "http://127.0.0.1:${label.port}/healthz", "deadline": "10s"},
        "liveness_probe": {"http": "http://127.0.0.1:${label.port}/healthz", "period": "1s"},
    })
}

/// The last `lines` lines of a file (or why not).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else { return "(no file)".into() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One agent of a fleet: its identity, directories and ports.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Instance id.
    pub instance: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// Port of the agent's own endpoint (`--listen`).
    pub listen: u16,
    /// Port the instance's demo sidecar listens on (`--label port=`).
    pub sidecar_port: u16,
}

/// A manager and agents as processes, under one temporary directory.
pub struct Fleet {
    root: TempDir,
    /// The canonical path of `root` (processes are found by their executable under it).
    canonical_root: PathBuf,
    binaries: Binaries,
    /// SHA-256 of the demo sidecar.
    demo_sha256: String,
    /// Client for the manager, the agents and the sidecars (no connection reuse: servers
    /// are killed under it).
    pub http: reqwest::Client,
    /// Port of the manager (kept across restarts).
    pub port: u16,
    /// The agents, by index.
    pub agents: Vec<AgentSpec>,
    /// Running processes by role (`server`, `agent-<instance>`).
    procs: Mutex<BTreeMap<String, Child>>,
    /// Every log file written so far, in order of creation.
    logs: Mutex<Vec<PathBuf>>,
    /// Every sidecar pid seen in an agent's status.
    seen_pids: Mutex<BTreeSet<u32>>,
}

impl Fleet {
    /// A fleet of `agents` agents (not started) of service `checkout`, run by the `outrider`
    /// executable at `outrider` (the demo sidecar must be next to it).
    pub fn new(outrider: impl AsRef<Path>, agents: usize) -> Self {
        let binaries = Binaries::beside(outrider.as_ref())
            .unwrap_or_else(|e| panic!("{e}: build the workspace (cargo test --workspace)"));
        let demo_sha256 = sha256_file(&binaries.demo_sidecar).unwrap_or_else(|e| panic!("{e}"));
        let root = tempfile::Builder::new().prefix("outrider-e2e-").tempdir().expect("tempdir");
        let canonical_root = root.path().canonicalize().expect("canonical tempdir");
        fs::create_dir_all(root.path().join("logs")).expect("logs dir");
        let mut ports = free_ports(1 + 2 * agents).expect("free ports").into_iter();
        let port = ports.next().expect("a port for the manager");
        let agents = (1..=agents)
            .map(|n| AgentSpec {
                instance: format!("i-{n}"),
                data_dir: root.path().join(format!("agent-{n}")),
                listen: ports.next().expect("a port per agent"),
                sidecar_port: ports.next().expect("a port per sidecar"),
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        Self {
            root,
            canonical_root,
            binaries,
            demo_sha256,
            http,
            port,
            agents,
            procs: Mutex::new(BTreeMap::new()),
            logs: Mutex::new(Vec::new()),
            seen_pids: Mutex::new(BTreeSet::new()),
        }
    }

    /// The SHA-256 (hex) of the demo sidecar binary.
    pub fn demo_sha256(&self) -> &str {
        &self.demo_sha256
    }

    /// `POST /sidecars/demo/versions` body: the demo binary, optionally with a `DEMO_FAULT`.
    pub fn demo_version(&self, version: &str, fault: Option<&str>) -> Value {
        self.demo_version_with_sha(version, fault, &self.demo_sha256)
    }

    /// Like [`Fleet::demo_version`] with an arbitrary declared sha256.
    pub fn demo_version_with_sha(&self, version: &str, fault: Option<&str>, sha256: &str) -> Value {
        let mut env = json!({"PORT": "${label.port}"});
        if let Some(f) = fault {
            env["DEMO_FAULT"] = json!(f);
        }
        json!({
            "version": version,
            "artifact": {"url": format!("file://{}", self.binaries.demo_sidecar.display()), "sha256": sha256},
            "env": env,
        })
    }

    fn server_dir(&self) -> PathBuf {
        self.root.path().join("server")
    }

    /// The admin token's file (in the manager's data dir).
    pub fn token_file(&self) -> PathBuf {
        self.server_dir().join("admin.token")
    }

    /// Base URL of the manager.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Spawns `outrider <args>` as `role`, output to a new log file.
    fn spawn(&self, role: &str, args: Vec<std::ffi::OsString>) {
        let mut logs = lock(&self.logs);
        let n = logs.iter().filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(role))).count();
        let log = self.root.path().join("logs").join(format!("{role}.{}.log", n + 1));
        let mut command = std::process::Command::new(&self.binaries.outrider);
        command
            .args(&args)
            .env("OUTRIDER_LOG", "info,outrider_agent=debug")
            .env("NO_COLOR", "1")
            .env_remove("OUTRIDER_TOKEN");
        let child = Child::spawn_command(role, command, log.clone()).unwrap_or_else(|e| panic!("{e:?} {args:?}"));
        logs.push(log);
        let previous = lock(&self.procs).insert(role.to_owned(), child);
        assert!(previous.is_none(), "{role} was already running");
    }

    /// SIGKILLs `role` and reaps it.
    fn kill_role(&self, role: &str) {
        let mut child = lock(&self.procs).remove(role).unwrap_or_else(|| panic!("{role} is not running"));
        child.kill_blocking();
    }

    /// Pid of a running process started as `role`.
    fn pid_of(&self, role: &str) -> Option<u32> {
        lock(&self.procs).get(role).and_then(Child::pid)
    }

    /// Starts the manager and waits until it is ready and its token written.
    pub async fn start_server(&self) {
        self.spawn("server", manager_args(&self.server_dir(), self.port));
        self.eventually(Duration::from_secs(20), "the manager to be ready", async || {
            if let Some(child) = lock(&self.procs).get_mut("server")
                && let Err(e) = child.ensure_alive()
            {
                return Err(e.to_string());
            }
            let resp = self.http.get(format!("{}/readyz", self.base())).send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("/readyz answered {}", resp.status()));
            }
            if !self.token_file().exists() {
                return Err("no admin.token yet".into());
            }
            Ok(())
        })
        .await;
    }

    /// `kill -9` of the manager.
    pub fn kill_server(&self) {
        self.kill_role("server");
    }

    fn agent_role(&self, i: usize) -> String {
        format!("agent-{}", self.agents[i].instance)
    }

    /// Starts agent `i` (the same flags every time).
    pub fn start_agent(&self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// Starts agent `i` with `extra` flags (`--deploy-id D`, say).
    pub fn start_agent_with(&self, i: usize, extra: &[&str]) {
        let a = &self.agents[i];
        let (manager, token_file) = (self.base(), self.token_file());
        let flags = super::AgentFlags {
            manager: &manager,
            token_file: &token_file,
            data_dir: &a.data_dir,
            service: "checkout",
            instance: &a.instance,
            region: "boe",
            env: "prod",
            stage: "canary",
            labels: vec![("port".into(), a.sidecar_port.to_string())],
            listen: a.listen,
        };
        let mut args = flags.args();
        args.extend(extra.iter().map(Into::into));
        self.spawn(&self.agent_role(i), args);
    }

    /// `kill -9` of agent `i`.
    pub fn kill_agent(&self, i: usize) {
        self.kill_role(&self.agent_role(i));
    }

    /// Pid of agent `i`'s process.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.pid_of(&self.agent_role(i))
    }

    /// A call to the tenant's REST API (`path` below `/api/v1/tenants/default`).
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let token = fs::read_to_string(self.token_file()).map_err(|e| format!("token: {e}"))?;
        let mut req = self.http.request(method, format!("{}{TENANT}{path}", self.base())).bearer_auth(token.trim());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// A REST call that must succeed (2xx); returns the body.
    pub async fn api_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        match self.api(method, path, body).await {
            Ok((s, v)) if (200..300).contains(&s) => v,
            Ok((s, v)) => panic!("{what}: {s} {v}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Creates the demo sidecar, the given versions and the service `checkout`.
    pub async fn create_catalog(&self, versions: &[Value]) {
        self.create_catalog_with(demo_sidecar_body(), versions).await;
    }

    /// Like [`Self::create_catalog`] with another body for the demo sidecar.
    pub async fn create_catalog_with(&self, sidecar: Value, versions: &[Value]) {
        self.api_ok(Method::POST, "/sidecars", Some(sidecar)).await;
        for v in versions {
            self.api_ok(Method::POST, "/sidecars/demo/versions", Some(v.clone())).await;
        }
        self.api_ok(Method::POST, "/services", Some(json!({"name": "checkout"}))).await;
    }

    /// Admits demo `version` and binds service `checkout` to it (restart mode).
    pub async fn bind(&self, version: &str) {
        self.bind_mode(version, "restart").await;
    }

    /// Admits demo `version` (only admitted versions can be bound) and binds service
    /// `checkout` to it with upgrade `mode`.
    pub async fn bind_mode(&self, version: &str, mode: &str) {
        let admit = format!("/sidecars/demo/versions/{version}/admit");
        self.api_ok(Method::POST, &admit, Some(json!({"evidence": "test harness"}))).await;
        let b = self
            .api_ok(Method::PUT, "/services/checkout/sidecars/demo", Some(json!({"version": version, "mode": mode})))
            .await;
        assert_eq!(b["version"], version, "{b}");
    }

    /// The manager's view of the instances.
    pub async fn instances(&self) -> Result<Vec<Value>, String> {
        match self.api(Method::GET, "/instances", None).await? {
            (200, Value::Array(v)) => Ok(v),
            (s, v) => Err(format!("GET /instances: {s} {v}")),
        }
    }

    /// The manager's view of the demo sidecar per instance id (`connected` is the instance's).
    pub async fn manager_demo(&self) -> Result<BTreeMap<String, Sidecar>, String> {
        let mut out = BTreeMap::new();
        for inst in self.instances().await? {
            let id = inst["id"].as_str().unwrap_or_default().to_owned();
            let connected = inst["connected"].as_bool().unwrap_or(false);
            let demo = inst["sidecars"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "demo"));
            let sidecar = match demo {
                Some(s) => Sidecar::from_json(s, connected),
                None => Sidecar { connected, ..Sidecar::default() },
            };
            out.insert(id, sidecar);
        }
        Ok(out)
    }

    /// Agent `i`'s `/status`.
    pub async fn status(&self, i: usize) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/status", self.agents[i].listen);
        let resp = self.http.get(&url).send().await.map_err(|e| format!("agent {i} /status: {e}"))?;
        let v: Value = resp.json().await.map_err(|e| format!("agent {i} /status: {e}"))?;
        for s in v["sidecars"].as_array().into_iter().flatten() {
            if let Some(pid) = s["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                lock(&self.seen_pids).insert(pid);
            }
        }
        Ok(v)
    }

    /// Agent `i`'s status of the demo sidecar.
    pub async fn demo(&self, i: usize) -> Result<Sidecar, String> {
        let v = self.status(i).await?;
        let s = v["sidecars"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "demo"))
            .ok_or_else(|| format!("agent {i} reports no demo sidecar: {v}"))?;
        Ok(Sidecar::from_json(s, v["connected"].as_bool().unwrap_or(false)))
    }

    /// `GET /` of agent `i`'s demo sidecar.
    pub async fn hello(&self, i: usize) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/", self.agents[i].sidecar_port);
        let resp = self.http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        resp.json().await.map_err(|e| format!("GET {url}: {e}"))
    }

    /// Polls `check` every 100 ms until it returns `Ok`; panics after `timeout` with the last
    /// error it returned (the log tails follow when the fleet is dropped).
    pub async fn eventually<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            let last = match check().await {
                Ok(v) => return v,
                Err(e) => e,
            };
            if start.elapsed() >= timeout {
                panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks `check` every 100 ms for `duration`; panics at the first error.
    pub async fn consistently(
        &self,
        duration: Duration,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let start = Instant::now();
        while start.elapsed() < duration {
            if let Err(e) = check().await {
                panic!("{what} stopped holding after {:?}: {e}", start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn print_logs(&self) {
        eprintln!("===== outrider e2e: logs of {} =====", self.root.path().display());
        let mut files = lock(&self.logs).clone();
        for a in &self.agents {
            if let Ok(entries) = fs::read_dir(a.data_dir.join("logs")) {
                let mut sidecar_logs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                sidecar_logs.sort();
                files.extend(sidecar_logs);
            }
        }
        for f in files {
            eprintln!("----- {} (last 40 lines) -----\n{}", f.display(), tail(&f, 40));
        }
        eprintln!("===== end of logs =====");
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Agents and the manager first, so that nothing starts new sidecars.
        let mut procs = std::mem::take(&mut *lock(&self.procs));
        for child in procs.values_mut() {
            child.kill_blocking();
        }
        // Then every sidecar we know of (recorded or reported), with its process group, and
        // anything else that runs from our directory (a sidecar spawned just before its agent
        // died, before its record was written).
        let dirs: Vec<PathBuf> = self.agents.iter().map(|a| a.data_dir.clone()).collect();
        let mut pids = cleanup::recorded_pids(&dirs);
        pids.extend(lock(&self.seen_pids).iter().filter_map(|&p| i32::try_from(p).ok()));
        cleanup::kill_now_running_from(&self.canonical_root, &pids);
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// One sidecar as an agent reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sidecar {
    /// Whether the agent is connected to the manager.
    pub connected: bool,
    /// Version.
    pub version: String,
    /// State.
    pub state: String,
    /// Pid, when a process runs.
    pub pid: Option<u32>,
    /// Restarts after unexpected exits.
    pub restarts: u64,
    /// Unexpected exits.
    pub exits: u64,
    /// Last error.
    pub error: Option<String>,
}

impl Sidecar {
    fn from_json(s: &Value, connected: bool) -> Self {
        Self {
            connected,
            version: s["version"].as_str().unwrap_or_default().to_owned(),
            state: s["state"].as_str().unwrap_or_default().to_owned(),
            pid: s["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            restarts: s["restarts"].as_u64().unwrap_or(0),
            exits: s["exits"].as_u64().unwrap_or(0),
            error: s["error"].as_str().map(str::to_owned),
        }
    }

    /// `Ok(pid)` when it runs `version` and is `running`.
    pub fn running(&self, version: &str) -> Result<u32, String> {
        match self.pid {
            Some(pid) if self.state == "running" && self.version == version => Ok(pid),
            _ => Err(format!("want demo@{version} running, have {self:?}")),
        }
    }
}
