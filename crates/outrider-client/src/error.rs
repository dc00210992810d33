use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

/// Longest error-body text kept in [`ClientError::Api`] when the body is not the API's error JSON.
const MAX_ERROR_TEXT: usize = 2_000;

/// Why a call to the manager failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The manager answered with a 4xx/5xx status.
    ///
    /// `code` and `message` come from the API's `{"error": {"code", "message"}}` body; when the
    /// body has another shape, `code` is `http_<status>` and `message` is the body text.
    #[error("{code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable error code (`not_found`, `invalid`…).
        code: String,
        /// What went wrong, for the operator.
        message: String,
    },
    /// The request could not be sent, or the answer could not be read (connection refused,
    /// timeout, connection dropped mid-stream).
    #[error("request to the manager failed")]
    Transport(#[source] reqwest::Error),
    /// The manager answered 2xx, but the body is not the expected JSON.
    #[error("cannot decode {what}")]
    Decode {
        /// What was being decoded (`the answer to GET /api/v1/tenants`).
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A local argument was refused before anything was sent (bad manager URL, a name that
    /// cannot be a URL path segment, an empty token file).
    #[error("{0}")]
    InvalidInput(String),
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        Self::Transport(e)
    }
}

impl ClientError {
    /// Whether the error may go away by itself: the manager is unreachable or failing for a
    /// moment (a transport error or a 5xx answer).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport(_)) || self.status().is_some_and(|s| s >= 500)
    }

    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API error code of an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The error for a non-2xx answer with this status and body.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Body {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
            #[serde(default)]
            message: String,
        }
        if let Ok(Body { error }) = serde_json::from_slice::<Body>(body) {
            return Self::Api { status, code: error.code, message: error.message };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no details")
                .to_owned()
        } else {
            truncate(text, MAX_ERROR_TEXT)
        };
        Self::Api { status, code: format!("http_{status}"), message }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_body_is_parsed() {
        let e = ClientError::from_response(404, br#"{"error":{"code":"not_found","message":"no sidecar x"}}"#);
        assert!(
            matches!(&e, ClientError::Api { status: 404, code, message } if code == "not_found" && message == "no sidecar x")
        );
        assert_eq!(e.to_string(), "not_found: no sidecar x");
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.code(), Some("not_found"));
    }

    #[test]
    fn other_bodies_become_http_codes() {
        let e = ClientError::from_response(502, b" bad gateway\n");
        assert_eq!(e.to_string(), "http_502: bad gateway");
        let e = ClientError::from_response(503, b"");
        assert_eq!(e.to_string(), "http_503: Service Unavailable");
        let e = ClientError::from_response(400, br#"{"error":"flat"}"#);
        assert_eq!(e.code(), Some("http_400"));
        assert_eq!(e.to_string(), r#"http_400: {"error":"flat"}"#);
    }

    #[test]
    fn long_bodies_are_cut_on_a_char_boundary() {
        let body = "é".repeat(MAX_ERROR_TEXT);
        let ClientError::Api { message, .. } = ClientError::from_response(500, body.as_bytes()) else {
            panic!("not an API error");
        };
        assert!(message.len() <= MAX_ERROR_TEXT + '…'.len_utf8());
        assert!(message.ends_with('…'));
    }
}
