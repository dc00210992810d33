//! The `DEMO_FAULT` fault knobs: parsing, validation and their canonical string form.

use std::{fmt, str::FromStr, time::Duration};

use thiserror::Error;

/// Every knob name `DEMO_FAULT` understands, in the order they are documented.
pub const KNOWN_KNOBS: &[&str] =
    &["crash-after", "error-rate", "latency", "cpu-burn", "leak", "fail-health", "exit-immediately", "handover-hang"];

/// The faults this sidecar injects, parsed from `DEMO_FAULT`.
///
/// The spec is a comma-separated list of knobs, for example
/// `DEMO_FAULT=error-rate=0.3,latency=200ms`. The knobs are:
///
/// | knob | effect |
/// | --- | --- |
/// | `crash-after=5s` | the process exits with status 1 and a message after that long |
/// | `error-rate=0.3` | that fraction of `GET /` answers is a 500 (counted in `errors_total`) |
/// | `latency=200ms` | added to every `GET /` |
/// | `cpu-burn` | one thread spins for as long as the process runs |
/// | `leak=10MB/s` | that much memory is allocated, touched and kept every second |
/// | `fail-health` | `GET /healthz` always answers 503, and the process never says `READY=1` on `NOTIFY_SOCKET` |
/// | `exit-immediately` | the process exits with status 1 at start |
/// | `handover-hang` | the process never serves nor becomes ready: with `OUTRIDER_HANDOVER_SOCKET` it connects to its predecessor and never sends `hello`; it waits for SIGTERM and exits 0 |
///
/// Durations are written like `250ms`, `5s`, `2m`, `1h`, `1d` or `1m30s`. Sizes are written
/// like `512KB` or `10MB` (units `B`, `KB`, `MB`, `GB`, case-insensitive, powers of 1024;
/// `KiB`, `MiB`, `GiB` are accepted too); the `/s` after a leak rate is optional. An empty
/// spec means no faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Exit with status 1 after this long.
    pub crash_after: Option<Duration>,
    /// Fraction (0.0 to 1.0) of `GET /` answers that are a 500.
    pub error_rate: f64,
    /// Delay added to every `GET /`.
    pub latency: Option<Duration>,
    /// Spin one thread.
    pub cpu_burn: bool,
    /// Allocate, touch and keep this many bytes per second.
    pub leak_bytes_per_sec: Option<u64>,
    /// Answer `GET /healthz` with 503 always and never notify readiness.
    pub fail_health: bool,
    /// Exit with status 1 at start.
    pub exit_immediately: bool,
    /// Hang at start: never serve nor notify; stall a handover after connecting.
    pub handover_hang: bool,
}

impl Faults {
    /// Whether no fault is configured.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a `DEMO_FAULT` spec was rejected. Every variant names the offending knob.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultError {
    /// The knob name is not one of [`KNOWN_KNOBS`].
    #[error("unknown fault knob `{knob}` (known knobs: {})", KNOWN_KNOBS.join(", "))]
    UnknownKnob {
        /// The name as written.
        knob: String,
    },
    /// A knob that needs a value was written without one.
    #[error("fault knob `{knob}` needs a value, e.g. `{example}`")]
    MissingValue {
        /// The knob name.
        knob: String,
        /// A valid example of the knob.
        example: &'static str,
    },
    /// A flag knob was given a value.
    #[error("fault knob `{knob}` takes no value (got `{value}`)")]
    UnexpectedValue {
        /// The knob name.
        knob: String,
        /// The value that was given.
        value: String,
    },
    /// The knob's value could not be parsed or is out of range.
    #[error("fault knob `{knob}` has an invalid value `{value}`: {reason}")]
    BadValue {
        /// The knob name.
        knob: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same knob appears twice.
    #[error("fault knob `{knob}` is given more than once")]
    Duplicate {
        /// The knob name.
        knob: String,
    },
}

impl FromStr for Faults {
    type Err = FaultError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut faults = Faults::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (knob, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            if !KNOWN_KNOBS.contains(&knob) {
                return Err(FaultError::UnknownKnob { knob: knob.to_owned() });
            }
            if seen.contains(&knob) {
                return Err(FaultError::Duplicate { knob: knob.to_owned() });
            }
            seen.push(knob);
            let bad = |reason: String| FaultError::BadValue {
                knob: knob.to_owned(),
                value: value.unwrap_or_default().to_owned(),
                reason,
            };
            let needs = |example: &'static str| {
                value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| FaultError::MissingValue { knob: knob.to_owned(), example })
            };
            let flag = || match value {
                None => Ok(true),
                Some(v) => Err(FaultError::UnexpectedValue { knob: knob.to_owned(), value: v.to_owned() }),
            };
            match knob {
                "crash-after" => {
                    let v = needs("crash-after=5s")?;
                    faults.crash_after = Some(parse_duration(v).map_err(bad)?);
                }
                "error-rate" => {
                    let v = needs("error-rate=0.3")?;
                    faults.error_rate = parse_rate(v).map_err(bad)?;
                }
                "latency" => {
                    let v = needs("latency=200ms")?;
                    faults.latency = Some(parse_duration(v).map_err(bad)?);
                }
                "leak" => {
                    let v = needs("leak=10MB/s")?;
                    let size = v.strip_suffix("/s").unwrap_or(v);
                    let bytes = parse_size(size).map_err(bad)?;
                    if bytes == 0 {
                        return Err(bad("the leak rate must be more than zero".to_owned()));
                    }
                    faults.leak_bytes_per_sec = Some(bytes);
                }
                "cpu-burn" => faults.cpu_burn = flag()?,
                "fail-health" => faults.fail_health = flag()?,
                "exit-immediately" => faults.exit_immediately = flag()?,
                "handover-hang" => faults.handover_hang = flag()?,
                _ => unreachable!("knob names are checked against KNOWN_KNOBS above"),
            }
        }
        Ok(faults)
    }
}

impl fmt::Display for Faults {
    /// The canonical spec, which parses back to the same [`Faults`]; empty when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = self.crash_after {
            parts.push(format!("crash-after={}", format_duration(d)));
        }
        if self.error_rate > 0.0 {
            parts.push(format!("error-rate={}", self.error_rate));
        }
        if let Some(d) = self.latency {
            parts.push(format!("latency={}", format_duration(d)));
        }
        if self.cpu_burn {
            parts.push("cpu-burn".to_owned());
        }
        if let Some(bytes) = self.leak_bytes_per_sec {
            parts.push(format!("leak={}/s", format_size(bytes)));
        }
        if self.fail_health {
            parts.push("fail-health".to_owned());
        }
        if self.exit_immediately {
            parts.push("exit-immediately".to_owned());
        }
        if self.handover_hang {
            parts.push("handover-hang".to_owned());
        }
        f.write_str(&parts.join(","))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| "expected a fraction between 0 and 1, e.g. 0.3".to_owned())?;
    if !(0.0..=1.0).contains(&rate) {
        return Err("the rate must be between 0 and 1".to_owned());
    }
    Ok(rate)
}

/// Parses a duration such as `250ms`, `5s`, `2m`, `1h`, `1d` or `1m30s` (the operators' form
/// of [`outrider_model::HumanDuration`]).
///
/// A bare number without a unit is rejected, so `latency=200` cannot silently mean seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<outrider_model::HumanDuration>().map(|d| d.0)
}

/// Parses a size such as `512KB` or `10MB` into bytes (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size `{s}`: use forms like 512KB, 10MB, 1GB");
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match s[digits..].to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" | "kib" | "k" => 1 << 10,
        "mb" | "mib" | "m" => 1 << 20,
        "gb" | "gib" | "g" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// Formats a duration in the form [`parse_duration`] reads (`5s`, `1m30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    outrider_model::HumanDuration(d).to_string()
}

fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10)] {
        if bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Faults, FaultError> {
        s.parse()
    }

    #[test]
    fn empty_spec_means_no_faults() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" , ,").unwrap().is_empty());
    }

    #[test]
    fn parses_every_knob() {
        let f = parse(
            "crash-after=5s, error-rate=0.3,latency=200ms,cpu-burn,leak=10MB/s,fail-health,exit-immediately,handover-hang",
        )
        .unwrap();
        assert_eq!(
            f,
            Faults {
                crash_after: Some(Duration::from_secs(5)),
                error_rate: 0.3,
                latency: Some(Duration::from_millis(200)),
                cpu_burn: true,
                leak_bytes_per_sec: Some(10 << 20),
                fail_health: true,
                exit_immediately: true,
                handover_hang: true,
            }
        );
    }

    #[test]
    fn spec_examples_from_the_product_doc_parse() {
        assert_eq!(parse("crash-after=5s").unwrap().crash_after, Some(Duration::from_secs(5)));
        assert_eq!(parse("error-rate=0.3").unwrap().error_rate, 0.3);
        assert_eq!(parse("latency=200ms").unwrap().latency, Some(Duration::from_millis(200)));
        assert!(parse("cpu-burn").unwrap().cpu_burn);
        assert_eq!(parse("leak=10MB/s").unwrap().leak_bytes_per_sec, Some(10 * 1024 * 1024));
        assert_eq!(parse("leak=512kb").unwrap().leak_bytes_per_sec, Some(512 * 1024));
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            "",
            "crash-after=2m,latency=250ms",
            "error-rate=1,leak=512KB/s,fail-health",
            "cpu-burn,exit-immediately,leak=1B/s",
            "fail-health,handover-hang",
        ] {
            let f = parse(spec).unwrap();
            assert_eq!(parse(&f.to_string()).unwrap(), f, "{spec}");
        }
        assert_eq!(parse("latency=1m30s,error-rate=0.25").unwrap().to_string(), "error-rate=0.25,latency=1m30s");
    }

    #[test]
    fn unknown_knob_is_named() {
        let err = parse("latency=1s,explode").unwrap_err();
        assert_eq!(err, FaultError::UnknownKnob { knob: "explode".into() });
        assert!(err.to_string().contains("`explode`"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_knob_name() {
        for (spec, knob) in [
            ("latency=200", "latency"),
            ("latency=fast", "latency"),
            ("crash-after=-1s", "crash-after"),
            ("error-rate=1.5", "error-rate"),
            ("error-rate=-0.1", "error-rate"),
            ("error-rate=NaN", "error-rate"),
            ("error-rate=lots", "error-rate"),
            ("leak=10XB/s", "leak"),
            ("leak=0MB/s", "leak"),
            ("leak=MB/s", "leak"),
        ] {
            match parse(spec) {
                Err(FaultError::BadValue { knob: k, .. }) => assert_eq!(k, knob, "{spec}"),
                other => panic!("{spec}: expected BadValue, got {other:?}"),
            }
            let msg = parse(spec).unwrap_err().to_string();
            assert!(msg.contains(&format!("`{knob}`")), "{msg}");
        }
    }

    #[test]
    fn missing_unexpected_and_duplicate_values() {
        assert!(matches!(parse("latency"), Err(FaultError::MissingValue { .. })));
        assert!(matches!(parse("error-rate="), Err(FaultError::MissingValue { .. })));
        assert!(matches!(parse("cpu-burn=yes"), Err(FaultError::UnexpectedValue { .. })));
        assert!(matches!(parse("handover-hang=1"), Err(FaultError::UnexpectedValue { .. })));
        assert!(matches!(parse("handover-hang,handover-hang"), Err(FaultError::Duplicate { .. })));
        assert!(matches!(parse("latency=1s,latency=2s"), Err(FaultError::Duplicate { .. })));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h1s"), Ok(Duration::from_secs(3601)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(parse_size("512KB"), Ok(512 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("7b"), Ok(7));
        assert!(parse_size("10").is_err());
        assert!(parse_size("99999999999999GB").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
