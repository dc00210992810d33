//! The demo's HTTP load: one client per demo sidecar asking `GET /` at a steady pace, each
//! request on a new connection (so that it measures the listener, not a pool). It is what the
//! sidecars count in `requests_total` and `errors_total`, what the agents' scrapes turn into
//! `error_ratio` and `latency_p99_ms`, and what shows whether an upgrade dropped a request.
//! Loopback only, and bounded: it stops when told, or by itself after its time limit.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use reqwest::StatusCode;
use tokio_util::sync::{CancellationToken, DropGuard};

/// What one client saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LoadStats {
    /// Answered `200` with the sidecar's version.
    pub ok: u32,
    /// Answered with a 5xx status (the sidecar failed the request).
    pub errors: u32,
    /// Not answered (refused, reset, timed out) or answered something unreadable.
    pub failed: u32,
    /// Longest time between two good answers that had unanswered requests in between.
    pub longest_gap: Duration,
    /// Versions answered, in order, without repeats.
    pub versions: Vec<String>,
    /// Whether the client stopped by itself, at its time limit.
    pub timed_out: bool,
}

#[cfg(test)]
impl LoadStats {
    /// Requests sent.
    pub(super) fn sent(&self) -> u32 {
        self.ok + self.errors + self.failed
    }
}

/// The answer of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ok(String),
    Error,
    Failed,
}

/// The running load; [`Load::finish`] stops it (dropping it stops it too).
pub(super) struct Load {
    stop: CancellationToken,
    _on_drop: DropGuard,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<LoadStats>)>,
}

impl Load {
    /// One client per `(name, url)`, a request every `every`, each client stopping by itself
    /// after `limit`. Every URL must be `http://` on a loopback address.
    pub(super) fn start(
        http: &reqwest::Client,
        targets: &[(&'static str, String)],
        every: Duration,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        for (_, url) in targets {
            ensure_loopback(url)?;
        }
        let stop = CancellationToken::new();
        let tasks = targets
            .iter()
            .map(|(name, url)| (*name, tokio::spawn(client(http.clone(), url.clone(), every, limit, stop.clone()))))
            .collect();
        Ok(Self { _on_drop: stop.clone().drop_guard(), stop, tasks })
    }

    /// Stops the clients; what each saw.
    pub(super) async fn finish(self) -> Vec<(&'static str, LoadStats)> {
        self.stop.cancel();
        let mut all = Vec::new();
        for (name, task) in self.tasks {
            all.push((name, task.await.unwrap_or_default()));
        }
        all
    }
}

/// Refuses a URL that is not plain HTTP to a loopback address.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    // An IPv6 host is written in brackets.
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(parsed.scheme() == "http" && loopback, "the demo's load goes to loopback addresses only, not {url}");
    Ok(())
}

/// One `GET`, classified.
async fn request(http: &reqwest::Client, url: &str) -> Answer {
    let Ok(resp) = http.get(url).send().await else { return Answer::Failed };
    let status = resp.status();
    if status.is_server_error() {
        return Answer::Error;
    }
    if status != StatusCode::OK {
        return Answer::Failed;
    }
    match resp.json::<serde_json::Value>().await {
        Ok(body) => body["version"].as_str().map_or(Answer::Failed, |v| Answer::Ok(v.to_owned())),
        Err(_) => Answer::Failed,
    }
}

/// Asks `url` every `every` until `stop` or `limit`.
async fn client(
    http: reqwest::Client,
    url: String,
    every: Duration,
    limit: Duration,
    stop: CancellationToken,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let started = Instant::now();
    let mut last_ok = started;
    let mut failing = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return stats,
            _ = tick.tick() => {}
        }
        if started.elapsed() >= limit {
            stats.timed_out = true;
            return stats;
        }
        match request(&http, &url).await {
            Answer::Ok(version) => {
                stats.ok += 1;
                if failing {
                    stats.longest_gap = stats.longest_gap.max(last_ok.elapsed());
                    failing = false;
                }
                last_ok = Instant::now();
                if stats.versions.last() != Some(&version) {
                    stats.versions.push(version);
                }
            }
            // A 5xx is an answer: the sidecar is there, and failed the request.
            Answer::Error => stats.errors += 1,
            Answer::Failed => {
                stats.failed += 1;
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A server on a free loopback port answering every `error_every`-th request with a 500,
    /// the others with the demo sidecar's `GET /` body; how many requests it took.
    async fn server(error_every: u32) -> (String, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let served = Arc::new(AtomicU32::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let (status, body) = if n.is_multiple_of(error_every) {
                        ("500 Internal Server Error", r#"{"error":"injected"}"#)
                    } else {
                        ("200 OK", r#"{"service":"demo","version":"1.2.0","pid":7}"#)
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        (url, served)
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(2)).pool_max_idle_per_host(0).build().expect("client")
    }

    #[test]
    fn only_loopback_http_is_loaded() {
        for ok in ["http://127.0.0.1:8080/", "http://127.0.0.2:1/", "http://[::1]:80/"] {
            assert!(ensure_loopback(ok).is_ok(), "{ok} refused");
        }
        for bad in ["http://10.0.0.1:80/", "http://example.com/", "https://127.0.0.1/", "http://localhost/", "nope"] {
            assert!(ensure_loopback(bad).is_err(), "{bad} accepted");
        }
    }

    #[tokio::test]
    async fn counts_answers_and_server_errors_and_stops_by_itself() {
        let (url, served) = server(4).await;
        let load =
            Load::start(&http(), &[("i-1", url)], Duration::from_millis(5), Duration::from_millis(400)).expect("start");
        // Longer than the limit: the client has stopped by itself before being told.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let stats = load.finish().await.remove(0).1;
        assert!(stats.timed_out, "{stats:?}");
        assert_eq!(stats.sent(), served.load(Ordering::SeqCst), "{stats:?}");
        assert!(stats.ok >= 10 && stats.errors >= 3 && stats.failed == 0, "{stats:?}");
        // Every fourth request failed: about a quarter of them.
        let ratio = f64::from(stats.errors) / f64::from(stats.sent());
        assert!((0.15..=0.35).contains(&ratio), "{ratio} {stats:?}");
        assert_eq!(stats.versions, ["1.2.0"]);
    }

    #[tokio::test]
    async fn unanswered_requests_are_failures_and_finish_stops_at_once() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}/");
        let load =
            Load::start(&http(), &[("i-1", url)], Duration::from_millis(5), Duration::from_secs(60)).expect("start");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let stats = load.finish().await.remove(0).1;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!stats.timed_out && stats.failed > 0 && stats.ok == 0 && stats.errors == 0, "{stats:?}");
    }
}
