//! Injected defects: `--defect version=1.3.0,trait=protocol:http,effect=crash` makes the
//! instances it selects report a fault once they run that version (PRODUCT.md §5), with a
//! size where the effect has one (`effect=errors:0.02`, PRODUCT.md §8).

use std::{collections::BTreeMap, fmt, str::FromStr};

use outrider_model::{validate_name, validate_version};

use crate::SimInstance;

/// The fault a defective version shows on the instances a [`Defect`] selects, with its size
/// (PRODUCT.md §8: `effect=errors:RATIO`, `latency:FACTOR`, `cpu:POINTS`, `memory:MIB_PER_S`,
/// `crash`; a bare name has the size in [`Effect::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// The sidecar keeps exiting: exits and restarts grow, then it is in `crash_loop`.
    Crash,
    /// This share of requests fails on top of the healthy one (bare: 0.3).
    Errors(f64),
    /// The metric `latency_p99_ms` is this many times the healthy figure (bare: 10).
    Latency(f64),
    /// CPU use is this many percentage points of a core higher (bare: 85, about 90 % in all).
    Cpu(f64),
    /// Resident memory grows this many MiB a second (bare: 10).
    Memory(f64),
}

impl Effect {
    /// Every effect at its bare size, in the order the help lists them.
    pub const ALL: [Self; 5] =
        [Self::Crash, Self::Errors(0.3), Self::Latency(10.0), Self::Cpu(85.0), Self::Memory(10.0)];

    /// The name in `effect=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Errors(_) => "errors",
            Self::Latency(_) => "latency",
            Self::Cpu(_) => "cpu",
            Self::Memory(_) => "memory",
        }
    }

    /// The size (none for `crash`).
    pub fn size(self) -> Option<f64> {
        match self {
            Self::Crash => None,
            Self::Errors(v) | Self::Latency(v) | Self::Cpu(v) | Self::Memory(v) => Some(v),
        }
    }

    /// The same effect at `size`, checked against what the effect allows.
    fn sized(self, size: &str) -> Result<Self, String> {
        let value: f64 = size.parse().map_err(|_| format!("the size {size:?} of effect {self} is not a number"))?;
        let (ok, allowed) = match self {
            Self::Crash => return Err("effect crash takes no size: write effect=crash".to_owned()),
            Self::Errors(_) => (value > 0.0 && value <= 1.0, "a share of requests above 0 and at most 1"),
            Self::Latency(_) => (value > 0.0 && value.is_finite(), "a factor above 0"),
            Self::Cpu(_) => (value > 0.0 && value <= 100.0, "percentage points above 0 and at most 100"),
            Self::Memory(_) => (value > 0.0 && value.is_finite(), "MiB a second above 0"),
        };
        if !ok {
            return Err(format!("effect {self}:{size}: the size must be {allowed}"));
        }
        Ok(match self {
            Self::Crash => Self::Crash,
            Self::Errors(_) => Self::Errors(value),
            Self::Latency(_) => Self::Latency(value),
            Self::Cpu(_) => Self::Cpu(value),
            Self::Memory(_) => Self::Memory(value),
        })
    }

    /// Whether it has its bare size.
    fn is_bare(self) -> bool {
        Self::ALL.contains(&self)
    }
}

impl fmt::Display for Effect {
    /// The name, then `:SIZE` unless the size is the bare one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        match self.size() {
            Some(size) if !self.is_bare() => write!(f, ":{size}"),
            _ => Ok(()),
        }
    }
}

impl FromStr for Effect {
    type Err = String;

    /// `NAME` or `NAME:SIZE`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, size) = s.split_once(':').map_or((s, None), |(n, v)| (n, Some(v)));
        let bare = Self::ALL.into_iter().find(|e| e.as_str() == name).ok_or_else(|| {
            format!(
                "unknown effect {name:?}: use crash, errors:RATIO, latency:FACTOR, cpu:POINTS or memory:MIB_PER_S \
                 (the size is optional)"
            )
        })?;
        size.map_or(Ok(bare), |size| bare.sized(size))
    }
}

/// A defect: instances selected by `service`, `region` and `traits` (each absent or empty:
/// any) that run `version` (of `sidecar`, or of any sidecar) show `effect`.
///
/// Written `KEY=VALUE` pairs separated by commas: `version=` and `effect=` are required;
/// `service=NAME`, `region=R` and `sidecar=NAME` are optional and given at most once;
/// `trait=KEY:VALUE` (or `trait=KEY=VALUE`) may be repeated, and every trait must match.
#[derive(Debug, Clone, PartialEq)]
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
                    "defect {spec:?} needs effect=crash, effect=errors[:RATIO], effect=latency[:FACTOR], \
                     effect=cpu[:POINTS] or effect=memory[:MIB_PER_S]"
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
    fn effects_take_sizes_and_bare_names_keep_the_default_ones() {
        let effect = |s: &str| parse(&format!("version=1.0.0,effect={s}")).unwrap().effect;
        assert_eq!(effect("errors:0.02"), Effect::Errors(0.02));
        assert_eq!(effect("latency:1.5"), Effect::Latency(1.5));
        assert_eq!(effect("cpu:40"), Effect::Cpu(40.0));
        assert_eq!(effect("memory:2"), Effect::Memory(2.0));
        assert_eq!(effect("errors"), Effect::Errors(0.3));
        assert_eq!(effect("latency"), Effect::Latency(10.0));
        assert_eq!(effect("cpu"), Effect::Cpu(85.0));
        assert_eq!(effect("memory"), Effect::Memory(10.0));
        assert_eq!(effect("crash"), Effect::Crash);
        // Sizes display back, bare sizes as the bare name.
        for (spec, shown) in [("errors:0.02", "errors:0.02"), ("cpu:40", "cpu:40"), ("latency:10", "latency")] {
            let d = parse(&format!("version=1.0.0,effect={spec}")).unwrap();
            assert_eq!(d.to_string(), format!("version=1.0.0,effect={shown}"));
            assert_eq!(parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn bad_specs_are_refused_naming_the_problem() {
        let cases = [
            ("", "is not KEY=VALUE"),
            ("version=1.3.0", "needs effect="),
            ("effect=crash", "needs version="),
            ("version=1.3.0,effect=explode", "unknown effect \"explode\""),
            ("version=1.3.0,effect=explode:2", "unknown effect \"explode\""),
            ("version=1.3.0,effect=crash:2", "effect crash takes no size"),
            ("version=1.3.0,effect=errors:lots", "the size \"lots\" of effect errors is not a number"),
            ("version=1.3.0,effect=errors:1.5", "a share of requests above 0 and at most 1"),
            ("version=1.3.0,effect=errors:0", "a share of requests above 0 and at most 1"),
            ("version=1.3.0,effect=latency:-1", "a factor above 0"),
            ("version=1.3.0,effect=latency:inf", "a factor above 0"),
            ("version=1.3.0,effect=cpu:150", "percentage points above 0 and at most 100"),
            ("version=1.3.0,effect=memory:NaN", "MiB a second above 0"),
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
