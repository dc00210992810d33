//! Named tokens as a domain: issue, list, revoke. The store keeps `auth/tokens/{sha256}` →
//! [`TokenInfo`] (never the secret) and `auth/token-names/{name}` → that hash, so a name is
//! unique and a token is revoked by name. Events of a tenant's token go to that tenant's log,
//! those of all-tenant tokens to the `default` tenant's.

use std::collections::HashMap;

use outrider_model::{DEFAULT_TENANT, IssuedToken, NewToken, Token};
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

use crate::{
    Error,
    auth::{Auth, Principal, TokenInfo, hash, new_secret},
    fleet::Fleet,
    keys,
    repo::{NewEvent, Repo, encode},
};

/// Names the manager itself records as actors; no token may take them.
const RESERVED: [&str; 2] = ["manager", "executor"];

fn listed(info: &TokenInfo) -> Token {
    Token { name: info.name.clone(), tenant: info.tenant.clone(), role: info.role, created_at: info.created_at }
}

fn event(kind: &'static str, actor: &str, info: &TokenInfo) -> NewEvent {
    let tenant = info.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    NewEvent::new(tenant, kind, actor, format!("token/{}", info.name))
        .detail(serde_json::json!({"tenant": info.tenant, "role": info.role}))
}

/// Stores a token under `hash` unless its name is taken (`false`) or its tenant is missing
/// (`false` too: the caller tells which).
pub(crate) async fn store(repo: &Repo, hash: &str, info: &TokenInfo, events: Vec<NewEvent>) -> Result<bool, Error> {
    let name_key = keys::token_name(&info.name);
    let mut compare = vec![Compare::absent(&name_key), Compare::absent(keys::token(hash))];
    if let Some(t) = &info.tenant {
        compare.push(Compare::Exists(keys::tenant(t)));
    }
    let ops = vec![Op::put(keys::token(hash), encode(info)?), Op::put(name_key, encode(&hash)?)];
    Ok(repo.commit(compare, ops, events).await?.succeeded)
}

/// Writes the name index of tokens stored before it existed (the first admin token).
pub(crate) async fn index_names(repo: &Repo, tokens: &HashMap<String, TokenInfo>) -> Result<(), Error> {
    for (h, info) in tokens {
        let key = keys::token_name(&info.name);
        repo.commit(vec![Compare::absent(&key)], vec![Op::put(key, encode(h)?)], vec![]).await?;
    }
    Ok(())
}

/// Issues a token for `by`: an admin bound to a tenant issues tokens of that tenant only.
pub async fn issue(repo: &Repo, auth: &Auth, by: &Principal, body: NewToken) -> Result<IssuedToken, Error> {
    body.validate()?;
    if RESERVED.contains(&body.name.as_str()) {
        return Err(Error::invalid(format!("name: {:?} is reserved for the manager's own events", body.name)));
    }
    if let Some(own) = &by.tenant
        && body.tenant.as_ref() != Some(own)
    {
        return Err(Error::forbidden(format!(
            "{:?} is bound to tenant {own:?}: it issues tokens of {own:?} only",
            by.name
        )));
    }
    let secret = new_secret();
    let h = hash(&secret);
    let info =
        TokenInfo { name: body.name, tenant: body.tenant, role: body.role, created_at: OffsetDateTime::now_utc() };
    let created = event("token.created", &by.name, &info);
    if !store(repo, &h, &info, vec![created]).await? {
        if let Some(t) = &info.tenant
            && !repo.exists(&keys::tenant(t)).await?
        {
            return Err(Error::not_found(format!("tenant {t:?}")));
        }
        return Err(Error::conflict(format!(
            "a token named {:?} exists already; revoke it or choose another name",
            info.name
        )));
    }
    auth.insert(h, info.clone());
    Ok(IssuedToken { info: listed(&info), token: secret })
}

/// The tokens `by` may manage, by name.
pub async fn list(repo: &Repo, by: &Principal) -> Result<Vec<Token>, Error> {
    let stored: Vec<TokenInfo> = repo.list(keys::TOKENS).await?;
    let mut out: Vec<Token> =
        stored.iter().filter(|i| by.tenant.is_none() || i.tenant == by.tenant).map(listed).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Revokes token `name` for `by`: at once on this manager (its open agent streams end), on the
/// others as their watch brings the deletion.
pub async fn revoke(repo: &Repo, auth: &Auth, fleet: &Fleet, by: &Principal, name: &str) -> Result<Token, Error> {
    outrider_model::validate_name("token", name)?;
    let missing = || Error::not_found(format!("token {name:?}"));
    let name_key = keys::token_name(name);
    let (h, name_rev) = repo.get::<String>(&name_key).await?.ok_or_else(missing)?;
    let token_key = keys::token(&h);
    let (info, token_rev) = repo.get::<TokenInfo>(&token_key).await?.ok_or_else(missing)?;
    // A tenant's admin does not learn of other tenants' tokens.
    if by.tenant.is_some() && info.tenant != by.tenant {
        return Err(missing());
    }
    let compare = vec![Compare::unchanged(&name_key, name_rev), Compare::unchanged(&token_key, token_rev)];
    let ops = vec![Op::delete(&name_key), Op::delete(&token_key)];
    let r = repo.commit(compare, ops, vec![event("token.revoked", &by.name, &info)]).await?;
    if !r.succeeded {
        return Err(Error::conflict(format!("token {name:?} changed meanwhile; retry")));
    }
    auth.remove(&h);
    fleet.close_opened_by(name);
    Ok(listed(&info))
}
