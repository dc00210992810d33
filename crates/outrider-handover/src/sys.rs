//! The crate's only `unsafe` code: taking ownership of file descriptors that arrive as bare
//! numbers (inherited at exec, received with `SCM_RIGHTS`, returned by `accept4`) and
//! removing variables from the environment. Every function here is safe to call; each
//! `unsafe` block states why it is sound.
#![allow(unsafe_code)]

use std::{
    env,
    io::IoSliceMut,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::socket::{ControlMessageOwned, MsgFlags, SockFlag, UnixAddr, accept4, recvmsg},
};
use tracing::warn;

/// Set once the inherited descriptors have been taken, so that none is ever owned twice.
static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// The most descriptors Linux passes in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Takes ownership of the descriptors `first .. first + count` that the parent passed at exec
/// (the `LISTEN_FDS` convention), and marks each close-on-exec.
///
/// Returns `None` if they were already taken in this process. Returns `Err` with the first
/// descriptor number that is not open; the ones already taken are closed then.
pub(crate) fn take_inherited(first: RawFd, count: RawFd) -> Option<Result<Vec<OwnedFd>, RawFd>> {
    if INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    let mut owned = Vec::new();
    for fd in first..first.saturating_add(count) {
        // SAFETY: `F_GETFD` only reads the flags of a descriptor number: on a closed number
        // the kernel answers EBADF. The borrow ends with this statement.
        let flags = fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD);
        if flags.is_err() {
            return Some(Err(fd));
        }
        // SAFETY: `fd` is open (checked just above). By the `LISTEN_FDS` convention the
        // descriptors from `first` on were passed to this process for it to own, and
        // nothing else in the process takes them: INHERITED_TAKEN guarantees this code runs
        // at most once per process and is never reset, so each number is wrapped once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Err(e) = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
            warn!(fd = fd.as_raw_fd(), "cannot mark an inherited socket close-on-exec: {e}");
        }
        owned.push(fd);
    }
    Some(Ok(owned))
}

/// Removes `vars` from the environment if no other thread can be reading it; returns
/// whether it did.
pub(crate) fn remove_env_if_single_threaded(vars: &[&str]) -> bool {
    if thread_count() != Some(1) {
        return false;
    }
    for var in vars {
        // SAFETY: `remove_var` is unsound only when another thread reads or writes the
        // environment at the same time. The process has exactly one thread (checked just
        // above from /proc/self/task), this one, and it starts none before returning.
        unsafe { env::remove_var(var) };
    }
    true
}

/// The number of threads in this process, if it can be read.
fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Accepts a connection on the listening socket `listener` (close-on-exec, non-blocking).
pub(crate) fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
    // SAFETY: `accept4` just returned this new descriptor; nothing else knows its number,
    // so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One message received from a unix socket: its length, the flags the kernel set, and the
/// descriptors that came with it.
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) flags: MsgFlags,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one message into `buf` with `recvmsg(2)`, taking ownership of every descriptor
/// attached as `SCM_RIGHTS` at once. `MSG_CMSG_CLOEXEC` is always added to `flags`, so the
/// received descriptors never leak into children.
pub(crate) fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8], flags: MsgFlags) -> Result<Received, Errno> {
    let mut iov = [IoSliceMut::new(buf)];
    // Room for the most descriptors one message can carry, so the control data is never
    // truncated (truncated control data could not be parsed, leaking what did arrive).
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let msg = recvmsg::<UnixAddr>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags | MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel installed this descriptor in our table for this message
                // just now; nothing else in the process knows its number, so wrapping it here,
                // once, makes this its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(Received { len: msg.bytes, flags: msg.flags, fds })
}
