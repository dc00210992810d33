use axum::{Json, extract::State};
use outrider_model::{Instance, InstanceFilter};

use super::{
    AppState,
    extract::{ApiPath, ApiQuery},
    require_tenant,
};
use crate::Error;

pub async fn list(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(filter): ApiQuery<InstanceFilter>,
) -> Result<Json<Vec<Instance>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(s.fleet.list(&tenant, &filter)))
}
