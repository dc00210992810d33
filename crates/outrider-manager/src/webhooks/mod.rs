//! Webhooks: the dispatcher follows the store (webhooks and the event log of every tenant)
//! and queues each event a webhook asks for on that webhook's worker (`worker.rs`), which
//! POSTs it signed (`payload.rs`) and retries with backoff (`backoff.rs`).
//!
//! Invariant: nothing here blocks the event path or the executor. The dispatcher only reads
//! committed batches from its own watch and offers jobs to bounded queues without waiting; a
//! full queue drops the delivery (recorded as an attempt `0` and counted). Deliveries are
//! at-least-once while the manager runs; what is queued or being retried when it stops is
//! lost, and events committed while it is down are not delivered (the event log has them).
//! Delivery attempts are kept in memory only.

mod backoff;
mod kind;
mod payload;
mod worker;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

pub use backoff::Delivery;
use bytes::Bytes;
use futures::StreamExt;
use outrider_model::{DeliveryAttempt, Webhook};
use outrider_store::{KeyValue, Store, StoreError, WatchEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use worker::{Hook, Job};

use crate::{Error, clock::Clock, codec::decode, event_log, keys, metrics::Metrics};

/// A webhook as the store holds it: with its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWebhook {
    /// What the API shows.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing key.
    pub secret: String,
}

/// What the workers share.
pub struct Shared {
    delivery: Delivery,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

/// The running webhooks of every tenant, by tenant and id.
pub struct Webhooks {
    shared: Arc<Shared>,
    hooks: Mutex<HashMap<(String, String), Arc<Hook>>>,
    /// Ends the current delivery term (the manager's leadership, or its life).
    cancel: Mutex<CancellationToken>,
}

impl Webhooks {
    /// No webhooks yet; workers stop with `cancel`.
    pub fn new(
        delivery: Delivery,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(delivery.timeout)
            .build()
            .map_err(|e| Error::internal(format!("webhook client: {e}")))?;
        let shared = Arc::new(Shared { delivery, metrics, clock, http });
        Ok(Self { shared, hooks: Mutex::new(HashMap::new()), cancel: Mutex::new(cancel) })
    }

    /// Starts the workers of every stored webhook, to deliver until `term` ends (the manager
    /// delivers while it leads); returns the revision to follow from.
    pub async fn load(&self, store: &dyn Store, term: CancellationToken) -> Result<u64, Error> {
        *self.cancel.lock().unwrap_or_else(|p| p.into_inner()) = term;
        let range = store.range(keys::WEBHOOKS).await?;
        for kv in &range.kvs {
            self.put(kv);
        }
        Ok(range.revision + 1)
    }

    /// The latest delivery attempts of a webhook (none when it has no worker yet).
    pub fn attempts(&self, tenant: &str, id: &str) -> Vec<DeliveryAttempt> {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        hooks.get(&(tenant.to_owned(), id.to_owned())).map(|h| h.attempts()).unwrap_or_default()
    }

    fn put(&self, kv: &KeyValue) {
        let Some((tenant, id)) = keys::parse_webhook(&kv.key) else { return };
        let config = match decode::<StoredWebhook>(&kv.key, &kv.value) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(key = %kv.key, error = %e, "unreadable webhook");
                return;
            }
        };
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), id.to_owned());
        if hooks.get(&key).is_some_and(|h| h.config == config) {
            return;
        }
        let hook = Hook::spawn(config, self.shared.clone(), &self.term());
        if let Some(old) = hooks.insert(key, hook) {
            old.stop();
        }
    }

    fn delete(&self, key: &str) {
        let Some((tenant, id)) = keys::parse_webhook(key) else { return };
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = hooks.remove(&(tenant.to_owned(), id.to_owned())) {
            old.stop();
        }
    }

    /// Offers the logged event at `kv` to the tenant's webhooks that want its kind.
    fn event(&self, kv: &KeyValue) {
        let Some((tenant, suffix)) = keys::parse_event_by_seq(&kv.key) else { return };
        let hooks: Vec<Arc<Hook>> = {
            let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            hooks.iter().filter(|((t, _), _)| t == tenant).map(|(_, h)| h.clone()).collect()
        };
        if hooks.is_empty() {
            return;
        }
        let Some(e) = event_log::watched(kv) else { return };
        let Some(kind) = kind::of(&e) else { return };
        let wanting: Vec<&Arc<Hook>> = hooks.iter().filter(|h| h.wants(kind)).collect();
        let Some(delivery) = payload::delivery_id(suffix).filter(|_| !wanting.is_empty()) else { return };
        let job = Job { body: Bytes::from(payload::body(&delivery, kind, &e)), delivery, seq: e.seq, kind };
        for h in wanting {
            h.offer(job.clone(), &self.shared);
        }
    }

    /// Follows the store from `from` until the term ends, then stops every worker: webhook
    /// changes start and stop workers, logged events are offered to them. A watch that falls
    /// behind starts again from the current revision (the events in between are not
    /// delivered; a warning says so).
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, from: u64) {
        self.follow(store, from).await;
        // The term is over: no worker delivers any more.
        let hooks = std::mem::take(&mut *self.hooks.lock().unwrap_or_else(|p| p.into_inner()));
        for h in hooks.values() {
            h.stop();
        }
    }

    /// The current delivery term.
    fn term(&self) -> CancellationToken {
        self.cancel.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn follow(&self, store: Arc<dyn Store>, mut from: u64) {
        let term = self.term();
        loop {
            let mut watch = match store.watch("", from).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook dispatcher cannot watch the store");
                    if !self.pause().await {
                        return;
                    }
                    from = self.reload(store.as_ref(), from).await;
                    continue;
                }
            };
            loop {
                let batch = tokio::select! {
                    b = watch.next() => b,
                    () = term.cancelled() => return,
                };
                match batch {
                    None => return,
                    Some(Err(e)) => {
                        if matches!(e, StoreError::Compacted { .. }) {
                            tracing::warn!(
                                "webhook dispatcher fell behind: events since revision {from} are not delivered"
                            );
                        } else {
                            tracing::warn!(error = %e, "webhook dispatcher's watch interrupted");
                        }
                        from = self.reload(store.as_ref(), from).await;
                        break;
                    }
                    Some(Ok(b)) => {
                        for e in &b.events {
                            match e {
                                WatchEvent::Put(kv) if kv.key.starts_with(keys::WEBHOOKS) => self.put(kv),
                                WatchEvent::Put(kv) if kv.key.starts_with(keys::EVENTS) => self.event(kv),
                                WatchEvent::Delete { key, .. } if key.starts_with(keys::WEBHOOKS) => self.delete(key),
                                _ => {}
                            }
                        }
                        from = b.revision + 1;
                    }
                }
            }
        }
    }

    /// Rereads the webhooks (dropping those deleted meanwhile); the revision to follow from.
    async fn reload(&self, store: &dyn Store, from: u64) -> u64 {
        match store.range(keys::WEBHOOKS).await {
            Ok(range) => {
                let present: std::collections::HashSet<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
                let gone: Vec<String> = {
                    let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
                    hooks.keys().map(|(t, id)| keys::webhook(t, id)).filter(|k| !present.contains(k.as_str())).collect()
                };
                for k in gone {
                    self.delete(&k);
                }
                for kv in &range.kvs {
                    self.put(kv);
                }
                range.revision + 1
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher cannot reread the webhooks");
                from
            }
        }
    }

    /// Waits a moment before trying again; `false` when cancelled meanwhile.
    async fn pause(&self) -> bool {
        let term = self.term();
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => true,
            () = term.cancelled() => false,
        }
    }
}
