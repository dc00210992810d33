//! The REST API of PRODUCT.md §3: JSON over HTTP under `/api/v1`, bearer-authenticated.

mod error;
mod events;
mod extract;
mod freezes;
mod health;
mod instances;
mod plans;
mod services;
mod sidecars;
mod tenants;
mod webhooks;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderValue, header::AUTHORIZATION},
    middleware::{self, Next},
    response::Response,
    routing::{get, post, put},
};
use outrider_model::validate_name;

pub(crate) use error::body as error_body;

pub use crate::state::AppState;
use crate::{Error, keys, repo::Repo};

/// Largest request body accepted (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

/// Longest reason (of an action, a defect) in bytes.
pub const MAX_REASON: usize = 1_000;

/// The authenticated caller, recorded as the actor of events.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, Error> {
    state.metrics.http_requests.inc();
    if req.headers().get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(Error::unauthenticated("send one Authorization header"));
    }
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::to_str).transpose().ok().flatten();
    let principal = state.auth.check(header)?;
    req.extensions_mut().insert(Actor(principal.name.clone()));
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

/// Checks a tenant name and that the tenant exists.
pub async fn require_tenant(repo: &Repo, tenant: &str) -> Result<(), Error> {
    validate_name("tenant", tenant)?;
    if repo.exists(&keys::tenant(tenant)).await? { Ok(()) } else { Err(Error::not_found(format!("tenant {tenant:?}"))) }
}

async fn unknown_route() -> Error {
    Error::NoSuchPath
}

async fn wrong_method() -> Error {
    Error::MethodNotAllowed
}

/// The REST router (without the gRPC service).
pub fn router(state: AppState) -> Router {
    let t = "/tenants/{tenant}";
    let api = Router::new()
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route(&format!("{t}/sidecars"), get(sidecars::list).post(sidecars::create))
        .route(&format!("{t}/sidecars/{{sidecar}}"), get(sidecars::get_one))
        .route(
            &format!("{t}/sidecars/{{sidecar}}/versions"),
            get(sidecars::list_versions).post(sidecars::create_version),
        )
        .route(&format!("{t}/sidecars/{{sidecar}}/versions/{{version}}"), get(sidecars::get_version))
        .route(&format!("{t}/sidecars/{{sidecar}}/versions/{{version}}/admit"), post(sidecars::admit))
        .route(&format!("{t}/sidecars/{{sidecar}}/versions/{{version}}/defective"), post(sidecars::defective))
        .route(&format!("{t}/sidecars/{{sidecar}}/distribution"), get(sidecars::distribution))
        .route(&format!("{t}/services"), get(services::list).post(services::create))
        .route(&format!("{t}/services/{{service}}"), get(services::get_one).put(services::replace))
        .route(&format!("{t}/services/{{service}}/sidecars"), get(services::list_bindings))
        .route(&format!("{t}/services/{{service}}/sidecars/{{sidecar}}"), put(services::bind))
        .route(&format!("{t}/instances"), get(instances::list))
        .route(&format!("{t}/instances/{{instance}}"), axum::routing::delete(instances::delete))
        .route(&format!("{t}/events"), get(events::list))
        .route(&format!("{t}/plans"), get(plans::list).post(plans::create))
        .route(&format!("{t}/plans/simulate"), post(plans::simulate))
        .route(&format!("{t}/plans/{{plan}}"), get(plans::get_one).delete(plans::delete))
        .route(&format!("{t}/plans/{{plan}}/{{action}}"), post(plans::action))
        .route(&format!("{t}/freezes"), get(freezes::list).post(freezes::create))
        .route(&format!("{t}/freezes/{{freeze}}"), axum::routing::delete(freezes::delete))
        .route(&format!("{t}/webhooks"), get(webhooks::list).post(webhooks::create))
        .route(&format!("{t}/webhooks/{{webhook}}"), get(webhooks::get_one).delete(webhooks::delete))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}
