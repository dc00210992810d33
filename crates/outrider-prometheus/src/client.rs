//! The HTTP side: requests to `/api/v1/query` and `/api/v1/query_range`, bounded answers.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use time::OffsetDateTime;

use crate::{
    Error, Sample, Series,
    response::{Envelope, Reading, truncated},
};

/// The most points per series Prometheus computes for a range query; a step that would
/// give more is refused before it is sent.
pub const MAX_POINTS_PER_SERIES: u64 = 11_000;

/// Bounds on one answer; over any of them the call fails with [`Error::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of body read.
    pub max_body_bytes: usize,
    /// Series (or samples) in a result.
    pub max_series: usize,
    /// Points over all series of a result.
    pub max_points: usize,
}

impl Default for Limits {
    /// 16 MiB, 10,000 series, 1,000,000 points.
    fn default() -> Self {
        Self { max_body_bytes: 16 << 20, max_series: 10_000, max_points: 1_000_000 }
    }
}

/// A client of one Prometheus server's query API. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    limits: Limits,
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:9090`, a path prefix allowed;
    /// `https` is refused until a TLS stack is added); each call fails after `timeout` in all.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, Error> {
        let refuse = |reason: &str| Error::Url { url: base_url.to_owned(), reason: reason.to_owned() };
        let mut base = Url::parse(base_url).map_err(|e| refuse(&e.to_string()))?;
        match base.scheme() {
            "http" => {}
            // No TLS stack is compiled in yet (reqwest's `rustls` feature would add it).
            "https" => return Err(refuse("https is not supported yet; use http")),
            _ => return Err(refuse("the scheme must be http")),
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(refuse("no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(refuse("a base URL has no query or fragment"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(refuse("credentials in the URL are not supported"));
        }
        if timeout.is_zero() {
            return Err(refuse("the timeout must be above zero"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| refuse(&e.to_string()))?;
        Ok(Self { http, base, timeout, limits: Limits::default() })
    }

    /// The same client with other [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The base URL, ending with `/`.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `query` evaluated at every `step` from `start` to `end` (`/api/v1/query_range`): one
    /// [`Series`] per label set. Refused before sending when `end` is before `start`, `step`
    /// is zero, or the range has more than [`MAX_POINTS_PER_SERIES`] steps.
    pub async fn query_range(
        &self,
        query: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
        step: Duration,
    ) -> Result<Vec<Series>, Error> {
        if step.is_zero() {
            return Err(Error::Invalid("the step must be above zero".into()));
        }
        let range = Duration::try_from(end - start)
            .map_err(|_| Error::Invalid(format!("the end {end} is before the start {start}")))?;
        let points = range.as_nanos() / step.as_nanos();
        if points > u128::from(MAX_POINTS_PER_SERIES) {
            return Err(Error::StepTooSmall { range, step, points, max: MAX_POINTS_PER_SERIES });
        }
        let form = [
            ("query", query.to_owned()),
            ("start", unix_seconds(start)),
            ("end", unix_seconds(end)),
            ("step", step.as_secs_f64().to_string()),
        ];
        let (url, data) = self.post("api/v1/query_range", &form).await?;
        Reading { url: &url, limits: &self.limits }.matrix(data)
    }

    /// `query` evaluated at `at` (`/api/v1/query`), which must give an instant vector: one
    /// [`Sample`] per label set.
    pub async fn query(&self, query: &str, at: OffsetDateTime) -> Result<Vec<Sample>, Error> {
        let form = [("query", query.to_owned()), ("time", unix_seconds(at))];
        let (url, data) = self.post("api/v1/query", &form).await?;
        Reading { url: &url, limits: &self.limits }.vector(data)
    }

    /// Posts `form` to `path` under the base URL; the endpoint and the answer's `data`.
    async fn post(&self, path: &str, form: &[(&str, String)]) -> Result<(String, crate::response::Data), Error> {
        let url = self.base.join(path).map_err(|e| Error::Url { url: self.base.to_string(), reason: e.to_string() })?;
        let shown = url.to_string();
        tracing::debug!(url = %shown, query = %form[0].1, "prometheus query");
        let transport = |source: reqwest::Error| {
            if source.is_timeout() {
                Error::Timeout { url: shown.clone(), timeout: self.timeout }
            } else {
                Error::Unreachable { url: shown.clone(), source }
            }
        };
        let mut response = self.http.post(url).form(form).send().await.map_err(transport)?;
        let status = response.status();
        let too_large =
            || Error::TooLarge { url: shown.clone(), what: format!("more than {} bytes", self.limits.max_body_bytes) };
        // Compared only: a length announced by the server is never allocated.
        if response.content_length().is_some_and(|n| n > self.limits.max_body_bytes as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.limits.max_body_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Envelope>(&body) {
            Ok(e) if e.status == "success" && status.is_success() => match e.data {
                Some(data) => Ok((shown, data)),
                None => Err(Error::BadValue { url: shown, what: "no data".into() }),
            },
            Ok(e) if e.status == "error" => Err(Error::Prometheus {
                status: status.as_u16(),
                error_type: e.error_type.unwrap_or_default(),
                message: e.error.unwrap_or_default(),
            }),
            Ok(_) | Err(_) if !status.is_success() => Err(status_error(shown, status, &body)),
            Ok(e) => Err(Error::BadValue { url: shown, what: format!("the status {:?}", truncated(&e.status, 40)) }),
            Err(source) => Err(Error::BadJson { url: shown, source }),
        }
    }
}

/// An HTTP error without a Prometheus error body.
fn status_error(url: String, status: StatusCode, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(1024)]);
    Error::Status { url, status: status.as_u16(), excerpt: truncated(text.trim(), 200) }
}

/// `t` as unix seconds with milliseconds (`1700000000.250`), as the API takes times.
fn unix_seconds(t: OffsetDateTime) -> String {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}
