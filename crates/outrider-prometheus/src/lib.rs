//! A small client of the Prometheus HTTP query API, for the judge that compares upgraded
//! instances against the others, and the query templates it runs.
//!
//! - [`Client::new`]`(base_url, timeout)` takes the server's base URL (`http://host:9090`,
//!   or with a path prefix); plain `http` only for now (no TLS stack is compiled in, so
//!   `https` is refused with [`Error::Url`] rather than failing at the first query).
//! - [`Client::query_range`]`(query, start, end, step) -> Vec<`[`Series`]`>` (`/api/v1/query_range`,
//!   a matrix) and [`Client::query`]`(query, at) -> Vec<`[`Sample`]`>` (`/api/v1/query`, an
//!   instant vector). Queries are sent as a form (`POST`), so long ones fit.
//! - Responses are bounded ([`Limits`]: body bytes, series, points); nothing is allocated
//!   by a number read from a response. A range whose step would give more than
//!   [`MAX_POINTS_PER_SERIES`] points is refused before it is sent, as Prometheus would.
//! - [`expand`]`(template, &`[`Vars`]`)` fills a query template's placeholders: `${service}`,
//!   `${sidecar}`, `${version}`, `${instance}`, `${plan}` are escaped for a PromQL
//!   double-quoted string, `${window}` is a PromQL duration (`5m`, `90s`) and `${instances}`
//!   a regular expression matching exactly the given instance ids, for
//!   `instance=~"${instances}"`.
//! - Every failure is an [`Error`]: unreachable, timeout, HTTP status, a Prometheus error
//!   (`errorType`, `error`), bad JSON, an unexpected result type, a response too large, a
//!   step too small, a template that cannot be filled.
//!
//! Sample values are Prometheus's strings (`"1.5"`, `"NaN"`, `"+Inf"`) as `f64`; timestamps
//! (unix seconds, fractional) as [`OffsetDateTime`] to the millisecond.

mod client;
mod error;
mod response;
mod template;

use std::collections::BTreeMap;

use time::OffsetDateTime;

pub use client::{Client, Limits, MAX_POINTS_PER_SERIES};
pub use error::Error;
pub use template::{Vars, expand, promql_duration};

/// One series of a range query: its labels (the metric name under `__name__`, when the
/// query keeps it) and its points in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label names and values.
    pub labels: BTreeMap<String, String>,
    /// (time, value) pairs.
    pub points: Vec<(OffsetDateTime, f64)>,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values.
    pub labels: BTreeMap<String, String>,
    /// The evaluation time.
    pub at: OffsetDateTime,
    /// The value.
    pub value: f64,
}
