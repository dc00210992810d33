//! Socket handover between two generations of a sidecar that own their listening sockets,
//! over a unix `SOCK_SEQPACKET` socket with `SCM_RIGHTS` (protocol v1, described in
//! `docs/handover.md`).
//!
//! Every generation calls [`Generation::start`] with the path in `OUTRIDER_HANDOVER_SOCKET`.
//! The first finds nobody at the path, binds its sockets and becomes the *holder*: a
//! background thread listens at the path and hands duplicates of the sockets to each
//! *successor* that connects. A successor serves on the very same sockets (one kernel accept
//! queue, so no connection is lost) and, once its predecessor drains
//! ([`Generation::drain`]) or goes away, becomes the holder in turn.

mod background;
mod wire;

use std::{
    env, io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt},
        time::TimeVal,
    },
};
use thiserror::Error;
use tracing::{info, warn};

use self::{
    background::{HolderSocket, Role, Shared},
    wire::{Incoming, Message, PROTOCOL},
};
use crate::listen_fds::check_listening;

/// The environment variable that holds the handover socket path.
pub const SOCKET_ENV: &str = "OUTRIDER_HANDOVER_SOCKET";

/// The environment variable that overrides [`DEFAULT_TIMEOUT`], in milliseconds.
pub const TIMEOUT_ENV: &str = "OUTRIDER_HANDOVER_TIMEOUT_MS";

/// How long a successor waits to connect and receive the sockets, unless overridden.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a holder waits for `hello` after accepting a connection, unless overridden.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Sockets with their names, as handed over.
pub type NamedSockets = Vec<(String, OwnedFd)>;

/// Why a generation could not start.
#[derive(Debug, Error)]
pub enum HandoverError {
    /// An environment variable holds an unusable value.
    #[error("{name}={value:?} is invalid: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting to the handover socket failed for another reason than "nobody there".
    #[error("cannot connect to the handover socket {}", path.display())]
    Connect {
        /// The handover socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The predecessor did not hand the sockets over in time.
    #[error("the predecessor did not hand over its sockets within {}ms", timeout.as_millis())]
    Timeout {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The predecessor answered something the protocol does not allow.
    #[error("handover protocol error: {0}")]
    Protocol(String),
    /// The predecessor refused with an `error` message.
    #[error("the predecessor refused the handover: {0}")]
    Refused(String),
    /// There was no predecessor and `bind_fresh` failed.
    #[error("cannot bind fresh sockets")]
    Bind(#[source] io::Error),
    /// The handover socket could not be set up at its path.
    #[error("cannot listen on the handover socket {}", path.display())]
    Listen {
        /// The handover socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another I/O error.
    #[error("I/O error during the handover")]
    Io(#[from] io::Error),
}

/// How to start a generation: the handover socket path and the timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    path: PathBuf,
    timeout: Duration,
    hello_timeout: Duration,
}

impl Handover {
    /// A handover at `path` with the default timeouts.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), timeout: DEFAULT_TIMEOUT, hello_timeout: DEFAULT_HELLO_TIMEOUT }
    }

    /// The handover the environment asks for: `None` when `OUTRIDER_HANDOVER_SOCKET` is unset
    /// or empty; the successor timeout from `OUTRIDER_HANDOVER_TIMEOUT_MS` when set.
    pub fn from_env() -> Result<Option<Self>, HandoverError> {
        match env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
            Some(path) => Ok(Some(Self::new(path).timeout(timeout_from_env()?))),
            None => Ok(None),
        }
    }

    /// Sets how long a successor waits to connect and receive the sockets.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a holder waits for `hello` on a new connection.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// The handover socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Acquires the sockets from a predecessor at the path, or, when nobody listens there
    /// (`ENOENT`, `ECONNREFUSED`), calls `bind_fresh` and becomes the holder. Either way the
    /// returned [`Generation`] then hands the sockets to successors in the background.
    ///
    /// Blocks for up to the timeout (call it from `spawn_blocking` in async code). On error
    /// after connecting to a predecessor, `bind_fresh` is not called: the predecessor still
    /// holds the ports, and the caller should exit with a failure.
    pub fn start<F>(self, bind_fresh: F) -> Result<(NamedSockets, Generation), HandoverError>
    where
        F: FnOnce() -> io::Result<NamedSockets>,
    {
        let deadline = Instant::now() + self.timeout;
        let (sockets, role) = match self.connect()? {
            Some(predecessor) => {
                let sockets = self.acquire(&predecessor, deadline)?;
                let ready = Message::Ready { pid: Some(std::process::id()) };
                if let Err(e) = wire::send(predecessor.as_fd(), &ready, &[], MsgFlags::empty()) {
                    warn!("cannot tell the predecessor that this generation is ready: {e}");
                }
                let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
                info!(path = %self.path.display(), ?names, "acquired the sockets from the predecessor");
                (sockets, Role::Successor(predecessor))
            }
            None => {
                let sockets = bind_fresh().map_err(HandoverError::Bind)?;
                let holder = HolderSocket::bind(&self.path)
                    .map_err(|source| HandoverError::Listen { path: self.path.clone(), source })?;
                info!(path = %self.path.display(), "no predecessor: bound fresh sockets; holding the handover socket");
                (sockets, Role::Holder(holder))
            }
        };
        let inherited = matches!(role, Role::Successor(_));
        let duplicates = sockets
            .iter()
            .map(|(name, fd)| Ok((name.clone(), fd.try_clone()?)))
            .collect::<io::Result<NamedSockets>>()?;
        let (stop, stop_rx) = UnixStream::pair()?;
        let shared =
            Shared { path: self.path.clone(), sockets: duplicates, hello_timeout: self.hello_timeout, stop: stop_rx };
        let thread =
            std::thread::Builder::new().name("handover".to_owned()).spawn(move || background::run(role, shared))?;
        let generation =
            Generation { inherited, path: self.path, stop: Mutex::new(Some(stop)), thread: Mutex::new(Some(thread)) };
        Ok((sockets, generation))
    }

    /// Connects to the holder; `None` when nobody listens at the path.
    fn connect(&self) -> Result<Option<OwnedFd>, HandoverError> {
        let connect_error = |source: io::Error| HandoverError::Connect { path: self.path.clone(), source };
        let addr = UnixAddr::new(&self.path).map_err(|e| connect_error(e.into()))?;
        let socket =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)?;
        // A blocking connect to a unix socket waits while the holder's backlog is full, up to
        // the send timeout.
        setsockopt(&socket, sockopt::SendTimeout, &timeval(self.timeout)).map_err(io::Error::from)?;
        loop {
            match connect(socket.as_raw_fd(), &addr) {
                Ok(()) => return Ok(Some(socket)),
                Err(Errno::ENOENT | Errno::ECONNREFUSED) => return Ok(None),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN | Errno::EINPROGRESS) => {
                    return Err(HandoverError::Timeout { timeout: self.timeout });
                }
                Err(e) => return Err(connect_error(e.into())),
            }
        }
    }

    /// Says hello and receives the sockets before `deadline`.
    fn acquire(&self, predecessor: &OwnedFd, deadline: Instant) -> Result<NamedSockets, HandoverError> {
        let timed_out = || HandoverError::Timeout { timeout: self.timeout };
        let hello = Message::Hello { protocol: PROTOCOL, pid: Some(std::process::id()) };
        wire::send(predecessor.as_fd(), &hello, &[], MsgFlags::empty()).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => timed_out(),
            _ => HandoverError::Io(e),
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        setsockopt(predecessor, sockopt::ReceiveTimeout, &timeval(left)).map_err(io::Error::from)?;
        let incoming = wire::recv(predecessor.as_fd(), MsgFlags::empty()).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => timed_out(),
            _ => HandoverError::Io(e),
        })?;
        // Later reads happen after poll: no timeout there.
        setsockopt(predecessor, sockopt::ReceiveTimeout, &TimeVal::new(0, 0)).map_err(io::Error::from)?;
        let (names, fds) = match incoming {
            Incoming::Message(Message::Sockets { protocol: PROTOCOL, names }, fds) => (names, fds),
            Incoming::Message(Message::Sockets { protocol, .. }, _) => {
                return Err(HandoverError::Protocol(format!("sockets message for protocol {protocol}")));
            }
            Incoming::Message(Message::Error { message }, _) => return Err(HandoverError::Refused(message)),
            Incoming::Message(other, _) => {
                return Err(HandoverError::Protocol(format!("expected a sockets message, got {}", other.kind())));
            }
            Incoming::Eof => {
                return Err(HandoverError::Protocol(
                    "the predecessor closed the connection without the sockets".into(),
                ));
            }
            Incoming::Malformed(reason) => return Err(HandoverError::Protocol(reason)),
        };
        if names.len() != fds.len() {
            return Err(HandoverError::Protocol(format!(
                "the sockets message names {} sockets but carries {} descriptors",
                names.len(),
                fds.len()
            )));
        }
        for (name, fd) in names.iter().zip(&fds) {
            check_listening(fd.as_fd())
                .map_err(|reason| HandoverError::Protocol(format!("socket {name:?} is not usable: {reason}")))?;
        }
        Ok(names.into_iter().zip(fds).collect())
    }
}

/// One generation of a sidecar in the handover: it hands its sockets to successors in a
/// background thread until [`drain`](Generation::drain) (or drop).
#[derive(Debug)]
pub struct Generation {
    inherited: bool,
    path: PathBuf,
    /// Dropping it tells the background thread to stop.
    stop: Mutex<Option<UnixStream>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Generation {
    /// [`Handover::start`] at `path`, with the successor timeout from
    /// `OUTRIDER_HANDOVER_TIMEOUT_MS` when set (5 s otherwise).
    pub fn start<F>(path: impl Into<PathBuf>, bind_fresh: F) -> Result<(NamedSockets, Generation), HandoverError>
    where
        F: FnOnce() -> io::Result<NamedSockets>,
    {
        Handover::new(path).timeout(timeout_from_env()?).start(bind_fresh)
    }

    /// Whether the sockets came from a predecessor (rather than `bind_fresh`).
    pub fn inherited(&self) -> bool {
        self.inherited
    }

    /// The handover socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops handing over: call it when shutdown begins. If this generation holds the
    /// handover socket, its file is removed (when it is still this generation's), every
    /// connected successor is sent `draining` (so one of them takes over the path) and the
    /// connections are closed. Returns once that is done; later calls do nothing.
    ///
    /// The sockets returned by `start` are not touched: stop accepting on them separately.
    pub fn drain(&self) {
        drop(self.stop.lock().unwrap_or_else(PoisonError::into_inner).take());
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            warn!("the handover thread panicked");
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.drain();
    }
}

/// The successor timeout from `OUTRIDER_HANDOVER_TIMEOUT_MS`, or the default.
fn timeout_from_env() -> Result<Duration, HandoverError> {
    parse_timeout(env::var_os(TIMEOUT_ENV).as_deref())
}

/// Reads a value of `OUTRIDER_HANDOVER_TIMEOUT_MS` (unset or empty: the default).
fn parse_timeout(value: Option<&std::ffi::OsStr>) -> Result<Duration, HandoverError> {
    let value = value.map(|v| v.to_string_lossy()).unwrap_or_default();
    let bad = |reason| HandoverError::Env { name: TIMEOUT_ENV, value: value.clone().into_owned(), reason };
    match value.trim() {
        "" => Ok(DEFAULT_TIMEOUT),
        v => match v.parse::<u64>() {
            Ok(0) => Err(bad("must be above 0")),
            Ok(ms) => Ok(Duration::from_millis(ms)),
            Err(_) => Err(bad("not a number of milliseconds")),
        },
    }
}

/// `d` as a socket timeout, at least 1 ms (0 would mean "no timeout").
fn timeval(d: Duration) -> TimeVal {
    let d = d.max(Duration::from_millis(1));
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    TimeVal::new(secs, i64::from(d.subsec_micros()))
}

#[cfg(test)]
mod tests;
