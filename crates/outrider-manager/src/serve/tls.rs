//! TLS on the manager's one port (rustls with aws-lc-rs): the server configuration read from
//! PEM files, with an optional client CA for agents' certificates (mTLS), and what a verified
//! client certificate says about its holder.
//!
//! An agent certificate names its holder in a SAN URI `outrider://tenant/<T>/agent/<NAME>`
//! ([`agent_uri`]); the manager turns it into the principal `agent:<NAME>` of tenant `<T>`
//! with the role `agent`. With a client CA, clients without a certificate are still let in
//! (operators' CLIs authenticate with tokens) but a certificate that the CA did not sign, or
//! that has expired, fails the handshake; the sync stream then requires a certificate.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::aws_lc_rs,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::auth::{Principal, Role};

/// The PEM files of the manager's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA that signs agents' client certificates (mTLS); none: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    File {
        /// Which file (`certificate`, `key`, `client CA`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refuses the combination (a key that does not match the certificate…).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The scheme of the SAN URI naming an agent.
const AGENT_URI_PREFIX: &str = "outrider://tenant/";

/// The SAN URI that names agent `name` of `tenant` in its client certificate.
pub fn agent_uri(tenant: &str, name: &str) -> String {
    format!("{AGENT_URI_PREFIX}{tenant}/agent/{name}")
}

/// The tenant and agent name in `uri`, if it is an [`agent_uri`] with valid names.
fn parse_agent_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(AGENT_URI_PREFIX)?;
    let (tenant, name) = rest.split_once("/agent/")?;
    outrider_model::validate_name("tenant", tenant).ok()?;
    outrider_model::validate_name("agent", name).ok()?;
    Some((tenant.to_owned(), name.to_owned()))
}

/// What the TLS handshake proved about a client, on a port with a client CA. Each request of
/// the connection carries it in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientCert {
    /// The client sent no certificate.
    Missing,
    /// A certificate the CA signed that names no agent.
    Unnamed,
    /// A verified agent certificate.
    Agent(Principal),
}

impl ClientCert {
    /// What `chain` (the verified peer certificates, leaf first) says.
    pub(crate) fn of(chain: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(leaf) = chain.and_then(<[_]>::first) else { return Self::Missing };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else { return Self::Unnamed };
        let Ok(Some(san)) = cert.subject_alternative_name() else { return Self::Unnamed };
        san.value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(uri) => parse_agent_uri(uri),
                _ => None,
            })
            .map_or(Self::Unnamed, |(tenant, name)| {
                Self::Agent(Principal { name: format!("agent:{name}"), tenant: Some(tenant), role: Role::Agent })
            })
    }
}

/// The TLS side of the listener.
pub(crate) struct Tls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// Whether clients may present certificates of a client CA.
    pub(crate) client_ca: bool,
}

fn read_pem(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { what, path: path.clone(), message: e.to_string() })
}

fn certificates(what: &'static str, path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(what, path)?;
    let bad = |message: String| TlsError::File { what, path: path.clone(), message };
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Tls {
    /// Reads the files and builds the server side: ALPN `h2` and `http/1.1`, and with a client
    /// CA a verifier that accepts clients without a certificate.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let chain = certificates("certificate", &files.cert)?;
        let key_pem = read_pem("key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
            what: "key",
            path: files.key.clone(),
            message: format!("no usable PEM private key: {e}"),
        })?;
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), client_ca: files.client_ca.is_some() })
    }
}

/// The certificates of the CA bundle in `path`, for an HTTP client's roots.
pub(crate) fn ca_bundle(path: &PathBuf) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let pem = read_pem("CA", path)?;
    let bad = |message: String| TlsError::File { what: "CA", path: path.clone(), message };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Verifies client certificates against the CA in `path`; a client may send none.
fn client_verifier(
    path: &PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("client CA", path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "client CA",
            path: path.clone(),
            message: e.to_string(),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_uris_round_trip_and_bad_ones_name_nobody() {
        assert_eq!(parse_agent_uri(&agent_uri("payments", "web-1")), Some(("payments".into(), "web-1".into())));
        for bad in [
            "outrider://tenant//agent/x",
            "outrider://tenant/a/agent/",
            "outrider://tenant/a/b/agent/x",
            "outrider://tenant/a/operator/x",
            "https://tenant/a/agent/x",
            "outrider://tenant/A B/agent/x",
        ] {
            assert_eq!(parse_agent_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn no_certificate_is_missing_and_garbage_names_nobody() {
        assert_eq!(ClientCert::of(None), ClientCert::Missing);
        assert_eq!(ClientCert::of(Some(&[])), ClientCert::Missing);
        assert_eq!(ClientCert::of(Some(&[CertificateDer::from(vec![1, 2, 3])])), ClientCert::Unnamed);
    }
}
