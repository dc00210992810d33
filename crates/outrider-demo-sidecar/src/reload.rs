//! Signal reload, an nginx-style binary upgrade (only with `OUTRIDER_PID_FILE`).
//!
//! Once it serves, a generation writes its pid to the pid file. On SIGUSR2 it renames the
//! pid file to `<pid file>.oldbin` and starts the program at its own `argv[0]` (a symlink the
//! agent points at the new version) with the same arguments and environment, passing its
//! listening socket as fd 3 (`LISTEN_FDS=1`, `LISTEN_FDNAMES=http`). The new generation
//! serves and writes its own pid; the old one keeps serving until SIGTERM. If the new one
//! exits while the old one is still the current generation, the old one reaps it and puts
//! its own pid back.

use std::{
    env,
    ffi::OsString,
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::ExitStatus,
};

use command_fds::{CommandFdExt, FdMapping};
use thiserror::Error;
use tokio::{
    process::{Child, Command},
    signal::unix::{Signal, SignalKind, signal},
};
use tracing::{info, warn};

use crate::config::HTTP_SOCKET;

/// Why the signal reload cannot be set up.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The SIGUSR2 handler cannot be installed.
    #[error("cannot install the SIGUSR2 handler")]
    SignalHandler(#[source] io::Error),
    /// The pid file cannot be written.
    #[error("cannot write the pid file {}", path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: io::Error,
    },
}

/// Why the next generation could not be started on SIGUSR2 (only logged).
#[derive(Debug, Error)]
enum UpgradeError {
    #[error("the generation started before (pid {0}) is still running")]
    StillRunning(u32),
    #[error("argv[0] is missing")]
    NoProgram,
    #[error("cannot duplicate the listening socket: {0}")]
    DuplicateSocket(io::Error),
    #[error("cannot map the listening socket to fd 3: {0}")]
    MapSocket(command_fds::FdMappingCollision),
    #[error("cannot start {}: {error}", program.display())]
    Spawn { program: PathBuf, error: io::Error },
}

/// What needs attention.
pub(crate) enum Event {
    /// SIGUSR2: start the next generation.
    Upgrade,
    /// The generation started on SIGUSR2 exited.
    ChildExited(io::Result<ExitStatus>),
}

/// The pid file and the generation started from this one, if any.
pub(crate) struct Reload {
    pid_file: PathBuf,
    oldbin: PathBuf,
    pid: u32,
    signal: Signal,
    child: Option<(u32, Child)>,
}

impl Reload {
    /// Installs the SIGUSR2 handler, then writes this process's pid to `pid_file`.
    pub(crate) fn start(pid_file: PathBuf) -> Result<Self, ReloadError> {
        let signal = signal(SignalKind::user_defined2()).map_err(ReloadError::SignalHandler)?;
        let mut oldbin = pid_file.clone().into_os_string();
        oldbin.push(".oldbin");
        let reload = Self { pid_file, oldbin: oldbin.into(), pid: std::process::id(), signal, child: None };
        write_pid(&reload.pid_file, reload.pid)
            .map_err(|source| ReloadError::PidFile { path: reload.pid_file.clone(), source })?;
        info!(pid_file = %reload.pid_file.display(), "wrote the pid file; SIGUSR2 starts the next generation");
        Ok(reload)
    }

    /// Waits for SIGUSR2 or for the started generation to exit. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Event {
        let Self { signal, child, .. } = self;
        let exited = async {
            match child {
                Some((_, child)) => child.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signal.recv() => Event::Upgrade,
            status = exited => Event::ChildExited(status),
        }
    }

    /// Handles `event`; `listener` is the socket to pass to the next generation.
    pub(crate) fn handle(&mut self, event: Event, listener: &impl AsFd) {
        match event {
            Event::Upgrade => {
                if let Err(e) = self.upgrade(listener) {
                    warn!("SIGUSR2: cannot start the next generation: {e}");
                }
            }
            Event::ChildExited(status) => self.child_exited(status),
        }
    }

    fn upgrade(&mut self, listener: &impl AsFd) -> Result<(), UpgradeError> {
        if let Some((child_pid, _)) = &self.child {
            return Err(UpgradeError::StillRunning(*child_pid));
        }
        let mut args = env::args_os();
        let program: OsString = args.next().ok_or(UpgradeError::NoProgram)?;
        let socket = listener.as_fd().try_clone_to_owned().map_err(UpgradeError::DuplicateSocket)?;
        match fs::rename(&self.pid_file, &self.oldbin) {
            Ok(()) => {}
            Err(e) => warn!(pid_file = %self.pid_file.display(), "cannot rename the pid file to .oldbin: {e}"),
        }
        let mut command = Command::new(&program);
        command
            .args(args)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", HTTP_SOCKET)
            .env_remove("LISTEN_PID")
            .fd_mappings(vec![FdMapping { parent_fd: socket, child_fd: 3 }])
            .map_err(UpgradeError::MapSocket)?;
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                self.restore();
                return Err(UpgradeError::Spawn { program: program.into(), error });
            }
        };
        let child_pid = child.id().unwrap_or_default();
        info!(child_pid, program = %Path::new(&program).display(), "SIGUSR2: started the next generation");
        self.child = Some((child_pid, child));
        Ok(())
    }

    fn child_exited(&mut self, status: io::Result<ExitStatus>) {
        let Some((child_pid, _)) = self.child.take() else { return };
        match status {
            Ok(status) => warn!(child_pid, %status, "the next generation exited"),
            Err(e) => warn!(child_pid, "cannot wait for the next generation: {e}"),
        }
        // Unless the pid file names a third process, this generation is the current one again.
        match read_pid(&self.pid_file) {
            Some(pid) if pid != child_pid => {}
            _ => self.restore(),
        }
    }

    /// Makes the pid file name this process again.
    fn restore(&self) {
        let restored = if read_pid(&self.oldbin) == Some(self.pid) {
            fs::rename(&self.oldbin, &self.pid_file)
        } else {
            write_pid(&self.pid_file, self.pid)
        };
        match restored {
            Ok(()) => info!(pid_file = %self.pid_file.display(), "this generation is current again"),
            Err(e) => warn!(pid_file = %self.pid_file.display(), "cannot restore the pid file: {e}"),
        }
    }

    /// On a clean exit: removes the pid file and `.oldbin` where they name this process.
    pub(crate) fn exit(self) {
        for path in [&self.pid_file, &self.oldbin] {
            if read_pid(path) == Some(self.pid)
                && let Err(e) = fs::remove_file(path)
            {
                warn!(path = %path.display(), "cannot remove the pid file: {e}");
            }
        }
    }
}

/// Writes `pid` to `path` atomically (a temporary file beside it, then a rename).
fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{pid}.tmp"));
    let temp = PathBuf::from(temp);
    fs::write(&temp, format!("{pid}\n"))?;
    fs::rename(&temp, path).inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

/// The pid in the file at `path`, if it holds one.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_are_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.pid");
        assert_eq!(read_pid(&path), None);
        write_pid(&path, 42).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "42\n");
        write_pid(&path, 7).unwrap();
        assert_eq!(read_pid(&path), Some(7));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
        fs::write(&path, "not a pid").unwrap();
        assert_eq!(read_pid(&path), None);
    }
}
