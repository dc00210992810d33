//! Agent-owned listening sockets (`sockets` of a sidecar): bound once by the agent and passed
//! to every generation of the sidecar as fds 3, 4, … with `LISTEN_FDS` and `LISTEN_FDNAMES`.
//!
//! The agent keeps its own copy open, so the kernel's accept queue survives every change of
//! generation: during a hot upgrade both generations accept from it, and during a restart
//! connections wait in it instead of being refused.
//!
//! When the agent itself restarts, it takes the sockets back from the running sidecar with
//! `pidfd_getfd(2)` (needs the same user and ptrace permission over the sidecar; root has it).
//! If that is refused, the sockets are lost to the agent: the next upgrade of that sidecar
//! then stops the old process before binding them again (restart-like, reported).

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, getsockname, listen, setsockopt, socket,
        sockopt,
    },
};
use thiserror::Error;

/// The first fd a generation finds its sockets at, by the `LISTEN_FDS` convention.
pub(super) const FIRST_FD: RawFd = 3;

/// Accept queue length of the agent-owned sockets: connections wait here while generations
/// change.
const BACKLOG: i32 = 4096;

/// Why agent-owned sockets cannot be bound or taken back.
#[derive(Debug, Error)]
pub(super) enum SocketError {
    /// The address is not `ip:port`.
    #[error("socket address {0:?} is not ip:port")]
    Address(String),
    /// A step of binding `listen` failed.
    #[error("{step} {listen}: {error}")]
    Bind {
        /// What was being done (`cannot bind`, `SO_REUSEADDR on`…).
        step: &'static str,
        /// The address.
        listen: String,
        /// The system error.
        error: Errno,
    },
    /// The pid cannot name a process.
    #[error("invalid pid {0}")]
    Pid(u32),
    /// A pidfd syscall on the sidecar failed.
    #[error("{call}({pid}{}): {error}", fd.map(|fd| format!(", {fd}")).unwrap_or_default())]
    Pidfd {
        /// `pidfd_open` or `pidfd_getfd`.
        call: &'static str,
        /// The sidecar's pid.
        pid: u32,
        /// The fd asked for (`pidfd_getfd`).
        fd: Option<RawFd>,
        /// The system error.
        error: rustix::io::Errno,
    },
    /// An fd of the sidecar is not the socket it should be.
    #[error("fd {fd} of process {pid}: {problem}")]
    Foreign {
        /// The sidecar's pid.
        pid: u32,
        /// The fd.
        fd: RawFd,
        /// What is wrong with it.
        problem: FdProblem,
    },
}

/// What is wrong with an fd that should be a listening socket on a given address.
#[derive(Debug, Error)]
pub(super) enum FdProblem {
    /// It is not a socket, or not listening.
    #[error("not a listening socket{}", .0.map(|e| format!(": {e}")).unwrap_or_default())]
    NotListening(Option<Errno>),
    /// It is not a TCP socket.
    #[error("not a TCP socket")]
    NotTcp,
    /// The wanted address is not `ip:port`.
    #[error("{0:?} is not ip:port")]
    Address(String),
    /// It is bound elsewhere.
    #[error("bound to {local}, not {listen}")]
    Elsewhere {
        /// Where it is bound.
        local: SocketAddr,
        /// Where it should be.
        listen: String,
    },
}

/// One bound socket.
#[derive(Debug)]
pub(super) struct OwnedSocket {
    /// `LISTEN_FDNAMES` name.
    pub name: String,
    /// The address as configured (expanded).
    pub listen: String,
    /// The listening socket.
    pub listener: TcpListener,
}

/// The sockets of one sidecar, in the order of its `sockets` list.
#[derive(Debug, Default)]
pub(super) struct SocketSet {
    sockets: Vec<OwnedSocket>,
}

impl SocketSet {
    /// Whether the set holds exactly these `(name, address)` pairs, in this order.
    pub(super) fn matches(&self, wanted: &[(String, String)]) -> bool {
        self.sockets.len() == wanted.len()
            && self.sockets.iter().zip(wanted).all(|(s, (name, listen))| s.name == *name && s.listen == *listen)
    }

    /// Whether there are no sockets.
    pub(super) fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Binds `wanted`, reusing the sockets already held under the same name and address.
    pub(super) fn bind(&mut self, wanted: &[(String, String)]) -> Result<(), SocketError> {
        let mut next = Vec::with_capacity(wanted.len());
        let mut old = std::mem::take(&mut self.sockets);
        for (name, listen) in wanted {
            let socket = match old.iter().position(|s| s.name == *name && s.listen == *listen) {
                Some(i) => old.swap_remove(i),
                None => OwnedSocket { name: name.clone(), listen: listen.clone(), listener: bind_listener(listen)? },
            };
            next.push(socket);
        }
        self.sockets = next;
        Ok(())
    }

    /// `(child fd, socket)` pairs for a spawn: the i-th socket becomes fd `3 + i`.
    pub(super) fn fd_table(&self) -> impl Iterator<Item = (RawFd, &TcpListener)> {
        self.sockets.iter().zip(FIRST_FD..).map(|(s, fd)| (fd, &s.listener))
    }

    /// `LISTEN_FDS` and `LISTEN_FDNAMES` for a spawn; none without sockets.
    pub(super) fn env(&self) -> Vec<(&'static str, String)> {
        if self.sockets.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = self.sockets.iter().map(|s| s.name.as_str()).collect();
        vec![("LISTEN_FDS", self.sockets.len().to_string()), ("LISTEN_FDNAMES", names.join(":"))]
    }

    /// Closes every socket (the sidecar is gone for good).
    pub(super) fn close(&mut self) {
        self.sockets.clear();
    }

    /// Takes the sockets back from a running generation (`pid`) after an agent restart: fd
    /// `3 + i` of that process must be a listening socket bound to the i-th address.
    pub(super) fn recover(pid: u32, wanted: &[(String, String)]) -> Result<Self, SocketError> {
        let raw = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw).ok_or(SocketError::Pid(pid))?;
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map_err(|error| SocketError::Pidfd { call: "pidfd_open", pid, fd: None, error })?;
        let mut sockets = Vec::with_capacity(wanted.len());
        for ((name, listen), fd) in wanted.iter().zip(FIRST_FD..) {
            let owned: OwnedFd = rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
                .map_err(|error| SocketError::Pidfd { call: "pidfd_getfd", pid, fd: Some(fd), error })?;
            let listener = TcpListener::from(owned);
            check_listening(&listener, listen).map_err(|problem| SocketError::Foreign { pid, fd, problem })?;
            sockets.push(OwnedSocket { name: name.clone(), listen: listen.clone(), listener });
        }
        Ok(Self { sockets })
    }
}

/// Binds a close-on-exec TCP listener on `listen` with `SO_REUSEADDR` and a long backlog.
fn bind_listener(listen: &str) -> Result<TcpListener, SocketError> {
    let addr: SocketAddr = listen.parse().map_err(|_| SocketError::Address(listen.to_owned()))?;
    let failed = |step| move |error| SocketError::Bind { step, listen: listen.to_owned(), error };
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd =
        socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(failed("cannot create a socket for"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(failed("SO_REUSEADDR on"))?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(failed("cannot bind"))?;
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    listen_on(&fd, backlog).map_err(failed("cannot listen on"))?;
    Ok(TcpListener::from(fd))
}

fn listen_on(fd: &OwnedFd, backlog: Backlog) -> nix::Result<()> {
    listen(&fd.as_fd(), backlog)
}

/// Checks that `listener` listens on the address `listen` (a port of 0 matches any port).
fn check_listening(listener: &TcpListener, listen: &str) -> Result<(), FdProblem> {
    let accepting = nix::sys::socket::getsockopt(&listener.as_fd(), sockopt::AcceptConn)
        .map_err(|e| FdProblem::NotListening(Some(e)))?;
    if !accepting {
        return Err(FdProblem::NotListening(None));
    }
    let local: SocketAddr = getsockname::<SockaddrStorage>(listener.as_raw_fd())
        .ok()
        .and_then(|a| a.as_sockaddr_in().map(|a| SocketAddr::from(*a)).or(a.as_sockaddr_in6().map(|a| (*a).into())))
        .ok_or(FdProblem::NotTcp)?;
    let want: SocketAddr = listen.parse().map_err(|_| FdProblem::Address(listen.to_owned()))?;
    if local.ip() != want.ip() || (want.port() != 0 && local.port() != want.port()) {
        return Err(FdProblem::Elsewhere { local, listen: listen.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{io::Read, net::TcpStream};

    use super::*;

    fn wanted(addr: &str) -> Vec<(String, String)> {
        vec![("http".to_owned(), addr.to_owned())]
    }

    #[test]
    fn binds_reuses_and_describes_its_sockets() {
        let mut set = SocketSet::default();
        set.bind(&wanted("127.0.0.1:0")).unwrap();
        assert!(set.matches(&wanted("127.0.0.1:0")));
        let addr = set.sockets[0].listener.local_addr().unwrap();
        set.bind(&wanted("127.0.0.1:0")).unwrap();
        assert_eq!(set.sockets[0].listener.local_addr().unwrap(), addr, "same socket kept");
        assert_eq!(set.env(), [("LISTEN_FDS", "1".to_owned()), ("LISTEN_FDNAMES", "http".to_owned())]);
        assert_eq!(set.fd_table().map(|(fd, _)| fd).collect::<Vec<_>>(), [3]);
        // Connections queue in the agent's socket even while nobody accepts.
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut served, _) = set.sockets[0].listener.accept().unwrap();
        std::io::Write::write_all(&mut served, b"x").unwrap();
        let mut buf = [0; 1];
        client.read_exact(&mut buf).unwrap();
        assert!(set.bind(&wanted("not-an-address")).is_err());
        set.close();
        assert!(set.is_empty());
    }

    #[test]
    fn recovers_sockets_from_a_process_and_checks_them() {
        // This process holds a listener at fd 3 only by chance; use our own pid and whatever
        // fd the listener got, through the same checks.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        check_listening(&listener, &addr).unwrap();
        check_listening(&listener, "127.0.0.1:0").unwrap();
        assert!(check_listening(&listener, "127.0.0.2:0").is_err());
        assert!(SocketSet::recover(u32::MAX, &wanted(&addr)).is_err());
    }
}
