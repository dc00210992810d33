//! What can go wrong while running Outrider locally.

use std::{io, path::PathBuf, process::ExitStatus, time::Duration};

use outrider_client::ClientError;

/// A failure of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file, a port or a process could not be handled; `what` says which.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The demo sidecar is not next to `outrider`.
    #[error(
        "the demo sidecar {} is missing; build it with `cargo build --release` (it is built with outrider)",
        .0.display()
    )]
    MissingSidecar(PathBuf),
    /// A child process ended when it should run.
    #[error("the {name} exited ({status}); see {}", log.display())]
    Exited {
        /// What it is (`manager`, `agent i-1`).
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Its output.
        log: PathBuf,
    },
    /// The manager did not get ready in time.
    #[error("the manager was not ready within {timeout:?}; see {}", log.display())]
    NotReady {
        /// The time it had.
        timeout: Duration,
        /// Its output.
        log: PathBuf,
    },
    /// A helper process did not get where it should in time.
    #[error("the {name} took longer than {timeout:?}; see {}", log.display())]
    Late {
        /// What it is and what it waited for (`prometheus (ready)`).
        name: String,
        /// The time it had.
        timeout: Duration,
        /// Its output.
        log: PathBuf,
    },
    /// A path that must be absolute is not.
    #[error("{} is not an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    /// A call to the manager failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A request to an agent or a sidecar failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

impl HarnessError {
    /// A closure that wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
