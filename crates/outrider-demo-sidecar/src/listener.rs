//! Taking over a listening socket inherited through the `LISTEN_FDS` socket-activation
//! convention (how the agent hands the same socket to each generation in a hot upgrade).
//!
//! The convention (as in systemd's `sd_listen_fds`): the parent passes `N` open sockets as
//! file descriptors `3 .. 3+N`, sets `LISTEN_FDS=N`, optionally `LISTEN_PID` to the pid of
//! the process meant to use them and `LISTEN_FDNAMES` to colon-separated names. This sidecar
//! serves on the socket named `http` if there is one, otherwise on fd 3.
//!
//! This is the only module of the crate that uses `unsafe`: turning a raw file descriptor
//! into an owned [`TcpListener`] and removing variables from the environment cannot be done
//! otherwise. Each block states why it is sound.
#![allow(unsafe_code)]

use std::{
    env,
    net::TcpListener,
    os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::{
        socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt},
        stat::{SFlag, fstat},
    },
};
use thiserror::Error;
use tracing::{info, warn};

/// The first inherited file descriptor, by the convention.
pub const LISTEN_FDS_START: RawFd = 3;

/// The `LISTEN_FDNAMES` name this sidecar serves on when several sockets are passed.
pub const HTTP_FD_NAME: &str = "http";

const VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// Set once the inherited socket has been taken, so fd 3 is never owned twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why an inherited socket could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListenError {
    /// `LISTEN_FDS` or `LISTEN_PID` is not a number.
    #[error("{name}={value:?} is not a number")]
    BadVar {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The descriptor is not a listening TCP socket.
    #[error("fd {fd} is not a listening TCP socket: {reason}")]
    NotListeningTcp {
        /// The descriptor number.
        fd: RawFd,
        /// What it is instead.
        reason: String,
    },
}

/// Takes over the listening socket passed through `LISTEN_FDS`, if any.
///
/// Returns `Ok(None)` when `LISTEN_FDS` is unset or `0`, when `LISTEN_PID` names another
/// process, or when the socket was already taken. The `LISTEN_*` variables are removed from
/// the environment (so they do not leak into anything this process might start) when the
/// process is still single-threaded, which is the case when this runs early in `main`; in a
/// multi-threaded process they are left in place, since changing the environment there is
/// not safe.
pub fn take_inherited() -> Result<Option<TcpListener>, ListenError> {
    let fds = env::var("LISTEN_FDS").ok();
    let pid = env::var("LISTEN_PID").ok();
    let names = env::var("LISTEN_FDNAMES").ok();
    if fds.is_none() {
        return Ok(None);
    }
    clear_vars();
    let Some(fd) = choose_fd(fds.as_deref(), pid.as_deref(), names.as_deref(), std::process::id())? else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        warn!("the inherited socket was already taken; ignoring LISTEN_FDS");
        return Ok(None);
    }
    // SAFETY: by the LISTEN_FDS convention, checked just above (LISTEN_FDS >= 1 and
    // LISTEN_PID, when set, is our pid), the parent handed this process ownership of the open
    // descriptors 3 .. 3+LISTEN_FDS, and `fd` is one of them. Nothing else in this process
    // uses them: the TAKEN flag makes sure this runs once, and the variables that advertise
    // them have been removed (or are ignored on any later call because of TAKEN).
    let listener = unsafe { adopt_listener(fd) };
    match listener {
        Ok(l) => {
            info!(fd, "serving on the inherited socket (LISTEN_FDS)");
            Ok(Some(l))
        }
        Err(e) => {
            TAKEN.store(false, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// Decides which descriptor to use from the `LISTEN_*` values, or `None` if there is none
/// for us.
fn choose_fd(
    fds: Option<&str>,
    pid: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<RawFd>, ListenError> {
    let Some(fds) = fds else { return Ok(None) };
    let count: u32 =
        fds.trim().parse().map_err(|_| ListenError::BadVar { name: "LISTEN_FDS", value: fds.to_owned() })?;
    if let Some(pid) = pid.filter(|p| !p.trim().is_empty()) {
        let pid: u32 =
            pid.trim().parse().map_err(|_| ListenError::BadVar { name: "LISTEN_PID", value: pid.to_owned() })?;
        if pid != our_pid {
            warn!(listen_pid = pid, our_pid, "LISTEN_PID names another process; ignoring LISTEN_FDS");
            return Ok(None);
        }
    }
    if count == 0 {
        return Ok(None);
    }
    let index = names
        .and_then(|n| n.split(':').position(|name| name == HTTP_FD_NAME))
        .filter(|&i| i < count as usize)
        .unwrap_or(0);
    let index = RawFd::try_from(index).unwrap_or(0);
    Ok(Some(LISTEN_FDS_START + index))
}

/// Removes the `LISTEN_*` variables if no other thread can be reading the environment.
fn clear_vars() {
    if thread_count() != Some(1) {
        warn!("process is multi-threaded; leaving the LISTEN_* variables in the environment");
        return;
    }
    for var in VARS {
        // SAFETY: `remove_var` is unsound only when another thread reads or writes the
        // environment at the same time. The process has exactly one thread (checked just
        // above from /proc/self/task), this one, and it starts no thread before returning.
        unsafe { env::remove_var(var) };
    }
}

/// The number of threads in this process, if it can be read.
fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Checks that `fd` is a listening TCP socket and takes ownership of it as a non-blocking,
/// close-on-exec [`TcpListener`]. On error `fd` is left open and still owned by the caller.
///
/// # Safety
///
/// `fd` must be an open descriptor that the caller owns and that nothing else uses; on
/// success its ownership passes to the returned listener.
unsafe fn adopt_listener(fd: RawFd) -> Result<TcpListener, ListenError> {
    let not = |reason: String| ListenError::NotListeningTcp { fd, reason };
    // SAFETY: the caller guarantees `fd` is open and owned by it for this whole call; the
    // borrow does not outlive the call. (Were it closed after all, the kernel would only
    // answer EBADF below: these are plain system calls on a descriptor number.)
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).map_err(|e| not(format!("fstat failed: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(not("it is not a socket".to_owned()));
    }
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(not(format!("socket type is {other:?}, not a stream"))),
        Err(e) => return Err(not(format!("getsockopt(SO_TYPE) failed: {e}"))),
    }
    match getsockname::<SockaddrStorage>(fd).map(|a| a.family()) {
        Ok(Some(AddressFamily::Inet | AddressFamily::Inet6)) => {}
        Ok(family) => return Err(not(format!("address family is {family:?}, not IPv4/IPv6"))),
        Err(e) => return Err(not(format!("getsockname failed: {e}"))),
    }
    match getsockopt(&borrowed, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err(not("listen() was not called on it".to_owned())),
        Err(e) => return Err(not(format!("getsockopt(SO_ACCEPTCONN) failed: {e}"))),
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| not(format!("setting close-on-exec failed: {e}")))?;
    // SAFETY: the caller owns the open descriptor `fd` and hands that ownership over here;
    // it is now known to be a listening TCP socket, which is exactly what a `TcpListener`
    // wraps. No other owner exists, so it is closed exactly once, when the listener drops.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = TcpListener::from(owned);
    if let Err(e) = listener.set_nonblocking(true) {
        // Give the descriptor back to the caller unclosed, as documented.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(listener);
        return Err(not(format!("setting non-blocking mode failed: {e}")));
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpStream, UdpSocket},
        os::fd::IntoRawFd,
    };

    use super::*;

    #[test]
    fn choose_fd_follows_the_convention() {
        let me = 4242;
        assert_eq!(choose_fd(None, None, None, me), Ok(None));
        assert_eq!(choose_fd(Some("1"), None, None, me), Ok(Some(3)));
        assert_eq!(choose_fd(Some("1"), Some("4242"), None, me), Ok(Some(3)));
        assert_eq!(choose_fd(Some("1"), Some("1"), None, me), Ok(None));
        assert_eq!(choose_fd(Some("0"), None, None, me), Ok(None));
        assert_eq!(choose_fd(Some("2"), None, Some("admin:http"), me), Ok(Some(4)));
        assert_eq!(choose_fd(Some("2"), None, Some("a:b"), me), Ok(Some(3)));
        assert_eq!(choose_fd(Some("1"), None, Some("x:http"), me), Ok(Some(3)));
        assert!(matches!(choose_fd(Some("two"), None, None, me), Err(ListenError::BadVar { name: "LISTEN_FDS", .. })));
        assert!(matches!(
            choose_fd(Some("1"), Some("me"), None, me),
            Err(ListenError::BadVar { name: "LISTEN_PID", .. })
        ));
    }

    #[test]
    fn adopts_a_listening_tcp_socket() {
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = original.local_addr().unwrap();
        let fd = original.into_raw_fd();
        // SAFETY: `into_raw_fd` just gave us ownership of this open descriptor.
        let adopted = unsafe { adopt_listener(fd) }.unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);
        let _client = TcpStream::connect(addr).unwrap();
    }

    fn assert_rejected(fd: RawFd, why: &str) {
        // SAFETY: the callers own `fd`; on error it stays theirs and is closed below.
        let err = unsafe { adopt_listener(fd) }.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        // SAFETY: rejected descriptors are left open and owned by us; close them.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    #[test]
    fn rejects_anything_but_a_listening_tcp_socket() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_rejected(udp.into_raw_fd(), "not a stream");

        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        assert_rejected(stream.into_raw_fd(), "listen() was not called");

        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_rejected(file.into_raw_fd(), "not a socket");

        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_rejected(unix.into_raw_fd(), "not IPv4/IPv6");
    }
}
