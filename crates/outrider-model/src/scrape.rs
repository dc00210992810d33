//! What the agent scrapes from a sidecar's own Prometheus endpoint and how it derives the
//! per-instance figures it reports (`SidecarStatus.metrics`), with optional bounds that make
//! up the sidecar's dynamic self-health.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{HumanDuration, ValidationError, validate_text};

/// Bounds of a [`Scrape`] setting.
pub mod limits {
    use std::time::Duration;

    /// Series one sidecar may derive.
    pub const MAX_SERIES: usize = 32;
    /// Bytes of the scrape URL.
    pub const MAX_URL: usize = 2_048;
    /// Bytes of a series, family or label name.
    pub const MAX_NAME: usize = 128;
    /// Bytes of a label value in a matcher.
    pub const MAX_LABEL_VALUE: usize = 256;
    /// Label matchers of one metric reference.
    pub const MAX_MATCHERS: usize = 16;
    /// Shortest scrape interval.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
    /// Longest scrape interval.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
    /// Largest `for` of a bound.
    pub const MAX_FOR: u32 = 1_000;
}

/// How the agent scrapes a sidecar's Prometheus text endpoint and what it derives from it.
/// Every `interval` the agent GETs `url` (placeholders as in commands, `${label.port}`)
/// from the running generation, within `timeout`, and computes each series over the last
/// interval; the results are reported in `SidecarStatus.metrics[name]` and on the agent's
/// `/metrics`. A failed scrape reports no values rather than stale or invented ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scrape {
    /// `http://` URL of the sidecar's metrics; may hold placeholders.
    pub url: String,
    /// Time between scrapes, 1s to 10m (default 10s).
    #[serde(default = "Scrape::default_interval")]
    pub interval: HumanDuration,
    /// Time one scrape may take, at most `interval` (default 2s, or `interval` if shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// The figures to derive, 1 to 32.
    pub series: Vec<Series>,
}

/// One derived figure. Exactly one of `ratio`, `quantile`, `rate`, `gauge` is set.
///
/// `min` and `max` are the sidecar's dynamic self-health: a value outside them for `for`
/// consecutive scrapes is a breach, reported in the sidecar's status `error` and counted on
/// the agent's `/metrics`. A breach restarts the sidecar only with `restart: true` (through
/// the liveness-failure path, with its backoff and crash-loop detection): restarting on an
/// error ratio or a latency often makes an outage worse (a dependency is down, every
/// instance restarts at once, caches go cold), so the default is to report and leave the
/// decision to the rollout's judge and the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// The key in `SidecarStatus.metrics` (`error_ratio`): a metric name.
    pub name: String,
    /// Δnumerator / Δdenominator over the interval; no value without traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    /// A quantile of a histogram's observations over the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<Quantile>,
    /// Per-second rate of a counter over the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<MetricRef>,
    /// The current value of a gauge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gauge: Option<MetricRef>,
    /// Factor applied to the value (`1000`: seconds to milliseconds; default 1).
    #[serde(default = "Series::default_scale")]
    pub scale: f64,
    /// Lowest healthy value (after `scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest healthy value (after `scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Consecutive scrapes out of bounds that make a breach (default 3).
    #[serde(rename = "for", default = "Series::default_for")]
    pub for_scrapes: u32,
    /// A breach restarts the sidecar like a failed liveness probe (default false).
    #[serde(default)]
    pub restart: bool,
}

/// `numerator` / `denominator`, both counters, over one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratio {
    /// Counter of the events counted (`errors_total`).
    pub numerator: MetricRef,
    /// Counter of all events (`requests_total`).
    pub denominator: MetricRef,
}

/// The `q` quantile of a histogram over one interval, interpolated linearly within the
/// bucket it falls in (as Prometheus' `histogram_quantile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantile {
    /// The histogram family (`request_duration_seconds`, whose series are `_bucket{le=…}`).
    pub histogram: MetricRef,
    /// Between 0 and 1 (`0.99`).
    pub q: f64,
}

/// A metric family of the exposition, optionally narrowed by exact label matches; the
/// values of every series that matches are summed. Written as the family name alone
/// (`"requests_total"`) or as `{"family": "http_requests_total", "match": {"code": "500"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricRef {
    /// Family name (for a histogram, without `_bucket`).
    pub family: String,
    /// Label name → required value.
    pub matchers: BTreeMap<String, String>,
}

/// The long form of a [`MetricRef`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricRefFull {
    family: String,
    #[serde(rename = "match", default, deserialize_with = "crate::name::unique_keys")]
    matchers: BTreeMap<String, String>,
}

impl Serialize for MetricRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.matchers.is_empty() {
            s.serialize_str(&self.family)
        } else {
            MetricRefFull { family: self.family.clone(), matchers: self.matchers.clone() }.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for MetricRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MetricRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a family name, or {"family": ..., "match": {...}}"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MetricRef, E> {
                Ok(MetricRef { family: v.to_owned(), matchers: BTreeMap::new() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<MetricRef, A::Error> {
                let full = MetricRefFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(MetricRef { family: full.family, matchers: full.matchers })
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl MetricRef {
    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        validate_metric_name(field, &self.family)?;
        if self.matchers.len() > limits::MAX_MATCHERS {
            return Err(ValidationError::new(field, format!("at most {} label matchers", limits::MAX_MATCHERS)));
        }
        for (k, v) in &self.matchers {
            let label_ok = k.len() <= limits::MAX_NAME
                && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !label_ok {
                return Err(ValidationError::new(field, format!("{k:?} is not a label name")));
            }
            validate_text(field, v, limits::MAX_LABEL_VALUE, false)?;
        }
        Ok(())
    }
}

/// The derivation a [`Series`] asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Derivation<'a> {
    /// Δnumerator / Δdenominator.
    Ratio(&'a Ratio),
    /// A histogram quantile over the interval.
    Quantile(&'a Quantile),
    /// Δ / Δt per second.
    Rate(&'a MetricRef),
    /// The current value.
    Gauge(&'a MetricRef),
}

/// Checks a Prometheus metric name of at most [`limits::MAX_NAME`] bytes.
fn validate_metric_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= limits::MAX_NAME
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "{name:?} is not a metric name (a-z, A-Z, 0-9, '_', ':', not starting with a digit, at most {} bytes)",
                limits::MAX_NAME
            ),
        ))
    }
}

impl Scrape {
    fn default_interval() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    /// The time one scrape may take: `timeout`, by default 2s or `interval` if shorter.
    pub fn effective_timeout(&self) -> Duration {
        self.timeout.map_or(Duration::from_secs(2).min(self.interval.0), |t| t.0)
    }

    /// Checks every field.
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        validate_text("scrape.url", &self.url, limits::MAX_URL, false)?;
        if !self.url.starts_with("http://") {
            return Err(ValidationError::new("scrape.url", format!("{:?} must be an http:// URL", self.url)));
        }
        let interval = self.interval.0;
        if !(limits::MIN_INTERVAL..=limits::MAX_INTERVAL).contains(&interval) {
            return Err(ValidationError::new("scrape.interval", "must be between 1s and 10m"));
        }
        if self.timeout.is_some_and(|t| t.0.is_zero() || t.0 > interval) {
            return Err(ValidationError::new("scrape.timeout", "must be above zero and at most the interval"));
        }
        if self.series.is_empty() || self.series.len() > limits::MAX_SERIES {
            return Err(ValidationError::new("scrape.series", format!("list 1 to {} series", limits::MAX_SERIES)));
        }
        for (i, s) in self.series.iter().enumerate() {
            s.validate()?;
            if self.series[..i].iter().any(|o| o.name == s.name) {
                return Err(ValidationError::new("scrape.series", format!("series {:?} is listed twice", s.name)));
            }
        }
        Ok(())
    }
}

impl Series {
    fn default_scale() -> f64 {
        1.0
    }
    fn default_for() -> u32 {
        3
    }

    /// A series `name` derived by one of `ratio`, `quantile`, `rate`, `gauge` (the others
    /// `None`), with scale 1 and no bounds.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ratio: None,
            quantile: None,
            rate: None,
            gauge: None,
            scale: Self::default_scale(),
            min: None,
            max: None,
            for_scrapes: Self::default_for(),
            restart: false,
        }
    }

    /// The one derivation this series asks for.
    pub fn derivation(&self) -> Option<Derivation<'_>> {
        match (&self.ratio, &self.quantile, &self.rate, &self.gauge) {
            (Some(r), None, None, None) => Some(Derivation::Ratio(r)),
            (None, Some(q), None, None) => Some(Derivation::Quantile(q)),
            (None, None, Some(m), None) => Some(Derivation::Rate(m)),
            (None, None, None, Some(m)) => Some(Derivation::Gauge(m)),
            _ => None,
        }
    }

    /// Whether `value` lies outside `min`..`max`.
    pub fn out_of_bounds(&self, value: f64) -> bool {
        self.min.is_some_and(|m| value < m) || self.max.is_some_and(|m| value > m)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        validate_metric_name("scrape.series.name", &self.name)?;
        let field = format!("scrape.series.{}", self.name);
        match self.derivation() {
            None => return Err(ValidationError::new(field, "set exactly one of ratio, quantile, rate, gauge")),
            Some(Derivation::Ratio(r)) => {
                r.numerator.validate(&field)?;
                r.denominator.validate(&field)?;
            }
            Some(Derivation::Quantile(q)) => {
                q.histogram.validate(&field)?;
                if !(0.0..=1.0).contains(&q.q) {
                    return Err(ValidationError::new(field, "q must be between 0 and 1"));
                }
            }
            Some(Derivation::Rate(m) | Derivation::Gauge(m)) => m.validate(&field)?,
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(ValidationError::new(field, "scale must be a finite number other than 0"));
        }
        if self.min.is_some_and(|m| !m.is_finite()) || self.max.is_some_and(|m| !m.is_finite()) {
            return Err(ValidationError::new(field, "min and max must be finite numbers"));
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max)
            && lo > hi
        {
            return Err(ValidationError::new(field, "min must not be above max"));
        }
        if !(1..=limits::MAX_FOR).contains(&self.for_scrapes) {
            return Err(ValidationError::new(field, format!("for must be between 1 and {}", limits::MAX_FOR)));
        }
        if self.restart && self.min.is_none() && self.max.is_none() {
            return Err(ValidationError::new(field, "restart needs a min or a max"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Scrape, String> {
        let s: Scrape = serde_json::from_value(json).map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }

    fn example() -> serde_json::Value {
        serde_json::json!({
            "url": "http://127.0.0.1:${label.port}/metrics", "interval": "5s", "timeout": "2s",
            "series": [
                {"name": "error_ratio", "ratio": {"numerator": "errors_total", "denominator": "requests_total"},
                 "max": 0.1, "for": 2},
                {"name": "latency_p99_ms", "quantile": {"histogram": "request_duration_seconds", "q": 0.99}, "scale": 1000},
                {"name": "rps", "rate": "requests_total"},
                {"name": "inflight", "gauge": {"family": "requests_in_flight", "match": {"code": "500"}}},
            ]
        })
    }

    #[test]
    fn the_documented_shape_parses_and_round_trips() {
        let s = parse(example()).unwrap();
        assert_eq!(s.interval, HumanDuration::from_secs(5));
        assert!(matches!(s.series[0].derivation(), Some(Derivation::Ratio(_))));
        assert_eq!(s.series[0].max, Some(0.1));
        assert_eq!(s.series[0].for_scrapes, 2);
        assert_eq!(s.series[1].scale, 1000.0);
        assert_eq!(s.series[2].rate, Some(MetricRef { family: "requests_total".into(), matchers: BTreeMap::new() }));
        let g = s.series[3].gauge.as_ref().unwrap();
        assert_eq!(g.matchers["code"], "500");
        let back: Scrape = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(serde_json::to_value(&s.series[2].rate).unwrap(), serde_json::json!("requests_total"));
        assert!(s.series[0].out_of_bounds(0.2) && !s.series[0].out_of_bounds(0.1));
    }

    #[test]
    fn bad_settings_are_refused_with_the_field() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("/url", serde_json::json!("ftp://x/metrics")),
            ("/url", serde_json::json!("http://x/\r\nHost: evil")),
            ("/url", serde_json::json!(format!("http://x/{}", "a".repeat(3000)))),
            ("/interval", serde_json::json!("500ms")),
            ("/interval", serde_json::json!("11m")),
            ("/timeout", serde_json::json!("6s")),
            ("/timeout", serde_json::json!("0s")),
            ("/series", serde_json::json!([])),
            ("/series/0/name", serde_json::json!("9lives")),
            ("/series/0/name", serde_json::json!("rps")),
            ("/series/0/scale", serde_json::json!(0)),
            ("/series/0/for", serde_json::json!(0)),
            ("/series/2/restart", serde_json::json!(true)),
            ("/series/0/min", serde_json::json!(0.5)),
            ("/series/1/quantile/q", serde_json::json!(1.5)),
            ("/series/3/gauge/match", serde_json::json!({"bad-label": "x"})),
            ("/series/3/gauge/family", serde_json::json!("requests total")),
        ];
        for (pointer, value) in cases {
            let mut j = example();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            j.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.into(), value.clone());
            let err = parse(j).expect_err(&format!("{pointer} = {value} accepted"));
            assert!(err.starts_with("scrape."), "{pointer}: {err}");
        }
        let mut many = example();
        let one = many["series"][2].clone();
        many["series"] = (0..33).map(|i| serde_json::json!({"name": format!("s{i}"), "rate": one["rate"]})).collect();
        assert!(parse(many).unwrap_err().contains("1 to 32"));
        let mut two = example();
        two["series"][0]["gauge"] = serde_json::json!("x");
        assert!(parse(two).unwrap_err().contains("exactly one"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        for (pointer, key) in [("", "colour"), ("/series/0", "median"), ("/series/3/gauge", "regex")] {
            let mut j = example();
            j.pointer_mut(pointer).unwrap().as_object_mut().unwrap().insert(key.into(), serde_json::json!(1));
            assert!(parse(j).is_err(), "{pointer}.{key} accepted");
        }
        let dup = r#"{"url":"http://x","series":[{"name":"a","gauge":{"family":"g","match":{"k":"1","k":"2"}}}]}"#;
        assert!(serde_json::from_str::<Scrape>(dup).is_err());
        for bad in [r#"5"#, r#"["g"]"#, r#"{"match":{}}"#, r#"{"family":"g","match":{"k":1}}"#] {
            let json = format!(r#"{{"url":"http://x","series":[{{"name":"a","gauge":{bad}}}]}}"#);
            assert!(serde_json::from_str::<Scrape>(&json).is_err(), "{bad} accepted");
        }
    }
}
