//! What can go wrong between a query template and its result.

use std::time::Duration;

/// A failure of a query or of a template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL cannot be used.
    #[error("invalid Prometheus URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The request's parameters are refused before anything is sent.
    #[error("invalid query parameters: {0}")]
    Invalid(String),
    /// A range whose step would give Prometheus too many points per series.
    #[error("a step of {step:?} over {range:?} gives {points} points per series; Prometheus allows {max}")]
    StepTooSmall {
        /// The range, end minus start.
        range: Duration,
        /// The step.
        step: Duration,
        /// Steps in the range.
        points: u128,
        /// The most Prometheus accepts.
        max: u64,
    },
    /// No connection, or the request broke off.
    #[error("cannot reach Prometheus at {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer within the client's timeout.
    #[error("Prometheus at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The endpoint.
        url: String,
        /// The client's timeout.
        timeout: Duration,
    },
    /// Prometheus refused the query (`"status": "error"`), with the HTTP status it came with.
    #[error("Prometheus refused the query (HTTP {status}, {error_type}): {message}")]
    Prometheus {
        /// The HTTP status.
        status: u16,
        /// Its `errorType` (`bad_data`, `timeout`, `execution`, …).
        error_type: String,
        /// Its `error`.
        message: String,
    },
    /// A status other than 2xx without a Prometheus error body (a proxy, a wrong URL).
    #[error("HTTP {status} from {url}: {excerpt}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        excerpt: String,
    },
    /// The body is not the JSON of the query API.
    #[error("the answer of {url} is not the JSON of the query API")]
    BadJson {
        /// The endpoint.
        url: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A value or a timestamp of the answer is unusable.
    #[error("the answer of {url} holds {what}")]
    BadValue {
        /// The endpoint.
        url: String,
        /// What is wrong (`the value "x"`, `the timestamp inf`).
        what: String,
    },
    /// The result is not of the type the call expects.
    #[error("expected a {expected} result, got {got:?}")]
    ResultType {
        /// `matrix` or `vector`.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The answer is over one of the client's [`Limits`](crate::Limits).
    #[error("the answer of {url} is too large: {what}")]
    TooLarge {
        /// The endpoint.
        url: String,
        /// Which limit (`more than 16777216 bytes`, `more than 10000 series`).
        what: String,
    },
    /// A template names a placeholder that does not exist.
    #[error("unknown placeholder ${{{0}}} in the query template")]
    UnknownPlaceholder(String),
    /// A template uses a placeholder that has no value.
    #[error("placeholder ${{{0}}} has no value for this query")]
    MissingValue(&'static str),
    /// A template or a value cannot be used.
    #[error("bad query template: {0}")]
    Template(String),
}
