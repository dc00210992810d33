use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{Tenant, validate_name};
use outrider_store::Compare;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{Actor, AppState, extract::ApiJson};
use crate::{
    Error,
    auth::Principal,
    keys,
    repo::{NewEvent, encode},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
}

/// `GET /tenants`: the tenants the caller may see.
pub async fn list(State(s): State<AppState>, Extension(by): Extension<Principal>) -> Result<Json<Vec<Tenant>>, Error> {
    let mut tenants: Vec<Tenant> = s.repo.list(keys::TENANTS).await?;
    tenants.retain(|t| by.sees(&t.name));
    Ok(Json(tenants))
}

pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), Error> {
    validate_name("name", &body.name)?;
    let tenant = Tenant { name: body.name, created_at: OffsetDateTime::now_utc() };
    let key = keys::tenant(&tenant.name);
    let event = NewEvent::new(&tenant.name, "tenant.created", &actor, format!("tenant/{}", tenant.name));
    let put = outrider_store::Op::put(key.clone(), encode(&tenant)?);
    let r = s.repo.commit(vec![Compare::absent(key)], vec![put], vec![event]).await?;
    if !r.succeeded {
        return Err(Error::conflict(format!("tenant {:?} already exists", tenant.name)));
    }
    Ok((StatusCode::CREATED, Json(tenant)))
}
