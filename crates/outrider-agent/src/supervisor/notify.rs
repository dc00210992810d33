//! Readiness notification, the `sd_notify` convention: each generation of a sidecar with
//! `notify_ready` gets its own datagram socket in `NOTIFY_SOCKET` and is ready once it sends
//! `READY=1` there. One socket per generation is what tells the new generation's readiness
//! apart from the old one's during a hot upgrade, where a probe on the shared port may be
//! answered by either.

use std::{
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::net::UnixDatagram;

/// Distinguishes the sockets of successive generations.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The agent's end of one generation's `NOTIFY_SOCKET`; removes its path when dropped.
#[derive(Debug)]
pub(super) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a fresh socket for a generation of `sidecar` in `dir`.
    pub(super) fn bind(dir: &Path, sidecar: &str) -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{sidecar}.{}.{n}.notify", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        Ok(Self { socket, path })
    }

    /// The value of `NOTIFY_SOCKET`.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a datagram holding the line `READY=1`. Cancel-safe.
    pub(super) async fn ready(&self) -> io::Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buf).await?;
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.lines().any(|l| l.trim() == "READY=1") {
                return Ok(());
            }
            tracing::debug!(message = %text.trim(), "sd_notify message");
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_waits_for_ready_1_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let notify = NotifySocket::bind(dir.path(), "mesh").unwrap();
        let path = notify.path().to_owned();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"STATUS=starting", &path).unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), notify.ready()).await;
        assert!(waiting.is_err(), "STATUS alone is not readiness");
        sender.send_to(b"STATUS=up\nREADY=1\n", &path).unwrap();
        notify.ready().await.unwrap();
        drop(notify);
        assert!(!path.exists());
    }
}
