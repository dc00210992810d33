//! [`Store::hold`](crate::Store::hold) on etcd: a key put with a lease only if absent, the
//! lease kept alive in the background, revoked when the hold drops.

use std::time::Duration;

use etcd_client::{Compare as EtcdCompare, CompareOp, LeaseClient, PutOptions, Txn as EtcdTxn, TxnOp};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::etcd_store::{Conn, fence, revision_of, within};
use crate::{Held, StoreError};

/// Shortest lease etcd grants reliably (its minimum is about 1.5 election timeouts).
const MIN_TTL: Duration = Duration::from_secs(2);

/// Pause before trying again to reach etcd for a renewal.
const RETRY: Duration = Duration::from_millis(100);

/// Ends the lease when the hold drops: stops the keeper and revokes the lease, so the key goes
/// at once instead of at the lease's expiry.
struct LeaseGuard {
    keeper: JoinHandle<()>,
    lease: LeaseClient,
    id: i64,
    endpoints: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (mut lease, id, endpoints) = (self.lease.clone(), self.id, self.endpoints.clone());
            rt.spawn(async move {
                if let Err(e) = within(&endpoints, lease.revoke(id)).await {
                    tracing::debug!(error = %e, "lease not revoked; it expires by itself");
                }
            });
        }
    }
}

/// The TTL etcd is asked for: `ttl` rounded up to whole seconds, at least [`MIN_TTL`].
fn lease_seconds(ttl: Duration) -> i64 {
    let ttl = ttl.max(MIN_TTL);
    i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

impl Conn {
    /// Puts `key` = `value` with a new lease of `ttl` unless `key` exists; `None` when it does.
    pub(crate) async fn hold(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Option<Held>, StoreError> {
        let seconds = lease_seconds(ttl);
        let mut lease = self.lease.clone();
        let id = self.call(lease.grant(seconds, None)).await?.id();
        let full = self.full(key);
        let put = TxnOp::put(full.clone(), value.to_vec(), Some(PutOptions::new().with_lease(id)));
        let txn =
            EtcdTxn::new().when([EtcdCompare::create_revision(full, CompareOp::Equal, 0)]).and_then([put, fence()]);
        let mut kv = self.kv.clone();
        let resp = match self.call(kv.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.call(lease.revoke(id)).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            let _ = self.call(lease.revoke(id)).await;
            return Ok(None);
        }
        let revision = revision_of(resp.header().map_or(0, etcd_client::ResponseHeader::revision));
        let (lost_tx, lost) = watch::channel(false);
        let keeper =
            tokio::spawn(keep_alive(self.lease.clone(), id, Duration::from_secs(seconds.unsigned_abs()), lost_tx));
        let guard = LeaseGuard { keeper, lease: self.lease.clone(), id, endpoints: self.endpoints.clone() };
        Ok(Some(Held::leased(key, revision, lost, Box::new(guard))))
    }
}

/// Renews lease `id` every third of `ttl`; says it is lost once etcd reports it expired, or
/// when no renewal succeeded for two thirds of `ttl` (the holder stops acting before etcd
/// could hand the key to another process).
async fn keep_alive(mut lease: LeaseClient, id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 3;
    let mut renewed = Instant::now();
    let mut stream = None;
    loop {
        if renewed.elapsed() >= ttl - every {
            tracing::warn!(lease = id, "lease not renewed in time: hold lost");
            break;
        }
        if stream.is_none() {
            stream = tokio::time::timeout(every, lease.keep_alive(id)).await.ok().and_then(Result::ok);
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let answer = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(every, answer).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => renewed = Instant::now(),
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease = id, "lease expired: hold lost");
                    break;
                }
                _ => stream = None,
            }
        }
        let next = if stream.is_some() { renewed + every } else { Instant::now() + RETRY };
        tokio::time::sleep_until(next).await;
    }
    let _ = lost.send(true);
}
