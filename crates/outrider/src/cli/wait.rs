//! `outrider wait`: blocks until the manager, or an instance's sidecar, is ready, so that a
//! script can go on; after `--timeout` it fails and says what it saw last.

use std::{future::Future, time::Duration};

use outrider_client::{Client, InstanceFilter};
use outrider_model::{HumanDuration, Instance, SidecarState, SidecarStatus};
use tokio::time::Instant;

use super::{ConnectArgs, render};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(200);

/// What one look found: what was waited for, or what there is instead.
enum Look<T> {
    Ready(T),
    NotYet(String),
}

/// Looks every [`POLL`] until `look` finds it ready (its value is returned) or fails (an error
/// that waiting cannot cure); after `timeout`, fails with `not_ready` and what was seen last.
/// A look may run until the deadline (at least [`POLL`]); one still running then is no answer.
async fn until<T, F, Fut>(timeout: Duration, not_ready: &str, mut look: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Look<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<String> = None;
    loop {
        match tokio::time::timeout_at(deadline.max(Instant::now() + POLL), look()).await {
            Ok(Ok(Look::Ready(value))) => return Ok(value),
            Ok(Ok(Look::NotYet(seen))) => last = Some(seen),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let before = last.map(|l| format!("; before that: {l}")).unwrap_or_default();
                last = Some(format!("no answer in time{before}"));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let last = last.unwrap_or_else(|| "nothing".to_owned());
            anyhow::bail!("{not_ready} within {}; last seen: {last}", HumanDuration(timeout));
        }
        tokio::time::sleep((deadline - now).min(POLL)).await;
    }
}

/// Waits until the manager of `conn` answers `/readyz` and, with `--token-file`, the token
/// file can be read (the manager writes it on first start).
pub(super) async fn manager(conn: &ConnectArgs, timeout: Duration) -> anyhow::Result<()> {
    let probe = conn.client_with(None)?;
    let not_ready = format!("the manager at {} was not ready", conn.manager);
    until(timeout, &not_ready, || async {
        if let Err(e) = probe.readyz().await {
            return Ok(Look::NotYet(format!("/readyz: {:#}", anyhow::Error::from(e))));
        }
        if let Some(file) = &conn.token_file
            && let Err(e) = Client::token_from(Some(file), None)
        {
            return Ok(Look::NotYet(format!("{:#}", anyhow::Error::from(e))));
        }
        Ok(Look::Ready(()))
    })
    .await
}

/// What `wait instance` waits for.
#[derive(Debug, Clone, Copy)]
pub(super) struct InstanceGoal<'a> {
    /// The instance id.
    pub id: &'a str,
    /// The sidecar to look at; `None` for every sidecar the instance reports.
    pub sidecar: Option<&'a str>,
    /// The version the sidecar(s) must run, if any.
    pub version: Option<&'a str>,
    /// The state the sidecar(s) must report.
    pub state: SidecarState,
}

impl InstanceGoal<'_> {
    /// The instance of `instances` that meets the goal, or what there is instead: the instance
    /// must be registered with its agent connected, and report the sidecar (at least one,
    /// all of them, without a sidecar name) in the state, at the version when one is given.
    pub(super) fn check(&self, instances: &[Instance]) -> Result<Instance, String> {
        let id = self.id;
        let Some(instance) = instances.iter().find(|i| i.id == id) else {
            return Err(format!("instance {id} is not registered"));
        };
        if !instance.connected {
            return Err(format!("instance {id} is registered but its agent is not connected"));
        }
        let looked_at: Vec<_> = instance.sidecars.iter().filter(|s| self.sidecar.is_none_or(|n| s.name == n)).collect();
        if looked_at.is_empty() {
            let what = self.sidecar.map_or_else(|| "any sidecar".to_owned(), |n| format!("sidecar {n}"));
            return Err(format!("instance {id} does not report {what}"));
        }
        let ready = |s: &&SidecarStatus| s.state == self.state && self.version.is_none_or(|v| s.version == v);
        if looked_at.iter().all(ready) {
            return Ok(instance.clone());
        }
        let seen: Vec<_> = looked_at
            .iter()
            .map(|s| match &s.error {
                Some(e) => format!("{} ({e})", render::sidecar_status(s)),
                None => render::sidecar_status(s),
            })
            .collect();
        Err(format!("instance {id}: {}", seen.join(", ")))
    }

    /// What was not reached, for the error on timeout.
    fn not_ready(&self) -> String {
        let sidecar = self.sidecar.map_or_else(|| "its sidecars".to_owned(), |n| format!("sidecar {n}"));
        let version = self.version.map(|v| format!(" at {v}")).unwrap_or_default();
        format!("instance {} did not report {sidecar} {}{version}", self.id, self.state)
    }
}

/// Waits until an instance of `conn`'s tenant meets `goal`; returns the instance. Fails at once
/// when the manager refuses the request (a bad token, an unknown tenant).
pub(super) async fn instance(
    conn: &ConnectArgs,
    goal: InstanceGoal<'_>,
    timeout: Duration,
) -> anyhow::Result<Instance> {
    let client = conn.client()?;
    until(timeout, &goal.not_ready(), || async {
        match client.list_instances(&conn.tenant, &InstanceFilter::default()).await {
            Ok(instances) => Ok(goal.check(&instances).map_or_else(Look::NotYet, Look::Ready)),
            Err(e) if e.is_transient() => Ok(Look::NotYet(format!("{:#}", anyhow::Error::from(e)))),
            Err(e) => Err(e.into()),
        }
    })
    .await
}
