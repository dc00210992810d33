//! The manager's one error type, and why a manager could not start ([`StartError`]). Each variant carries a stable machine code; the HTTP status
//! is chosen at the API edge (`api::error`) and the gRPC status in the sync service.

use std::{net::SocketAddr, path::PathBuf};

use outrider_model::ValidationError;
use outrider_store::StoreError;

/// Why a manager operation failed: a stable code (see [`Error::code`]) and a message for
/// humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or a value is out of bounds.
    #[error("{0}")]
    InvalidArgument(String),
    /// The body is not well-formed JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is well-formed JSON of the wrong shape (unknown field, wrong type).
    #[error("{0}")]
    UnexpectedJson(String),
    /// The body is larger than the API accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body is not JSON at all (content type).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No such object (the message names it).
    #[error("{0} not found")]
    NotFound(String),
    /// No such API path.
    #[error("no such API path")]
    NoSuchPath,
    /// The path exists, not with this method.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// The object exists already, or changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No or a wrong credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credential is good but its role or tenant does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The store cannot be reached or refused the operation.
    #[error("store: {0}")]
    Unavailable(String),
    /// The request's URI is over the limit.
    #[error("{0}")]
    UriTooLong(String),
    /// The request's headers are over the limit.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The request (its body) did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// A bug or corrupt data.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The stable code clients script against (`not_found`, `conflict`, `invalid_argument`…).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::MalformedJson(_) | Self::UnexpectedJson(_) => "invalid_json",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::NotFound(_) | Self::NoSuchPath => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "unavailable",
            Self::UriTooLong(_) => "uri_too_long",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Internal(_) => "internal",
        }
    }

    /// A malformed request or a value out of bounds.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// `what` does not exist.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    /// The object exists already, or changed meanwhile.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    /// The request is valid but the state does not allow it.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::FailedPrecondition(message.into())
    }

    /// No or a wrong credential.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::Unauthenticated(message.into())
    }

    /// The caller's role or tenant does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    /// A bug or corrupt data.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        Self::Unavailable(e.to_string())
    }
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Prometheus server's URL is refused.
    #[error("cannot use the Prometheus server {url}")]
    Prometheus {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: outrider_prometheus::Error,
    },
    /// The data directory cannot be created.
    #[error("cannot create data dir {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error("cannot open the store {url}")]
    Store {
        /// The store's URL.
        url: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The data directory or one of its files cannot be made private.
    #[error("cannot make {path} private")]
    Private {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The admin token cannot be written.
    #[error("cannot write the admin token {path}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another live manager sharing the store has this manager's name.
    #[error("a live manager named {name:?} already shares this store: give each manager its own --name")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::serve::tls::TlsError),
    /// Reading or writing what the manager starts from failed.
    #[error(transparent)]
    Load(#[from] Error),
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        Self::Load(e.into())
    }
}
