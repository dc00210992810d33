//! Looking at agents and demo sidecars over HTTP, and artifacts of local files.

use std::{fs::File, io::Read, path::Path};

use outrider_model::{Artifact, SidecarStatus};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::HarnessError;

/// The answer of an agent's `/status` (the part read here).
#[derive(Debug, Deserialize)]
pub struct AgentStatus {
    /// Every sidecar the agent runs.
    #[serde(default)]
    pub sidecars: Vec<SidecarStatus>,
}

/// `GET` of an agent's `/status`.
pub async fn agent_status(http: &reqwest::Client, url: &str) -> Result<AgentStatus, HarnessError> {
    Ok(http.get(url).send().await?.error_for_status()?.json::<AgentStatus>().await?)
}

/// The answer of the demo sidecar's `GET /`.
#[derive(Debug, Deserialize)]
pub struct Hello {
    /// The version it runs (`OUTRIDER_VERSION`).
    pub version: String,
    /// Its process id.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One `GET /` of a demo sidecar.
pub async fn fetch_hello(http: &reqwest::Client, url: &str) -> Result<Hello, HarnessError> {
    Ok(http.get(url).send().await?.error_for_status()?.json::<Hello>().await?)
}

/// The artifact of a local executable: its `file://` URL and SHA-256.
pub async fn file_artifact(path: &Path) -> Result<Artifact, HarnessError> {
    let url = reqwest::Url::from_file_path(path).map_err(|()| HarnessError::NotAbsolute(path.to_owned()))?;
    let file = path.to_owned();
    let sha256 = tokio::task::spawn_blocking(move || sha256_file(&file))
        .await
        .map_err(|e| HarnessError::io("hashing task failed")(std::io::Error::other(e)))??;
    Ok(Artifact { url: url.to_string(), sha256 })
}

/// Lower-case hex SHA-256 of a file (blocking).
pub fn sha256_file(path: &Path) -> Result<String, HarnessError> {
    let mut file = File::open(path).map_err(HarnessError::io(format!("cannot open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(HarnessError::io(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
