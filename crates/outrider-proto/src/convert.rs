//! Conversions between wire messages and the domain model. Wire strings that the model does
//! not know (a state, a mode) are refused, never guessed.

use std::time::Duration;

use outrider_model as m;
use thiserror::Error;

use crate::v1;

/// A wire message that does not map onto the model.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {field}: {message}")]
pub struct ConvertError {
    /// Field concerned.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn parse_json_enum<T: serde::de::DeserializeOwned>(field: &'static str, s: &str) -> Result<T, ConvertError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| ConvertError { field, message: format!("unknown value {s:?}") })
}

fn ms(d: m::HumanDuration) -> u64 {
    u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX)
}

fn dur(ms: u64) -> m::HumanDuration {
    m::HumanDuration(Duration::from_millis(ms))
}

impl From<&m::SidecarStatus> for v1::SidecarStatus {
    fn from(s: &m::SidecarStatus) -> Self {
        Self {
            name: s.name.clone(),
            version: s.version.clone(),
            state: s.state.to_string(),
            pid: s.pid,
            restarts: s.restarts,
            exits: s.exits,
            cpu_percent: s.cpu_percent,
            rss_bytes: s.rss_bytes,
            error: s.error.clone(),
            metrics: s.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            failed_upgrade: s.failed_upgrade.clone(),
        }
    }
}

impl TryFrom<v1::SidecarStatus> for m::SidecarStatus {
    type Error = ConvertError;
    fn try_from(s: v1::SidecarStatus) -> Result<Self, ConvertError> {
        Ok(Self {
            state: parse_json_enum("sidecar.state", &s.state)?,
            name: s.name,
            version: s.version,
            pid: s.pid,
            restarts: s.restarts,
            exits: s.exits,
            cpu_percent: if s.cpu_percent.is_finite() { s.cpu_percent } else { 0.0 },
            rss_bytes: s.rss_bytes,
            error: s.error,
            metrics: s.metrics.into_iter().filter(|(_, v)| v.is_finite()).collect(),
            failed_upgrade: s.failed_upgrade,
        })
    }
}

impl From<&m::Probe> for v1::Probe {
    fn from(p: &m::Probe) -> Self {
        Self {
            tcp: p.tcp.clone(),
            http: p.http.clone(),
            exec: p.exec.clone().unwrap_or_default(),
            timeout_ms: ms(p.timeout),
            period_ms: ms(p.period),
            deadline_ms: ms(p.deadline),
            failure_threshold: p.failure_threshold,
        }
    }
}

impl From<v1::Probe> for m::Probe {
    fn from(p: v1::Probe) -> Self {
        Self {
            tcp: p.tcp,
            http: p.http,
            exec: (!p.exec.is_empty()).then_some(p.exec),
            timeout: dur(p.timeout_ms.max(1)),
            period: dur(p.period_ms.max(1)),
            deadline: dur(p.deadline_ms),
            failure_threshold: p.failure_threshold.max(1),
        }
    }
}

impl From<&m::Handover> for v1::Handover {
    fn from(h: &m::Handover) -> Self {
        match h {
            m::Handover::ListenFds => Self { kind: "listen-fds".into(), ..Self::default() },
            m::Handover::ScmRights => Self { kind: "scm-rights".into(), ..Self::default() },
            m::Handover::Signal { signal, stop_signal, pid_file } => Self {
                kind: "signal".into(),
                signal: signal.clone(),
                stop_signal: stop_signal.clone(),
                pid_file: pid_file.clone(),
            },
        }
    }
}

impl TryFrom<v1::Handover> for m::Handover {
    type Error = ConvertError;
    fn try_from(h: v1::Handover) -> Result<Self, ConvertError> {
        match h.kind.as_str() {
            "" | "listen-fds" => Ok(Self::ListenFds),
            "scm-rights" => Ok(Self::ScmRights),
            "signal" => Ok(Self::Signal { signal: h.signal, stop_signal: h.stop_signal, pid_file: h.pid_file }),
            other => Err(ConvertError { field: "sidecar.handover.kind", message: format!("unknown value {other:?}") }),
        }
    }
}

impl From<&m::Action> for v1::Action {
    fn from(a: &m::Action) -> Self {
        Self {
            http: a.http.clone(),
            method: a.method.clone(),
            exec: a.exec.clone().unwrap_or_default(),
            timeout_ms: ms(a.timeout),
        }
    }
}

impl From<v1::Action> for m::Action {
    fn from(a: v1::Action) -> Self {
        Self {
            http: a.http,
            method: if a.method.is_empty() { "POST".into() } else { a.method },
            exec: (!a.exec.is_empty()).then_some(a.exec),
            timeout: dur(a.timeout_ms.max(1)),
        }
    }
}

impl From<&m::Warm> for v1::Warm {
    fn from(w: &m::Warm) -> Self {
        Self { drain: Some((&w.drain).into()), undrain: w.undrain.as_ref().map(Into::into), wait_ms: ms(w.wait) }
    }
}

impl TryFrom<v1::Warm> for m::Warm {
    type Error = ConvertError;
    fn try_from(w: v1::Warm) -> Result<Self, ConvertError> {
        let drain = w.drain.ok_or(ConvertError { field: "sidecar.warm.drain", message: "missing".into() })?;
        Ok(Self { drain: drain.into(), undrain: w.undrain.map(Into::into), wait: dur(w.wait_ms) })
    }
}

impl From<&m::MetricRef> for v1::MetricRef {
    fn from(r: &m::MetricRef) -> Self {
        Self { family: r.family.clone(), matchers: r.matchers.iter().map(|(k, v)| (k.clone(), v.clone())).collect() }
    }
}

impl From<v1::MetricRef> for m::MetricRef {
    fn from(r: v1::MetricRef) -> Self {
        Self { family: r.family, matchers: r.matchers.into_iter().collect() }
    }
}

/// A metric reference the wire must carry.
fn metric_ref(r: Option<v1::MetricRef>, field: &'static str) -> Result<m::MetricRef, ConvertError> {
    r.map(Into::into).ok_or(ConvertError { field, message: "missing".into() })
}

impl From<&m::Series> for v1::ScrapeSeries {
    fn from(s: &m::Series) -> Self {
        use v1::scrape_series::Derivation as D;
        let derivation = s.derivation().map(|d| match d {
            m::Derivation::Ratio(r) => D::Ratio(v1::ScrapeRatio {
                numerator: Some((&r.numerator).into()),
                denominator: Some((&r.denominator).into()),
            }),
            m::Derivation::Quantile(q) => {
                D::Quantile(v1::ScrapeQuantile { histogram: Some((&q.histogram).into()), q: q.q })
            }
            m::Derivation::Rate(r) => D::Rate(r.into()),
            m::Derivation::Gauge(r) => D::Gauge(r.into()),
        });
        Self {
            name: s.name.clone(),
            derivation,
            scale: s.scale,
            min: s.min,
            max: s.max,
            for_scrapes: s.for_scrapes,
            restart: s.restart,
        }
    }
}

impl TryFrom<v1::ScrapeSeries> for m::Series {
    type Error = ConvertError;
    fn try_from(s: v1::ScrapeSeries) -> Result<Self, ConvertError> {
        use v1::scrape_series::Derivation as D;
        let mut out = m::Series {
            scale: s.scale,
            min: s.min,
            max: s.max,
            for_scrapes: s.for_scrapes,
            restart: s.restart,
            ..m::Series::new(s.name)
        };
        match s.derivation {
            Some(D::Ratio(r)) => {
                out.ratio = Some(m::Ratio {
                    numerator: metric_ref(r.numerator, "sidecar.scrape.series.ratio.numerator")?,
                    denominator: metric_ref(r.denominator, "sidecar.scrape.series.ratio.denominator")?,
                });
            }
            Some(D::Quantile(q)) => {
                let histogram = metric_ref(q.histogram, "sidecar.scrape.series.quantile.histogram")?;
                out.quantile = Some(m::Quantile { histogram, q: q.q });
            }
            Some(D::Rate(r)) => out.rate = Some(r.into()),
            Some(D::Gauge(r)) => out.gauge = Some(r.into()),
            None => return Err(ConvertError { field: "sidecar.scrape.series.derivation", message: "missing".into() }),
        }
        Ok(out)
    }
}

impl From<&m::Scrape> for v1::Scrape {
    fn from(s: &m::Scrape) -> Self {
        Self {
            url: s.url.clone(),
            interval_ms: ms(s.interval),
            timeout_ms: s.timeout.map(ms),
            series: s.series.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<v1::Scrape> for m::Scrape {
    type Error = ConvertError;
    fn try_from(s: v1::Scrape) -> Result<Self, ConvertError> {
        Ok(Self {
            url: s.url,
            interval: dur(s.interval_ms),
            timeout: s.timeout_ms.map(dur),
            series: s.series.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?,
        })
    }
}

impl From<&m::DesiredSidecar> for v1::DesiredSidecar {
    fn from(d: &m::DesiredSidecar) -> Self {
        let l = &d.lifecycle;
        Self {
            name: d.name.clone(),
            version: d.version.clone(),
            mode: d.mode.to_string(),
            artifact_url: d.artifact.url.clone(),
            artifact_sha256: d.artifact.sha256.clone(),
            command: d.command.clone(),
            env: d.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            startup_probe: l.startup_probe.as_ref().map(Into::into),
            liveness_probe: l.liveness_probe.as_ref().map(Into::into),
            drain_ms: ms(l.drain_time),
            sockets: l
                .sockets
                .iter()
                .map(|s| v1::ListenSocket { name: s.name.clone(), listen: s.listen.clone() })
                .collect(),
            handover: Some((&l.handover).into()),
            notify_ready: l.notify_ready,
            min_ready_ms: Some(ms(l.min_ready)),
            warm: l.warm.as_ref().map(Into::into),
            scrape: l.scrape.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<v1::DesiredSidecar> for m::DesiredSidecar {
    type Error = ConvertError;
    fn try_from(d: v1::DesiredSidecar) -> Result<Self, ConvertError> {
        Ok(Self {
            mode: parse_json_enum("sidecar.mode", &d.mode)?,
            name: d.name,
            version: d.version,
            artifact: m::Artifact { url: d.artifact_url, sha256: d.artifact_sha256 },
            command: d.command,
            env: d.env.into_iter().collect(),
            lifecycle: m::Lifecycle {
                startup_probe: d.startup_probe.map(Into::into),
                liveness_probe: d.liveness_probe.map(Into::into),
                drain_time: dur(d.drain_ms),
                sockets: d.sockets.into_iter().map(|s| m::ListenSocket { name: s.name, listen: s.listen }).collect(),
                handover: d.handover.map(TryInto::try_into).transpose()?.unwrap_or_default(),
                notify_ready: d.notify_ready,
                min_ready: d.min_ready_ms.map_or(m::HumanDuration(m::DEFAULT_MIN_READY), dur),
                warm: d.warm.map(TryInto::try_into).transpose()?,
                scrape: d.scrape.map(TryInto::try_into).transpose()?,
            },
        })
    }
}

impl From<&m::DesiredState> for v1::Desired {
    fn from(d: &m::DesiredState) -> Self {
        Self { revision: d.revision, sidecars: d.sidecars.iter().map(Into::into).collect() }
    }
}

impl TryFrom<v1::Desired> for m::DesiredState {
    type Error = ConvertError;
    fn try_from(d: v1::Desired) -> Result<Self, ConvertError> {
        Ok(Self {
            revision: d.revision,
            sidecars: d.sidecars.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?,
        })
    }
}

impl v1::Register {
    /// The instance labels carried by a registration.
    pub fn instance_labels(&self) -> m::InstanceLabels {
        m::InstanceLabels {
            region: self.region.clone(),
            env: self.env.clone(),
            stage: self.stage.clone(),
            color: self.color.clone(),
            lane: self.lane.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape setting with every kind of series.
    fn scrape() -> m::Scrape {
        let json = serde_json::json!({
            "url": "http://127.0.0.1:${label.port}/metrics", "interval": "1s", "timeout": "500ms",
            "series": [
                {"name": "error_ratio", "ratio": {"numerator": "errors_total", "denominator": "requests_total"},
                 "max": 0.1, "for": 2, "restart": true},
                {"name": "p99_ms", "quantile": {"histogram": "request_duration_seconds", "q": 0.99}, "scale": 1000},
                {"name": "rps", "rate": {"family": "requests_total", "match": {"code": "200"}}, "min": 1},
                {"name": "inflight", "gauge": "requests_in_flight"},
            ]
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn desired_state_round_trips() {
        let d = m::DesiredState {
            revision: 7,
            sidecars: vec![m::DesiredSidecar {
                mode: m::UpgradeMode::OnDeploy,
                artifact: m::Artifact { url: "file:///x".into(), sha256: "a".repeat(64) },
                env: [("PORT".to_owned(), "${label.port}".to_owned())].into(),
                lifecycle: m::Lifecycle {
                    startup_probe: Some(m::Probe::http("http://127.0.0.1:${label.port}/healthz")),
                    drain_time: m::HumanDuration::from_secs(3),
                    min_ready: m::HumanDuration::from_millis(1500),
                    scrape: Some(scrape()),
                    ..m::Lifecycle::default()
                },
                ..m::testing::desired_sidecar("mesh", "1.0.0")
            }],
        };
        let wire = v1::Desired::from(&d);
        assert_eq!(m::DesiredState::try_from(wire).unwrap(), d);
        // A manager that does not send min_ready gets the default.
        let old = v1::DesiredSidecar { mode: "hot".into(), min_ready_ms: None, ..Default::default() };
        assert_eq!(m::DesiredSidecar::try_from(old).unwrap().lifecycle.min_ready.0, m::DEFAULT_MIN_READY);
    }

    #[test]
    fn unknown_wire_strings_are_refused() {
        let s = v1::SidecarStatus { state: "dancing".into(), ..Default::default() };
        assert_eq!(m::SidecarStatus::try_from(s).unwrap_err().field, "sidecar.state");
        let d = v1::DesiredSidecar { mode: "sideways".into(), ..Default::default() };
        assert_eq!(m::DesiredSidecar::try_from(d).unwrap_err().field, "sidecar.mode");
        let handover = Some(v1::Handover { kind: "teleport".into(), ..Default::default() });
        let d = v1::DesiredSidecar { mode: "hot".into(), handover, ..Default::default() };
        assert_eq!(m::DesiredSidecar::try_from(d).unwrap_err().field, "sidecar.handover.kind");
        let warm = Some(v1::Warm { drain: None, undrain: None, wait_ms: 10 });
        let d = v1::DesiredSidecar { mode: "warm".into(), warm, ..Default::default() };
        assert_eq!(m::DesiredSidecar::try_from(d).unwrap_err().field, "sidecar.warm.drain");
    }
}
