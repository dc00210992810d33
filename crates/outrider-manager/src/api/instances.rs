//! `…/instances`: the live fleet as the manager sees it.

use axum::{Extension, Json, extract::State};
use outrider_model::{Instance, InstanceFilter, validate_name};

use super::{
    Actor, AppState,
    extract::{ApiPath, ApiQuery},
    require_tenant,
};
use crate::Error;

/// `GET /instances` with filters.
pub async fn list(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(filter): ApiQuery<InstanceFilter>,
) -> Result<Json<Vec<Instance>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(s.fleet.list(&tenant, &filter)))
}

/// `DELETE /instances/{id}`: removes an instance whose agent is not connected.
pub async fn delete(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<Json<Instance>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    validate_name("instance", &id)?;
    Ok(Json(s.fleet.delete(&s.repo, &tenant, &id, &actor).await?))
}
