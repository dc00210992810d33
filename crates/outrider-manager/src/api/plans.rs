//! `…/plans`: parse, call the plans domain (`crate::plans`), render.

use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{Plan, PlanSpec, Simulation, validate_name, validate_text};
use serde::Deserialize;

use super::{
    Actor, AppState, MAX_REASON,
    extract::{ApiJson, ApiPath, ApiQuery, OptionalJson},
    require_tenant,
};
use crate::{
    Error,
    plans::{self, Action},
};

/// `POST /plans`.
pub async fn create(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(spec): ApiJson<PlanSpec>,
) -> Result<(StatusCode, Json<Plan>), Error> {
    require_tenant(&s.repo, &tenant).await?;
    let plan = plans::create(&s, &tenant, &actor, spec).await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// Query of `POST /plans/simulate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimulateQuery {
    /// Deploys per instance and day assumed for on-deploy phases.
    deploys_per_day: Option<f64>,
}

/// `POST /plans/simulate[?deploys_per_day=R]`: the predicted schedule; nothing changes.
pub async fn simulate(
    State(s): State<AppState>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(query): ApiQuery<SimulateQuery>,
    ApiJson(spec): ApiJson<PlanSpec>,
) -> Result<Json<Simulation>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(plans::simulate(&s, &tenant, &spec, query.deploys_per_day).await?))
}

/// `GET /plans`, newest first.
pub async fn list(State(s): State<AppState>, ApiPath(tenant): ApiPath<String>) -> Result<Json<Vec<Plan>>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(plans::list(&s, &tenant).await?))
}

/// `GET /plans/{id}`.
pub async fn get_one(
    State(s): State<AppState>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<Json<Plan>, Error> {
    require_tenant(&s.repo, &tenant).await?;
    Ok(Json(plans::get(&s, &tenant, &id).await?))
}

/// `DELETE /plans/{id}`: a plan that is done.
pub async fn delete(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, Error> {
    require_tenant(&s.repo, &tenant).await?;
    plans::delete(&s, &tenant, &id, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    #[serde(default)]
    reason: String,
}

/// `POST /plans/{id}/{pause|resume|abort|rollback|approve}`; the body (`{"reason": …}`) is
/// optional.
pub async fn action(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiPath((tenant, id, action)): ApiPath<(String, String, String)>,
    OptionalJson(body): OptionalJson<ActionBody>,
) -> Result<Json<Plan>, Error> {
    validate_text("reason", &body.reason, MAX_REASON, false)?;
    require_tenant(&s.repo, &tenant).await?;
    validate_name("plan", &id)?;
    let action: Action = action.parse()?;
    Ok(Json(plans::act(&s, &tenant, &id, action, &body.reason, &actor).await?))
}
