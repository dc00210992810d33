//! End to end with TLS: `outrider cert` makes a lab CA and the certificates, `outrider
//! server` serves TLS with a client CA, `outrider agent` syncs with its client certificate
//! (no token) and runs the demo sidecar fetched from an `https://` artifact server, the CLI
//! talks `https://`; agents without a certificate or with another tenant's are refused.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use outrider_devtools::harness::{
    Binaries, Child, free_ports, kill_leftover_sidecars, kill_now_running_from, sha256_file,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The binary under test.
const OUTRIDER: &str = env!("CARGO_BIN_EXE_outrider");

/// Runs `outrider <args>` to completion; panics unless it succeeds. Returns its stdout.
fn outrider(args: &[&str]) -> String {
    let out = Command::new(OUTRIDER).args(args).env_remove("OUTRIDER_TOKEN").output().expect("run outrider");
    assert!(out.status.success(), "outrider {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTPS server on loopback answering `GET /demo` with `body` (every other path 404),
/// with the lab server certificate.
async fn artifact_server(pki: &Path, body: Vec<u8>) -> u16 {
    let certs =
        CertificateDer::pem_file_iter(pki.join("server/server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join("server/server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let found = head.starts_with(b"GET /demo ");
                let (status, bytes): (&str, &[u8]) = if found { ("200 OK", &body) } else { ("404 Not Found", b"") };
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", bytes.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(bytes).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Polls `check` every 200 ms until it succeeds or `within` passes (then panics with the
/// last answer).
async fn eventually<T>(within: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what} did not happen within {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Kills every process still running from the test's directory (sidecars), even on a panic.
struct KillLeftovers(PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        kill_now_running_from(&self.0, &[]);
    }
}

struct Agent {
    child: Child,
    status: String,
    data_dir: PathBuf,
}

#[tokio::test]
async fn agents_with_lab_certificates_sync_over_tls_and_fetch_https_artifacts() {
    let binaries = Binaries::beside(Path::new(OUTRIDER)).expect("the demo sidecar beside outrider");
    let root = tempfile::Builder::new().prefix("outrider-tls-").tempdir().unwrap();
    let _leftovers = KillLeftovers(root.path().canonicalize().unwrap());
    let pki = root.path().join("pki");
    let p = |sub: &str| pki.join(sub).display().to_string();
    outrider(&["cert", "ca", "--out", &p("ca")]);
    outrider(&["cert", "server", "--ca", &p("ca"), "--out", &p("server")]);
    outrider(&["cert", "agent", "--ca", &p("ca"), "--tenant", "default", "--name", "web-1", "--out", &p("web-1")]);
    outrider(&["cert", "agent", "--ca", &p("ca"), "--tenant", "payments", "--name", "pay-1", "--out", &p("pay-1")]);
    let ca_file = p("ca/ca.pem");

    let ports = free_ports(5).unwrap();
    let manager_url = format!("https://127.0.0.1:{}", ports[0]);
    let data = root.path().join("server");
    let logs = root.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let server_args: Vec<OsString> = [
        "server",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        &format!("127.0.0.1:{}", ports[0]),
        "--tls-cert",
        &p("server/server.pem"),
        "--tls-key",
        &p("server/server-key.pem"),
        "--client-ca",
        &ca_file,
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut server = Child::spawn("server", &binaries.outrider, server_args, logs.join("server.log")).unwrap();
    let token_file = data.join("admin.token");
    let token_path = token_file.display().to_string();
    let wait = [
        "wait",
        "manager",
        "--manager",
        &manager_url,
        "--ca-file",
        &ca_file,
        "--token-file",
        &token_path,
        "--timeout",
        "20s",
    ];
    outrider(&wait);
    // The CLI over https, with the lab CA.
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--manager", &manager_url, "--ca-file", &ca_file, "-o", "json"]);
        all.extend(["--token-file", token_file.to_str().unwrap()]);
        outrider(&all)
    };
    let tenants: Value = serde_json::from_str(&cli(&["tenant", "list"])).unwrap();
    assert_eq!(tenants[0]["name"], "default", "{tenants}");

    // The demo sidecar from an https:// artifact signed by the lab CA.
    let demo = std::fs::read(&binaries.demo_sidecar).unwrap();
    let artifacts = artifact_server(&pki, demo).await;
    let ca_pem = std::fs::read(&ca_file).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    let api = async |method: reqwest::Method, path: &str, body: Value| {
        let url = format!("{manager_url}/api/v1/tenants/default{path}");
        let resp = http.request(method, url).bearer_auth(&token).json(&body).send().await.unwrap();
        let status = resp.status();
        assert!(status.is_success(), "{path}: {status} {}", resp.text().await.unwrap());
    };
    let mut sidecar = outrider_devtools::harness::demo_sidecar_body();
    sidecar["liveness_probe"] = Value::Null;
    api(reqwest::Method::POST, "/sidecars", sidecar).await;
    let artifact = json!({"url": format!("https://127.0.0.1:{artifacts}/demo"), "sha256": sha256_file(&binaries.demo_sidecar).unwrap()});
    let version = json!({"version": "1.0.0", "artifact": artifact, "env": {"PORT": "${label.port}"}});
    api(reqwest::Method::POST, "/sidecars/demo/versions", version).await;
    api(reqwest::Method::POST, "/services", json!({"name": "checkout"})).await;
    api(reqwest::Method::POST, "/sidecars/demo/versions/1.0.0/admit", json!({"evidence": "tls test"})).await;
    api(reqwest::Method::PUT, "/services/checkout/sidecars/demo", json!({"version": "1.0.0"})).await;

    let spawn_agent = |n: usize, credentials: &[String]| {
        let data_dir = root.path().join(format!("agent-{n}"));
        let mut args: Vec<OsString> = vec!["agent".into(), "--manager".into(), manager_url.clone().into()];
        args.extend(credentials.iter().map(Into::into));
        for (flag, value) in [
            ("--data-dir", data_dir.display().to_string()),
            ("--service", "checkout".into()),
            ("--instance", format!("i-{n}")),
            ("--region", "boe".into()),
            ("--env", "prod".into()),
            ("--stage", "canary".into()),
            ("--label", format!("port={}", ports[2 + n])),
            ("--listen", format!("127.0.0.1:{}", ports[1])),
        ] {
            args.extend([flag.into(), value.into()]);
        }
        let child = Child::spawn("agent", &binaries.outrider, args, logs.join(format!("agent-{n}.log"))).unwrap();
        Agent { child, status: format!("http://127.0.0.1:{}/status", ports[1]), data_dir }
    };
    let status = async |a: &Agent| -> Result<Value, String> {
        let resp = reqwest::get(&a.status).await.map_err(|e| e.to_string())?;
        resp.json::<Value>().await.map_err(|e| e.to_string())
    };
    let with_cert = |name: &str| {
        vec![
            "--ca-file".to_owned(),
            ca_file.clone(),
            "--cert".into(),
            p(&format!("{name}/agent.pem")),
            "--key".into(),
            p(&format!("{name}/agent-key.pem")),
        ]
    };

    // A valid agent certificate and no token: it syncs and runs the https artifact.
    let mut agent = spawn_agent(0, &with_cert("web-1"));
    let s = eventually(Duration::from_secs(30), "the agent to run demo@1.0.0", async || {
        let s = status(&agent).await?;
        let running = s["sidecars"]
            .as_array()
            .is_some_and(|v| v.iter().any(|c| c["version"] == "1.0.0" && c["state"] == "running"));
        if s["connected"] == true && running { Ok(s) } else { Err(s.to_string()) }
    })
    .await;
    assert!(s["last_error"].is_null(), "{s}");
    let hello: Value = reqwest::get(format!("http://127.0.0.1:{}/", ports[2])).await.unwrap().json().await.unwrap();
    assert_eq!(hello["version"], "1.0.0", "{hello}");
    let instances: Value = serde_json::from_str(&cli(&["instance", "list"])).unwrap();
    assert_eq!(instances[0]["id"], "i-0", "{instances}");
    agent.child.stop(Duration::from_secs(5)).await;
    let mut dirs = vec![agent.data_dir.clone()];

    // The admin token alone, and another tenant's certificate: refused, never connected.
    let token_only =
        vec!["--ca-file".to_owned(), ca_file.clone(), "--token-file".into(), token_file.display().to_string()];
    for (n, credentials, says) in [(1, token_only, "Unauthenticated"), (2, with_cert("pay-1"), "PermissionDenied")] {
        let mut refused = spawn_agent(n, &credentials);
        let s = eventually(Duration::from_secs(15), "the agent to be refused", async || {
            let s = status(&refused).await?;
            if s["last_error"].as_str().is_some_and(|e| e.contains(says)) { Ok(s) } else { Err(s.to_string()) }
        })
        .await;
        assert_eq!(s["connected"], false, "{s}");
        refused.child.stop(Duration::from_secs(5)).await;
        dirs.push(refused.data_dir.clone());
    }

    server.stop(Duration::from_secs(5)).await;
    kill_leftover_sidecars(root.path(), &dirs).await;
}

#[tokio::test]
async fn simulated_agents_with_tokens_sync_over_tls_without_a_client_ca() {
    let root = tempfile::Builder::new().prefix("outrider-tls-sim-").tempdir().unwrap();
    let pki = root.path().join("pki");
    let p = |sub: &str| pki.join(sub).display().to_string();
    outrider(&["cert", "ca", "--out", &p("ca")]);
    outrider(&["cert", "server", "--ca", &p("ca"), "--out", &p("server")]);
    let port = free_ports(1).unwrap()[0];
    let data = root.path().join("server");
    let args: Vec<OsString> = [
        "server",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &p("server/server.pem"),
        "--tls-key",
        &p("server/server-key.pem"),
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut server = Child::spawn("server", Path::new(OUTRIDER), args, root.path().join("server.log")).unwrap();
    let (url, token) = (format!("https://127.0.0.1:{port}"), data.join("admin.token").display().to_string());
    let conn = ["--manager", url.as_str(), "--ca-file", &p("ca/ca.pem"), "--token-file", &token];
    outrider(&[&["wait", "manager"][..], &conn].concat());
    let out =
        outrider(&[&["bench", "propagation", "--agents", "20", "--changes", "1", "-o", "json"][..], &conn].concat());
    let figures: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(figures.to_string().contains("p50_ms"), "{figures}");
    server.stop(Duration::from_secs(5)).await;
}
