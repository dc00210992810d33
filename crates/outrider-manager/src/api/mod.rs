//! The REST API of PRODUCT.md §3: JSON over HTTP under `/api/v1`, bearer-authenticated.

mod authz;
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
mod tokens;
mod webhooks;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, header::AUTHORIZATION},
    middleware::{self, Next},
    response::Response,
    routing::{MethodFilter, get, on},
};
use outrider_model::validate_name;

pub use authz::{Need, Rule};
pub(crate) use error::body as error_body;

pub use crate::state::AppState;
use crate::{Error, keys, repo::Repo};

/// Largest request body accepted (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

/// Where the REST API is mounted.
const API_PREFIX: &str = "/api/v1";

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
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().trim_start_matches(API_PREFIX));
    authz::authorize(&principal, req.method().as_str(), route, req.uri().path().trim_start_matches(API_PREFIX))?;
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

/// Registers every REST route under `/api/v1` and writes the same list as [`ROUTES`], the
/// authorization table: a route cannot exist without saying what it needs.
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path, $need:ident;)*) => {
        /// Every REST route under `/api/v1` (method, path template) and what it needs.
        pub const ROUTES: &[Rule] = &[$(Rule { method: stringify!($method), path: $path, need: Need::$need }),*];

        fn api_routes(router: Router<AppState>) -> Router<AppState> {
            router$(.route($path, on(MethodFilter::$method, $handler)))*
        }
    };
}

api_routes! {
    GET "/tenants" => tenants::list, Viewer;
    POST "/tenants" => tenants::create, AllTenantAdmin;
    GET "/tokens" => tokens::list, Admin;
    POST "/tokens" => tokens::create, Admin;
    DELETE "/tokens/{token}" => tokens::revoke, Admin;
    GET "/tenants/{tenant}/sidecars" => sidecars::list, Viewer;
    POST "/tenants/{tenant}/sidecars" => sidecars::create, Admin;
    GET "/tenants/{tenant}/sidecars/{sidecar}" => sidecars::get_one, Viewer;
    GET "/tenants/{tenant}/sidecars/{sidecar}/versions" => sidecars::list_versions, Viewer;
    POST "/tenants/{tenant}/sidecars/{sidecar}/versions" => sidecars::create_version, Admin;
    GET "/tenants/{tenant}/sidecars/{sidecar}/versions/{version}" => sidecars::get_version, Viewer;
    POST "/tenants/{tenant}/sidecars/{sidecar}/versions/{version}/admit" => sidecars::admit, Admin;
    // Marking a version defective only stops things.
    POST "/tenants/{tenant}/sidecars/{sidecar}/versions/{version}/defective" => sidecars::defective, Operator;
    GET "/tenants/{tenant}/sidecars/{sidecar}/distribution" => sidecars::distribution, Viewer;
    GET "/tenants/{tenant}/services" => services::list, Viewer;
    POST "/tenants/{tenant}/services" => services::create, Admin;
    GET "/tenants/{tenant}/services/{service}" => services::get_one, Viewer;
    PUT "/tenants/{tenant}/services/{service}" => services::replace, Admin;
    GET "/tenants/{tenant}/services/{service}/sidecars" => services::list_bindings, Viewer;
    PUT "/tenants/{tenant}/services/{service}/sidecars/{sidecar}" => services::bind, Operator;
    GET "/tenants/{tenant}/instances" => instances::list, Viewer;
    DELETE "/tenants/{tenant}/instances/{instance}" => instances::delete, Admin;
    GET "/tenants/{tenant}/events" => events::list, Viewer;
    GET "/tenants/{tenant}/plans" => plans::list, Viewer;
    POST "/tenants/{tenant}/plans" => plans::create, Operator;
    POST "/tenants/{tenant}/plans/simulate" => plans::simulate, Operator;
    GET "/tenants/{tenant}/plans/{plan}" => plans::get_one, Viewer;
    DELETE "/tenants/{tenant}/plans/{plan}" => plans::delete, Operator;
    POST "/tenants/{tenant}/plans/{plan}/{action}" => plans::action, Operator;
    GET "/tenants/{tenant}/freezes" => freezes::list, Viewer;
    POST "/tenants/{tenant}/freezes" => freezes::create, Operator;
    DELETE "/tenants/{tenant}/freezes/{freeze}" => freezes::delete, Operator;
    GET "/tenants/{tenant}/webhooks" => webhooks::list, Viewer;
    POST "/tenants/{tenant}/webhooks" => webhooks::create, Admin;
    GET "/tenants/{tenant}/webhooks/{webhook}" => webhooks::get_one, Viewer;
    DELETE "/tenants/{tenant}/webhooks/{webhook}" => webhooks::delete, Admin;
}

/// The REST router (without the gRPC service).
pub fn router(state: AppState) -> Router {
    let api = api_routes(Router::new())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .nest(API_PREFIX, api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    /// Every REST route goes through `api_routes!`, so none exists without an authorization
    /// rule: the only other routes of this file are the cluster-level ones outside `/api/v1`.
    #[test]
    fn routes_are_registered_only_through_the_authorization_table() {
        let code = include_str!("mod.rs").split("#[cfg(test)]").next().unwrap_or_default();
        let (_, after_macro) = code.split_once("router$(.route(").expect("the macro registers routes");
        for line in after_macro.lines().filter(|l| l.contains(".route")) {
            let cluster = ["\"/healthz\"", "\"/readyz\"", "\"/metrics\""].iter().any(|p| line.contains(p));
            assert!(cluster, "a route outside api_routes!: {line}");
        }
    }
}
