//! Stalled, silent and excess connections: each is closed in bounded time, and clients with
//! a token still get in when unauthenticated connections pile up.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use outrider_manager::{ManagerConfig, RunningManager, ServeLimits, Tuning, executor::SystemClock, start_with};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn boot(dir: &Path, limits: ServeLimits) -> (RunningManager, String) {
    let config = ManagerConfig::new(dir.to_owned(), "127.0.0.1:0".parse().unwrap());
    let m = start_with(config, Arc::new(SystemClock), Tuning { serve: limits, ..Tuning::default() }).await.unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    (m, token)
}

fn short() -> ServeLimits {
    ServeLimits {
        header_read: Duration::from_millis(500),
        request: Duration::from_millis(800),
        idle: Duration::from_millis(800),
        unauthenticated_idle: Duration::from_millis(500),
        tls_handshake: Duration::from_millis(500),
        max_connections: Some(64),
        max_unauthenticated: Some(4),
    }
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the server kept the connection open: {}", String::from_utf8_lossy(&out));
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[tokio::test]
async fn stalled_and_silent_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (m, token) = boot(dir.path(), short()).await;
    let addr = m.addr;
    let stalls: Vec<(&str, String)> = vec![
        ("silent", String::new()),
        ("partial headers", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ".into()),
        ("bare HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into()),
        (
            "partial body",
            format!(
                "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\""
            ),
        ),
        ("idle keep-alive", format!("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")),
    ];
    for (what, bytes) in stalls {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes.as_bytes()).await.unwrap();
        let (answer, took) = read_to_close(&mut s).await;
        assert!(took < Duration::from_secs(3), "{what}: closed after {took:?}");
        if what == "partial body" {
            assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
            assert!(answer.contains(r#"{"error":{"code":"request_timeout""#), "{what}: {answer}");
        }
    }
    m.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_connections_are_capped_and_the_cap_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let limits =
        ServeLimits { unauthenticated_idle: Duration::from_secs(30), header_read: Duration::from_secs(30), ..short() };
    let (m, token) = boot(dir.path(), limits).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(m.addr).await.unwrap());
    }
    // A client with a token gets in and is answered while the idle ones pile up.
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("http://{}/metrics", m.addr))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outrider_connections_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(refused >= 16, "{refused} refused: {metrics}");
    // Only the 4 newest unauthenticated connections are still open.
    let mut open = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await.is_err() {
            open += 1;
        }
    }
    assert!(open <= 4, "{open} unauthenticated connections still open");
    m.shutdown().await;
}

/// Sends `head` raw and returns the answer's status line and body.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (answer, _) = read_to_close(&mut s).await;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn overlong_uris_and_oversized_headers_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = boot(dir.path(), short()).await;
    let long_uri =
        format!("GET /api/v1/tenants?x={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(20_000));
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let big_header =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "b".repeat(100_000));
    for (head, status, code) in [
        (long_uri, "HTTP/1.1 414", "uri_too_long"),
        (many_headers, "HTTP/1.1 431", "headers_too_large"),
        (big_header, "HTTP/1.1 431", "headers_too_large"),
    ] {
        let (line, body) = raw(m.addr, &head).await;
        assert!(line.starts_with(status), "{line}");
        assert!(body.contains(&format!(r#""code":"{code}""#)), "{line}: {body}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn requests_http_cannot_parse_are_answered_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = boot(dir.path(), short()).await;
    let cases = [
        ("malformed request line", "GARBAGE\r\n\r\n".to_owned(), "400", "invalid_argument"),
        ("unknown version", "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".into(), "400", "invalid_argument"),
        (
            "control character in a header",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\u{1}b\r\n\r\n".into(),
            "400",
            "invalid_argument",
        ),
        (
            "control character in the path",
            "GET /a\u{7f}b HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400",
            "invalid_argument",
        ),
        (
            "bad Content-Length",
            "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n".into(),
            "400",
            "invalid_argument",
        ),
        (
            "two Content-Lengths",
            "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".into(),
            "400",
            "invalid_argument",
        ),
        (
            "a head over the parse buffer",
            format!("GET /healthz?x={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(300_000)),
            "431",
            "headers_too_large",
        ),
    ];
    for (what, head, status, code) in cases {
        let (line, body) = raw(m.addr, &head).await;
        assert!(line.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {line}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
        assert_eq!(v["error"]["code"], code, "{what}: {body}");
        assert!(v["error"]["message"].is_string(), "{what}: {body}");
    }
    // A client still sending a large body after a bad head reads the answer, not a reset.
    let mut s = TcpStream::connect(m.addr).await.unwrap();
    let mut bytes = b"POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'z', 2 << 20));
    let (mut rx, mut tx) = s.split();
    let (answer, ()) = tokio::join!(read_to_close_half(&mut rx), async {
        let _ = tx.write_all(&bytes).await;
    });
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains(r#""code":"invalid_argument""#), "{answer}");
    m.shutdown().await;
}

/// Reads until the server closes, tolerating a reset after an answer was read.
async fn read_to_close_half(r: &mut tokio::net::tcp::ReadHalf<'_>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
