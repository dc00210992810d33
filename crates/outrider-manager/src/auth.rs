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

use outrider_store::WatchEvent;

use crate::{Error, StartError, keys, repo::Repo};

pub use outrider_model::Role;

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

impl Principal {
    /// Whether it may see the objects of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// Whether it may register an instance of `tenant` on the sync stream (and then report
    /// for it): agents of that tenant or of all, and admins (the demo, `outrider sim` and
    /// `outrider bench` use the admin token). Every way an agent is identified — a token, a
    /// client certificate — goes through this one check.
    pub fn may_register(&self, tenant: &str) -> Result<(), Error> {
        if !matches!(self.role, Role::Agent | Role::Admin) {
            return Err(Error::forbidden(format!(
                "token {:?} has role {}; the sync stream needs role agent (or admin)",
                self.name, self.role
            )));
        }
        if !self.sees(tenant) {
            return Err(Error::forbidden(format!(
                "{:?} is bound to tenant {:?} and may not register instances of tenant {tenant:?}",
                self.name,
                self.tenant.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    }
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

/// The token checker: the hashes of every token, kept current by the manager's store watch
/// (so a token created or revoked through any manager counts on every one at once).
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<RwLock<HashMap<String, TokenInfo>>>,
}

/// The SHA-256 (hex) of a token's secret: what the store keeps.
pub(crate) fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token secret (`otr_` and 32 random bytes in hex).
pub(crate) fn new_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    format!("otr_{}", hex::encode(raw))
}

/// Every stored token by hash.
async fn load(repo: &Repo) -> Result<HashMap<String, TokenInfo>, Error> {
    let range = repo.store().range(keys::TOKENS).await?;
    let mut tokens = HashMap::new();
    for kv in &range.kvs {
        let info: TokenInfo = crate::repo::decode(&kv.key, &kv.value)?;
        tokens.insert(kv.key.trim_start_matches(keys::TOKENS).to_owned(), info);
    }
    Ok(tokens)
}

impl Auth {
    /// Loads the token hashes; creates the admin token on first start.
    pub async fn bootstrap(repo: &Repo, data_dir: &Path) -> Result<Self, StartError> {
        let mut tokens = load(repo).await?;
        crate::tokens::index_names(repo, &tokens).await?;
        if tokens.is_empty() {
            let token = new_secret();
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
            if crate::tokens::store(repo, &h, &info, vec![]).await? {
                tracing::info!(path = %path.display(), "created the admin token");
                tokens.insert(h, info);
            } else {
                // Another manager on the same store created it first: use the stored tokens.
                let _ = std::fs::remove_file(&path);
                tokens = load(repo).await?;
                tracing::info!("the admin token was created by another manager");
            }
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

    /// Applies a watched change of a key under [`keys::TOKENS`]; returns the name of a token
    /// that was revoked by it.
    pub fn apply(&self, event: &WatchEvent) -> Option<String> {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        match event {
            WatchEvent::Put(kv) => {
                match crate::repo::decode::<TokenInfo>(&kv.key, &kv.value) {
                    Ok(info) => {
                        tokens.insert(kv.key.trim_start_matches(keys::TOKENS).to_owned(), info);
                    }
                    Err(e) => tracing::error!(key = %kv.key, error = %e, "unreadable token record ignored"),
                }
                None
            }
            WatchEvent::Delete { key, .. } => tokens.remove(key.trim_start_matches(keys::TOKENS)).map(|i| i.name),
        }
    }

    /// Replaces every token with what the store holds (after a watch fell behind); returns the
    /// names of the tokens that are gone.
    pub async fn reload(&self, repo: &Repo) -> Result<Vec<String>, Error> {
        let fresh = load(repo).await?;
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let gone = tokens.iter().filter(|(h, _)| !fresh.contains_key(*h)).map(|(_, i)| i.name.clone()).collect();
        *tokens = fresh;
        Ok(gone)
    }

    /// When the token named `name` was issued, while it is valid (a long-lived answer opened
    /// with it ends once this changes: the token was revoked, or replaced by another of the
    /// same name).
    pub fn issued_at(&self, name: &str) -> Option<OffsetDateTime> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.values().find(|i| i.name == name).map(|i| i.created_at)
    }

    /// Records a token this manager just stored (its watch will bring it too).
    pub(crate) fn insert(&self, hash: String, info: TokenInfo) {
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).insert(hash, info);
    }

    /// Forgets a token this manager just revoked (its watch will bring it too).
    pub(crate) fn remove(&self, hash: &str) {
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).remove(hash);
    }
}
