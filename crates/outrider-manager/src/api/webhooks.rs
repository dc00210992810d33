//! Webhooks: `POST/GET /webhooks`, `GET/DELETE /webhooks/{id}`. The secret is stored, never
//! shown; `GET /webhooks/{id}` adds the latest delivery attempts.

use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{NewWebhook, Webhook, WebhookDetail, validate_name};
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

use super::{
    Actor, AppState,
    extract::{ApiJson, ApiPath},
    require_tenant,
};
use crate::{Error, keys, repo::NewEvent, webhooks::StoredWebhook};

/// Most webhooks of one tenant.
pub const MAX_WEBHOOKS: u64 = 100;

fn event(tenant: &str, kind: &'static str, actor: &str, w: &Webhook) -> NewEvent {
    NewEvent::new(tenant, kind, actor, format!("webhook/{}", w.id))
        .detail(serde_json::json!({"url": w.url, "events": w.events}))
}

/// `POST /webhooks`.
pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<NewWebhook>,
) -> Result<(StatusCode, Json<Webhook>), Error> {
    require_tenant(&s.repo, &tenant).await?;
    body.validate()?;
    reqwest::Url::parse(&body.url).map_err(|e| Error::invalid(format!("url: {e}")))?;
    if s.repo.store().count(&keys::webhooks(&tenant)).await? >= MAX_WEBHOOKS {
        return Err(Error::precondition(format!("tenant {tenant:?} has {MAX_WEBHOOKS} webhooks already; delete one")));
    }
    let now = OffsetDateTime::now_utc();
    let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut events = body.events;
    events.sort();
    events.dedup();
    let webhook = Webhook {
        id: format!("w{ms:x}{:04x}", rand::random::<u16>()),
        url: body.url,
        events,
        secret_set: true,
        created_by: actor.clone(),
        created_at: now,
    };
    let stored = StoredWebhook { webhook: webhook.clone(), secret: body.secret };
    let parents = [(keys::tenant(&tenant), format!("tenant {tenant:?}"))];
    let ev = event(&tenant, "webhook.created", &actor, &webhook);
    let key = keys::webhook(&tenant, &webhook.id);
    s.repo.create(&key, &stored, &parents, &format!("webhook {}", webhook.id), vec![ev]).await?;
    Ok((StatusCode::CREATED, Json(webhook)))
}

/// `GET /webhooks`.
pub async fn list(State(s): State<AppState>, ApiPath(tenant): ApiPath<String>) -> Result<Json<Vec<Webhook>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    let stored: Vec<StoredWebhook> = s.repo.list(&keys::webhooks(&tenant)).await?;
    Ok(Json(stored.into_iter().map(|w| w.webhook).collect()))
}

/// `GET /webhooks/{id}`: the webhook and its latest delivery attempts.
pub async fn get_one(
    State(s): State<AppState>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<Json<WebhookDetail>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("webhook", &id)?;
    let (w, _) = s
        .repo
        .get::<StoredWebhook>(&keys::webhook(&tenant, &id))
        .await?
        .ok_or_else(|| Error::not_found(format!("webhook {id:?}")))?;
    Ok(Json(WebhookDetail { webhook: w.webhook, attempts: s.webhooks.attempts(&tenant, &id) }))
}

/// `DELETE /webhooks/{id}`.
pub async fn delete(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("webhook", &id)?;
    let key = keys::webhook(&tenant, &id);
    let (w, rev) =
        s.repo.get::<StoredWebhook>(&key).await?.ok_or_else(|| Error::not_found(format!("webhook {id:?}")))?;
    let ev = event(&tenant, "webhook.deleted", &actor, &w.webhook);
    let r = s.repo.commit(vec![Compare::unchanged(&key, rev)], vec![Op::delete(&key)], vec![ev]).await?;
    if !r.succeeded {
        return Err(Error::conflict("the webhook changed meanwhile; retry"));
    }
    Ok(StatusCode::NO_CONTENT)
}
