//! Injected defects: `--defect version=1.3.0,trait=protocol:http,effect=crash` makes the
//! instances it selects report a fault once they run that version (PRODUCT.md §5).

use std::{collections::BTreeMap, fmt, str::FromStr};

use outrider_model::{validate_name, validate_version};

use crate::SimInstance;

/// The fault a defective version shows on the instances a [`Defect`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// The sidecar keeps exiting: exits and restarts grow, then it is in `crash_loop`.
    Crash,
    /// The metric `error_rate` is 0.3 (healthy: about 0.001).
    Errors,
    /// The metric `latency_p99_ms` is about ten times the healthy figure.
    Latency,
    /// CPU use is about 90 % of a core (healthy: about 5 %).
    Cpu,
    /// Resident memory grows steadily (10 MiB a second).
    Memory,
}

impl Effect {
    /// Every effect, in the order the help lists them.
    pub const ALL: [Self; 5] = [Self::Crash, Self::Errors, Self::Latency, Self::Cpu, Self::Memory];

    /// The spelling of `effect=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Errors => "errors",
            Self::Latency => "latency",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Effect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown effect {s:?}: use crash, errors, latency, cpu or memory"))
    }
}

/// A defect: instances selected by `service`, `region` and `traits` (each absent or empty:
/// any) that run `version` (of `sidecar`, or of any sidecar) show `effect`.
///
/// Written `KEY=VALUE` pairs separated by commas: `version=` and `effect=` are required;
/// `service=NAME`, `region=R` and `sidecar=NAME` are optional and given at most once;
/// `trait=KEY:VALUE` (or `trait=KEY=VALUE`) may be repeated, and every trait must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defect {
    /// The defective version.
    pub version: String,
    /// What it does.
    pub effect: Effect,
    /// Only this sidecar's `version` (none: any sidecar at that version).
    pub sidecar: Option<String>,
    /// Only instances of this service.
    pub service: Option<String>,
    /// Only instances in this region.
    pub region: Option<String>,
    /// Only instances of services with all of these traits.
    pub traits: BTreeMap<String, String>,
}

impl Defect {
    /// Whether `instance`, of a service with `traits`, is one the defect affects.
    pub fn selects(&self, instance: &SimInstance, traits: &BTreeMap<String, String>) -> bool {
        self.service.as_ref().is_none_or(|s| *s == instance.service)
            && self.region.as_ref().is_none_or(|r| *r == instance.labels.region)
            && self.traits.iter().all(|(k, v)| traits.get(k) == Some(v))
    }

    /// Whether running `sidecar` at `version` is defective.
    pub fn hits(&self, sidecar: &str, version: &str) -> bool {
        self.version == version && self.sidecar.as_ref().is_none_or(|s| s == sidecar)
    }
}

/// Keys a defect accepts, for error messages.
const KEYS: &str = "version, effect, trait, service, region or sidecar";

impl FromStr for Defect {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut version = None;
        let mut effect = None;
        let mut sidecar = None;
        let mut service = None;
        let mut region = None;
        let mut traits = BTreeMap::new();
        let once = |slot: &mut Option<String>, key: &str, value: &str| {
            if slot.replace(value.to_owned()).is_some() {
                return Err(format!("{key}= is given twice in defect {spec:?}"));
            }
            Ok(())
        };
        for part in spec.split(',').map(str::trim) {
            let Some((key, value)) = part.split_once('=').filter(|(k, v)| !k.is_empty() && !v.is_empty()) else {
                return Err(format!("{part:?} in defect {spec:?} is not KEY=VALUE (keys: {KEYS})"));
            };
            let named = |field: &str| validate_name(field, value).map_err(|e| format!("defect {spec:?}: {e}"));
            match key {
                "version" => {
                    validate_version(value).map_err(|e| format!("defect {spec:?}: {e}"))?;
                    once(&mut version, key, value)?;
                }
                "effect" => {
                    if effect.replace(value.parse::<Effect>()?).is_some() {
                        return Err(format!("effect= is given twice in defect {spec:?}"));
                    }
                }
                "sidecar" => {
                    named("sidecar")?;
                    once(&mut sidecar, key, value)?;
                }
                "service" => {
                    named("service")?;
                    once(&mut service, key, value)?;
                }
                "region" => {
                    named("region")?;
                    once(&mut region, key, value)?;
                }
                "trait" => {
                    let Some((k, v)) = value.split_once([':', '=']).filter(|(k, v)| !k.is_empty() && !v.is_empty())
                    else {
                        return Err(format!("trait={value} in defect {spec:?} is not trait=KEY:VALUE"));
                    };
                    if traits.insert(k.to_owned(), v.to_owned()).is_some() {
                        return Err(format!("trait {k:?} is given twice in defect {spec:?}"));
                    }
                }
                other => return Err(format!("unknown key {other:?} in defect {spec:?} (keys: {KEYS})")),
            }
        }
        Ok(Self {
            version: version.ok_or_else(|| format!("defect {spec:?} needs version=VERSION"))?,
            effect: effect.ok_or_else(|| {
                format!(
                    "defect {spec:?} needs effect=crash, effect=errors, effect=latency, effect=cpu or effect=memory"
                )
            })?,
            sidecar,
            service,
            region,
            traits,
        })
    }
}

impl fmt::Display for Defect {
    /// The canonical spelling, which parses back to the same defect.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version={},effect={}", self.version, self.effect)?;
        for (key, value) in [("sidecar", &self.sidecar), ("service", &self.service), ("region", &self.region)] {
            if let Some(v) = value {
                write!(f, ",{key}={v}")?;
            }
        }
        for (k, v) in &self.traits {
            write!(f, ",trait={k}:{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Defect, String> {
        s.parse()
    }

    #[test]
    fn the_contract_example_parses() {
        let d = parse("version=1.3.0,trait=protocol:http,effect=crash").unwrap();
        assert_eq!(d.version, "1.3.0");
        assert_eq!(d.effect, Effect::Crash);
        assert_eq!(d.traits, BTreeMap::from([("protocol".to_owned(), "http".to_owned())]));
        assert_eq!((d.service, d.region, d.sidecar), (None, None, None));
    }

    #[test]
    fn every_selector_and_effect_parses_and_displays_back() {
        for effect in Effect::ALL {
            let spec = format!(
                "effect={effect}, version=2.0.0-rc.1,service=payment.api-00001,region=boe,sidecar=mesh,\
                 trait=lang=go,trait=http.compression:brotli"
            );
            let d = parse(&spec).unwrap();
            assert_eq!(d.effect, effect);
            assert_eq!(d.service.as_deref(), Some("payment.api-00001"));
            assert_eq!(d.region.as_deref(), Some("boe"));
            assert_eq!(d.sidecar.as_deref(), Some("mesh"));
            assert_eq!(d.traits.len(), 2);
            assert_eq!(parse(&d.to_string()).unwrap(), d);
        }
        // Without any selector: every instance.
        let d = parse("version=1.0.0,effect=memory").unwrap();
        assert!(d.traits.is_empty() && d.service.is_none());
        assert_eq!(d.to_string(), "version=1.0.0,effect=memory");
    }

    #[test]
    fn bad_specs_are_refused_naming_the_problem() {
        let cases = [
            ("", "is not KEY=VALUE"),
            ("version=1.3.0", "needs effect="),
            ("effect=crash", "needs version="),
            ("version=1.3.0,effect=explode", "unknown effect \"explode\""),
            ("version=1.3.0,effect=crash,colour=red", "unknown key \"colour\""),
            ("version=1.3,effect=crash", "not a semantic version"),
            ("version=1.3.0,effect=crash,trait=protocol", "not trait=KEY:VALUE"),
            ("version=1.3.0,effect=crash,trait=:http", "not trait=KEY:VALUE"),
            ("version=1.3.0,effect=crash,trait=a:1,trait=a:2", "trait \"a\" is given twice"),
            ("version=1.3.0,effect=crash,effect=cpu", "effect= is given twice"),
            ("version=1.3.0,version=1.4.0,effect=crash", "version= is given twice"),
            ("version=1.3.0,effect=crash,service=Bad Name", "must use a-z"),
            ("version=1.3.0,effect=crash,region=", "is not KEY=VALUE"),
            ("version=1.3.0,effect=crash,", "is not KEY=VALUE"),
        ];
        for (spec, want) in cases {
            let err = parse(spec).unwrap_err();
            assert!(err.contains(want), "{spec:?}: {err:?} does not say {want:?}");
        }
    }

    #[test]
    fn selects_by_service_region_and_every_trait() {
        let instance = SimInstance::new("a-i0", "a", "boe", "prod", "canary");
        let traits = BTreeMap::from([("protocol".to_owned(), "http".to_owned()), ("lang".to_owned(), "go".to_owned())]);
        let selects = |spec: &str| parse(spec).unwrap().selects(&instance, &traits);
        assert!(selects("version=1.0.0,effect=crash"));
        assert!(selects("version=1.0.0,effect=crash,trait=protocol:http,trait=lang:go,service=a,region=boe"));
        assert!(!selects("version=1.0.0,effect=crash,trait=protocol:grpc"));
        assert!(!selects("version=1.0.0,effect=crash,trait=protocol:http,trait=lang:java"));
        assert!(!selects("version=1.0.0,effect=crash,trait=framework:kitex"));
        assert!(!selects("version=1.0.0,effect=crash,service=b"));
        assert!(!selects("version=1.0.0,effect=crash,region=sg"));

        let d = parse("version=1.3.0,effect=crash,sidecar=mesh").unwrap();
        assert!(d.hits("mesh", "1.3.0"));
        assert!(!d.hits("mesh", "1.2.0") && !d.hits("logs", "1.3.0"));
        assert!(parse("version=1.3.0,effect=crash").unwrap().hits("logs", "1.3.0"));
    }
}
