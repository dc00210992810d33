//! The background thread of a generation: it follows its predecessor until that one drains,
//! then holds the handover socket and hands the sockets to successors until this generation
//! drains itself.

use std::{
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::{fs::MetadataExt, fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, bind, listen, socket},
};
use tracing::{debug, info, warn};

use super::wire::{self, Incoming, Message, PROTOCOL};
use crate::sys;

/// The most successor connections a holder keeps at once; more are refused.
const MAX_CONNECTIONS: usize = 64;

/// Makes the temporary names of holder sockets unique within the process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// What a generation's background thread works with.
pub(super) struct Shared {
    /// The handover socket path.
    pub(super) path: PathBuf,
    /// Duplicates of the generation's sockets, to hand over.
    pub(super) sockets: Vec<(String, OwnedFd)>,
    /// How long a holder waits for `hello` after accepting a connection.
    pub(super) hello_timeout: Duration,
    /// Becomes readable (end of file) when the generation drains.
    pub(super) stop: UnixStream,
}

/// Where a generation stands.
pub(super) enum Role {
    /// Connected to its predecessor, which still holds the handover socket.
    Successor(OwnedFd),
    /// Holds the handover socket.
    Holder(HolderSocket),
}

/// A listening `SOCK_SEQPACKET` socket at the handover path, and the identity of the file it
/// was bound to (so that it only ever removes its own file).
pub(super) struct HolderSocket {
    listener: OwnedFd,
    dev: u64,
    ino: u64,
}

impl HolderSocket {
    /// Binds a listener at a temporary name beside `path`, mode 0600, and renames it over
    /// `path` in one step, so a connecting successor always finds a listening holder.
    pub(super) fn bind(path: &Path) -> io::Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".outrider-handover.{}.{n}", std::process::id()));
        let _ = fs::remove_file(&temp);
        let listener =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        bind(listener.as_raw_fd(), &UnixAddr::new(&temp)?)?;
        let placed = (|| {
            fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))?;
            listen(&listener, Backlog::new(16)?)?;
            let meta = fs::symlink_metadata(&temp)?;
            fs::rename(&temp, path)?;
            Ok::<_, io::Error>((meta.dev(), meta.ino()))
        })();
        match placed {
            Ok((dev, ino)) => Ok(Self { listener, dev, ino }),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Stops holding: removes `path` if it is still this socket's file, then closes the
    /// listener.
    fn release(self, path: &Path) {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => match fs::remove_file(path) {
                Ok(()) => debug!(path = %path.display(), "removed the handover socket"),
                Err(e) => warn!(path = %path.display(), "cannot remove the handover socket: {e}"),
            },
            Ok(_) => debug!(path = %path.display(), "the handover socket path belongs to another generation now"),
            Err(e) => debug!(path = %path.display(), "handover socket path is gone: {e}"),
        }
    }
}

/// Runs a generation's background work until it drains.
pub(super) fn run(role: Role, shared: Shared) {
    let holder = match role {
        Role::Holder(holder) => holder,
        Role::Successor(predecessor) => {
            if !follow(&predecessor, &shared) {
                return;
            }
            drop(predecessor);
            match HolderSocket::bind(&shared.path) {
                Ok(holder) => {
                    info!(path = %shared.path.display(), "took over the handover socket");
                    holder
                }
                Err(e) => {
                    warn!(path = %shared.path.display(), "cannot take over the handover socket: {e}; later generations cannot acquire the sockets from this one");
                    return;
                }
            }
        }
    };
    hold(holder, &shared);
}

/// Waits on the connection to the predecessor. Returns `true` when this generation must
/// become the holder (the predecessor drains or went away), `false` when it drains itself.
fn follow(predecessor: &OwnedFd, shared: &Shared) -> bool {
    loop {
        let mut fds =
            [PollFd::new(shared.stop.as_fd(), PollFlags::POLLIN), PollFd::new(predecessor.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                warn!("poll on the handover connection failed: {e}");
                return false;
            }
        }
        if ready(&fds[0]) {
            return false;
        }
        if !ready(&fds[1]) {
            continue;
        }
        match wire::recv(predecessor.as_fd(), MsgFlags::MSG_DONTWAIT) {
            Ok(Incoming::Message(Message::Draining, _)) => {
                info!("predecessor is draining; taking over the handover socket");
                return true;
            }
            Ok(Incoming::Eof) => {
                info!("predecessor closed the handover connection; taking over the handover socket");
                return true;
            }
            Ok(Incoming::Message(other, _)) => debug!(kind = other.kind(), "ignoring a message from the predecessor"),
            Ok(Incoming::Malformed(reason)) => warn!("ignoring a malformed message from the predecessor: {reason}"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                info!("handover connection to the predecessor failed ({e}); taking over the handover socket");
                return true;
            }
        }
    }
}

/// Whether poll reported anything for this descriptor (input, hang-up or error).
fn ready(fd: &PollFd<'_>) -> bool {
    fd.revents().is_some_and(|r| !r.is_empty())
}

/// One successor connection of a holder.
struct Connection {
    socket: OwnedFd,
    state: State,
}

enum State {
    /// Accepted; `hello` must arrive before the deadline.
    AwaitingHello { deadline: Instant },
    /// The sockets were sent; the successor may send `ready`.
    Handed,
    /// The successor said it serves.
    Ready,
}

/// Holds the handover socket until the generation drains, then releases it and tells every
/// connected successor.
fn hold(holder: HolderSocket, shared: &Shared) {
    let mut connections: Vec<Connection> = Vec::new();
    loop {
        let now = Instant::now();
        connections.retain(|c| match c.state {
            State::AwaitingHello { deadline } if deadline <= now => {
                warn!(
                    timeout_ms = shared.hello_timeout.as_millis(),
                    "no hello from a successor in time; closing its connection"
                );
                false
            }
            _ => true,
        });
        let next_deadline = connections
            .iter()
            .filter_map(|c| match c.state {
                State::AwaitingHello { deadline } => Some(deadline),
                _ => None,
            })
            .min();
        let timeout = match next_deadline {
            // Round up, so the deadline has passed when poll returns.
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(now) + Duration::from_millis(1))
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = Vec::with_capacity(connections.len() + 2);
        fds.push(PollFd::new(shared.stop.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(holder.listener.as_fd(), PollFlags::POLLIN));
        fds.extend(connections.iter().map(|c| PollFd::new(c.socket.as_fd(), PollFlags::POLLIN)));
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                warn!("poll on the handover socket failed: {e}; no longer handing over");
                break;
            }
        }
        if ready(&fds[0]) {
            break;
        }
        let accept = ready(&fds[1]);
        let readable: Vec<bool> = fds[2..].iter().map(ready).collect();
        drop(fds);
        // Back to front, so removing one does not shift the ones still to visit.
        for i in (0..readable.len()).rev() {
            if readable[i] && !serve(&mut connections[i], shared) {
                connections.remove(i);
            }
        }
        if accept {
            accept_all(holder.listener.as_fd(), &mut connections, shared.hello_timeout);
        }
    }
    holder.release(&shared.path);
    for c in connections {
        if let Err(e) = wire::send(c.socket.as_fd(), &Message::Draining, &[], MsgFlags::MSG_DONTWAIT) {
            debug!("cannot tell a successor that this generation drains: {e}");
        }
    }
    info!(path = %shared.path.display(), "draining: released the handover socket");
}

fn accept_all(listener: BorrowedFd<'_>, connections: &mut Vec<Connection>, hello_timeout: Duration) {
    loop {
        match sys::accept(listener) {
            Ok(socket) => {
                if connections.len() >= MAX_CONNECTIONS {
                    warn!(max = MAX_CONNECTIONS, "too many handover connections; refusing one");
                    continue;
                }
                debug!("successor connected to the handover socket");
                connections.push(Connection {
                    socket,
                    state: State::AwaitingHello { deadline: Instant::now() + hello_timeout },
                });
            }
            Err(Errno::EINTR | Errno::ECONNABORTED) => {}
            Err(Errno::EAGAIN) => return,
            Err(e) => {
                // Out of descriptors, usually: back off instead of spinning on a readable listener.
                warn!("accept on the handover socket failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        }
    }
}

/// Handles what arrived on one connection; returns whether to keep it.
fn serve(connection: &mut Connection, shared: &Shared) -> bool {
    let socket = connection.socket.as_fd();
    let refuse = |reason: String| {
        warn!("handover protocol error: {reason}; closing that connection");
        let _ = wire::send(socket, &Message::Error { message: reason }, &[], MsgFlags::MSG_DONTWAIT);
        false
    };
    let message = match wire::recv(socket, MsgFlags::MSG_DONTWAIT) {
        Ok(Incoming::Message(message, _fds)) => message,
        Ok(Incoming::Eof) => {
            match connection.state {
                State::AwaitingHello { .. } => debug!("a successor closed its connection before hello"),
                State::Handed | State::Ready => info!("a successor went away; still holding the sockets"),
            }
            return false;
        }
        Ok(Incoming::Malformed(reason)) => return refuse(reason),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
        Err(e) => {
            info!("a handover connection failed: {e}");
            return false;
        }
    };
    let awaiting_hello = matches!(connection.state, State::AwaitingHello { .. });
    match (awaiting_hello, message) {
        (true, Message::Hello { protocol: PROTOCOL, pid }) => {
            let names = shared.sockets.iter().map(|(name, _)| name.clone()).collect();
            let fds: Vec<BorrowedFd<'_>> = shared.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
            let sockets = Message::Sockets { protocol: PROTOCOL, names };
            match wire::send(socket, &sockets, &fds, MsgFlags::MSG_DONTWAIT) {
                Ok(()) => {
                    info!(successor_pid = pid, sockets = fds.len(), "handed the sockets to a successor");
                    connection.state = State::Handed;
                    true
                }
                Err(e) => {
                    warn!(successor_pid = pid, "cannot send the sockets to a successor: {e}");
                    false
                }
            }
        }
        (true, Message::Hello { protocol, .. }) => {
            refuse(format!("unsupported protocol {protocol}; this holder speaks {PROTOCOL}"))
        }
        (false, Message::Ready { pid }) => {
            info!(successor_pid = pid, "successor serves on the handed-over sockets");
            connection.state = State::Ready;
            true
        }
        (_, other) => refuse(format!("unexpected {} message", other.kind())),
    }
}
