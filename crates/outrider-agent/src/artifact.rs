//! The artifact cache: executables fetched once, verified by SHA-256, kept under their hash.
//!
//! A cached file is only ever created by renaming a fully written, verified temporary file
//! into place, so `dir/<sha256>` is either absent or complete and correct. Concurrent fetches
//! of the same artifact each write their own temporary file; the last rename wins with
//! identical content.

use std::{
    error::Error as _,
    fmt, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use outrider_model::Artifact;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::{fs, io::AsyncReadExt, io::AsyncWriteExt};

/// Largest artifact accepted unless the cache is configured otherwise: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// Why an artifact could not be provided. Messages are meant for operators and end up in the
/// sidecar's reported status.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// The expected hash is not 64 lower-case hex digits.
    #[error("artifact sha256 {0:?} is not 64 lower-case hex digits")]
    InvalidSha256(String),
    /// The URL cannot be used.
    #[error("artifact URL {url:?} is invalid: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A URL scheme other than `file://`, `http://`, `https://`.
    #[error("artifact URL {url:?}: unsupported scheme; use file://, http:// or https://")]
    UnsupportedScheme {
        /// The URL.
        url: String,
    },
    /// The download failed.
    #[error("artifact {url}: download failed: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong, with its causes.
        message: String,
    },
    /// The server answered with a non-2xx status.
    #[error("artifact {url}: server answered {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The artifact is larger than the cache accepts.
    #[error("artifact {url} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The content does not have the expected hash: it is refused and not cached.
    #[error("artifact {url} refused: sha256 mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        /// The URL.
        url: String,
        /// The hash the version declares.
        expected: String,
        /// The hash of what was fetched.
        actual: String,
    },
    /// A local file operation failed.
    #[error("artifact {url}: {context}: {error}")]
    Io {
        /// The URL.
        url: String,
        /// What the cache was doing.
        context: &'static str,
        /// The underlying error.
        error: io::Error,
    },
}

/// A directory of verified executables named by their SHA-256.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    http: reqwest::Client,
    max_bytes: u64,
}

impl fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactCache").field("dir", &self.dir).field("max_bytes", &self.max_bytes).finish()
    }
}

impl ArtifactCache {
    /// A cache in `dir` (created on first fetch) that downloads with `http`, accepting
    /// artifacts up to [`DEFAULT_MAX_BYTES`].
    pub fn new(dir: PathBuf, http: reqwest::Client) -> Self {
        Self { dir, http, max_bytes: DEFAULT_MAX_BYTES }
    }

    /// The same cache with another size limit.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Removes temporary files left by fetches that were interrupted (say, by the agent being
    /// killed half-way). Call it only while no fetch runs on this directory, e.g. at start.
    /// Returns how many were removed.
    pub fn remove_stale_temp_files(&self) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(self.dir.join(name.as_ref()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Where an artifact with this hash is (or would be) cached.
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The local path of the artifact, fetching and verifying it first unless it is cached.
    /// Content whose hash differs from `a.sha256` is refused and never cached.
    pub async fn fetch(&self, a: &Artifact) -> Result<PathBuf, ArtifactError> {
        if !is_sha256_hex(&a.sha256) {
            return Err(ArtifactError::InvalidSha256(a.sha256.clone()));
        }
        let source = Source::parse(&a.url)?;
        let target = self.path_for(&a.sha256);
        if fs::metadata(&target).await.is_ok_and(|m| m.is_file()) {
            return Ok(target);
        }
        let io_err = |context| move |error| ArtifactError::Io { url: a.url.clone(), context, error };
        fs::create_dir_all(&self.dir).await.map_err(io_err("creating the cache directory"))?;
        let temp = TempFile::new(&self.dir, &a.sha256);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.path)
            .await
            .map_err(io_err("creating a temporary file"))?;
        let mut sink = HashingSink { file: &mut file, hasher: Sha256::new(), written: 0, limit: self.max_bytes };
        match &source {
            Source::File(path) => sink.copy_file(&a.url, path).await?,
            Source::Http(url) => sink.copy_http(&a.url, &self.http, url).await?,
        }
        let actual = hex::encode(sink.hasher.finalize());
        if actual != a.sha256 {
            tracing::warn!(url = %a.url, expected = %a.sha256, %actual, "artifact refused: sha256 mismatch");
            return Err(ArtifactError::HashMismatch { url: a.url.clone(), expected: a.sha256.clone(), actual });
        }
        file.flush().await.map_err(io_err("writing"))?;
        file.sync_all().await.map_err(io_err("syncing"))?;
        drop(file);
        fs::set_permissions(&temp.path, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(io_err("making it executable"))?;
        fs::rename(&temp.path, &target).await.map_err(io_err("moving it into the cache"))?;
        temp.disarm();
        if let Ok(dir) = fs::File::open(&self.dir).await {
            let _ = dir.sync_all().await;
        }
        tracing::info!(url = %a.url, sha256 = %a.sha256, "artifact fetched");
        Ok(target)
    }
}

/// Whether `s` is 64 lower-case hex digits (which also makes it a safe file name).
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where an artifact's bytes come from.
enum Source {
    File(PathBuf),
    Http(reqwest::Url),
}

impl Source {
    fn parse(url: &str) -> Result<Self, ArtifactError> {
        let invalid = |reason: String| ArtifactError::InvalidUrl { url: url.to_owned(), reason };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                parsed.to_file_path().map(Source::File).map_err(|()| invalid("not an absolute local file path".into()))
            }
            "http" | "https" => Ok(Source::Http(parsed)),
            _ => Err(ArtifactError::UnsupportedScheme { url: url.to_owned() }),
        }
    }
}

/// Writes chunks to the temporary file while hashing and counting them.
struct HashingSink<'a> {
    file: &'a mut fs::File,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl HashingSink<'_> {
    async fn write(&mut self, url: &str, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.written = self.written.saturating_add(chunk.len() as u64);
        if self.written > self.limit {
            return Err(ArtifactError::TooLarge { url: url.to_owned(), limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(|error| ArtifactError::Io {
            url: url.to_owned(),
            context: "writing",
            error,
        })
    }

    async fn copy_file(&mut self, url: &str, path: &Path) -> Result<(), ArtifactError> {
        let read_err = |error| ArtifactError::Io { url: url.to_owned(), context: "reading the source file", error };
        let mut src = fs::File::open(path).await.map_err(read_err)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = src.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                return Ok(());
            }
            self.write(url, &buf[..n]).await?;
        }
    }

    async fn copy_http(
        &mut self,
        url: &str,
        http: &reqwest::Client,
        parsed: &reqwest::Url,
    ) -> Result<(), ArtifactError> {
        let download = |e: reqwest::Error| ArtifactError::Download { url: url.to_owned(), message: error_chain(&e) };
        let mut response = http.get(parsed.clone()).send().await.map_err(download)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ArtifactError::HttpStatus { url: url.to_owned(), status: status.as_u16() });
        }
        if response.content_length().is_some_and(|len| len > self.limit) {
            return Err(ArtifactError::TooLarge { url: url.to_owned(), limit: self.limit });
        }
        while let Some(chunk) = response.chunk().await.map_err(download)? {
            self.write(url, &chunk).await?;
        }
        Ok(())
    }
}

/// An error and its causes on one line (`a: b: c`).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A uniquely named temporary file in the cache directory, removed on drop unless it was
/// renamed into place (also when the fetch is cancelled half-way).
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(dir: &Path, sha256: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".{sha256}.{}.{n}.{:08x}.tmp", std::process::id(), rand::random::<u32>());
        Self { path: dir.join(name), armed: true }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncWriteExt, net::TcpListener};

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn cache(dir: &Path) -> ArtifactCache {
        ArtifactCache::new(dir.join("artifacts"), reqwest::Client::builder().no_proxy().build().unwrap())
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    fn file_artifact(path: &Path, sha256: String) -> Artifact {
        Artifact { url: format!("file://{}", path.display()), sha256 }
    }

    #[tokio::test]
    async fn file_match_is_cached_executable_and_hit_later() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tool");
        std::fs::write(&src, b"#!/bin/sh\necho hi\n").unwrap();
        let sha = sha256_hex(b"#!/bin/sh\necho hi\n");
        let c = cache(dir.path());
        let path = c.fetch(&file_artifact(&src, sha.clone())).await.unwrap();
        assert_eq!(path, dir.path().join("artifacts").join(&sha));
        assert_eq!(std::fs::read(&path).unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(entries(&dir.path().join("artifacts")), vec![sha.clone()]);

        // A hit does not read the source again.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(c.fetch(&file_artifact(&src, sha)).await.unwrap(), path);
    }

    #[tokio::test]
    async fn file_mismatch_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tool");
        std::fs::write(&src, b"evil").unwrap();
        let wrong = sha256_hex(b"good");
        let err = cache(dir.path()).fetch(&file_artifact(&src, wrong.clone())).await.unwrap_err();
        match &err {
            ArtifactError::HashMismatch { expected, actual, .. } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &sha256_hex(b"evil"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("sha256 mismatch") && msg.contains(&wrong), "{msg}");
        assert!(entries(&dir.path().join("artifacts")).is_empty(), "temp file removed");
    }

    #[tokio::test]
    async fn concurrent_fetches_of_one_artifact_agree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("big");
        let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &content).unwrap();
        let a = file_artifact(&src, sha256_hex(&content));
        let c = cache(dir.path());
        let results = futures::future::join_all((0..8).map(|_| c.fetch(&a))).await;
        for r in results {
            assert_eq!(std::fs::read(r.unwrap()).unwrap(), content);
        }
        assert_eq!(entries(&dir.path().join("artifacts")), vec![a.sha256.clone()]);
    }

    #[tokio::test]
    async fn bad_inputs_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let sha = "a".repeat(64);
        let ftp = Artifact { url: "ftp://example.com/x".into(), sha256: sha.clone() };
        assert!(matches!(c.fetch(&ftp).await.unwrap_err(), ArtifactError::UnsupportedScheme { .. }));
        let traversal = Artifact { url: "file:///bin/sh".into(), sha256: "../../etc/passwd".into() };
        assert!(matches!(c.fetch(&traversal).await.unwrap_err(), ArtifactError::InvalidSha256(_)));
        let missing = Artifact { url: "file:///nonexistent/tool".into(), sha256: sha };
        let msg = c.fetch(&missing).await.unwrap_err().to_string();
        assert!(msg.contains("reading the source file"), "{msg}");
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        assert_eq!(c.remove_stale_temp_files().unwrap(), 0, "missing directory is fine");
        let art = dir.path().join("artifacts");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::write(art.join(".abc.1.2.3.tmp"), b"partial").unwrap();
        std::fs::write(art.join("a".repeat(64)), b"kept").unwrap();
        assert_eq!(c.remove_stale_temp_files().unwrap(), 1);
        assert_eq!(entries(&art), vec!["a".repeat(64)]);
    }

    #[tokio::test]
    async fn size_limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tool");
        std::fs::write(&src, vec![1u8; 10_000]).unwrap();
        let c = cache(dir.path()).with_max_bytes(4096);
        let err = c.fetch(&file_artifact(&src, sha256_hex(&[1u8; 10_000]))).await.unwrap_err();
        assert!(err.to_string().contains("larger than the limit of 4096 bytes"), "{err}");
        assert!(entries(&dir.path().join("artifacts")).is_empty());
    }

    /// Serves one fixed HTTP response to every connection.
    async fn serve_fixed(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn http_response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test]
    async fn http_fetch_verifies_and_caches() {
        let body = b"#!/bin/sh\nexit 0\n".repeat(1000);
        let base = serve_fixed(http_response("200 OK", &body)).await;
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let good = Artifact { url: format!("{base}/tool"), sha256: sha256_hex(&body) };
        let path = c.fetch(&good).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), body);

        let bad = Artifact { url: format!("{base}/tool"), sha256: sha256_hex(b"other") };
        assert!(matches!(c.fetch(&bad).await.unwrap_err(), ArtifactError::HashMismatch { .. }));
    }

    /// Serves one fixed HTTP response over TLS to every connection, with a self-signed
    /// certificate for 127.0.0.1; returns the base URL and that certificate (PEM).
    async fn serve_fixed_tls(response: Vec<u8>) -> (String, String) {
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, response) = (acceptor.clone(), response.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = acceptor.accept(tcp).await else { return };
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (format!("https://{addr}"), issued.cert.pem())
    }

    #[tokio::test]
    async fn https_fetch_trusts_the_given_ca_and_still_checks_the_hash() {
        let body = b"#!/bin/sh\nexit 0\n".repeat(100);
        let (base, ca) = serve_fixed_tls(http_response("200 OK", &body)).await;
        let dir = tempfile::tempdir().unwrap();
        let roots = reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap();
        let http = reqwest::Client::builder().no_proxy().tls_certs_merge(roots).build().unwrap();
        let c = ArtifactCache::new(dir.path().join("artifacts"), http);
        let good = Artifact { url: format!("{base}/tool"), sha256: sha256_hex(&body) };
        assert_eq!(std::fs::read(c.fetch(&good).await.unwrap()).unwrap(), body);
        let bad = Artifact { url: format!("{base}/other"), sha256: sha256_hex(b"other") };
        assert!(matches!(c.fetch(&bad).await.unwrap_err(), ArtifactError::HashMismatch { .. }));

        // Without the CA the server is not trusted.
        let untrusting = cache(&dir.path().join("second"));
        let err = untrusting.fetch(&good).await.unwrap_err();
        assert!(matches!(err, ArtifactError::Download { .. }), "{err}");
    }

    #[tokio::test]
    async fn http_errors_are_reported() {
        let base = serve_fixed(http_response("404 Not Found", b"no")).await;
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let a = Artifact { url: format!("{base}/missing"), sha256: "b".repeat(64) };
        let err = c.fetch(&a).await.unwrap_err();
        assert!(matches!(err, ArtifactError::HttpStatus { status: 404, .. }), "{err}");

        // Nothing listens on this port once the listener is dropped.
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let a = Artifact { url: format!("http://127.0.0.1:{port}/x"), sha256: "b".repeat(64) };
        let err = c.fetch(&a).await.unwrap_err();
        assert!(matches!(err, ArtifactError::Download { .. }), "{err}");

        let big = serve_fixed(http_response("200 OK", &[0u8; 5000])).await;
        let a = Artifact { url: format!("{big}/x"), sha256: "b".repeat(64) };
        let err = c.clone().with_max_bytes(100).fetch(&a).await.unwrap_err();
        assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
        assert!(entries(&dir.path().join("artifacts")).is_empty());
    }
}
