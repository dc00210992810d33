//! What agents say on their streams (acknowledgements, status reports, the end of a stream),
//! queued by the streams and applied in batches by one task under one lock: a stream never
//! waits on the fleet's lock, and a push to thousands of agents does not compete with their
//! thousands of acknowledgements for it. Each stream's messages keep their order.

use std::sync::Arc;

use outrider_model::SidecarStatus;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Fleet, Inner, Write, material};

/// Messages queued at most; a full queue holds the streams back (HTTP/2 flow control then
/// slows their agents), it never grows.
const QUEUE: usize = 16 * 1024;

/// Messages applied under one lock at most.
const BATCH: usize = 2048;

/// What a stream said.
#[derive(Debug)]
pub enum Said {
    /// The agent applied this revision.
    Ack(u64),
    /// What the instance runs now.
    Report(Vec<SidecarStatus>),
    /// The stream ended (a newer stream of the same instance is left alone).
    Ended,
}

/// One message of one stream.
#[derive(Debug)]
pub struct Heard {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Instance id.
    pub instance: Arc<str>,
    /// The stream ([`super::Connection::id`]).
    pub conn: u64,
    /// What it said.
    pub said: Said,
}

/// The streams' end of the queue.
#[derive(Debug, Clone)]
pub struct Intake(mpsc::Sender<Heard>);

impl Intake {
    /// Queues `heard`, waiting while the queue is full; `false` once the manager stops.
    pub async fn send(&self, heard: Heard) -> bool {
        self.0.send(heard).await.is_ok()
    }
}

/// The applier's end of the queue.
#[derive(Debug)]
pub struct IntakeQueue(mpsc::Receiver<Heard>);

/// A new queue.
pub fn queue() -> (Intake, IntakeQueue) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Intake(tx), IntakeQueue(rx))
}

impl Fleet {
    /// Applies what the streams said, batch by batch, until `cancel` or every stream's end of
    /// the queue is gone.
    pub async fn run_intake(self: Arc<Self>, mut queue: IntakeQueue, cancel: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                n = queue.0.recv_many(&mut batch, BATCH) => n,
                () = cancel.cancelled() => return,
            };
            if n == 0 {
                return;
            }
            self.hear(batch.drain(..));
        }
    }

    /// Applies `heard` in order under one lock.
    pub fn hear(&self, heard: impl IntoIterator<Item = Heard>) {
        let now = OffsetDateTime::now_utc();
        let sampled_at = self.clock.now();
        let (mut flush, mut observed, mut ended) = (false, false, 0i64);
        let mut g = self.lock();
        for Heard { tenant, instance, conn, said } in heard {
            match said {
                Said::Ended => {
                    if end(&mut g, &tenant, &instance, conn, self.shared) {
                        ended += 1;
                    }
                }
                said => {
                    let Some(e) = g.instances.get_mut(&*tenant).and_then(|m| m.get_mut(&*instance)) else { continue };
                    if e.conn.as_ref().map(|c| c.0) != Some(conn) {
                        continue;
                    }
                    e.record.last_seen = now;
                    let write = match said {
                        // Not persisted by itself: the status report that follows an applied
                        // change is, and agents re-send both on reconnect.
                        Said::Ack(revision) => {
                            e.record.acked_revision = revision;
                            Write::No
                        }
                        Said::Report(sidecars) => {
                            // With several managers, the leader judges from the records: a
                            // watched instance's every sample is written (batched like the rest).
                            let sampled = e.history.is_some() && self.shared;
                            if let Some(h) = e.history.as_deref_mut() {
                                h.record(sampled_at, &sidecars);
                            }
                            observed |= e.record.sidecars != sidecars;
                            let write = if material(&e.record.sidecars, &sidecars) {
                                Write::Soon
                            } else if sampled {
                                Write::Later
                            } else {
                                Write::No
                            };
                            e.record.sidecars = sidecars;
                            write
                        }
                        Said::Ended => Write::No,
                    };
                    if write != Write::No {
                        e.dirty = true;
                        g.urgent |= write == Write::Soon && self.shared;
                        flush = true;
                    }
                }
            }
        }
        drop(g);
        if ended > 0 {
            self.metrics.agents_connected.dec_by(ended);
            flush = true;
            observed = true;
        }
        if flush {
            self.flush.notify_one();
        }
        if observed {
            self.observed.notify_one();
        }
    }
}

/// Ends stream `conn` of an instance; whether it was the instance's live stream.
fn end(g: &mut Inner, tenant: &str, id: &str, conn: u64, shared: bool) -> bool {
    let Some(e) = g.instances.get_mut(tenant).and_then(|m| m.get_mut(id)) else { return false };
    if e.conn.as_ref().map(|c| c.0) != Some(conn) {
        return false;
    }
    e.conn = None;
    e.record.connected = false;
    e.dirty = true;
    g.urgent |= shared;
    true
}

#[cfg(test)]
mod tests {
    use outrider_model::{SidecarState, SidecarStatus};

    use super::{Heard, Said};
    use crate::fleet::{
        Registration,
        remote::tests::{catalog, fleet, get, labels},
    };

    fn registration(id: &str) -> Registration {
        Registration {
            tenant: "t".into(),
            instance: id.into(),
            service: "s".into(),
            labels: labels(),
            deploy_id: "d1".into(),
            sidecars: Vec::new(),
            claim: Some("c".into()),
            stored_claim: None,
            opened_by: "agent".into(),
        }
    }

    fn running(version: &str) -> Vec<SidecarStatus> {
        vec![SidecarStatus {
            name: "mesh".into(),
            version: version.into(),
            state: SidecarState::Running,
            pid: Some(7),
            restarts: 0,
            exits: 0,
            cpu_percent: 0.0,
            rss_bytes: 0,
            error: None,
            failed_upgrade: None,
            metrics: Default::default(),
        }]
    }

    #[test]
    fn one_batch_applies_each_stream_s_messages_in_order_and_ignores_stale_streams() {
        let f = fleet("m1");
        let old = f.connect(registration("i-1"), &catalog()).unwrap();
        // The agent reconnected: its old stream's late messages must change nothing.
        let new = f.connect(registration("i-1"), &catalog()).unwrap();
        let other = f.connect(registration("i-2"), &catalog()).unwrap();
        let heard = |id: &str, conn, said| Heard { tenant: "t".into(), instance: id.into(), conn, said };
        f.hear([
            heard("i-1", new.id, Said::Ack(5)),
            heard("i-1", new.id, Said::Report(running("1.0.0"))),
            heard("i-1", old.id, Said::Report(running("0.9.0"))),
            heard("i-1", old.id, Said::Ended),
            heard("i-2", other.id, Said::Report(running("1.0.0"))),
            heard("i-2", other.id, Said::Ended),
            // After its end, nothing more from that stream counts.
            heard("i-2", other.id, Said::Report(running("2.0.0"))),
        ]);
        let one = get(&f, "i-1").unwrap();
        assert_eq!((one.acked_revision, one.connected), (5, true), "{one:?}");
        assert_eq!(one.sidecars, running("1.0.0"));
        let two = get(&f, "i-2").unwrap();
        assert!(!two.connected);
        assert_eq!(two.sidecars, running("1.0.0"));
        assert_eq!(f.metrics.agents_connected.get(), 1, "one stream ended, the stale one did not count");
    }
}
