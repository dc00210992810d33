//! Continuous HTTP load on a sidecar's port during upgrades: a few keep-alive connections
//! asking `GET /` in a loop (loopback only, bounded by the test's duration), counting every
//! failed request.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

/// What the load saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Requests answered 200 with a body naming a pid.
    pub ok: u64,
    /// Requests that failed: connection refused or reset, timeout, non-200.
    pub failed: u64,
    /// The first few failures.
    pub errors: Vec<String>,
    /// Every `(version, pid)` that answered.
    pub answered_by: BTreeSet<(String, u64)>,
}

impl LoadStats {
    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.errors.extend(other.errors.into_iter().take(5usize.saturating_sub(self.errors.len())));
        self.answered_by.extend(other.answered_by);
    }
}

/// A running load; [`Load::finish`] stops it.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadStats>>,
}

impl Load {
    /// Starts `connections` clients, each on its own keep-alive connection, on
    /// `127.0.0.1:port`, each pausing `pause` between requests.
    pub fn start(port: u16, connections: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://127.0.0.1:{port}/");
        let tasks = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .pool_max_idle_per_host(1)
                        .build()
                        .expect("http client");
                    let mut stats = LoadStats::default();
                    while !stop.load(Ordering::Relaxed) {
                        match one(&client, &url).await {
                            Ok((version, pid)) => {
                                stats.ok += 1;
                                stats.answered_by.insert((version, pid));
                            }
                            Err(e) => {
                                stats.failed += 1;
                                if stats.errors.len() < 5 {
                                    stats.errors.push(e);
                                }
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                    stats
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients and adds up what they saw.
    pub async fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadStats::default();
        for t in self.tasks {
            all.merge(t.await.expect("load task"));
        }
        all
    }
}

async fn one(client: &reqwest::Client, url: &str) -> Result<(String, u64), String> {
    let resp = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    let pid = body["pid"].as_u64().ok_or_else(|| format!("no pid in {body}"))?;
    Ok((body["version"].as_str().unwrap_or_default().to_owned(), pid))
}
