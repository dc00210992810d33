//! What an instance's sidecars reported over the last minutes, for the judge: per sidecar, a
//! bounded ring of samples (time, version, figures), stored column by column so that a sample
//! costs a few dozen bytes. Only instances of services a live plan watches keep one (see
//! [`Fleet::watch`](crate::fleet::Fleet::watch)); the rest cost nothing.

use std::{collections::VecDeque, sync::Arc};

use outrider_model::SidecarStatus;
use time::OffsetDateTime;

/// Samples kept per sidecar: about 21 minutes of reports every 5 s.
pub const SAMPLES: usize = 256;
/// Figures kept per sample: the process's two, then the sidecar's own, by name, up to this.
const COLUMNS: usize = 32;
/// Versions told apart in one ring (older ones fall out with their samples); fits a `u8`.
const VERSIONS: usize = 16;

/// One sidecar's samples.
#[derive(Debug)]
struct Ring {
    name: Box<str>,
    /// Unix time of each sample, in milliseconds.
    at: VecDeque<i64>,
    /// Index into `versions` of each sample.
    version: VecDeque<u8>,
    versions: Vec<Arc<str>>,
    /// Per figure: its name and its value in each sample (NaN: not reported then).
    columns: Vec<(Box<str>, VecDeque<f32>)>,
}

impl Ring {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            at: VecDeque::new(),
            version: VecDeque::new(),
            versions: Vec::new(),
            columns: Vec::new(),
        }
    }

    fn push(&mut self, at: OffsetDateTime, status: &SidecarStatus) {
        if self.at.len() >= SAMPLES {
            self.at.pop_front();
            self.version.pop_front();
            for (_, c) in &mut self.columns {
                c.pop_front();
            }
        }
        let v = self.version_index(&status.version);
        self.at.push_back((at.unix_timestamp_nanos() / 1_000_000) as i64);
        self.version.push_back(v);
        let len = self.at.len();
        for (_, c) in &mut self.columns {
            c.push_back(f32::NAN);
        }
        let figures = [("cpu_percent", status.cpu_percent), ("rss_mib", status.rss_bytes as f64 / 1_048_576.0)];
        let custom = status.metrics.iter().map(|(k, v)| (k.as_str(), *v));
        for (name, value) in figures.into_iter().filter(|_| status.pid.is_some()).chain(custom) {
            if !value.is_finite() {
                continue;
            }
            let column = match self.columns.iter().position(|(n, _)| &**n == name) {
                Some(i) => i,
                None if self.columns.len() < COLUMNS => {
                    let mut c = VecDeque::with_capacity(len);
                    c.resize(len, f32::NAN);
                    self.columns.push((name.into(), c));
                    self.columns.len() - 1
                }
                None => continue,
            };
            if let Some(slot) = self.columns[column].1.back_mut() {
                *slot = value as f32;
            }
        }
    }

    /// The index of `version`, added if new. When the ring already tells apart as many
    /// versions as it can, a slot no sample holds is reused, or else the ring starts over
    /// (an instance that ran that many versions in minutes has no steady history anyway).
    fn version_index(&mut self, version: &str) -> u8 {
        if let Some(i) = self.versions.iter().position(|v| &**v == version) {
            return i as u8;
        }
        if self.versions.len() >= VERSIONS {
            match (0..self.versions.len()).find(|&i| !self.version.iter().any(|&v| usize::from(v) == i)) {
                Some(free) => {
                    self.versions[free] = version.into();
                    return free as u8;
                }
                None => {
                    let name = std::mem::take(&mut self.name);
                    *self = Self::new(&name);
                }
            }
        }
        self.versions.push(version.into());
        (self.versions.len() - 1) as u8
    }

    /// The positions of the samples between `from` and `to`, oldest first.
    fn span(&self, from: OffsetDateTime, to: OffsetDateTime) -> impl Iterator<Item = usize> + '_ {
        let (from, to) = (millis(from), millis(to));
        let start = self.at.partition_point(|&t| t < from);
        (start..self.at.len()).take_while(move |&i| self.at[i] <= to)
    }

    fn time(&self, i: usize) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.at[i]) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn version_of(&self, i: usize) -> &str {
        self.versions.get(usize::from(self.version[i])).map_or("", |v| v)
    }
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The samples of one instance's sidecars.
#[derive(Debug, Default)]
pub struct History {
    rings: Vec<Ring>,
}

impl History {
    /// Records what `sidecars` report at `at`.
    pub fn record(&mut self, at: OffsetDateTime, sidecars: &[SidecarStatus]) {
        for s in sidecars.iter().take(COLUMNS) {
            let i = match self.rings.iter().position(|r| *r.name == *s.name) {
                Some(i) => i,
                None => {
                    self.rings.push(Ring::new(&s.name));
                    self.rings.len() - 1
                }
            };
            self.rings[i].push(at, s);
        }
    }

    fn ring(&self, sidecar: &str) -> Option<&Ring> {
        self.rings.iter().find(|r| &*r.name == sidecar)
    }

    /// Calls `f` with the time and version of each sample of `sidecar` between `from` and `to`.
    pub fn versions(
        &self,
        sidecar: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str),
    ) {
        let Some(r) = self.ring(sidecar) else { return };
        for i in r.span(from, to) {
            f(r.time(i), r.version_of(i));
        }
    }

    /// Calls `f` with the time, version and value of each sample of `metric` of `sidecar`
    /// between `from` and `to` (samples that did not report it are skipped).
    pub fn samples(
        &self,
        sidecar: &str,
        metric: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        f: &mut dyn FnMut(OffsetDateTime, &str, f64),
    ) {
        let Some(r) = self.ring(sidecar) else { return };
        let Some((_, column)) = r.columns.iter().find(|(n, _)| &**n == metric) else { return };
        for i in r.span(from, to) {
            let v = column[i];
            if v.is_finite() {
                f(r.time(i), r.version_of(i), f64::from(v));
            }
        }
    }

    /// The version `sidecar` ran at the last sample at or before `at`.
    pub fn version_at(&self, sidecar: &str, at: OffsetDateTime) -> Option<&str> {
        let r = self.ring(sidecar)?;
        let i = r.at.partition_point(|&t| t <= millis(at)).checked_sub(1)?;
        Some(r.version_of(i))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use time::macros::datetime;

    use super::*;

    fn status(version: &str, cpu: f64, metrics: &[(&str, f64)]) -> SidecarStatus {
        SidecarStatus {
            name: "mesh".into(),
            version: version.into(),
            pid: Some(1),
            cpu_percent: cpu,
            rss_bytes: 64 << 20,
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect::<BTreeMap<_, _>>(),
            ..SidecarStatus::default()
        }
    }

    #[test]
    fn samples_are_read_back_by_time_version_and_metric() {
        let t0 = datetime!(2026-03-06 16:00 UTC);
        let mut h = History::default();
        for i in 0..10 {
            let version = if i < 5 { "1.0.0" } else { "1.1.0" };
            let metrics: &[(&str, f64)] = if i % 2 == 0 { &[("error_ratio", 0.5)] } else { &[] };
            h.record(t0 + time::Duration::seconds(i * 5), &[status(version, i as f64, metrics)]);
        }
        let mut seen = Vec::new();
        h.samples(
            "mesh",
            "cpu_percent",
            t0 + time::Duration::seconds(20),
            t0 + time::Duration::seconds(30),
            &mut |t, v, x| {
                seen.push(((t - t0).whole_seconds(), v.to_owned(), x));
            },
        );
        assert_eq!(seen, [(20, "1.0.0".into(), 4.0), (25, "1.1.0".into(), 5.0), (30, "1.1.0".into(), 6.0)]);
        let mut errors = 0;
        h.samples("mesh", "error_ratio", t0, t0 + time::Duration::minutes(1), &mut |_, _, _| errors += 1);
        assert_eq!(errors, 5, "samples without the metric are skipped");
        let mut rss = Vec::new();
        h.samples("mesh", "rss_mib", t0, t0, &mut |_, _, x| rss.push(x));
        assert_eq!(rss, [64.0]);
        assert_eq!(h.version_at("mesh", t0 + time::Duration::seconds(27)), Some("1.1.0"));
        assert_eq!(h.version_at("mesh", t0 - time::Duration::seconds(1)), None);
        let mut other = 0;
        h.samples("other", "cpu_percent", t0, t0 + time::Duration::hours(1), &mut |_, _, _| other += 1);
        assert_eq!(other, 0);
    }

    #[test]
    fn the_ring_its_columns_and_its_versions_are_bounded() {
        let t0 = datetime!(2026-03-06 16:00 UTC);
        let mut h = History::default();
        let names: Vec<String> = (0..40).map(|c| format!("m{c}")).collect();
        let metrics: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        for i in 0..(SAMPLES as i64 + 10) {
            h.record(t0 + time::Duration::seconds(i), &[status("1.0.0", 1.0, &metrics)]);
        }
        let r = &h.rings[0];
        assert_eq!(r.at.len(), SAMPLES);
        assert!(r.columns.len() <= COLUMNS && r.columns.iter().all(|(_, c)| c.len() == SAMPLES));
        // A sidecar that runs a new version every second.
        for i in 0..100 {
            h.record(t0 + time::Duration::seconds(1000 + i), &[status(&format!("2.0.{i}"), 1.0, &[])]);
        }
        assert!(h.rings[0].versions.len() <= VERSIONS);
        let mut versions = Vec::new();
        h.versions("mesh", t0, t0 + time::Duration::hours(1), &mut |_, v| versions.push(v.to_owned()));
        assert!(!versions.is_empty() && versions.len() <= SAMPLES);
        assert_eq!(versions.last().map(String::as_str), Some("2.0.99"), "the newest sample is kept, with its version");
    }
}
