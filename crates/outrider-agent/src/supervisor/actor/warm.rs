//! Warm upgrades: take the instance out of traffic (the sidecar's drain action, reported as
//! `draining`), wait for in-flight work, restart the sidecar, check it (ready, then up for
//! `min_ready`), put the instance back (the undrain action).
//!
//! Failure policy: a failed drain action changes nothing (the old process keeps running,
//! the undrain action is tried in case the drain half-happened); a new version that does
//! not become ready, or exits within `min_ready`, is killed and the old version is started again before the instance is
//! put back, so a bad release never leaves the instance out of traffic.

use std::{process::Stdio, time::Duration};

use outrider_model::{DesiredSidecar, HumanDuration, SidecarState};
use tokio::time::Instant;

use super::{
    Actor, Flow, Prepared, Readiness,
    error::{ActionError, StartError, UpgradeError},
    identity, prepare,
};
use crate::{
    secrets::TOKEN_ENV,
    supervisor::resolve::{ResolvedAction, resolve_action},
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
            (Err(error), _) | (_, Err(error)) => {
                self.upgrade_failed(&d, UpgradeError::WarmActions { version: d.version.clone(), error });
                return Flow::Continue;
            }
        };
        let Some(old_version) = self.current.as_ref().map(|c| c.desired.version.clone()) else {
            return Flow::Continue;
        };
        tracing::info!(sidecar = %self.name, from = %old_version, to = %d.version, "warm upgrade: taking the instance out of traffic");
        self.update(|s| s.state = SidecarState::Draining);
        if let Err(error) = self.run_action(&drain, warm.drain.timeout.0).await {
            let undrain = match &undrain {
                Some((u, timeout)) => self.run_action(u, *timeout).await.err(),
                None => None,
            };
            let version = d.version.clone();
            self.upgrade_failed(&d, UpgradeError::DrainFailed { version, old: old_version, error, undrain });
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
                self.start_probation(&old.desired, &d.version);
                None
            }
            Err(error) => {
                tracing::warn!(sidecar = %self.name, version = %d.version, %error, "warm upgrade: the new version failed; starting the old one again");
                let back = match prepare(&self.shared, &old.desired).await {
                    Ok(p) => self.start_and_wait(&old.desired, p).await,
                    Err(e) => Err(e),
                };
                match back {
                    Ok(()) => Some(error),
                    Err(again) => {
                        // Nothing runs: the normal start path takes over (with backoff).
                        self.restart_pending = true;
                        let version = d.version.clone();
                        self.fail(&d, UpgradeError::WarmNoWayBack { version, old: old_version, error, again });
                        return Flow::Continue;
                    }
                }
            }
        };
        let undrained = match &undrain {
            Some((u, timeout)) => self.run_action(u, *timeout).await,
            None => Ok(()),
        };
        match (outcome, undrained) {
            (Some(error), undrained) => {
                let (version, undrain) = (d.version.clone(), undrained.err());
                self.upgrade_failed(&d, UpgradeError::WarmFellBack { version, old: old_version, error, undrain });
            }
            (None, Err(e)) => {
                let msg = UpgradeError::Undrain(e).to_string();
                tracing::warn!(sidecar = %self.name, error = %msg, "warm upgrade: the instance may still be out of traffic");
                self.update(|s| s.error = Some(msg));
            }
            (None, Ok(())) => {
                tracing::info!(sidecar = %self.name, version = %d.version, "warm upgrade done; instance back in traffic")
            }
        }
        Flow::Continue
    }

    /// Starts `d`, waits until it is ready and has stayed up `min_ready` since; installs it
    /// as the current process then.
    async fn start_and_wait(&mut self, d: &DesiredSidecar, p: Prepared) -> Result<(), StartError> {
        let mut new = self.launch_generation(d, p).await?;
        match new.readiness().await {
            Readiness::Ready => {
                let min_ready = d.lifecycle.min_ready.0;
                let ready_at = Instant::now();
                if let Ok(how) = tokio::time::timeout(min_ready, new.process.wait()).await {
                    new.process.kill_leftovers();
                    let after = HumanDuration(ready_at.elapsed());
                    return Err(StartError::ExitedDuringMinReady { after, min_ready: d.lifecycle.min_ready, how });
                }
                new.ready = true;
                new.next_probe_at = Instant::now() + new.liveness.as_ref().map_or(Duration::ZERO, |l| l.period);
                self.install(new).await;
                Ok(())
            }
            Readiness::Exited(how) => {
                new.process.kill_leftovers();
                Err(StartError::ExitedBeforeReady(how))
            }
            Readiness::Failed(e) => {
                new.process.kill().await;
                Err(e)
            }
        }
    }

    /// Runs a drain or undrain action within `timeout`.
    async fn run_action(&self, action: &ResolvedAction, timeout: Duration) -> Result<(), ActionError> {
        match action {
            ResolvedAction::Http { method, url } => {
                let method =
                    reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| ActionError::Method(method.clone()))?;
                let response =
                    self.shared.config.http.request(method, url).timeout(timeout).send().await.map_err(|e| {
                        ActionError::Request { url: url.clone(), message: crate::artifact::error_chain(&e) }
                    })?;
                let status = response.status();
                if status.is_success() { Ok(()) } else { Err(ActionError::Status { url: url.clone(), status }) }
            }
            ResolvedAction::Exec(argv) => {
                let (program, args) = argv.split_first().ok_or(ActionError::EmptyCommand)?;
                let child = tokio::process::Command::new(program)
                    .args(args)
                    .env_remove(TOKEN_ENV)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|error| ActionError::Spawn { program: program.clone(), error })?;
                let output = tokio::time::timeout(timeout, child.wait_with_output())
                    .await
                    .map_err(|_| ActionError::Timeout {
                        program: program.clone(),
                        timeout: outrider_model::HumanDuration(timeout),
                    })?
                    .map_err(|error| ActionError::Wait { program: program.clone(), error })?;
                if output.status.success() {
                    return Ok(());
                }
                let stderr = String::from_utf8_lossy(&output.stderr);
                let stderr = stderr.trim().chars().take(STDERR_EXCERPT).collect();
                Err(ActionError::Failed { program: program.clone(), status: output.status, stderr })
            }
        }
    }
}
