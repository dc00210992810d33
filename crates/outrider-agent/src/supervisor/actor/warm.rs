//! Warm upgrades: take the instance out of traffic (the sidecar's drain action, reported as
//! `draining`), wait for in-flight work, restart the sidecar, check it, put the instance
//! back (the undrain action).
//!
//! Failure policy: a failed drain action changes nothing (the old process keeps running,
//! the undrain action is tried in case the drain half-happened); a new version that does
//! not become ready is killed and the old version is started again before the instance is
//! put back, so a bad release never leaves the instance out of traffic.

use std::{process::Stdio, time::Duration};

use outrider_model::{DesiredSidecar, SidecarState};
use tokio::time::Instant;

use super::{Actor, Flow, Prepared, Readiness, identity, prepare};
use crate::supervisor::{
    TOKEN_ENV,
    resolve::{ResolvedAction, resolve_action},
};

/// Longest stderr excerpt quoted from a failed command action.
const STDERR_EXCERPT: usize = 300;

impl Actor {
    /// Warm mode: see the [module docs](self).
    pub(super) async fn warm_upgrade(&mut self, d: DesiredSidecar, p: Prepared) -> Flow {
        let Some(warm) = d.lifecycle.warm.clone() else {
            tracing::warn!(sidecar = %self.name, "warm upgrade without a drain action; upgrading by restart instead");
            return self.restart_upgrade(d, p).await;
        };
        let who = identity(&self.shared);
        let drain = resolve_action(&who, "warm.drain", &warm.drain);
        let undrain = warm.undrain.as_ref().map(|a| resolve_action(&who, "warm.undrain", a).map(|r| (r, a.timeout.0)));
        let (drain, undrain) = match (drain, undrain.transpose()) {
            (Ok(drain), Ok(undrain)) => (drain, undrain),
            (Err(e), _) | (_, Err(e)) => {
                self.upgrade_failed(&d, format!("warm upgrade to {}: {e}", d.version));
                return Flow::Continue;
            }
        };
        let Some(old_version) = self.current.as_ref().map(|c| c.desired.version.clone()) else {
            return Flow::Continue;
        };
        tracing::info!(sidecar = %self.name, from = %old_version, to = %d.version, "warm upgrade: taking the instance out of traffic");
        self.update(|s| s.state = SidecarState::Draining);
        if let Err(e) = self.run_action(&drain, warm.drain.timeout.0).await {
            let mut msg =
                format!("warm upgrade to {}: drain action failed: {e}; {old_version} keeps running", d.version);
            if let Some((u, timeout)) = &undrain
                && let Err(e) = self.run_action(u, *timeout).await
            {
                msg.push_str(&format!("; undrain action failed too: {e}"));
            }
            self.upgrade_failed(&d, msg);
            return Flow::Continue;
        }
        tokio::time::sleep(warm.wait.0).await;
        let Some(mut old) = self.current.take() else { return Flow::Continue };
        let how = old.process.terminate(old.desired.lifecycle.drain_time.0).await;
        tracing::info!(sidecar = %self.name, version = %old_version, %how, "warm upgrade: old version stopped");
        self.remove_record().await;
        self.update(|s| s.pid = None);
        let result = self.start_and_wait(&d, p).await;
        let outcome = match result {
            Ok(()) => {
                self.failures = 0;
                self.upgrade_failures = 0;
                None
            }
            Err(msg) => {
                tracing::warn!(sidecar = %self.name, version = %d.version, error = %msg, "warm upgrade: the new version failed; starting the old one again");
                let back = match prepare(&self.shared, &old.desired).await {
                    Ok(p) => self.start_and_wait(&old.desired, p).await,
                    Err(e) => Err(e),
                };
                match back {
                    Ok(()) => Some(format!("warm upgrade to {} failed: {msg}; back on {old_version}", d.version)),
                    Err(e) => {
                        // Nothing runs: the normal start path takes over (with backoff).
                        self.restart_pending = true;
                        self.fail(
                            &d,
                            format!(
                                "warm upgrade to {} failed: {msg}; {old_version} did not start again either: {e}",
                                d.version
                            ),
                        );
                        return Flow::Continue;
                    }
                }
            }
        };
        let undrained = match &undrain {
            Some((u, timeout)) => self.run_action(u, *timeout).await.map_err(|e| format!("undrain action failed: {e}")),
            None => Ok(()),
        };
        match (outcome, undrained) {
            (Some(msg), undrained) => {
                let msg = match undrained {
                    Ok(()) => msg,
                    Err(e) => format!("{msg}; {e}"),
                };
                self.upgrade_failed(&d, msg);
            }
            (None, Err(e)) => {
                tracing::warn!(sidecar = %self.name, error = %e, "warm upgrade: the instance may still be out of traffic");
                self.update(|s| s.error = Some(e));
            }
            (None, Ok(())) => {
                tracing::info!(sidecar = %self.name, version = %d.version, "warm upgrade done; instance back in traffic")
            }
        }
        Flow::Continue
    }

    /// Starts `d` and waits until it is ready; installs it as the current process then.
    async fn start_and_wait(&mut self, d: &DesiredSidecar, p: Prepared) -> Result<(), String> {
        let mut new = self.launch_generation(d, p).await?;
        match new.readiness().await {
            Readiness::Ready => {
                new.ready = true;
                new.next_probe_at = Instant::now() + new.liveness.as_ref().map_or(Duration::ZERO, |l| l.period);
                self.install(new).await;
                Ok(())
            }
            Readiness::Exited(how) => {
                new.process.kill_leftovers();
                Err(format!("the new process exited before it was ready ({how})"))
            }
            Readiness::Failed(msg) => {
                new.process.kill().await;
                Err(msg)
            }
        }
    }

    /// Runs a drain or undrain action within `timeout`.
    async fn run_action(&self, action: &ResolvedAction, timeout: Duration) -> Result<(), String> {
        match action {
            ResolvedAction::Http { method, url } => {
                let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
                let response = self
                    .shared
                    .config
                    .http
                    .request(method, url)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| format!("{url}: {}", crate::artifact::error_chain(&e)))?;
                let status = response.status();
                if status.is_success() { Ok(()) } else { Err(format!("{url} answered {status}")) }
            }
            ResolvedAction::Exec(argv) => {
                let (program, args) = argv.split_first().ok_or("empty command")?;
                let child = tokio::process::Command::new(program)
                    .args(args)
                    .env_remove(TOKEN_ENV)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot run {program:?}: {e}"))?;
                let output = tokio::time::timeout(timeout, child.wait_with_output())
                    .await
                    .map_err(|_| {
                        format!("{program:?} did not finish within {}", outrider_model::HumanDuration(timeout))
                    })?
                    .map_err(|e| format!("{program:?}: {e}"))?;
                if output.status.success() {
                    return Ok(());
                }
                let stderr = String::from_utf8_lossy(&output.stderr);
                let excerpt: String = stderr.trim().chars().take(STDERR_EXCERPT).collect();
                Err(format!("{program:?} {}: {excerpt}", output.status))
            }
        }
    }
}
