//! Health checks of a sidecar: one attempt of a TCP, HTTP or exec probe, bounded by a timeout.
//!
//! Placeholders in probe targets are expanded by the caller; this module runs what it gets.

use std::{
    io,
    process::{ExitStatus, Stdio},
    sync::OnceLock,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use outrider_model::ProbeCheck;
use thiserror::Error;
use tokio::{io::AsyncReadExt, net::TcpStream, process::Command};

/// Why a probe attempt failed; the message ends up in the sidecar's reported status.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The TCP connection was refused or failed.
    #[error("tcp probe {addr}: {error}")]
    TcpConnect {
        /// The address.
        addr: String,
        /// The connection error.
        error: io::Error,
    },
    /// No TCP connection within the timeout.
    #[error("tcp probe {addr}: no connection within {timeout:?}")]
    TcpTimeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The HTTP answer was not 2xx.
    #[error("http probe {url}: status {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
    },
    /// The HTTP request failed.
    #[error("http probe {url}: {message}")]
    HttpRequest {
        /// The URL.
        url: String,
        /// The error and its causes.
        message: String,
    },
    /// No HTTP answer within the timeout.
    #[error("http probe {url}: no answer within {timeout:?}")]
    HttpTimeout {
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The exec probe has no command.
    #[error("exec probe has an empty command")]
    EmptyCommand,
    /// The command could not be started.
    #[error("exec probe {program:?} could not start: {error}")]
    ExecStart {
        /// The program.
        program: String,
        /// The spawn error.
        error: io::Error,
    },
    /// Waiting for the command failed.
    #[error("exec probe {program:?}: {error}")]
    ExecWait {
        /// The program.
        program: String,
        /// The wait error.
        error: io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("exec probe {program:?} {status}{}{stderr}", if stderr.is_empty() { "" } else { ": " })]
    ExecFailed {
        /// The program.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of what it wrote to stderr (trimmed, may be empty).
        stderr: String,
    },
    /// The command did not finish within the timeout and was killed.
    #[error("exec probe {program:?} timed out after {timeout:?}")]
    ExecTimeout {
        /// The program.
        program: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Runs one attempt of `check`, giving up after `timeout`. `Ok` means healthy; the error
/// says what failed, for the sidecar's reported status.
///
/// - `Tcp(addr)`: `host:port` must accept a connection.
/// - `Http(url)`: `GET url` must answer 2xx (redirects are followed, proxies are not used).
/// - `Exec(argv)`: the command must exit 0; it runs in its own process group, which is
///   killed when the timeout passes. It inherits the agent's environment minus
///   `OUTRIDER_TOKEN`.
pub async fn run(check: ProbeCheck<'_>, timeout: Duration) -> Result<(), ProbeError> {
    match check {
        ProbeCheck::Tcp(addr) => tcp(addr, timeout).await,
        ProbeCheck::Http(url) => http(url, timeout).await,
        ProbeCheck::Exec(argv) => exec(argv, timeout).await,
    }
}

async fn tcp(addr: &str, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(ProbeError::TcpConnect { addr: addr.to_owned(), error }),
        Err(_) => Err(ProbeError::TcpTimeout { addr: addr.to_owned(), timeout }),
    }
}

/// The client HTTP probes share: no proxy (probes target the local sidecar).
/// The HTTP probe client. No pooled connections: each probe connects afresh (as kubelet's
/// do), so it reaches whichever generation now accepts on a shared socket, and a draining
/// generation is not kept alive by an idle probe connection.
fn probe_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap_or_default())
}

async fn http(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let request = probe_client().get(url).timeout(timeout).send();
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(ProbeError::HttpStatus { url: url.to_owned(), status: resp.status() }),
        Ok(Err(e)) => Err(ProbeError::HttpRequest { url: url.to_owned(), message: crate::artifact::error_chain(&e) }),
        Err(_) => Err(ProbeError::HttpTimeout { url: url.to_owned(), timeout }),
    }
}

async fn exec(argv: &[String], timeout: Duration) -> Result<(), ProbeError> {
    let (program, args) = argv.split_first().ok_or(ProbeError::EmptyCommand)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove(crate::secrets::TOKEN_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|error| ProbeError::ExecStart { program: program.clone(), error })?;
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    // Read stderr beside the wait (bounded), so a chatty probe cannot block on a full pipe.
    let stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(stderr) = stderr {
            let _ = stderr.take(64 * 1024).read_to_end(&mut buf).await;
        }
        buf
    });
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let stop_reading = reader.abort_handle();
    let result = match waited {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => {
            // Grandchildren may hold the pipe open: do not wait long for the end of stderr.
            let stderr = tokio::time::timeout(Duration::from_millis(100), reader)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = tail(stderr.trim(), 200).to_owned();
            Err(ProbeError::ExecFailed { program: program.clone(), status, stderr })
        }
        Ok(Err(error)) => Err(ProbeError::ExecWait { program: program.clone(), error }),
        Err(_) => {
            // Not reaped yet (the wait did not complete), so the group id is still ours:
            // end the probe and anything it started.
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            let _ = child.kill().await;
            Err(ProbeError::ExecTimeout { program: program.clone(), timeout })
        }
    };
    stop_reading.abort();
    result
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener};

    const T: Duration = Duration::from_secs(2);

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn tcp_probe() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        run(ProbeCheck::Tcp(&addr), T).await.unwrap();
        let closed = format!("127.0.0.1:{}", closed_port().await);
        let err = run(ProbeCheck::Tcp(&closed), T).await.unwrap_err().to_string();
        assert!(err.contains(&closed), "{err}");
    }

    /// Answers every request with `status`.
    async fn http_server(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = conn.read(&mut buf).await;
                    let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/healthz")
    }

    #[tokio::test]
    async fn http_probe() {
        let ok = http_server("200 OK").await;
        run(ProbeCheck::Http(&ok), T).await.unwrap();
        let bad = http_server("503 Service Unavailable").await;
        let err = run(ProbeCheck::Http(&bad), T).await.unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");
        let closed = format!("http://127.0.0.1:{}/", closed_port().await);
        assert!(run(ProbeCheck::Http(&closed), T).await.is_err());
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let started = tokio::time::Instant::now();
        let err = run(ProbeCheck::Http(&url), Duration::from_millis(200)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
        drop(listener);
    }

    #[tokio::test]
    async fn exec_probe() {
        run(ProbeCheck::Exec(&argv(&["/bin/sh", "-c", "exit 0"])), T).await.unwrap();
        let err = run(ProbeCheck::Exec(&argv(&["/bin/sh", "-c", "echo broken >&2; exit 3"])), T)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("3") && err.contains("broken"), "{err}");
        assert_eq!(err, "exec probe \"/bin/sh\" exit status: 3: broken");
        let err = run(ProbeCheck::Exec(&argv(&["/nonexistent/probe"])), T).await.unwrap_err().to_string();
        assert!(err.contains("could not start"), "{err}");
        assert!(run(ProbeCheck::Exec(&[]), T).await.is_err());
    }

    #[tokio::test]
    async fn exec_probe_is_killed_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("sleep 1; touch {}", marker.display());
        let started = tokio::time::Instant::now();
        let err = run(ProbeCheck::Exec(&argv(&["/bin/sh", "-c", &script])), Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(900));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(!marker.exists(), "the probe's process group was killed");
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
