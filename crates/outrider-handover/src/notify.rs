//! Readiness notification, the systemd `sd_notify` convention: when `NOTIFY_SOCKET` names a
//! unix datagram socket (a path, or an abstract name written with a leading `@`), the process
//! sends it state lines such as `READY=1`. The Outrider agent gives each generation its own
//! socket, so `READY=1` tells it that *this* generation serves (a health probe on a shared
//! port may be answered by the old one).

use std::{
    env,
    ffi::OsStr,
    io,
    os::unix::{ffi::OsStrExt, net::UnixDatagram},
};

/// The environment variable that names the notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `READY=1`: the process serves. Returns `false` when `NOTIFY_SOCKET` is not set.
pub fn notify_ready() -> io::Result<bool> {
    notify("READY=1")
}

/// Sends `STOPPING=1`: the process has begun to shut down. Returns `false` when
/// `NOTIFY_SOCKET` is not set.
pub fn notify_stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `NOTIFY_SOCKET`. Returns `false`
/// when it is not set.
pub fn notify(state: &str) -> io::Result<bool> {
    match env::var_os(NOTIFY_SOCKET_ENV).filter(|s| !s.is_empty()) {
        Some(target) => send(&target, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends one datagram holding `state` to the socket `target` names.
fn send(target: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let sent = match target.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        None => socket.send_to(state.as_bytes(), target)?,
    };
    if sent != state.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes to NOTIFY_SOCKET", state.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt;

    use super::*;

    #[test]
    fn sends_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let agent = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = agent.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_name() {
        let name = format!("outrider-handover-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let agent = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = agent.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn nobody_listening_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("missing").as_os_str(), "READY=1").is_err());
    }
}
