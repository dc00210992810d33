//! Hot upgrades of the real `outrider-demo-sidecar` binary, run as processes: the
//! `SCM_RIGHTS` handover under load, draining, and the signal reload. Every process is
//! killed when its guard drops, also when a test fails.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{net::UnixDatagram, task::JoinHandle, time::sleep};

const BIN: &str = env!("CARGO_BIN_EXE_outrider-demo-sidecar");

/// Upper bound for anything that should happen promptly; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// Bounds the load a worker sends, whatever happens.
const MAX_REQUESTS_PER_WORKER: usize = 3000;

/// Variables of the test process that must not leak into a sidecar.
const SCRUBBED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "OUTRIDER_HANDOVER_SOCKET",
    "OUTRIDER_HANDOVER_TIMEOUT_MS",
    "OUTRIDER_PID_FILE",
    "OUTRIDER_VERSION_FILE",
    "OUTRIDER_VERSION",
    "DEMO_FAULT",
    "PORT",
];

/// A sidecar process started by the test; SIGKILLed when dropped if still running. Its log
/// is printed when the test fails.
struct Sidecar {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn spawn(dir: &Path, name: &str, program: &Path, vars: &[(&str, String)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(program);
        for var in SCRUBBED {
            command.env_remove(var);
        }
        command
            .env("RUST_LOG", "info")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let child = command.spawn().unwrap();
        Self { name: name.to_owned(), child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        kill(pid(self.pid()), signal).unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- log of {} (pid {}) -----\n{}", self.name, self.child.id(), self.log());
        }
    }
}

/// Processes the test did not start itself (a sidecar started them on SIGUSR2); SIGKILLed
/// when dropped.
#[derive(Default)]
struct Others(Vec<u32>);

impl Drop for Others {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = kill(pid(p), Signal::SIGKILL);
        }
    }
}

fn pid(p: u32) -> Pid {
    Pid::from_raw(i32::try_from(p).unwrap())
}

/// Whether the process `p` runs (a zombie does not).
fn alive(p: u32) -> bool {
    outrider_procfs::is_alive(p)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The agent's end of a `NOTIFY_SOCKET`.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.notify"));
        Self { socket: UnixDatagram::bind(&path).unwrap(), path }
    }

    fn var(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.display().to_string())
    }

    /// Waits for the next `READY=1`.
    async fn ready(&self) {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(PATIENCE, async {
            loop {
                let n = self.socket.recv(&mut buf).await.unwrap();
                if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                    return;
                }
            }
        })
        .await
        .expect("no READY=1 on NOTIFY_SOCKET");
    }

    /// Whether `READY=1` arrives within `wait`.
    async fn ready_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.ready()).await.is_ok()
    }
}

/// One `GET /`: when it was sent, when it was answered, and the answering pid and version.
#[derive(Debug)]
struct Sample {
    sent: Instant,
    done: Instant,
    outcome: Result<(u32, String), String>,
}

/// A small load generator: a few keep-alive connections, each sending `GET /` in a loop and
/// reconnecting after a `Connection: close` answer, as wrk does.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, connections: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..connections)
            .map(|_| {
                let (stop, samples) = (stop.clone(), samples.clone());
                tokio::spawn(async move {
                    let mut connection = None;
                    for _ in 0..MAX_REQUESTS_PER_WORKER {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let sent = Instant::now();
                        let outcome = get_root(addr, &mut connection).await;
                        samples.lock().unwrap().push(Sample { sent, done: Instant::now(), outcome });
                        sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Self { stop, samples, workers }
    }

    fn successes(&self) -> usize {
        self.samples.lock().unwrap().iter().filter(|s| s.outcome.is_ok()).count()
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request on `connection` (opened first if needed); returns the status, whether the
/// answer said `Connection: close` (the connection is then dropped) and the body.
async fn request(
    addr: SocketAddr,
    connection: &mut Option<SendRequest<Empty<Bytes>>>,
    path: &str,
) -> Result<(StatusCode, bool, Bytes), String> {
    if connection.is_none() {
        *connection = Some(connect(addr).await?);
    }
    let sender = connection.as_mut().unwrap();
    let request = Request::get(path).header(header::HOST, addr.to_string()).body(Empty::new()).unwrap();
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let close =
            response.headers().get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, close, body))
    }
    .await;
    if !matches!(result, Ok((_, false, _))) {
        *connection = None;
    }
    result
}

/// `GET /`: the pid and version that answered.
async fn get_root(
    addr: SocketAddr,
    connection: &mut Option<SendRequest<Empty<Bytes>>>,
) -> Result<(u32, String), String> {
    let (status, _, body) = request(addr, connection, "/").await?;
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("body: {e}"))?;
    let pid = body["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).ok_or("no pid")?;
    Ok((pid, body["version"].as_str().unwrap_or_default().to_owned()))
}

fn failures(samples: &[Sample]) -> Vec<&String> {
    samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect()
}

/// The pids that answered the requests sent after `sent_after` and answered before
/// `done_before`.
fn answered_by(samples: &[Sample], sent_after: Option<Instant>, done_before: Option<Instant>) -> Vec<u32> {
    let mut pids: Vec<u32> = samples
        .iter()
        .filter(|s| sent_after.is_none_or(|t| s.sent > t) && done_before.is_none_or(|t| s.done < t))
        .filter_map(|s| s.outcome.as_ref().ok().map(|(p, _)| *p))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scm_rights_handover_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let handover = dir.path().join("handover.sock");
    let vars = |notify: &Notify, version: &str| {
        vec![
            ("PORT", port.to_string()),
            ("OUTRIDER_HANDOVER_SOCKET", handover.display().to_string()),
            ("OUTRIDER_VERSION", version.to_owned()),
            ("DRAIN_IDLE_GRACE", "300ms".to_owned()),
            notify.var(),
        ]
    };
    let bin = Path::new(BIN);

    let notify1 = Notify::bind(dir.path(), "gen1");
    let mut gen1 = Sidecar::spawn(dir.path(), "gen1", bin, &vars(&notify1, "1.0.0"));
    notify1.ready().await;
    let load = Load::start(addr, 4);
    eventually("the load gets answers", || load.successes() >= 20).await;

    let notify2 = Notify::bind(dir.path(), "gen2");
    let mut gen2 = Sidecar::spawn(dir.path(), "gen2", bin, &vars(&notify2, "2.0.0"));
    notify2.ready().await;
    assert!(gen2.log().contains("acquired the sockets from the predecessor"), "{}", gen2.log());
    sleep(Duration::from_millis(300)).await;

    gen1.signal(Signal::SIGTERM);
    assert!(gen1.exit_status().await.success());
    let gen1_gone = Instant::now();
    // gen2 takes over the handover socket when gen1 drains.
    eventually("gen2 holds the handover socket", || handover.exists()).await;
    sleep(Duration::from_millis(300)).await;

    // A third generation acquires the sockets from gen2 (binding afresh would fail: the port is taken).
    let notify3 = Notify::bind(dir.path(), "gen3");
    let gen3_spawned = Instant::now();
    let mut gen3 = Sidecar::spawn(dir.path(), "gen3", bin, &vars(&notify3, "3.0.0"));
    notify3.ready().await;
    gen2.signal(Signal::SIGTERM);
    assert!(gen2.exit_status().await.success());
    let gen2_gone = Instant::now();
    sleep(Duration::from_millis(300)).await;

    let samples = load.stop().await;
    assert_eq!(failures(&samples), Vec::<&String>::new(), "{} requests in all", samples.len());
    assert!(samples.len() > 200, "only {} requests", samples.len());
    let all = answered_by(&samples, None, None);
    for generation in [&gen1, &gen2, &gen3] {
        assert!(all.contains(&generation.pid()), "{} never answered: {all:?}", generation.name);
    }
    assert_eq!(answered_by(&samples, Some(gen1_gone), Some(gen3_spawned)), [gen2.pid()], "between gen1 and gen3");
    assert_eq!(answered_by(&samples, Some(gen2_gone), None), [gen3.pid()], "after gen2 exited");

    gen3.signal(Signal::SIGTERM);
    assert!(gen3.exit_status().await.success());
    assert!(!handover.exists(), "the last holder removes the handover socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_keep_alive_connections_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let notify = Notify::bind(dir.path(), "sidecar");
    let grace = Duration::from_millis(300);
    let vars = [("PORT", port.to_string()), ("DRAIN_IDLE_GRACE", "300ms".to_owned()), notify.var()];
    let mut sidecar = Sidecar::spawn(dir.path(), "sidecar", Path::new(BIN), &vars);
    notify.ready().await;

    let mut busy = None;
    let mut idle = None;
    for connection in [&mut busy, &mut idle] {
        let (status, close, _) = request(addr, connection, "/healthz").await.unwrap();
        assert_eq!((status, close), (StatusCode::OK, false));
    }
    let idle = idle.unwrap();

    sidecar.signal(Signal::SIGTERM);
    let stopping = Instant::now();
    // The busy connection keeps getting answers until one says `Connection: close`.
    let mut answers = Vec::new();
    loop {
        let (status, close, _) = request(addr, &mut busy, "/healthz").await.unwrap();
        answers.push(status);
        if close {
            break;
        }
        assert!(stopping.elapsed() < PATIENCE, "no Connection: close");
        sleep(Duration::from_millis(5)).await;
    }
    assert!(answers.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE), "{answers:?}");
    assert_eq!(answers.last(), Some(&StatusCode::SERVICE_UNAVAILABLE), "/healthz answers 503 while draining");

    // The idle connection is closed after the grace period, then the process exits 0.
    eventually("the idle connection is closed", || idle.is_closed()).await;
    assert!(stopping.elapsed() >= grace, "idle connection closed after {:?}", stopping.elapsed());
    assert!(sidecar.exit_status().await.success());
    assert!(stopping.elapsed() < Duration::from_secs(5), "draining took {:?}", stopping.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_reload_replaces_the_process_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let program = dir.path().join("outrider-demo-sidecar");
    symlink(BIN, &program).unwrap();
    let version_file = dir.path().join("version");
    fs::write(&version_file, "1.0.0\n").unwrap();
    let pid_file = dir.path().join("demo.pid");
    let oldbin = dir.path().join("demo.pid.oldbin");
    let notify = Notify::bind(dir.path(), "sidecar");
    let vars = [
        ("PORT", port.to_string()),
        ("OUTRIDER_PID_FILE", pid_file.display().to_string()),
        ("OUTRIDER_VERSION_FILE", version_file.display().to_string()),
        ("DRAIN_IDLE_GRACE", "300ms".to_owned()),
        notify.var(),
    ];
    let mut others = Others::default();
    let mut old = Sidecar::spawn(dir.path(), "old", &program, &vars);
    notify.ready().await;
    assert_eq!(read_pid(&pid_file), Some(old.pid()));
    let load = Load::start(addr, 4);
    eventually("the load gets answers", || load.successes() >= 20).await;

    // The agent installs the new version (here: only its version file) and signals.
    fs::write(&version_file, "2.0.0\n").unwrap();
    old.signal(Signal::SIGUSR2);
    eventually("the pid file names a new process", || read_pid(&pid_file).is_some_and(|p| p != old.pid())).await;
    let new = read_pid(&pid_file).unwrap();
    others.0.push(new);
    assert_eq!(read_pid(&oldbin), Some(old.pid()));
    notify.ready().await;
    assert!(alive(new));
    sleep(Duration::from_millis(300)).await;

    old.signal(Signal::SIGTERM);
    assert!(old.exit_status().await.success());
    let old_gone = Instant::now();
    assert!(!oldbin.exists(), "the old generation removes .oldbin");
    assert!(alive(new), "the new generation outlives the old one");
    sleep(Duration::from_millis(300)).await;

    let samples = load.stop().await;
    assert_eq!(failures(&samples), Vec::<&String>::new(), "{} requests in all", samples.len());
    assert!(answered_by(&samples, None, None).contains(&old.pid()));
    assert_eq!(answered_by(&samples, Some(old_gone), None), [new]);
    let versions: Vec<(u32, &str)> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().map(|(p, v)| (*p, v.as_str())))
        .filter(|(p, _)| *p == new)
        .collect();
    assert!(versions.iter().all(|(_, v)| *v == "2.0.0"), "the new generation reads OUTRIDER_VERSION_FILE");

    kill(pid(new), Signal::SIGTERM).unwrap();
    eventually("the new generation exits", || !alive(new)).await;
    assert!(!pid_file.exists(), "a generation that exits cleanly removes its pid file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_signal_reload_leaves_the_old_generation_current() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let program = dir.path().join("outrider-demo-sidecar");
    symlink(BIN, &program).unwrap();
    let pid_file = dir.path().join("demo.pid");
    let notify = Notify::bind(dir.path(), "sidecar");
    let vars = [("PORT", port.to_string()), ("OUTRIDER_PID_FILE", pid_file.display().to_string()), notify.var()];
    let mut old = Sidecar::spawn(dir.path(), "old", &program, &vars);
    notify.ready().await;

    // The agent swaps the symlink to a "new version" that exits at once.
    let broken = dir.path().join("broken");
    fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let swap = dir.path().join("swap");
    symlink(&broken, &swap).unwrap();
    fs::rename(&swap, &program).unwrap();
    old.signal(Signal::SIGUSR2);
    eventually("the old generation is current again", || old.log().contains("this generation is current again")).await;
    assert_eq!(read_pid(&pid_file), Some(old.pid()));
    assert!(!dir.path().join("demo.pid.oldbin").exists());
    assert_eq!(get_root(addr, &mut None).await.unwrap().0, old.pid());

    old.signal(Signal::SIGTERM);
    assert!(old.exit_status().await.success());
    assert!(!pid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_successor_does_not_disturb_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let handover = dir.path().join("handover.sock");
    let vars = |notify: &Notify, fault: &str| {
        vec![
            ("PORT", port.to_string()),
            ("OUTRIDER_HANDOVER_SOCKET", handover.display().to_string()),
            ("DEMO_FAULT", fault.to_owned()),
            notify.var(),
        ]
    };
    let bin = Path::new(BIN);
    let notify1 = Notify::bind(dir.path(), "holder");
    let holder = Sidecar::spawn(dir.path(), "holder", bin, &vars(&notify1, ""));
    notify1.ready().await;

    let notify2 = Notify::bind(dir.path(), "hanging");
    let mut hanging = Sidecar::spawn(dir.path(), "hanging", bin, &vars(&notify2, "handover-hang"));
    eventually("the hanging successor connects", || hanging.log().contains("never saying hello")).await;
    assert!(!notify2.ready_within(Duration::from_millis(500)).await, "a hanging successor must never be ready");
    assert_eq!(get_root(addr, &mut None).await.unwrap().0, holder.pid());

    // Another successor acquires the sockets meanwhile.
    let notify3 = Notify::bind(dir.path(), "next");
    let next = Sidecar::spawn(dir.path(), "next", bin, &vars(&notify3, ""));
    notify3.ready().await;
    assert!(next.log().contains("acquired the sockets from the predecessor"), "{}", next.log());

    hanging.signal(Signal::SIGTERM);
    assert!(hanging.exit_status().await.success());
    assert_eq!(get_root(addr, &mut None).await.map(|(p, _)| [holder.pid(), next.pid()].contains(&p)), Ok(true));
}
