//! TLS and mTLS on the manager's port, over real sockets with certificates made here: REST
//! and sync over TLS, agents identified by their client certificate, and every certificate
//! the manager must refuse (none, another CA's, an expired one, another tenant's), stalled
//! handshakes and plain HTTP on the TLS port.

use std::{path::Path, sync::Arc, time::Duration};

use outrider_manager::{
    ManagerConfig, RunningManager, ServeLimits, StartError, TlsFiles, Tuning, agent_uri, executor::SystemClock,
    start_with,
};
use outrider_proto::v1::{self, AgentMessage, agent_message::Body, agent_sync_client::AgentSyncClient};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its key, in PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A CA that signs server and agent certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    fn sign(&self, mut params: CertificateParams, valid_days: (i64, i64)) -> Pem {
        let now = OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(valid_days.0);
        params.not_after = now + time::Duration::days(valid_days.1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }

    fn server(&self) -> Pem {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, (-1, 30))
    }

    /// An agent certificate of `tenant` valid between the given days from now.
    fn agent_valid(&self, tenant: &str, name: &str, valid_days: (i64, i64)) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(agent_uri(tenant, name).as_str().try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, valid_days)
    }

    fn agent(&self, tenant: &str, name: &str) -> Pem {
        self.agent_valid(tenant, name, (-1, 30))
    }
}

struct Tls {
    manager: RunningManager,
    token: String,
    ca: Ca,
    port: u16,
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, ca: &Ca, server: &Pem, client_ca: bool) -> ManagerConfig {
    let tls = TlsFiles {
        cert: write(dir, "server.pem", &server.cert),
        key: write(dir, "server-key.pem", &server.key),
        client_ca: client_ca.then(|| write(dir, "ca.pem", &ca.pem)),
    };
    ManagerConfig { tls: Some(tls), ..ManagerConfig::new(dir.join("data"), "127.0.0.1:0".parse().unwrap()) }
}

async fn boot(dir: &Path) -> Tls {
    let ca = Ca::new();
    let serve = ServeLimits { tls_handshake: Duration::from_millis(500), ..ServeLimits::default() };
    let manager =
        start_with(config(dir, &ca, &ca.server(), true), Arc::new(SystemClock), Tuning { serve, ..Tuning::default() })
            .await
            .unwrap();
    let token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap().trim().to_owned();
    let port = manager.addr.port();
    let t = Tls { manager, token, ca, port };
    let status = t.rest(None).post(t.url("/api/v1/tenants/default/services")).bearer_auth(&t.token);
    let status = status.json(&serde_json::json!({"name": "checkout", "priority": "P1"})).send().await.unwrap().status();
    assert_eq!(status, 201);
    t
}

impl Tls {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// A REST client trusting the CA only, with a client certificate if given.
    fn rest(&self, identity: Option<&Pem>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap()])
            .timeout(Duration::from_secs(5));
        if let Some(p) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{}{}", p.cert, p.key).as_bytes()).unwrap());
        }
        b.build().unwrap()
    }

    /// Opens a sync stream with `identity` (and `token`) registering `id` in `tenant`; the
    /// first message or the refusal.
    async fn sync(&self, identity: Option<&Pem>, token: Option<&str>, tenant: &str) -> Result<(), tonic::Status> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.pem));
        if let Some(p) = identity {
            tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
        }
        let channel = Endpoint::from_shared(self.url("")).unwrap().tls_config(tls).unwrap().connect_lazy();
        let register = AgentMessage {
            body: Some(Body::Register(v1::Register {
                tenant: tenant.into(),
                instance_id: "i-1".into(),
                service: "checkout".into(),
                region: "boe".into(),
                env: "prod".into(),
                stage: "canary".into(),
                ..Default::default()
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(register).await.unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let mut stream = AgentSyncClient::new(channel).sync(req).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("an answer in time")?;
        assert!(matches!(first, Some(v1::ManagerMessage { body: Some(_) })), "{first:?}");
        drop(tx);
        Ok(())
    }
}

#[tokio::test]
async fn rest_over_tls_with_a_token_and_plain_http_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let t = boot(dir.path()).await;
    let ok = t.rest(None).get(t.url("/api/v1/tenants")).bearer_auth(&t.token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let anonymous = t.rest(None).get(t.url("/api/v1/tenants")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "a client without a certificate still meets the token check");

    // Plain HTTP on the TLS port: closed, nothing served, and the manager goes on.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
    plain.write_all(b"GET /api/v1/tenants HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the plain connection was not closed");
    assert!(!String::from_utf8_lossy(&out).contains("tenants"), "served in clear: {out:?}");
    let again = t.rest(None).get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(again.status(), 200);
    t.manager.shutdown().await;
}

#[tokio::test]
async fn a_malformed_request_head_over_tls_gets_a_json_error() {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let dir = tempfile::tempdir().unwrap();
    let t = boot(dir.path()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(t.ca.pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut s = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("answered and closed");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains(r#""error":{"code":"#), "not the API's JSON error: {text}");
    t.manager.shutdown().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_within_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let t = boot(dir.path()).await;
    // Silent, and a ClientHello that never ends.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
        s.write_all(first).await.unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "a stalled handshake held its connection");
        assert!(started.elapsed() >= Duration::from_millis(400), "closed before the timeout: {:?}", started.elapsed());
    }
    t.manager.shutdown().await;
}

#[tokio::test]
async fn agents_sync_with_their_certificate_and_every_other_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = boot(dir.path()).await;
    let good = t.ca.agent("default", "web-1");
    t.sync(Some(&good), None, "default").await.expect("a valid agent certificate syncs without a token");

    let no_cert = t.sync(None, Some(&t.token), "default").await.unwrap_err();
    assert_eq!(no_cert.code(), tonic::Code::Unauthenticated, "a token alone does not sync with a client CA: {no_cert}");
    assert!(no_cert.message().contains("client certificate"), "{no_cert}");

    let other_tenant = t.ca.agent("payments", "web-1");
    let denied = t.sync(Some(&other_tenant), None, "default").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert!(denied.message().contains("payments"), "{denied}");

    // Signed by the CA but naming no agent: let in by TLS, refused by sync.
    let mut params = CertificateParams::new(vec!["web-1".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let unnamed = t.ca.sign(params, (-1, 30));
    let err = t.sync(Some(&unnamed), Some(&t.token), "default").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains("outrider://tenant/"), "{err}");

    // Refused at the handshake: another CA's certificate and an expired one, for REST too.
    let stranger = Ca::new().agent("default", "web-1");
    let expired = t.ca.agent_valid("default", "web-1", (-10, -1));
    for (what, pem) in [("another CA's", &stranger), ("an expired", &expired)] {
        let err = t.sync(Some(pem), None, "default").await.unwrap_err();
        assert!(
            !matches!(err.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::Ok),
            "{what} certificate reached the sync service: {err}"
        );
        let rest = t.rest(Some(pem)).get(t.url("/readyz")).send().await;
        assert!(rest.is_err(), "{what} certificate was let in: {rest:?}");
    }
    let still = t.rest(Some(&good)).get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(still.status(), 200);
    t.manager.shutdown().await;
}

#[tokio::test]
async fn without_a_client_ca_tokens_sync_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let manager = start_with(config(dir.path(), &ca, &ca.server(), false), Arc::new(SystemClock), Tuning::default())
        .await
        .unwrap();
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap().trim().to_owned();
    let t = Tls { port: manager.addr.port(), manager, token, ca };
    let create = t.rest(None).post(t.url("/api/v1/tenants/default/services")).bearer_auth(&t.token);
    create.json(&serde_json::json!({"name": "checkout", "priority": "P1"})).send().await.unwrap();
    t.sync(None, Some(&t.token), "default").await.expect("a token syncs when no client CA is set");
    let refused = t.sync(None, Some("nope"), "default").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    t.manager.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let server = ca.server();
    let other = ca.server();
    let good = config(dir.path(), &ca, &server, true);
    let files = good.tls.clone().unwrap();
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
    let mismatched = write(dir.path(), "other-key.pem", &other.key);
    let cases = [
        ("missing", TlsFiles { cert: dir.path().join("nope.pem"), ..files.clone() }, "nope.pem"),
        ("garbage certificate", TlsFiles { cert: garbage.clone(), ..files.clone() }, "garbage.pem"),
        ("garbage key", TlsFiles { key: garbage.clone(), ..files.clone() }, "garbage.pem"),
        ("garbage client CA", TlsFiles { client_ca: Some(garbage.clone()), ..files.clone() }, "garbage.pem"),
        ("key of another certificate", TlsFiles { key: mismatched, ..files.clone() }, "TLS configuration"),
    ];
    for (what, tls, says) in cases {
        let config = ManagerConfig { tls: Some(tls), ..good.clone() };
        let err = match start_with(config, Arc::new(SystemClock), Tuning::default()).await {
            Ok(_) => panic!("started with a {what}"),
            Err(e) => e,
        };
        assert!(matches!(err, StartError::Tls(_)), "{what}: {err:?}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
    let config = ManagerConfig { tls: None, webhook_ca: Some(garbage), ..good.clone() };
    let err = start_with(config, Arc::new(SystemClock), Tuning::default()).await.err().expect("a garbage webhook CA");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing is written before the TLS files are read");
}

/// An HTTPS receiver on loopback with `server`'s certificate: answers every request 204 and
/// sends its head and body on the returned channel.
async fn https_receiver(server: &Pem) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_slice_iter(server.cert.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as much body as Content-Length says.
                loop {
                    let text = String::from_utf8_lossy(&got).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + length {
                            break;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if got.len() + n < 1 << 20 => got.extend_from_slice(&buf[..n]),
                        Ok(_) => return,
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn webhooks_deliver_to_https_receivers_of_the_webhook_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let config = ManagerConfig {
        webhook_ca: Some(write(dir.path(), "hooks-ca.pem", &ca.pem)),
        ..ManagerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
    };
    let manager = start_with(config, Arc::new(SystemClock), Tuning::default()).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap().trim().to_owned();
    let base = format!("http://{}/api/v1/tenants/default", manager.addr);
    let http = reqwest::Client::new();
    let call = async |path: &str, body: serde_json::Value| {
        let resp = http.post(format!("{base}{path}")).bearer_auth(&token).json(&body).send().await.unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    };

    let (trusted, mut delivered) = https_receiver(&ca.server()).await;
    let (untrusted, mut never) = https_receiver(&Ca::new().server()).await;
    let mut hooks = Vec::new();
    for port in [trusted, untrusted] {
        let body = serde_json::json!({
            "url": format!("https://127.0.0.1:{port}/hook"),
            "events": ["version.defective"],
            "secret": "s3cret-key",
        });
        hooks.push(call("/webhooks", body).await["id"].as_str().unwrap().to_owned());
    }
    call("/sidecars", serde_json::json!({"name": "mesh", "upgrade_modes": ["restart"]})).await;
    let version =
        serde_json::json!({"version": "1.0.0", "artifact": {"url": "file:///bin/sh", "sha256": "0".repeat(64)}});
    call("/sidecars/mesh/versions", version).await;
    call("/sidecars/mesh/versions/1.0.0/defective", serde_json::json!({"reason": "leaks"})).await;

    let got = tokio::time::timeout(Duration::from_secs(10), delivered.recv()).await.expect("a delivery").unwrap();
    assert!(got.starts_with("POST /hook "), "{got}");
    assert!(got.contains("version.defective"), "{got}");
    // The other receiver's certificate is not of the webhook CA: the attempt fails at TLS.
    let detail = loop {
        let resp = http.get(format!("{base}/webhooks/{}", hooks[1])).bearer_auth(&token).send().await.unwrap();
        let detail: serde_json::Value = resp.json().await.unwrap();
        if detail["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            break detail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(detail["attempts"][0]["ok"], false, "{detail}");
    assert!(never.try_recv().is_err(), "an untrusted receiver got the delivery");
    manager.shutdown().await;
}
