//! Bearer-token authentication. On first start the manager creates an admin token, writes it
//! to `<data-dir>/admin.token` (mode 0600) and keeps only its SHA-256 in the store.

use std::{
    collections::HashMap,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{Arc, RwLock},
};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    Error, StartError, keys,
    repo::{Repo, encode},
};

/// What a caller may do (PRODUCT.md §8: `viewer`, `operator`, `admin`, `agent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, plans, freezes, bindings, actions.
    Operator,
    /// Everything, tokens included.
    Admin,
    /// The agent sync stream only, for instances of its tenant.
    Agent,
}

/// An authenticated caller: who it is (the actor of its events), which tenant it is bound to
/// (none: every tenant) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Actor name recorded in events.
    pub name: String,
    /// The one tenant it may see; none: all of them.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
}

/// What a token is allowed to be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Actor name recorded in events.
    pub name: String,
    /// The one tenant it may see; none: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The token checker.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<RwLock<HashMap<String, TokenInfo>>>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Auth {
    /// Loads the token hashes; creates the admin token on first start.
    pub async fn bootstrap(repo: &Repo, data_dir: &Path) -> Result<Self, StartError> {
        let range = repo.store().range(keys::TOKENS).await?;
        let mut tokens = HashMap::new();
        for kv in &range.kvs {
            let info: TokenInfo = crate::repo::decode(&kv.key, &kv.value)?;
            tokens.insert(kv.key.trim_start_matches(keys::TOKENS).to_owned(), info);
        }
        if tokens.is_empty() {
            let mut raw = [0u8; 32];
            rand::rng().fill_bytes(&mut raw);
            let token = format!("otr_{}", hex::encode(raw));
            let info = TokenInfo {
                name: "admin".into(),
                tenant: None,
                role: Role::Admin,
                created_at: OffsetDateTime::now_utc(),
            };
            let path = data_dir.join("admin.token");
            let write = || {
                let mut f =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
                f.write_all(token.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()
            };
            write().map_err(|source| StartError::Token { path: path.clone(), source })?;
            let h = hash(&token);
            repo.commit(vec![], vec![outrider_store::Op::put(keys::token(&h), encode(&info)?)], vec![]).await?;
            tracing::info!(path = %path.display(), "created the admin token");
            tokens.insert(h, info);
        }
        Ok(Self { tokens: Arc::new(RwLock::new(tokens)) })
    }

    /// The caller behind an `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Result<Principal, Error> {
        let header = header.ok_or_else(|| Error::unauthenticated("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::unauthenticated("Authorization must be \"Bearer <token>\""))?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        // Comparing hashes by map lookup does not leak the token through timing.
        tokens
            .get(&hash(token))
            .map(|i| Principal { name: i.name.clone(), tenant: i.tenant.clone(), role: i.role })
            .ok_or_else(|| Error::unauthenticated("unknown token"))
    }
}
