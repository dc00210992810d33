//! Named tokens: `POST/GET /tokens`, `DELETE /tokens/{name}` (admins; a tenant's admin sees and
//! manages that tenant's tokens only). The secret is shown once, in the answer to `POST`.

use axum::{Extension, Json, extract::State, http::StatusCode};
use outrider_model::{IssuedToken, NewToken, Token};

use super::{
    AppState,
    extract::{ApiJson, ApiPath},
};
use crate::{Error, auth::Principal, tokens};

/// `POST /tokens`.
pub async fn create(
    State(s): State<AppState>,
    Extension(by): Extension<Principal>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), Error> {
    Ok((StatusCode::CREATED, Json(tokens::issue(&s.repo, &s.auth, &by, body).await?)))
}

/// `GET /tokens`.
pub async fn list(State(s): State<AppState>, Extension(by): Extension<Principal>) -> Result<Json<Vec<Token>>, Error> {
    Ok(Json(tokens::list(&s.repo, &by).await?))
}

/// `DELETE /tokens/{name}`: the revoked token.
pub async fn revoke(
    State(s): State<AppState>,
    Extension(by): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Token>, Error> {
    Ok(Json(tokens::revoke(&s.repo, &s.auth, &s.fleet, &by, &name).await?))
}
