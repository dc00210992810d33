//! A real Prometheus server for tests: Debian's `prometheus` on a free loopback port, its data
//! in a temporary directory, scraping given targets every second, killed and cleaned up when
//! dropped.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use outrider_prometheus::Client;
use tempfile::TempDir;
use time::OffsetDateTime;

use super::{Child, HarnessError, free_ports, process::POLL_EVERY};

/// Where Debian's package installs the server.
const DEBIAN_PROMETHEUS: &str = "/usr/bin/prometheus";
/// Set (as CI does) to fail instead of skipping when Prometheus or promtool is missing.
pub const REQUIRE_ENV: &str = "OUTRIDER_REQUIRE_PROMTOOL";

/// The `prometheus` executable: Debian's `/usr/bin/prometheus`, else `prometheus` on `PATH`.
pub fn prometheus_binary() -> Option<PathBuf> {
    let debian = PathBuf::from(DEBIAN_PROMETHEUS);
    if debian.is_file() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("prometheus")).find(|p| p.is_file())
}

/// For tests: the `prometheus` executable, or `None` after printing that the test is
/// skipped. Panics instead when [`REQUIRE_ENV`] is set.
pub fn prometheus_or_skip() -> Option<PathBuf> {
    let found = prometheus_binary();
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "prometheus is required here ({REQUIRE_ENV} is set): apt-get install prometheus"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus; .ci/run installs it)");
    }
    found
}

/// A running Prometheus server that scrapes its targets every second with `honor_labels:
/// true` (so an exposed `instance` label wins over the target's address). Dropping it kills
/// the process and removes its data, also when a test panics.
pub struct Prometheus {
    child: Child,
    url: String,
    targets: usize,
    /// Removed after the process is gone (field order).
    dir: TempDir,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus").field("url", &self.url).field("dir", &self.dir.path()).finish()
    }
}

impl Prometheus {
    /// Starts `binary` on a free port of 127.0.0.1 scraping `targets` (`host:port`, each
    /// serving `/metrics`) and waits until it is ready (`/-/ready`) within `timeout`.
    pub async fn start(binary: &Path, targets: &[String], timeout: Duration) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("outrider-prometheus-")
            .tempdir()
            .map_err(HarnessError::io("cannot create a directory for prometheus"))?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets))
            .map_err(HarnessError::io(format!("cannot write {}", config.display())))?;
        let port = free_ports(1)?[0];
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config.display()).into(),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            "--storage.tsdb.retention.time=1h".into(),
        ];
        let child = Child::spawn("prometheus", binary, args, dir.path().join("prometheus.log"))?;
        let mut prometheus = Self { child, url: format!("http://127.0.0.1:{port}"), targets: targets.len(), dir };
        prometheus.wait_ready(timeout).await?;
        Ok(prometheus)
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its output (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.child.log
    }

    /// A query client of it, with a 10 s timeout.
    pub fn client(&self) -> Client {
        // The URL is built here and valid.
        Client::new(&self.url, Duration::from_secs(10)).expect("a loopback http URL")
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let ready = format!("{}/-/ready", self.url);
        let deadline = Instant::now() + timeout;
        loop {
            self.child.ensure_alive()?;
            if http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.late("ready", timeout));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits until every target has been scraped successfully (`up == 1`) within `timeout`.
    pub async fn wait_targets_up(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            self.child.ensure_alive()?;
            let up = client.query("up == 1", OffsetDateTime::now_utc()).await.map(|s| s.len()).unwrap_or(0);
            if up >= self.targets {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.late("scraping its targets", timeout));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    fn late(&self, what: &str, timeout: Duration) -> HarnessError {
        HarnessError::Late { name: format!("prometheus ({what})"), timeout, log: self.child.log.clone() }
    }

    /// Stops it: SIGTERM, then SIGKILL after a few seconds; its data is removed.
    pub async fn stop(mut self) {
        self.child.stop(Duration::from_secs(5)).await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill_blocking();
    }
}

/// The configuration: every target in one job, scraped every second, its labels honoured.
fn config_text(targets: &[String]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: outrider\n    honor_labels: true\n    static_configs:\n      \
         - targets: [{}]\n",
        targets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_scrapes_every_second_and_honours_labels() {
        let text = config_text(&["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        assert!(text.contains("scrape_interval: 1s\n") && text.contains("honor_labels: true\n"), "{text}");
        assert!(text.contains("- targets: ['127.0.0.1:1', '127.0.0.1:2']\n"), "{text}");
    }
}
