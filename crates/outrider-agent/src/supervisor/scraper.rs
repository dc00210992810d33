//! The scraper of one running generation of a sidecar: every `interval` it GETs the
//! sidecar's metrics (bounded by the timeout and [`outrider_promtext::MAX_BODY`]), derives
//! the series of the `scrape` setting ([`crate::scrape`]) and writes them, with any breach
//! of their bounds, to the status board — only while the board still shows this process.
//! A failed scrape reports no values; its warning is logged at most once a minute.
//!
//! A breach of a series with `restart: true` is sent to the actor, which handles it like a
//! failed liveness probe. Dropping the [`Scraper`] ends the task.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use outrider_model::Scrape;
use thiserror::Error;
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};

use super::board::{ScrapeReport, StatusBoard};
use crate::scrape::{Health, Observation, derive, observe};

/// A failed scrape is logged as a warning at most this often (else at debug level).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why one scrape yielded nothing.
#[derive(Debug, Error)]
enum ScrapeError {
    #[error("GET {url}: {message}")]
    Request { url: String, message: String },
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("GET {url}: the body is larger than {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("GET {url}: {error}")]
    Parse { url: String, error: outrider_promtext::ParseError },
}

/// The running scraper of one process; ends when dropped.
pub(super) struct Scraper {
    task: JoinHandle<()>,
    restart: mpsc::Receiver<String>,
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scraper {
    /// Starts scraping `url` (placeholders expanded) for sidecar `name` running as `pid`.
    pub(super) fn start(board: Arc<StatusBoard>, name: String, pid: u32, url: String, setting: Scrape) -> Self {
        let (tx, restart) = mpsc::channel(1);
        let task = tokio::spawn(run(Job { board, name, pid, url, setting, restart: tx }));
        Self { task, restart }
    }

    /// Resolves with the breach that asks for a restart.
    pub(super) async fn restart_requested(&mut self) -> String {
        match self.restart.recv().await {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}

struct Job {
    board: Arc<StatusBoard>,
    name: String,
    pid: u32,
    url: String,
    setting: Scrape,
    restart: mpsc::Sender<String>,
}

/// The client scrapes share: no proxy, no redirects, no pooled connections (like the HTTP
/// probes: each scrape reaches whichever generation now accepts on a shared socket).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    })
}

/// The body of `GET url`, within `timeout` and [`outrider_promtext::MAX_BODY`] bytes.
async fn fetch(url: &str, timeout: Duration) -> Result<String, ScrapeError> {
    let max = outrider_promtext::MAX_BODY;
    let request =
        |e: reqwest::Error| ScrapeError::Request { url: url.to_owned(), message: crate::artifact::error_chain(&e) };
    let get = async {
        let mut resp = client()
            .get(url)
            .header(reqwest::header::ACCEPT, "text/plain; version=0.0.4")
            .send()
            .await
            .map_err(request)?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status { url: url.to_owned(), status: resp.status() });
        }
        let too_large = || ScrapeError::TooLarge { url: url.to_owned(), max };
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(request)? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(timeout, get).await.map_err(|_| ScrapeError::Timeout { url: url.to_owned(), timeout })?
}

async fn run(job: Job) {
    let Job { board, name, pid, url, setting, restart } = job;
    let timeout = setting.effective_timeout();
    let mut ticker = tokio::time::interval(setting.interval.0.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous: Option<(Instant, Vec<Option<Observation>>)> = None;
    let mut health = Health::default();
    let mut shown_error: Option<String> = None;
    let mut last_warning: Option<Instant> = None;
    let mut failures_since_warning = 0_u32;
    loop {
        ticker.tick().await;
        let at = Instant::now();
        let observations = match fetch(&url, timeout).await {
            Ok(body) => match outrider_promtext::parse(&body, &outrider_promtext::Limits::default()) {
                Ok(samples) => Ok(setting.series.iter().map(|s| observe(s, &samples)).collect::<Vec<_>>()),
                Err(error) => Err(ScrapeError::Parse { url: url.clone(), error }),
            },
            Err(e) => Err(e),
        };
        let observations = match observations {
            Ok(o) => {
                if last_warning.take().is_some() {
                    tracing::info!(sidecar = %name, %url, "scraping the sidecar's metrics works again");
                }
                failures_since_warning = 0;
                o
            }
            Err(e) => {
                failures_since_warning = failures_since_warning.saturating_add(1);
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(sidecar = %name, error = %e, failures = failures_since_warning,
                        "cannot scrape the sidecar's metrics; its derived metrics are not reported");
                    last_warning = Some(at);
                    failures_since_warning = 0;
                } else {
                    tracing::debug!(sidecar = %name, error = %e, "cannot scrape the sidecar's metrics");
                }
                let report = ScrapeReport { failed: true, ..ScrapeReport::default() };
                board.record_scrape(&name, pid, report);
                continue;
            }
        };
        let values: Vec<Option<f64>> = setting
            .series
            .iter()
            .zip(&observations)
            .enumerate()
            .map(|(i, (s, cur))| {
                let (before, elapsed) = match &previous {
                    Some((then, before)) => (before.get(i).and_then(Option::as_ref), at - *then),
                    None => (None, Duration::ZERO),
                };
                derive(s, before, cur.as_ref()?, elapsed)
            })
            .collect();
        previous = Some((at, observations));
        let breaches = health.update(&setting.series, &values);
        let metrics: BTreeMap<String, f64> =
            setting.series.iter().zip(&values).filter_map(|(s, v)| Some((s.name.clone(), (*v)?))).collect();
        let error = (!breaches.is_empty()).then(|| {
            format!("dynamic health: {}", breaches.iter().map(|b| b.message.as_str()).collect::<Vec<_>>().join("; "))
        });
        let new: Vec<String> =
            breaches.iter().filter(|b| b.new).map(|b| setting.series[b.index].name.clone()).collect();
        if !new.is_empty() {
            tracing::warn!(sidecar = %name, error = error.as_deref().unwrap_or_default(), "sidecar out of its bounds");
        }
        let shown = std::mem::replace(&mut shown_error, error.clone());
        board.record_scrape(
            &name,
            pid,
            ScrapeReport { metrics, failed: false, breach: error, shown, new_breaches: new },
        );
        if let Some(b) = breaches.iter().find(|b| b.new && setting.series[b.index].restart) {
            let _ = restart.try_send(format!("dynamic health: {}", b.message));
        }
    }
}
