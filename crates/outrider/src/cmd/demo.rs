//! `outrider demo`: the whole loop on one machine, in a few seconds.
//!
//! 1. starts `outrider server` on a temporary directory and a free loopback port;
//! 2. registers the demo sidecar (`outrider-demo-sidecar`, found next to this binary) with
//!    versions 1.0.0 and 1.1.0, both admitted, and binds service `checkout` to 1.0.0;
//! 3. starts three `outrider agent` processes (instances `i-1`…`i-3`) and waits until each
//!    reports the sidecar running, then asks each sidecar `GET /`;
//! 4. moves the binding to 1.1.0 in `restart` mode and prints every instance's move as the
//!    manager sees it, while probing each sidecar every few milliseconds to measure the gap;
//! 5. disables the binding (the agents stop their sidecars cleanly), stops the agents and the
//!    manager, removes the temporary directory and prints a summary.
//!
//! The manager and the agents run in their own process groups, so a Ctrl-C in the terminal
//! reaches only the demo, which then stops everything in order (a second Ctrl-C kills at
//! once). Whatever happens, no process is left behind: the children are killed when the demo
//! ends, and any process that still runs an executable from the temporary directory (a
//! sidecar the agents did not stop) is killed too.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::File,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::{Pid, getpgid},
};
use outrider_client::{Client, EventQuery, InstanceFilter};
use outrider_model::{
    Artifact, Binding, HumanDuration, Instance, NewVersion, Priority, Probe, Service, Sidecar, SidecarState,
    SidecarStatus, UpgradeMode,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Tenant everything is created in.
const TENANT: &str = outrider_model::DEFAULT_TENANT;
/// Name of the sidecar.
const SIDECAR: &str = "demo";
/// Service the agents' instances belong to.
const SERVICE: &str = "checkout";
/// Version the instances start with.
const OLD: &str = "1.0.0";
/// Version they are upgraded to.
const NEW: &str = "1.1.0";
/// Drain time of the sidecar (SIGTERM to SIGKILL).
const DRAIN: Duration = Duration::from_secs(2);

/// How long the manager may take to answer `/readyz`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agents may take to fetch the artifact and start the sidecar.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the upgrade may take on every instance.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agents may take to stop their sidecars once the binding is disabled.
const STOP_SIDECARS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between SIGTERM and SIGKILL for the manager, the agents and leftover sidecars.
const PROCESS_GRACE: Duration = Duration::from_secs(5);
/// Time between two looks at the manager's instance list (or the agents' status).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The same during the upgrade, to catch the intermediate states and time the moves.
const FOLLOW_EVERY: Duration = Duration::from_millis(25);
/// Time between two requests of a sidecar prober during the upgrade.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Time one HTTP request to a sidecar or an agent may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Events printed after the upgrade.
const EVENTS_SHOWN: usize = 8;

/// Flags of `outrider demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory (manager data, agent data, logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Use the 7 loopback ports from this one on (the manager, then the 3 agents, then the
    /// 3 sidecars) instead of free ports picked at random.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=65_529))]
    pub base_port: Option<u16>,
}

/// One instance of the demo fleet.
#[derive(Debug, Clone, Copy)]
struct InstanceSpec {
    id: &'static str,
    region: &'static str,
    env: &'static str,
    stage: &'static str,
}

/// The three instances the demo runs.
const INSTANCES: [InstanceSpec; 3] = [
    InstanceSpec { id: "i-1", region: "boe", env: "prod", stage: "canary" },
    InstanceSpec { id: "i-2", region: "cn-north", env: "prod", stage: "full" },
    InstanceSpec { id: "i-3", region: "cn-north", env: "prod", stage: "full" },
];

/// The loopback ports the demo uses.
#[derive(Debug, Clone)]
struct Ports {
    manager: u16,
    /// The agents' own HTTP endpoints (`/status`), one per instance.
    agents: Vec<u16>,
    /// The sidecars' ports (`--label port=`), one per instance.
    sidecars: Vec<u16>,
}

impl Ports {
    /// Seven consecutive ports from `base` if given (each checked free), else seven free
    /// ports chosen by the system.
    fn choose(base: Option<u16>) -> anyhow::Result<Self> {
        let n = 1 + 2 * INSTANCES.len();
        let ports = match base {
            Some(base) => consecutive_free_ports(base, n)?,
            None => free_ports(n)?,
        };
        let k = INSTANCES.len();
        Ok(Self { manager: ports[0], agents: ports[1..=k].to_vec(), sidecars: ports[k + 1..].to_vec() })
    }
}

/// `n` distinct free loopback ports: all are bound at once, then released.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a free port on 127.0.0.1")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `base`, `base + 1`, … (`n` ports), each checked free.
fn consecutive_free_ports(base: u16, n: usize) -> anyhow::Result<Vec<u16>> {
    let ports: Vec<u16> = (0..n).map_while(|i| base.checked_add(u16::try_from(i).ok()?)).collect();
    anyhow::ensure!(ports.len() == n, "--base-port {base} leaves no room for {n} ports");
    for &port in &ports {
        TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} is not free on 127.0.0.1; choose another --base-port"))?;
    }
    Ok(ports)
}

/// Prints lines prefixed with the time since the demo started.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    /// Prints `[  1.2s] line`.
    fn say(&self, line: impl std::fmt::Display) {
        println!("[{:>5.1}s] {line}", self.0.elapsed().as_secs_f64());
    }
}

/// A child process of the demo (the manager or an agent), in its own process group and
/// killed if dropped.
struct Child {
    name: String,
    log: PathBuf,
    child: tokio::process::Child,
}

/// How a child ended when asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It had already exited.
    Before,
    /// It exited after SIGTERM.
    Terminated,
    /// It had to be killed.
    Killed,
}

impl Child {
    /// Runs `exe args…` with stdout and stderr appended to `log`.
    fn spawn(name: &str, exe: &Path, args: Vec<OsString>, log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("cannot create the log file {}", log.display()))?;
        let err = out.try_clone().context("cannot duplicate a log file handle")?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Ctrl-C in the terminal must reach only the demo, which stops everything in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name} ({})", exe.display()))?;
        Ok(Self { name: name.to_owned(), log, child })
    }

    /// Fails when the process has exited, pointing at its log.
    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the {} exited ({status}); see {}", self.name, self.log.display()),
            Err(e) => Err(e).with_context(|| format!("cannot check the {}", self.name)),
        }
    }

    /// SIGTERM to the whole group, then SIGKILL after `grace`.
    async fn stop(&mut self, grace: Duration) -> Ended {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return Ended::Before;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
            return Ended::Terminated;
        }
        self.kill().await;
        Ended::Killed
    }

    /// SIGKILL at once, and reap.
    async fn kill(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(PROCESS_GRACE, self.child.wait()).await;
    }
}

/// An agent process and what the demo knows about its instance.
struct Agent {
    spec: InstanceSpec,
    process: Child,
    data_dir: PathBuf,
    /// The agent's own endpoint (`/status`).
    status_url: String,
    /// The sidecar's `GET /`.
    sidecar_url: String,
}

/// The sidecar's state on one instance, as reported to the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    state: SidecarState,
    version: String,
    pid: Option<u32>,
    error: Option<String>,
}

impl Seen {
    fn of(status: &SidecarStatus) -> Self {
        Self { state: status.state, version: status.version.clone(), pid: status.pid, error: status.error.clone() }
    }

    /// `1.0.0 running (pid 1234)`.
    fn describe(&self) -> String {
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let error = self.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        format!("{} {}{pid}{error}", self.version, self.state)
    }

    fn is_running(&self, version: &str) -> bool {
        self.state == SidecarState::Running && self.version == version && self.pid.is_some()
    }

    fn is_failing(&self) -> bool {
        matches!(self.state, SidecarState::Failed | SidecarState::CrashLoop)
    }
}

/// How one instance moved to the new version.
#[derive(Debug, Clone)]
struct Move {
    id: &'static str,
    old_pid: u32,
    new_pid: u32,
    took: Duration,
}

/// What a sidecar prober saw during the upgrade.
#[derive(Debug, Clone, Default)]
struct ProbeStats {
    ok: u32,
    failed: u32,
    /// Longest time between two answers that had failures in between.
    longest_gap: Duration,
    /// Versions answered, in order, without repeats.
    versions: Vec<String>,
}

/// What the upgrade did.
#[derive(Debug, Clone)]
struct UpgradeReport {
    moves: Vec<Move>,
    probes: Vec<(&'static str, ProbeStats)>,
}

/// The answer of an agent's `/status`.
#[derive(Debug, Deserialize)]
struct AgentStatus {
    #[serde(default)]
    sidecars: Vec<SidecarStatus>,
}

/// The answer of the sidecar's `GET /`.
#[derive(Debug, Deserialize)]
struct Hello {
    version: String,
    #[serde(default)]
    pid: Option<u32>,
}

/// Everything the demo started, to run the script and to clean up after it.
struct Demo {
    clock: Clock,
    exe: PathBuf,
    sidecar_bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// The temporary directory, canonical (leftover sidecars are found by it).
    root: PathBuf,
    ports: Ports,
    http: reqwest::Client,
    server: Option<Child>,
    client: Option<Client>,
    agents: Vec<Agent>,
}

/// The demo was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP).
#[derive(Debug)]
struct Interrupted(&'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted ({})", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Completes with the first SIGINT, SIGTERM or SIGHUP. Any of them would otherwise end the
/// demo without stopping its children.
async fn interrupt() -> Interrupted {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
    else {
        // No handler could be installed: the default actions stay, so this never completes.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Interrupted("SIGINT"),
        _ = term.recv() => Interrupted("SIGTERM"),
        _ = hup.recv() => Interrupted("SIGHUP"),
    }
}

/// Runs `outrider demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut demo = Demo::prepare(&args)?;
    print_intro(&demo, args.keep);
    let outcome = tokio::select! {
        r = demo.script() => r,
        i = interrupt() => Err(i.into()),
    };
    let interrupted = outcome.as_ref().is_err_and(|e| e.is::<Interrupted>());
    if let Err(e) = &outcome {
        println!();
        demo.clock.say(format!("stopping: {e:#}"));
    }
    tokio::select! {
        () = demo.shutdown() => {}
        _ = interrupt() => {
            demo.clock.say("interrupted again: killing everything");
            demo.kill_everything().await;
        }
    }
    // After a failure the logs are what explains it: keep them.
    let keep = args.keep || (outcome.is_err() && !interrupted);
    demo.finish_dir(keep)?;
    let report = outcome?;
    print_summary(&report, demo.clock);
    Ok(())
}

/// What the demo is about to do.
fn print_intro(demo: &Demo, keep: bool) {
    println!("outrider demo: a manager, {} agents and the demo sidecar on this machine;", INSTANCES.len());
    println!("then service {SERVICE} moves sidecar {SIDECAR} from {OLD} to {NEW} in restart mode.");
    let fate = if keep { "kept: --keep" } else { "removed at the end; --keep keeps it" };
    println!("work dir: {} ({fate})", demo.root.display());
    println!();
}

impl Demo {
    /// Finds the binaries, creates the temporary directory and chooses the ports.
    fn prepare(args: &DemoArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the outrider binary itself")?;
        let sidecar_bin = exe.with_file_name("outrider-demo-sidecar");
        anyhow::ensure!(
            sidecar_bin.is_file(),
            "the demo sidecar {} is missing; build it with `cargo build --release` (it is built with outrider)",
            sidecar_bin.display()
        );
        let ports = Ports::choose(args.base_port)?;
        let dir = tempfile::Builder::new()
            .prefix("outrider-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let root = dir.path().canonicalize().context("cannot resolve the temporary directory")?;
        for sub in ["logs", "agents"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // Every request opens a new connection: a probe measures the listener, not a pool.
            .pool_max_idle_per_host(0)
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Self {
            clock: Clock(Instant::now()),
            exe,
            sidecar_bin,
            dir: Some(dir),
            root,
            ports,
            http,
            server: None,
            client: None,
            agents: Vec::new(),
        })
    }

    /// The demo proper: start, upgrade, show.
    async fn script(&mut self) -> anyhow::Result<UpgradeReport> {
        self.start_server().await?;
        self.register().await?;
        self.start_agents()?;
        let pids = self.wait_running().await?;
        self.show_answers().await?;
        println!();
        let report = self.upgrade(&pids).await?;
        self.show_answers().await?;
        println!();
        self.show_events().await?;
        println!();
        Ok(report)
    }

    /// The typed client of the manager (once it runs).
    fn client(&self) -> anyhow::Result<&Client> {
        self.client.as_ref().ok_or_else(|| anyhow!("the manager is not running"))
    }

    /// Checks that the manager and every agent still run.
    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        if let Some(server) = &mut self.server {
            server.ensure_alive()?;
        }
        self.agents.iter_mut().try_for_each(|a| a.process.ensure_alive())
    }

    // ---- 1. the manager ---------------------------------------------------------------

    /// Starts `outrider server` and waits until it is ready and has written its token.
    async fn start_server(&mut self) -> anyhow::Result<()> {
        let data_dir = self.root.join("manager");
        let listen = format!("127.0.0.1:{}", self.ports.manager);
        let url = format!("http://{listen}");
        let log = self.root.join("logs/manager.log");
        let args =
            vec!["server".into(), "--data-dir".into(), data_dir.clone().into(), "--listen".into(), listen.into()];
        self.server = Some(Child::spawn("manager", &self.exe, args, log.clone())?);
        self.clock.say(format!("manager starting on {url} (log: {})", log.display()));
        let probe = Client::new(&url, None)?;
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        let token_file = data_dir.join("admin.token");
        loop {
            self.ensure_alive()?;
            if probe.readyz().await.is_ok() && token_file.is_file() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the manager was not ready within {SERVER_READY_TIMEOUT:?}; see {}", log.display());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let token = Client::token_from(Some(&token_file), None)?;
        self.client = Some(Client::new(&url, token)?);
        self.clock.say("manager ready");
        Ok(())
    }

    // ---- 2. the catalog ----------------------------------------------------------------

    /// Creates the sidecar, its two versions (admitted), the service and its binding.
    async fn register(&mut self) -> anyhow::Result<()> {
        let sha256 = sha256_of(&self.sidecar_bin).await?;
        let url = reqwest::Url::from_file_path(&self.sidecar_bin)
            .map_err(|()| anyhow!("{} is not an absolute path", self.sidecar_bin.display()))?;
        let client = self.client()?;
        client.create_sidecar(TENANT, &demo_sidecar()).await.context("cannot create the sidecar")?;
        for version in [OLD, NEW] {
            let body = demo_version(version, Artifact { url: url.to_string(), sha256: sha256.clone() });
            client.create_version(TENANT, SIDECAR, &body).await.with_context(|| format!("cannot create {version}"))?;
            let evidence = serde_json::json!({ "by": "outrider demo", "tests": "none: it is a demo" });
            client
                .admit_version(TENANT, SIDECAR, version, &evidence)
                .await
                .with_context(|| format!("cannot admit {version}"))?;
        }
        self.clock.say(format!(
            "sidecar {SIDECAR}: versions {OLD} and {NEW} registered and admitted (artifact {}, sha256 {}…)",
            url.path(),
            &sha256[..12]
        ));
        let service = Service {
            name: SERVICE.into(),
            priority: Priority::P1,
            traits: BTreeMap::from([("lang".into(), "go".into()), ("protocol".into(), "http".into())]),
            protected: false,
            windows: Vec::new(),
        };
        client.create_service(TENANT, &service).await.context("cannot create the service")?;
        client.set_binding(TENANT, SERVICE, &binding(true, OLD)).await.context("cannot bind the sidecar")?;
        self.clock.say(format!("service {SERVICE} binds {SIDECAR}@{OLD} (mode restart)"));
        Ok(())
    }

    // ---- 3. the agents -----------------------------------------------------------------

    /// Starts one agent per instance.
    fn start_agents(&mut self) -> anyhow::Result<()> {
        let manager = format!("http://127.0.0.1:{}", self.ports.manager);
        let token_file = self.root.join("manager/admin.token");
        for (i, spec) in INSTANCES.iter().enumerate() {
            let (listen, port) = (self.ports.agents[i], self.ports.sidecars[i]);
            let data_dir = self.root.join("agents").join(spec.id);
            let log = self.root.join(format!("logs/agent-{}.log", spec.id));
            let flags: [(&str, OsString); 10] = [
                ("--manager", manager.clone().into()),
                ("--token-file", token_file.clone().into()),
                ("--data-dir", data_dir.clone().into()),
                ("--service", SERVICE.into()),
                ("--instance", spec.id.into()),
                ("--region", spec.region.into()),
                ("--env", spec.env.into()),
                ("--stage", spec.stage.into()),
                ("--label", format!("port={port}").into()),
                ("--listen", format!("127.0.0.1:{listen}").into()),
            ];
            let mut args = vec![OsString::from("agent")];
            args.extend(flags.into_iter().flat_map(|(flag, value)| [flag.into(), value]));
            let process = Child::spawn(&format!("agent {}", spec.id), &self.exe, args, log)?;
            self.clock.say(format!(
                "agent {} started ({}/{}/{}, sidecar port {port})",
                spec.id, spec.region, spec.env, spec.stage
            ));
            self.agents.push(Agent {
                spec: *spec,
                process,
                data_dir,
                status_url: format!("http://127.0.0.1:{listen}/status"),
                sidecar_url: format!("http://127.0.0.1:{port}/"),
            });
        }
        Ok(())
    }

    /// Waits until every instance reports the sidecar running at the old version; returns
    /// the pid on each instance.
    async fn wait_running(&mut self) -> anyhow::Result<BTreeMap<&'static str, u32>> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pids = BTreeMap::new();
        let mut last: BTreeMap<&'static str, Seen> = BTreeMap::new();
        while pids.len() < self.agents.len() {
            self.ensure_alive()?;
            let seen = self.sidecar_states().await?;
            for agent in &self.agents {
                let id = agent.spec.id;
                let Some(s) = seen.get(id) else { continue };
                if s.is_running(OLD) && !pids.contains_key(id) {
                    let pid = s.pid.unwrap_or_default();
                    self.clock.say(format!("{id:<4} {SIDECAR}@{OLD} running (pid {pid})"));
                    pids.insert(id, pid);
                } else if s.is_failing() && last.get(id) != Some(s) {
                    self.clock.say(format!("{id:<4} {SIDECAR} {} (the agent retries)", s.describe()));
                }
                last.insert(id, s.clone());
            }
            if Instant::now() > deadline {
                let Some(late) = self.agents.iter().find(|a| !pids.contains_key(a.spec.id)) else { break };
                let now = last
                    .get(late.spec.id)
                    .map_or("nothing reported".into(), |s| format!("last seen: {}", s.describe()));
                bail!(
                    "agent {} did not report the {SIDECAR} sidecar running within {START_TIMEOUT:?} ({now}); see {}",
                    late.spec.id,
                    late.process.log.display()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        Ok(pids)
    }

    /// The demo sidecar's state on each instance, from `GET /instances`.
    async fn sidecar_states(&self) -> anyhow::Result<BTreeMap<String, Seen>> {
        let filter = InstanceFilter { service: Some(SERVICE.into()), ..Default::default() };
        let instances: Vec<Instance> =
            self.client()?.list_instances(TENANT, &filter).await.context("cannot list the instances")?;
        Ok(instances
            .iter()
            .filter_map(|i| i.sidecars.iter().find(|s| s.name == SIDECAR).map(|s| (i.id.clone(), Seen::of(s))))
            .collect())
    }

    /// Prints what each sidecar answers to `GET /`.
    async fn show_answers(&self) -> anyhow::Result<()> {
        for agent in &self.agents {
            let hello = self
                .hello(&agent.sidecar_url)
                .await
                .with_context(|| format!("the sidecar of {} does not answer {}", agent.spec.id, agent.sidecar_url))?;
            let pid = hello.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            self.clock.say(format!("{:<4} GET {} -> version {}{pid}", agent.spec.id, agent.sidecar_url, hello.version));
        }
        Ok(())
    }

    /// `GET /` of a sidecar, tried a few times.
    async fn hello(&self, url: &str) -> anyhow::Result<Hello> {
        let mut last = None;
        for _ in 0..5 {
            match fetch_hello(&self.http, url).await {
                Ok(h) => return Ok(h),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    // ---- 4. the upgrade ----------------------------------------------------------------

    /// Moves the binding to the new version and follows every instance until it runs it.
    async fn upgrade(&mut self, old_pids: &BTreeMap<&'static str, u32>) -> anyhow::Result<UpgradeReport> {
        let stop_probes = CancellationToken::new();
        // The probers also stop when the upgrade fails or is interrupted.
        let _stop_on_drop = stop_probes.clone().drop_guard();
        let probers: Vec<_> = self
            .agents
            .iter()
            .map(|a| {
                (a.spec.id, tokio::spawn(probe_loop(self.http.clone(), a.sidecar_url.clone(), stop_probes.clone())))
            })
            .collect();
        // Let every prober see the old version first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        self.client()?.set_binding(TENANT, SERVICE, &binding(true, NEW)).await.context("cannot change the binding")?;
        self.clock.say(format!("binding {SERVICE}/{SIDECAR} -> {NEW} (mode restart): the agents take it from here"));
        let moves = self.follow_upgrade(started, old_pids).await;
        // A last look at the new processes, then the probers report.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_probes.cancel();
        let mut probes = Vec::new();
        for (id, task) in probers {
            probes.push((id, task.await.unwrap_or_default()));
        }
        Ok(UpgradeReport { moves: moves?, probes })
    }

    /// Prints each instance's state changes after `started` until all run the new version.
    async fn follow_upgrade(
        &mut self,
        started: Instant,
        old_pids: &BTreeMap<&'static str, u32>,
    ) -> anyhow::Result<Vec<Move>> {
        let mut last: BTreeMap<String, Seen> = BTreeMap::new();
        let mut moves: Vec<Move> = Vec::new();
        while moves.len() < self.agents.len() {
            self.ensure_alive()?;
            let seen = self.sidecar_states().await?;
            let at = started.elapsed();
            for agent in &self.agents {
                let id = agent.spec.id;
                let Some(s) = seen.get(id) else { continue };
                if last.get(id) == Some(s) || moves.iter().any(|m| m.id == id) {
                    continue;
                }
                last.insert(id.to_owned(), s.clone());
                let old_pid = old_pids.get(id).copied().unwrap_or_default();
                if s.is_running(NEW) && s.pid != Some(old_pid) {
                    let new_pid = s.pid.unwrap_or_default();
                    self.clock.say(format!(
                        "{id:<4} {SIDECAR} {OLD} (pid {old_pid}) -> {NEW} (pid {new_pid}) running  +{} ms",
                        at.as_millis()
                    ));
                    moves.push(Move { id, old_pid, new_pid, took: at });
                } else if s.state != SidecarState::Running || s.version != OLD {
                    self.clock.say(format!("{id:<4} {SIDECAR} {}  +{} ms", s.describe(), at.as_millis()));
                    if s.is_failing() && s.version == NEW {
                        bail!("the upgrade failed on {id}: {}; see {}", s.describe(), agent.process.log.display());
                    }
                }
            }
            if started.elapsed() > UPGRADE_TIMEOUT {
                let late: Vec<&str> =
                    self.agents.iter().map(|a| a.spec.id).filter(|id| !moves.iter().any(|m| m.id == *id)).collect();
                bail!(
                    "instance(s) {} did not run {SIDECAR}@{NEW} within {UPGRADE_TIMEOUT:?}; see the agent logs in {}",
                    late.join(", "),
                    self.root.join("logs").display()
                );
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        Ok(moves)
    }

    /// Prints the last events of the audit trail.
    async fn show_events(&self) -> anyhow::Result<()> {
        let events =
            self.client()?.list_events(TENANT, &EventQuery::default()).await.context("cannot read the events")?;
        println!(
            "the audit trail, last {} of {} events (GET /events; times in UTC):",
            EVENTS_SHOWN.min(events.len()),
            events.len()
        );
        for e in events.iter().skip(events.len().saturating_sub(EVENTS_SHOWN)) {
            let t = e.time.to_offset(time::UtcOffset::UTC).time();
            let reason = if e.reason.is_empty() { String::new() } else { format!("  ({})", e.reason) };
            println!(
                "  #{:<4} {:02}:{:02}:{:02}.{:03}  {:<18} {:<32} by {}{reason}",
                e.seq,
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond(),
                e.kind,
                e.object,
                e.actor
            );
        }
        Ok(())
    }

    // ---- 5. cleanup --------------------------------------------------------------------

    /// Stops everything in order: the sidecars (through the manager), the agents, leftover
    /// sidecars, the manager. Never fails; reports what it had to force.
    async fn shutdown(&mut self) {
        self.stop_sidecars_via_manager().await;
        let mut forced = Vec::new();
        for agent in &mut self.agents {
            if agent.process.stop(PROCESS_GRACE).await == Ended::Killed {
                forced.push(agent.process.name.clone());
            }
        }
        let leftovers = kill_leftover_sidecars(&self.root, &self.agent_dirs()).await;
        if let Some(server) = &mut self.server
            && server.stop(PROCESS_GRACE).await == Ended::Killed
        {
            forced.push(server.name.clone());
        }
        if !forced.is_empty() {
            self.clock.say(format!("had to kill (no exit within {PROCESS_GRACE:?}): {}", forced.join(", ")));
        }
        if leftovers > 0 {
            self.clock.say(format!("killed {leftovers} sidecar process(es) the agents had not stopped"));
        }
        match processes_running_from(&self.root).as_slice() {
            [] => self.clock.say("agents and manager stopped; no sidecar process left"),
            left => self.clock.say(format!("warning: sidecar process(es) {left:?} still running")),
        }
    }

    /// Kills every process at once (second Ctrl-C).
    async fn kill_everything(&mut self) {
        for agent in &mut self.agents {
            agent.process.kill().await;
        }
        let leftovers = kill_leftover_sidecars(&self.root, &self.agent_dirs()).await;
        if let Some(server) = &mut self.server {
            server.kill().await;
        }
        self.clock.say(format!("killed the manager, the agents and {leftovers} sidecar process(es)"));
    }

    fn agent_dirs(&self) -> Vec<PathBuf> {
        self.agents.iter().map(|a| a.data_dir.clone()).collect()
    }

    /// Disables the binding and waits (bounded) until no agent runs the sidecar any more.
    async fn stop_sidecars_via_manager(&mut self) {
        if self.agents.is_empty() {
            return;
        }
        let manager_up = self.server.as_mut().is_some_and(|s| s.ensure_alive().is_ok());
        let Some(client) = self.client.as_ref().filter(|_| manager_up) else {
            self.clock.say("the manager is gone: stopping the agents, then killing their sidecars");
            return;
        };
        let started = Instant::now();
        let disabled =
            tokio::time::timeout(HTTP_TIMEOUT * 2, client.set_binding(TENANT, SERVICE, &binding(false, NEW))).await;
        if !matches!(disabled, Ok(Ok(_))) {
            self.clock.say("could not disable the binding; the sidecars will be killed instead");
            return;
        }
        self.clock.say(format!("binding disabled: the agents stop their sidecars (SIGTERM, drain up to {DRAIN:?})"));
        while started.elapsed() < STOP_SIDECARS_TIMEOUT {
            if self.all_sidecars_stopped().await {
                let all = self.agents.iter_mut().all(|a| a.process.ensure_alive().is_ok());
                let who = if all { "all sidecars stopped" } else { "the agents still running stopped their sidecars" };
                self.clock.say(format!("{who} (+{} ms)", started.elapsed().as_millis()));
                return;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        self.clock.say(format!("the sidecars did not all stop within {STOP_SIDECARS_TIMEOUT:?}; they will be killed"));
    }

    /// Whether every agent that still runs answers `/status` with no sidecar (the sidecars
    /// of an agent that died are killed afterwards).
    async fn all_sidecars_stopped(&mut self) -> bool {
        for agent in &mut self.agents {
            if agent.process.ensure_alive().is_err() {
                continue;
            }
            let status = async {
                self.http.get(&agent.status_url).send().await?.error_for_status()?.json::<AgentStatus>().await
            };
            match status.await {
                Ok(s) if s.sidecars.is_empty() => {}
                _ => return false,
            }
        }
        true
    }

    /// Removes the temporary directory, or keeps it and says where it is.
    fn finish_dir(&mut self, keep: bool) -> anyhow::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        if keep {
            let path = dir.keep();
            println!(
                "kept {} (logs of the manager and agents in logs/, of the sidecars in agents/*/logs/)",
                path.display()
            );
            return Ok(());
        }
        let path = dir.path().to_owned();
        dir.close().with_context(|| format!("cannot remove {}", path.display()))?;
        self.clock.say(format!("removed {}", path.display()));
        Ok(())
    }
}

/// The sidecar's metadata: probes on `${label.port}`, a short drain time.
fn demo_sidecar() -> Sidecar {
    let health = "http://127.0.0.1:${label.port}/healthz";
    Sidecar {
        name: SIDECAR.into(),
        owner: "outrider demo".into(),
        description: "The reference sidecar: GET / answers its version.".into(),
        upgrade_modes: vec![UpgradeMode::Restart, UpgradeMode::Hot, UpgradeMode::OnDeploy],
        startup_probe: Some(Probe {
            period: HumanDuration::from_millis(100),
            deadline: HumanDuration::from_secs(10),
            ..Probe::http(health)
        }),
        liveness_probe: Some(Probe { period: HumanDuration::from_secs(2), ..Probe::http(health) }),
        drain_time: HumanDuration(DRAIN),
        metrics: Vec::new(),
    }
}

/// A version of the demo sidecar: the same executable, listening on `${label.port}`.
fn demo_version(version: &str, artifact: Artifact) -> NewVersion {
    NewVersion {
        version: version.into(),
        artifact,
        command: vec!["${artifact}".into()],
        env: BTreeMap::from([("PORT".into(), "${label.port}".into())]),
        notes: format!("demo release {version}"),
    }
}

/// The binding of the demo sidecar to the service.
fn binding(enabled: bool, version: &str) -> Binding {
    Binding { sidecar: SIDECAR.into(), enabled, version: version.into(), mode: UpgradeMode::Restart }
}

/// Lower-case hex SHA-256 of a file.
async fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .context("hashing task failed")?
}

/// One `GET /` of a sidecar.
async fn fetch_hello(http: &reqwest::Client, url: &str) -> anyhow::Result<Hello> {
    Ok(http.get(url).send().await?.error_for_status()?.json::<Hello>().await?)
}

/// Asks `url` for its version every [`PROBE_EVERY`] until `stop`.
async fn probe_loop(http: reqwest::Client, url: String, stop: CancellationToken) -> ProbeStats {
    let mut stats = ProbeStats::default();
    let mut last_ok = Instant::now();
    let mut failing = false;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return stats,
            _ = tick.tick() => {}
        }
        match fetch_hello(&http, &url).await {
            Ok(hello) => {
                stats.ok += 1;
                if failing {
                    stats.longest_gap = stats.longest_gap.max(last_ok.elapsed());
                    failing = false;
                }
                last_ok = Instant::now();
                if stats.versions.last() != Some(&hello.version) {
                    stats.versions.push(hello.version);
                }
            }
            Err(_) => {
                stats.failed += 1;
                failing = true;
            }
        }
    }
}

/// Kills (SIGTERM, then SIGKILL) every process that runs an executable from `root`: sidecars
/// the agents did not stop. Candidates come from the agents' records (`sidecars/*.json`) and
/// from `/proc`. Returns how many there were.
async fn kill_leftover_sidecars(root: &Path, agent_dirs: &[PathBuf]) -> usize {
    let mut pids = recorded_pids(agent_dirs);
    pids.extend(processes_running_from(root));
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&pid| runs_from(pid, root));
    if pids.is_empty() {
        return 0;
    }
    signal_all(&pids, Signal::SIGTERM);
    let deadline = Instant::now() + PROCESS_GRACE;
    while Instant::now() < deadline && pids.iter().any(|&p| runs_from(p, root)) {
        tokio::time::sleep(POLL_EVERY).await;
    }
    let stubborn: Vec<i32> = pids.iter().copied().filter(|&p| runs_from(p, root)).collect();
    signal_all(&stubborn, Signal::SIGKILL);
    pids.len()
}

/// Sends `signal` to each process and, when it leads its own group, to the group.
fn signal_all(pids: &[i32], signal: Signal) {
    for &pid in pids {
        let pid = Pid::from_raw(pid);
        if getpgid(Some(pid)).is_ok_and(|g| g == pid) {
            let _ = killpg(pid, signal);
        }
        let _ = kill(pid, signal);
    }
}

/// The pids in the agents' sidecar records.
fn recorded_pids(agent_dirs: &[PathBuf]) -> Vec<i32> {
    #[derive(Deserialize)]
    struct Record {
        pid: i32,
    }
    let files = agent_dirs.iter().filter_map(|d| std::fs::read_dir(d.join("sidecars")).ok()).flatten().flatten();
    files
        .filter_map(|f| std::fs::read(f.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
        .map(|r| r.pid)
        .collect()
}

/// Every process whose executable lies under `root`.
fn processes_running_from(root: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| runs_from(pid, root))
        .collect()
}

/// Whether process `pid` is alive (not a zombie) and runs an executable from under `root`.
fn runs_from(pid: i32, root: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let exe_inside = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(root));
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true);
    exe_inside && !zombie
}

/// The closing lines: what was measured.
fn print_summary(report: &UpgradeReport, clock: Clock) {
    let slowest = report.moves.iter().map(|m| m.took).max().unwrap_or_default();
    println!();
    println!(
        "summary: {} of {} instances upgraded {SIDECAR} {OLD} -> {NEW} in restart mode, {} ms from the binding change to the last one running {NEW}.",
        report.moves.len(),
        INSTANCES.len(),
        slowest.as_millis()
    );
    let mut moves: Vec<&Move> = report.moves.iter().collect();
    moves.sort_by_key(|m| m.id);
    for m in moves {
        let probe = report.probes.iter().find(|(id, _)| *id == m.id).map(|(_, p)| p);
        let seen = probe.map(describe_probe).unwrap_or_default();
        println!("  {:<4} pid {} -> {} after {} ms; {seen}", m.id, m.old_pid, m.new_pid, m.took.as_millis());
    }
    let (ok, failed) = report.probes.iter().fold((0, 0), |(o, f), (_, p)| (o + p.ok, f + p.failed));
    println!(
        "  requests to the sidecars during the upgrade (one every {} ms each): {ok} answered, {failed} failed",
        PROBE_EVERY.as_millis()
    );
    if failed > 0 {
        println!("  (restart mode stops the old process before it starts the new one: requests fail in between)");
    }
    println!("done in {:.1} s.", clock.0.elapsed().as_secs_f64());
}

/// `answered 40 (versions seen: 1.0.0 -> 1.1.0), failed 3, longest gap 45 ms`.
fn describe_probe(p: &ProbeStats) -> String {
    let gap = if p.failed > 0 { format!(", longest gap {} ms", p.longest_gap.as_millis()) } else { String::new() };
    format!("answered {} (versions seen: {}), failed {}{gap}", p.ok, p.versions.join(" -> "), p.failed)
}
