//! Extractors that answer malformed requests with the API's JSON errors.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query, Request, rejection::JsonRejection},
    http::request::Parts,
};
use serde::de::DeserializeOwned;

use crate::Error;

/// A JSON body; malformed JSON, unknown fields, a wrong content type or an oversized body are
/// 4xx JSON errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> Error {
    let text = e.body_text();
    match e {
        JsonRejection::JsonDataError(_) => Error::UnexpectedJson(text),
        JsonRejection::MissingJsonContentType(_) => Error::UnsupportedMediaType(text),
        JsonRejection::BytesRejection(_) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            Error::PayloadTooLarge(text)
        }
        _ => Error::MalformedJson(text),
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|e| Error::invalid(e.body_text()))
    }
}

/// Query parameters; unknown parameters are refused when `T` denies unknown fields.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| Error::invalid(e.body_text()))
    }
}
