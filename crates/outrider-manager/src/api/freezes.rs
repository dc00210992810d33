//! Change freezes: while one is in force, no plan changes anything in its scope.

use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{Freeze, NewFreeze, validate_name};
use outrider_store::{Compare, Op};
use time::OffsetDateTime;

use super::{
    Actor, AppState,
    extract::{ApiJson, ApiPath},
    require_tenant,
};
use crate::{Error, keys, repo::NewEvent};

fn event(tenant: &str, kind: &'static str, actor: String, f: &Freeze) -> NewEvent {
    NewEvent::new(tenant, kind, &actor, format!("freeze/{}", f.id))
        .reason(f.reason.clone())
        .detail(serde_json::to_value(f).unwrap_or_default())
}

/// `POST /freezes`.
pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(body): ApiJson<NewFreeze>,
) -> Result<(StatusCode, Json<Freeze>), Error> {
    require_tenant(&s.repo, &tenant).await?;
    body.validate()?;
    for service in &body.services {
        if !s.repo.exists(&keys::service(&tenant, service)).await? {
            return Err(Error::invalid(format!("services: service {service:?} does not exist")));
        }
    }
    let ms = u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let f = Freeze {
        id: format!("f{ms:x}{:04x}", rand::random::<u16>()),
        from: body.from,
        to: body.to,
        reason: body.reason,
        services: body.services,
    };
    let parents = [(keys::tenant(&tenant), format!("tenant {tenant:?}"))];
    let ev = event(&tenant, "freeze.created", actor, &f);
    s.repo.create(&keys::freeze(&tenant, &f.id), &f, &parents, &format!("freeze {}", f.id), vec![ev]).await?;
    s.wake.notify_one();
    Ok((StatusCode::CREATED, Json(f)))
}

/// `GET /freezes`.
pub async fn list(State(s): State<AppState>, ApiPath(tenant): ApiPath<String>) -> Result<Json<Vec<Freeze>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(s.repo.list(&keys::freezes(&tenant)).await?))
}

/// `DELETE /freezes/{id}`.
pub async fn delete(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("freeze", &id)?;
    let key = keys::freeze(&tenant, &id);
    let (f, rev) = s.repo.get::<Freeze>(&key).await?.ok_or_else(|| Error::not_found(format!("freeze {id:?}")))?;
    let ev = event(&tenant, "freeze.deleted", actor, &f);
    let r = s.repo.commit(vec![Compare::unchanged(&key, rev)], vec![Op::delete(&key)], vec![ev]).await?;
    if !r.succeeded {
        return Err(Error::conflict("the freeze changed meanwhile; retry"));
    }
    s.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
