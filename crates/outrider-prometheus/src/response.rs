//! The JSON of the query API (`{"status", "data": {"resultType", "result"}, "errorType",
//! "error"}`) into [`Series`] and [`Sample`]s.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de::IgnoredAny};
use time::OffsetDateTime;

use crate::{Error, Limits, Sample, Series};

/// The envelope of every answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    pub status: String,
    pub data: Option<Data>,
    #[serde(rename = "errorType")]
    pub error_type: Option<String>,
    pub error: Option<String>,
}

/// `data` of a successful answer, by its `resultType`.
#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub(crate) enum Data {
    Matrix(Vec<RawSeries>),
    Vector(Vec<RawSample>),
    Scalar(IgnoredAny),
    String(IgnoredAny),
}

impl Data {
    fn kind(&self) -> &'static str {
        match self {
            Self::Matrix(_) => "matrix",
            Self::Vector(_) => "vector",
            Self::Scalar(_) => "scalar",
            Self::String(_) => "string",
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// Absent for a series of native histograms only.
    #[serde(default)]
    values: Vec<(f64, Value)>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, Value),
}

/// A sample value as Prometheus writes it: a string holding a decimal number, `NaN`,
/// `+Inf` or `-Inf`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value(f64);

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sample value string (\"1.5\", \"NaN\", \"+Inf\")")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Value, E> {
                match text {
                    "NaN" => Ok(Value(f64::NAN)),
                    "+Inf" | "Inf" => Ok(Value(f64::INFINITY)),
                    "-Inf" => Ok(Value(f64::NEG_INFINITY)),
                    t => t
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .map(Value)
                        .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(&truncated(t, 40)), &self)),
                }
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Where an answer came from, for errors, and the limits it must stay within.
pub(crate) struct Reading<'a> {
    pub url: &'a str,
    pub limits: &'a Limits,
}

impl Reading<'_> {
    fn bad(&self, what: String) -> Error {
        Error::BadValue { url: self.url.to_owned(), what }
    }

    fn too_large(&self, what: String) -> Error {
        Error::TooLarge { url: self.url.to_owned(), what }
    }

    fn wrong_type(data: &Data, expected: &'static str) -> Error {
        Error::ResultType { expected, got: data.kind().to_owned() }
    }

    /// A matrix result as series, within the limits.
    pub fn matrix(&self, data: Data) -> Result<Vec<Series>, Error> {
        let Data::Matrix(raw) = data else { return Err(Self::wrong_type(&data, "matrix")) };
        self.count(raw.len(), raw.iter().map(|s| s.values.len()).sum())?;
        raw.into_iter()
            .map(|s| {
                let points =
                    s.values.into_iter().map(|(t, v)| Ok((self.time(t)?, v.0))).collect::<Result<_, Error>>()?;
                Ok(Series { labels: s.metric, points })
            })
            .collect()
    }

    /// A vector result as samples, within the limits.
    pub fn vector(&self, data: Data) -> Result<Vec<Sample>, Error> {
        let Data::Vector(raw) = data else { return Err(Self::wrong_type(&data, "vector")) };
        self.count(raw.len(), raw.len())?;
        raw.into_iter()
            .map(|s| Ok(Sample { labels: s.metric, at: self.time(s.value.0)?, value: s.value.1.0 }))
            .collect()
    }

    /// Checks the number of series and of points against the limits.
    fn count(&self, series: usize, points: usize) -> Result<(), Error> {
        if series > self.limits.max_series {
            return Err(self.too_large(format!("more than {} series", self.limits.max_series)));
        }
        if points > self.limits.max_points {
            return Err(self.too_large(format!("more than {} points", self.limits.max_points)));
        }
        Ok(())
    }

    /// A unix timestamp in (fractional) seconds, to the millisecond.
    fn time(&self, seconds: f64) -> Result<OffsetDateTime, Error> {
        let ms = (seconds * 1000.0).round();
        // Beyond ±2^53 ms an f64 is no longer exact, and far beyond what time supports.
        if !ms.is_finite() || ms.abs() > 9_007_199_254_740_992.0 {
            return Err(self.bad(format!("the timestamp {seconds}")));
        }
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .map_err(|_| self.bad(format!("the timestamp {seconds}")))
    }
}

/// At most `max` characters of `text`, with `…` when cut.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
