//! One webhook's deliveries: a bounded queue, one request at a time, retries with backoff,
//! and a window of the latest attempts.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use outrider_model::DeliveryAttempt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Shared, StoredWebhook, payload};

/// Attempts kept per webhook for `GET /webhooks/{id}`.
pub const ATTEMPTS_KEPT: usize = 50;

/// One event to deliver.
#[derive(Debug, Clone)]
pub struct Job {
    /// `X-Outrider-Delivery`.
    pub delivery: String,
    /// The event's sequence number.
    pub seq: u64,
    /// The webhook kind.
    pub kind: &'static str,
    /// The body, shared by every webhook of the tenant.
    pub body: Bytes,
}

/// A running webhook: its settings, its queue and its latest attempts.
pub struct Hook {
    /// What the store holds.
    pub config: StoredWebhook,
    queue: mpsc::Sender<Job>,
    attempts: Mutex<VecDeque<DeliveryAttempt>>,
    cancel: CancellationToken,
}

impl Hook {
    /// Starts the worker of `config`; it stops when `cancel` (or the hook's own token) fires.
    pub fn spawn(config: StoredWebhook, shared: Arc<Shared>, cancel: &CancellationToken) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(shared.delivery.queue.max(1));
        let hook = Arc::new(Self {
            config,
            queue,
            attempts: Mutex::new(VecDeque::with_capacity(ATTEMPTS_KEPT)),
            cancel: cancel.child_token(),
        });
        tokio::spawn(run(hook.clone(), rx, shared));
        hook
    }

    /// Whether the webhook wants `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.config.webhook.events.iter().any(|e| e == kind)
    }

    /// Queues `job` without waiting; a full queue drops it (recorded, and counted).
    pub fn offer(&self, job: Job, shared: &Shared) {
        if let Err(mpsc::error::TrySendError::Full(job)) = self.queue.try_send(job) {
            tracing::warn!(webhook = %self.config.webhook.id, delivery = %job.delivery, "webhook queue full: delivery dropped");
            shared.metrics.webhook_deliveries.get_or_create(&vec![("outcome", "dropped")]).inc();
            self.record(DeliveryAttempt {
                delivery: job.delivery,
                seq: job.seq,
                kind: job.kind.to_owned(),
                attempt: 0,
                time: shared.clock.now(),
                status: None,
                error: Some("dropped: the webhook's queue is full".into()),
                duration_ms: 0,
                ok: false,
            });
        }
    }

    /// Stops the worker.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The latest attempts, oldest first.
    pub fn attempts(&self) -> Vec<DeliveryAttempt> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn record(&self, a: DeliveryAttempt) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if attempts.len() >= ATTEMPTS_KEPT {
            attempts.pop_front();
        }
        attempts.push_back(a);
    }
}

/// Delivers the queue's jobs one after the other until cancelled.
async fn run(hook: Arc<Hook>, mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    loop {
        let job = tokio::select! {
            j = rx.recv() => j,
            () = hook.cancel.cancelled() => return,
        };
        let Some(job) = job else { return };
        tokio::select! {
            () = deliver(&hook, &job, &shared) => {}
            () = hook.cancel.cancelled() => return,
        }
    }
}

/// Tries `job` until it succeeds or its attempts run out, waiting between attempts.
async fn deliver(hook: &Hook, job: &Job, shared: &Shared) {
    let d = &shared.delivery;
    let signature = payload::signature(&hook.config.secret, &job.body);
    for attempt in 1..=d.attempts.max(1) {
        let time = shared.clock.now();
        let started = Instant::now();
        let sent = shared
            .http
            .post(&hook.config.webhook.url)
            .timeout(d.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Outrider-Event", job.kind)
            .header("X-Outrider-Delivery", &job.delivery)
            .header("X-Outrider-Signature", &signature)
            .body(job.body.clone())
            .send()
            .await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, error) = match sent {
            Ok(resp) if resp.status().is_success() => (Some(resp.status().as_u16()), None),
            Ok(resp) => (Some(resp.status().as_u16()), Some(format!("answered {}", resp.status()))),
            Err(e) if e.is_timeout() => (None, Some(format!("no answer within {:?}", d.timeout))),
            Err(e) => (None, Some(error_chain(&e))),
        };
        let ok = error.is_none();
        hook.record(DeliveryAttempt {
            delivery: job.delivery.clone(),
            seq: job.seq,
            kind: job.kind.to_owned(),
            attempt,
            time,
            status,
            error: error.clone(),
            duration_ms,
            ok,
        });
        let outcome = if ok {
            "delivered"
        } else if attempt < d.attempts {
            "retried"
        } else {
            "failed"
        };
        shared.metrics.webhook_deliveries.get_or_create(&vec![("outcome", outcome)]).inc();
        if ok {
            return;
        }
        tracing::debug!(webhook = %hook.config.webhook.id, delivery = %job.delivery, attempt, error = ?error, "webhook delivery failed");
        if attempt < d.attempts {
            tokio::time::sleep(d.wait_after(attempt)).await;
        } else {
            tracing::warn!(webhook = %hook.config.webhook.id, delivery = %job.delivery, "webhook delivery given up");
        }
    }
}

/// An error with its causes (`error sending request: connection refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outrider_model::Webhook;

    use super::*;
    use crate::{clock::SystemClock, metrics::Metrics, webhooks::Delivery};

    fn shared(queue: usize) -> Arc<Shared> {
        let delivery = Delivery {
            timeout: Duration::from_millis(200),
            backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
            attempts: 2,
            queue,
        };
        Arc::new(Shared {
            delivery,
            metrics: Arc::new(Metrics::default()),
            clock: Arc::new(SystemClock),
            http: reqwest::Client::new(),
        })
    }

    async fn closed_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    }

    fn config(url: String) -> StoredWebhook {
        let webhook = Webhook {
            id: "w1".into(),
            url,
            events: vec!["plan.blocked".into()],
            secret_set: true,
            created_by: "admin".into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        StoredWebhook { webhook, secret: "s3cret-key".into() }
    }

    fn job(n: u64) -> Job {
        Job { delivery: format!("{n}-0"), seq: n, kind: "plan.blocked", body: Bytes::from_static(b"{}") }
    }

    #[tokio::test]
    async fn a_full_queue_drops_without_waiting_and_says_so() {
        let shared = shared(1);
        let cancel = CancellationToken::new();
        let hook = Hook::spawn(config(closed_url().await), shared.clone(), &cancel);
        // The worker is stuck in a minute's backoff after its first job; one more fits.
        hook.offer(job(1), &shared);
        tokio::time::timeout(Duration::from_secs(5), async {
            while hook.attempts().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first attempt");
        let started = std::time::Instant::now();
        for n in 2..=5 {
            hook.offer(job(n), &shared);
        }
        assert!(started.elapsed() < Duration::from_millis(100), "offering never waits");
        let attempts = hook.attempts();
        let dropped: Vec<u64> = attempts.iter().filter(|a| a.attempt == 0).map(|a| a.seq).collect();
        assert_eq!(dropped, [3, 4, 5], "{attempts:?}");
        assert!(attempts[0].error.is_some() && !attempts[0].ok && attempts[0].attempt == 1, "{attempts:?}");
        let counted = shared.metrics.webhook_deliveries.get_or_create(&vec![("outcome", "dropped")]).get();
        assert_eq!(counted, 3);
        cancel.cancel();
    }

    #[tokio::test]
    async fn only_the_latest_attempts_are_kept() {
        let shared = shared(1);
        let cancel = CancellationToken::new();
        let hook = Hook::spawn(config(closed_url().await), shared.clone(), &cancel);
        cancel.cancel();
        for n in 0..(ATTEMPTS_KEPT as u64 + 10) {
            hook.record(DeliveryAttempt {
                delivery: format!("{n}-0"),
                seq: n,
                kind: "plan.blocked".into(),
                attempt: 1,
                time: time::OffsetDateTime::UNIX_EPOCH,
                status: Some(200),
                error: None,
                duration_ms: 1,
                ok: true,
            });
        }
        let seqs: Vec<u64> = hook.attempts().iter().map(|a| a.seq).collect();
        assert_eq!(seqs.len(), ATTEMPTS_KEPT);
        assert_eq!((seqs[0], seqs[ATTEMPTS_KEPT - 1]), (10, ATTEMPTS_KEPT as u64 + 9));
    }
}
