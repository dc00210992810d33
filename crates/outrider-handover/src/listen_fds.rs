//! Taking over sockets passed by the `LISTEN_FDS` socket-activation convention (how the
//! Outrider agent hands the same sockets to each generation of a sidecar).
//!
//! The convention (systemd's `sd_listen_fds`): the parent passes `N` open sockets as file
//! descriptors `3 .. 3+N` and sets `LISTEN_FDS=N`; optionally `LISTEN_PID` to the pid of the
//! process meant to use them (they are ignored by any other process) and `LISTEN_FDNAMES` to
//! colon-separated names, one per socket (`unknown` where a name is missing).

use std::{
    env,
    net::TcpListener,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::{
        socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt},
        stat::{SFlag, fstat},
    },
};
use thiserror::Error;
use tracing::{debug, warn};

use crate::sys;

/// The first inherited file descriptor, by the convention.
pub const LISTEN_FDS_START: RawFd = 3;

/// The name of a socket that `LISTEN_FDNAMES` does not name.
pub const UNNAMED: &str = "unknown";

/// The most sockets [`take`] accepts (a bound on bad input, far above any real use).
pub const MAX_LISTEN_FDS: u32 = 4096;

const VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// Why inherited sockets could not be taken over.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListenFdsError {
    /// `LISTEN_FDS` or `LISTEN_PID` holds an unusable value.
    #[error("{name}={value:?} is invalid: {reason}")]
    BadVar {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `LISTEN_FDS` announces a descriptor that is not open.
    #[error("LISTEN_FDS announces fd {fd}, which is not open")]
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
    },
    /// The socket with this name is not a listening TCP socket.
    #[error("inherited socket {name:?} is not a listening TCP socket: {reason}")]
    NotListeningTcp {
        /// The socket's name.
        name: String,
        /// What it is instead.
        reason: String,
    },
}

/// Why a descriptor is not the listening socket it should be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct NotListening(pub String);

/// The sockets a process inherited through `LISTEN_FDS`, with their names, in fd order.
#[derive(Debug, Default)]
pub struct ListenFds {
    sockets: Vec<(String, OwnedFd)>,
}

/// Takes over the sockets passed through `LISTEN_FDS`.
///
/// Returns an empty set when `LISTEN_FDS` is unset or `0`, when `LISTEN_PID` names another
/// process, or when the sockets were already taken in this process. Every socket taken is
/// marked close-on-exec. The `LISTEN_*` variables are removed from the environment (so that
/// they do not leak into anything this process starts) when the process is still
/// single-threaded, which it is when this runs early in `main`, before any runtime starts.
pub fn take() -> Result<ListenFds, ListenFdsError> {
    let fds = env::var("LISTEN_FDS").ok();
    if fds.is_none() {
        return Ok(ListenFds::default());
    }
    let pid = env::var("LISTEN_PID").ok();
    let names = env::var("LISTEN_FDNAMES").ok();
    if !sys::remove_env_if_single_threaded(&VARS) {
        debug!("process is multi-threaded; leaving the LISTEN_* variables in the environment");
    }
    let Some(names) = parse(fds.as_deref(), pid.as_deref(), names.as_deref(), std::process::id())? else {
        return Ok(ListenFds::default());
    };
    let count = RawFd::try_from(names.len()).unwrap_or(0);
    match sys::take_inherited(LISTEN_FDS_START, count) {
        None => Ok(ListenFds::default()),
        Some(Err(fd)) => Err(ListenFdsError::NotOpen { fd }),
        Some(Ok(fds)) => Ok(ListenFds { sockets: names.into_iter().zip(fds).collect() }),
    }
}

/// Reads the `LISTEN_*` values: the names of the sockets meant for the process `our_pid`
/// (one per descriptor), or `None` when there are none for it.
fn parse(
    fds: Option<&str>,
    pid: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<String>>, ListenFdsError> {
    let Some(fds) = fds else { return Ok(None) };
    let bad = |name, value: &str, reason| ListenFdsError::BadVar { name, value: value.to_owned(), reason };
    let count: u32 = fds.trim().parse().map_err(|_| bad("LISTEN_FDS", fds, "not a number"))?;
    if count > MAX_LISTEN_FDS {
        return Err(bad("LISTEN_FDS", fds, "more sockets than MAX_LISTEN_FDS"));
    }
    if let Some(pid) = pid.filter(|p| !p.trim().is_empty()) {
        let listen_pid: u32 = pid.trim().parse().map_err(|_| bad("LISTEN_PID", pid, "not a number"))?;
        if listen_pid != our_pid {
            warn!(listen_pid, our_pid, "LISTEN_PID names another process; ignoring LISTEN_FDS");
            return Ok(None);
        }
    }
    if count == 0 {
        return Ok(None);
    }
    let given: Vec<&str> = names.map(|n| n.split(':').collect()).unwrap_or_default();
    if names.is_some() && given.len() != count as usize {
        warn!(count, names = given.len(), "LISTEN_FDNAMES does not name every socket exactly once");
    }
    let names = (0..count as usize)
        .map(|i| given.get(i).filter(|n| !n.is_empty()).map_or(UNNAMED, |n| *n).to_owned())
        .collect();
    Ok(Some(names))
}

impl ListenFds {
    /// How many sockets are left in the set.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether no socket is left in the set.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The names of the sockets, in fd order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sockets.iter().map(|(name, _)| name.as_str())
    }

    /// Removes the first socket named `name` from the set and returns it.
    pub fn remove(&mut self, name: &str) -> Option<OwnedFd> {
        let index = self.sockets.iter().position(|(n, _)| n == name)?;
        Some(self.sockets.remove(index).1)
    }

    /// Removes the first socket named `name` from the set and returns it as a
    /// [`TcpListener`], after checking that it is a listening TCP socket (see
    /// [`tcp_listener`]); `Ok(None)` if there is no such socket.
    pub fn take_tcp_listener(&mut self, name: &str) -> Result<Option<TcpListener>, ListenFdsError> {
        let Some(fd) = self.remove(name) else { return Ok(None) };
        tcp_listener(fd)
            .map(Some)
            .map_err(|NotListening(reason)| ListenFdsError::NotListeningTcp { name: name.to_owned(), reason })
    }

    /// All the sockets left, with their names, in fd order.
    pub fn into_vec(self) -> Vec<(String, OwnedFd)> {
        self.sockets
    }
}

/// Turns `fd` into a [`TcpListener`] after checking that it is a listening TCP (IPv4 or
/// IPv6) socket, and marks it close-on-exec. The listener keeps the blocking mode `fd` had.
///
/// On error, `fd` is closed.
pub fn tcp_listener(fd: OwnedFd) -> Result<TcpListener, NotListening> {
    let not = |reason: String| NotListening(reason);
    check_listening(fd.as_fd()).map_err(not)?;
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(not(format!("socket type is {other:?}, not a stream"))),
        Err(e) => return Err(not(format!("getsockopt(SO_TYPE) failed: {e}"))),
    }
    match getsockname::<SockaddrStorage>(fd.as_raw_fd()).map(|a| a.family()) {
        Ok(Some(AddressFamily::Inet | AddressFamily::Inet6)) => {}
        Ok(family) => return Err(not(format!("address family is {family:?}, not IPv4/IPv6"))),
        Err(e) => return Err(not(format!("getsockname failed: {e}"))),
    }
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| not(format!("setting close-on-exec failed: {e}")))?;
    Ok(TcpListener::from(fd))
}

/// Checks that `fd` is a socket on which `listen()` was called.
pub(crate) fn check_listening(fd: BorrowedFd<'_>) -> Result<(), String> {
    let stat = fstat(fd).map_err(|e| format!("fstat failed: {e}"))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err("it is not a socket".to_owned());
    }
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err("listen() was not called on it".to_owned()),
        Err(e) => Err(format!("getsockopt(SO_ACCEPTCONN) failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpStream, UdpSocket},
        os::unix::net::{UnixListener, UnixStream},
    };

    use super::*;

    fn names(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn parse_follows_the_convention() {
        let me = 4242;
        assert_eq!(parse(None, None, None, me), Ok(None));
        assert_eq!(parse(Some("1"), None, None, me), Ok(names(&["unknown"])));
        assert_eq!(parse(Some(" 1 "), Some("4242"), None, me), Ok(names(&["unknown"])));
        assert_eq!(parse(Some("1"), Some("1"), None, me), Ok(None));
        assert_eq!(parse(Some("1"), Some(""), Some("http"), me), Ok(names(&["http"])));
        assert_eq!(parse(Some("0"), None, None, me), Ok(None));
        assert_eq!(parse(Some("2"), None, Some("admin:http"), me), Ok(names(&["admin", "http"])));
        // Missing, empty and extra names.
        assert_eq!(parse(Some("3"), None, Some("a::"), me), Ok(names(&["a", "unknown", "unknown"])));
        assert_eq!(parse(Some("1"), None, Some("x:http"), me), Ok(names(&["x"])));
    }

    #[test]
    fn parse_rejects_bad_values() {
        let me = 1;
        for (fds, pid, var) in [
            ("two", None, "LISTEN_FDS"),
            ("-1", None, "LISTEN_FDS"),
            ("4097", None, "LISTEN_FDS"),
            ("99999999999999999999", None, "LISTEN_FDS"),
            ("1", Some("me"), "LISTEN_PID"),
        ] {
            match parse(Some(fds), pid, None, me) {
                Err(ListenFdsError::BadVar { name, .. }) => assert_eq!(name, var, "{fds} {pid:?}"),
                other => panic!("{fds} {pid:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn adopts_a_listening_tcp_socket() {
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = original.local_addr().unwrap();
        let adopted = tcp_listener(OwnedFd::from(original)).unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);
        let flags = fcntl(&adopted, FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        let _client = TcpStream::connect(addr).unwrap();
        assert!(adopted.accept().is_ok());
    }

    #[test]
    fn rejects_anything_but_a_listening_tcp_socket() {
        let reason = |fd: OwnedFd| tcp_listener(fd).unwrap_err().0;

        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(reason(udp.into()).contains("listen() was not called"));

        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        assert!(reason(stream.into()).contains("listen() was not called"));

        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(reason(file.into()).contains("not a socket"));

        let dir = tempfile::tempdir().unwrap();
        let unix = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(reason(unix.into()).contains("not IPv4/IPv6"));

        let (pair, _peer) = UnixStream::pair().unwrap();
        assert!(reason(pair.into()).contains("listen() was not called"));
    }

    #[test]
    fn take_tcp_listener_by_name() {
        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = http.local_addr().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut set = ListenFds { sockets: vec![("metrics".to_owned(), udp.into()), ("http".to_owned(), http.into())] };
        assert_eq!(set.names().collect::<Vec<_>>(), ["metrics", "http"]);
        assert!(matches!(set.take_tcp_listener("admin"), Ok(None)));
        assert_eq!(set.take_tcp_listener("http").unwrap().unwrap().local_addr().unwrap(), addr);
        assert_eq!(set.len(), 1);
        let err = set.take_tcp_listener("metrics").unwrap_err();
        assert!(matches!(&err, ListenFdsError::NotListeningTcp { name, .. } if name == "metrics"), "{err}");
        assert!(set.is_empty());
    }
}
