//! What the actor reports when a sidecar cannot run or an upgrade does not happen. The
//! messages end up in the sidecar's status (`error`), so they say what failed and what runs.

use std::{io, path::PathBuf, process::ExitStatus};

use outrider_model::HumanDuration;
use thiserror::Error;

use crate::{
    artifact::ArtifactError,
    probe::ProbeError,
    supervisor::{resolve::ResolveError, sockets::SocketError},
};

/// Why a process of a version could not be started, or did not become ready.
#[derive(Debug, Error)]
pub(super) enum StartError {
    /// The artifact cannot be had.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The settings cannot be expanded on this instance.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The agent-owned sockets cannot be bound.
    #[error(transparent)]
    Sockets(#[from] SocketError),
    /// The readiness socket cannot be created.
    #[error("cannot create the NOTIFY_SOCKET: {0}")]
    NotifySocket(io::Error),
    /// The stable link of a signal-reload sidecar cannot be set up.
    #[error("cannot set up the executable link: {0}")]
    ExecutableLink(io::Error),
    /// An agent-owned socket cannot be duplicated for the child.
    #[error("cannot duplicate a listening socket: {0}")]
    DuplicateSocket(io::Error),
    /// The process cannot be spawned.
    #[error("cannot start {program:?}: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// The spawn error.
        error: io::Error,
    },
    /// The process ended before it was ready; holds how it ended.
    #[error("the new process exited before it was ready ({0})")]
    ExitedBeforeReady(String),
    /// The process ended after it was ready but before it had stayed up `min_ready`.
    #[error("the new process exited {after} after it was ready, within min_ready ({min_ready}) ({how})")]
    ExitedDuringMinReady {
        /// How long after its readiness it ended.
        after: HumanDuration,
        /// The sidecar's `min_ready`.
        min_ready: HumanDuration,
        /// How it ended.
        how: String,
    },
    /// The readiness socket broke.
    #[error("cannot read NOTIFY_SOCKET: {0}")]
    NotifyRead(io::Error),
    /// No `READY=1` before the startup deadline.
    #[error("no READY=1 on NOTIFY_SOCKET within the startup deadline ({left} left when waiting began)")]
    NotNotified {
        /// Time that was left until the deadline when the wait began.
        left: HumanDuration,
    },
    /// The startup probe did not pass before its deadline.
    #[error("startup probe did not pass within {deadline}: {error}")]
    StartupProbe {
        /// The probe's deadline.
        deadline: HumanDuration,
        /// Its last failure.
        error: ProbeError,
    },
    /// A signal-reload sidecar exited instead of re-executing itself; holds how it ended.
    #[error("the running process exited after the reload signal ({0})")]
    ExitedAfterReload(String),
    /// A signal-reload sidecar wrote no new pid before the startup deadline.
    #[error("no new pid in {} before the startup deadline", .0.display())]
    NoNewPid(PathBuf),
}

/// Why a warm-upgrade drain or undrain action failed.
#[derive(Debug, Error)]
pub(super) enum ActionError {
    /// The HTTP method is not one.
    #[error("invalid HTTP method {0:?}")]
    Method(String),
    /// The HTTP call failed.
    #[error("{url}: {message}")]
    Request {
        /// The URL.
        url: String,
        /// The error and its causes.
        message: String,
    },
    /// The HTTP call answered a non-2xx status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The command is empty.
    #[error("empty command")]
    EmptyCommand,
    /// The command cannot be started.
    #[error("cannot run {program:?}: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// The spawn error.
        error: io::Error,
    },
    /// The command did not finish in time.
    #[error("{program:?} did not finish within {timeout}")]
    Timeout {
        /// The program.
        program: String,
        /// The action's timeout.
        timeout: HumanDuration,
    },
    /// Waiting for the command failed.
    #[error("{program:?}: {error}")]
    Wait {
        /// The program.
        program: String,
        /// The wait error.
        error: io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("{program:?} {status}: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// The start of what it wrote to stderr.
        stderr: String,
    },
}

/// Why an upgrade did not happen (or was undone); `old` is the version that runs instead.
#[derive(Debug, Error)]
pub(super) enum UpgradeError {
    /// The new version could not be prepared; the old process was not touched.
    #[error(transparent)]
    Prepare(StartError),
    /// The new generation of a hot upgrade could not be started.
    #[error("hot upgrade to {version}: {error}; {old} keeps serving")]
    HotStart {
        /// The target version.
        version: String,
        /// The running version.
        old: String,
        /// Why.
        error: StartError,
    },
    /// The new generation of a hot upgrade did not become ready and was stopped.
    #[error("hot upgrade to {version} failed: {error}; {old} keeps serving")]
    HotFailed {
        /// The target version.
        version: String,
        /// The running version.
        old: String,
        /// Why.
        error: StartError,
    },
    /// The reload or stop signal of a signal-reload sidecar is not one.
    #[error("unknown signal {signal:?} or {stop_signal:?}")]
    UnknownSignal {
        /// The reload signal.
        signal: String,
        /// The stop signal.
        stop_signal: String,
    },
    /// The stable link of a signal-reload sidecar cannot be pointed at the new version.
    #[error("cannot switch the executable link: {0}")]
    SwitchLink(io::Error),
    /// The warm-upgrade actions cannot be expanded.
    #[error("warm upgrade to {version}: {error}")]
    WarmActions {
        /// The target version.
        version: String,
        /// Why.
        error: ResolveError,
    },
    /// The drain action failed: nothing was stopped.
    #[error(
        "warm upgrade to {version}: drain action failed: {error}; {old} keeps running{}",
        undrain.as_ref().map(|e| format!("; undrain action failed too: {e}")).unwrap_or_default()
    )]
    DrainFailed {
        /// The target version.
        version: String,
        /// The running version.
        old: String,
        /// Why the drain failed.
        error: ActionError,
        /// Why the undrain tried afterwards failed, if it did.
        undrain: Option<ActionError>,
    },
    /// The new version did not become ready; the old one was started again.
    #[error(
        "warm upgrade to {version} failed: {error}; back on {old}{}",
        undrain.as_ref().map(|e| format!("; undrain action failed: {e}")).unwrap_or_default()
    )]
    WarmFellBack {
        /// The target version.
        version: String,
        /// The version running again.
        old: String,
        /// Why the new version failed.
        error: StartError,
        /// Why putting the instance back failed, if it did.
        undrain: Option<ActionError>,
    },
    /// The new version did not become ready, and neither did the old one started again:
    /// nothing runs.
    #[error("warm upgrade to {version} failed: {error}; {old} did not start again either: {again}")]
    WarmNoWayBack {
        /// The target version.
        version: String,
        /// The version that did not start again.
        old: String,
        /// Why the new version failed.
        error: StartError,
        /// Why the old one failed.
        again: StartError,
    },
    /// The new version kept failing in its first minutes after the upgrade; the one it
    /// replaced runs again, and the agent does not try the same target again by itself.
    #[error(
        "upgrade to {version} failed: it failed {failures} times within {window} of the upgrade (last: {last}); back on {old} until the target changes"
    )]
    CrashLoopFellBack {
        /// The target version.
        version: String,
        /// The version running again.
        old: String,
        /// Its failures in the window.
        failures: u32,
        /// The probation window.
        window: HumanDuration,
        /// The last failure.
        last: String,
    },
    /// The upgrade is done, but the instance may still be out of traffic.
    #[error("undrain action failed: {0}")]
    Undrain(ActionError),
}
