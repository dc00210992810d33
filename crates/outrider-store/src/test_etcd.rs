//! A real etcd server for tests and benchmarks (the `conformance` feature): Debian's `etcd` on
//! free loopback ports — one member, or a cluster of several — its data in a temporary
//! directory, killed when dropped and able to stop and come back on the same ports and data
//! (an etcd outage).

use std::{
    collections::BTreeSet,
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tempfile::TempDir;

use crate::{EtcdStore, Store};

/// Where Debian's `etcd-server` package installs the server.
const DEBIAN_ETCD: &str = "/usr/bin/etcd";
/// Set (as CI does) to fail instead of skipping when etcd is missing.
pub const REQUIRE_ENV: &str = "OUTRIDER_REQUIRE_ETCD";
/// How long a start may take until etcd answers.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a test etcd did not come up.
#[derive(Debug, thiserror::Error)]
pub enum TestEtcdError {
    /// A directory, a log file, a port or the process could not be had.
    #[error("cannot start etcd: {what}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not answer in time (or exited).
    #[error("etcd did not answer within {}s ({last}); its log: {}", START_TIMEOUT.as_secs(), log.display())]
    Late {
        /// The last error seen.
        last: String,
        /// Its output.
        log: PathBuf,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestEtcdError {
    let what = what.into();
    move |source| TestEtcdError::Io { what, source }
}

/// The `etcd` executable: Debian's `/usr/bin/etcd`, else `etcd` on `PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    let debian = PathBuf::from(DEBIAN_ETCD);
    if debian.is_file() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("etcd")).find(|p| p.is_file())
}

/// For tests: the `etcd` executable, or `None` after printing that the test is skipped.
/// Panics instead when [`REQUIRE_ENV`] is set.
pub fn etcd_or_skip() -> Option<PathBuf> {
    let found = etcd_binary();
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "etcd is required here ({REQUIRE_ENV} is set): apt-get install etcd-server"
        );
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server; .ci/run installs it)");
    }
    found
}

/// Two ports of 127.0.0.1 nobody in this process was given before.
fn free_ports() -> Result<[u16; 2], TestEtcdError> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut ports = Vec::with_capacity(2);
    // Held until both are chosen, so the system gives a new one each time.
    let mut held = Vec::new();
    while ports.len() < 2 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("cannot bind a free port"))?;
        let port = listener.local_addr().map_err(io("cannot read a bound port"))?.port();
        if GIVEN.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok([ports[0], ports[1]])
}

/// One member's ports and process.
struct Member {
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster on loopback (one member unless started with
/// [`TestEtcd::start_cluster`]). Dropping it kills the processes and removes their data.
pub struct TestEtcd {
    binary: PathBuf,
    /// More flags of its command line.
    extra: Vec<String>,
    members: Vec<Member>,
    /// Removed after the processes are gone (field order).
    dir: TempDir,
}

impl std::fmt::Debug for TestEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEtcd").field("endpoints", &self.endpoints()).field("dir", &self.dir.path()).finish()
    }
}

impl TestEtcd {
    /// Starts `binary` on free ports of 127.0.0.1 and waits until it answers.
    pub async fn start(binary: &Path) -> Result<Self, TestEtcdError> {
        Self::start_with(binary, &[]).await
    }

    /// Like [`TestEtcd::start`], with more flags (`--max-txn-ops=512`).
    pub async fn start_with(binary: &Path, extra: &[&str]) -> Result<Self, TestEtcdError> {
        Self::start_members(binary, 1, extra).await
    }

    /// A cluster of `members` members (three: it survives the loss of one).
    pub async fn start_cluster(binary: &Path, members: usize) -> Result<Self, TestEtcdError> {
        Self::start_members(binary, members.max(1), &[]).await
    }

    async fn start_members(binary: &Path, members: usize, extra: &[&str]) -> Result<Self, TestEtcdError> {
        let dir =
            tempfile::Builder::new().prefix("outrider-etcd-").tempdir().map_err(io("cannot create its directory"))?;
        let members = (0..members)
            .map(|_| free_ports().map(|[client_port, peer_port]| Member { client_port, peer_port, child: None }))
            .collect::<Result<_, _>>()?;
        let extra = extra.iter().map(|a| (*a).to_owned()).collect();
        let mut etcd = Self { binary: binary.to_owned(), extra, members, dir };
        etcd.restart().await?;
        Ok(etcd)
    }

    /// `127.0.0.1:PORT`, the client address of its first member.
    pub fn endpoint(&self) -> String {
        self.endpoints().swap_remove(0)
    }

    /// The client addresses of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
    }

    /// The store URL of keys under `prefix` (none when empty) in it, naming every member.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints().join(","))
    }

    /// The output of its first member.
    pub fn log(&self) -> PathBuf {
        self.member_log(0)
    }

    fn member_log(&self, i: usize) -> PathBuf {
        if i == 0 { self.dir.path().join("etcd.log") } else { self.dir.path().join(format!("etcd-{i}.log")) }
    }

    /// Kills it (an outage); its data stays for [`TestEtcd::restart`].
    pub fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // Already gone is fine.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts it again on the same ports and data and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), TestEtcdError> {
        self.stop();
        let peer = |m: &Member| format!("http://127.0.0.1:{}", m.peer_port);
        let cluster: Vec<String> = self.members.iter().enumerate().map(|(i, m)| format!("m{i}={}", peer(m))).collect();
        let cluster = cluster.join(",");
        for i in 0..self.members.len() {
            let client = format!("http://127.0.0.1:{}", self.members[i].client_port);
            let peer = peer(&self.members[i]);
            let log = File::options()
                .create(true)
                .append(true)
                .open(self.member_log(i))
                .map_err(io("cannot open its log"))?;
            let err = log.try_clone().map_err(io("cannot duplicate its log handle"))?;
            let child = Command::new(&self.binary)
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(self.dir.path().join(format!("data-{i}")))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(io(format!("cannot run {}", self.binary.display())))?;
            self.members[i].child = Some(child);
        }
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), TestEtcdError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let last = match EtcdStore::connect(&self.endpoints(), "").await {
                Ok(store) => match store.revision().await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            let exited =
                self.members.iter_mut().any(|m| m.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some()));
            if exited || tokio::time::Instant::now() > deadline {
                let last = if exited { format!("it exited; {last}") } else { last };
                return Err(TestEtcdError::Late { last, log: self.log() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Compacts its history up to `revision`: watches from before it are refused.
    pub async fn compact(&self, revision: u64) -> Result<(), etcd_client::Error> {
        let mut client = etcd_client::Client::connect([self.endpoint()], None).await?;
        let options = etcd_client::CompactionOptions::new().with_physical();
        client.compact(i64::try_from(revision).unwrap_or(i64::MAX), Some(options)).await.map(|_| ())
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
