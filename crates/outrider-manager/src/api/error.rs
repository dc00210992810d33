//! The API edge of [`Error`]: the HTTP status of each code and the JSON error body
//! `{"error": {"code", "message"}}`.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::Error;

/// The HTTP status that answers `e`.
pub fn status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::MalformedJson(_) => StatusCode::BAD_REQUEST,
        Error::UnexpectedJson(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::NotFound(_) | Error::NoSuchPath => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Error::Conflict(_) | Error::FailedPrecondition(_) => StatusCode::CONFLICT,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::UriTooLong(_) => StatusCode::URI_TOO_LONG,
        Error::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body that answers `e`.
pub fn body(e: &Error) -> serde_json::Value {
    json!({"error": {"code": e.code(), "message": e.to_string()}})
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (status(&self), Json(body(&self))).into_response()
    }
}
