//! Configuration from the environment.

use std::{env, net::TcpListener, time::Duration};

use thiserror::Error;

use crate::{
    fault::{FaultError, Faults, parse_duration},
    listener::{self, ListenError},
};

/// What `GET /` reports when `OUTRIDER_VERSION` or `OUTRIDER_INSTANCE` is not set.
pub const UNKNOWN: &str = "unknown";

/// The port used when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 8080;

/// How long in-flight requests may take to finish after SIGTERM when `DRAIN_TIMEOUT` is not set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The sidecar's configuration.
///
/// [`Config::from_env`] reads it from the environment the agent sets up; tests build it
/// directly, usually as `Config { version: "1.2.3".into(), ..Config::default() }`.
#[derive(Debug)]
pub struct Config {
    /// Port to listen on at `127.0.0.1` (`PORT`), unless a listener was inherited.
    pub port: u16,
    /// The version reported by `GET /` and `demo_info` (`OUTRIDER_VERSION`).
    pub version: String,
    /// The instance id reported by `GET /` (`OUTRIDER_INSTANCE`).
    pub instance: String,
    /// Injected faults (`DEMO_FAULT`).
    pub faults: Faults,
    /// How long in-flight requests may take to finish after SIGTERM (`DRAIN_TIMEOUT`).
    pub drain_timeout: Duration,
    /// A listening socket inherited through `LISTEN_FDS` (hot upgrade); when present it is
    /// served instead of binding `port`.
    pub inherited_listener: Option<TcpListener>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            version: UNKNOWN.to_owned(),
            instance: UNKNOWN.to_owned(),
            faults: Faults::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            inherited_listener: None,
        }
    }
}

/// Why the configuration was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// An environment variable holds a value that cannot be used.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `DEMO_FAULT` could not be parsed.
    #[error("DEMO_FAULT: {0}")]
    Fault(#[from] FaultError),
    /// `LISTEN_FDS` was set but the inherited socket cannot be used.
    #[error("inherited socket (LISTEN_FDS): {0}")]
    Listen(#[from] ListenError),
}

impl Config {
    /// Reads the configuration from the process environment: `PORT`, `OUTRIDER_VERSION`,
    /// `OUTRIDER_INSTANCE`, `DEMO_FAULT`, `DRAIN_TIMEOUT`, and the socket-activation
    /// variables `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`.
    ///
    /// An inherited listener is taken over here (see [`listener::take_inherited`]), so call
    /// this once, early in `main` and before starting an async runtime: the `LISTEN_*`
    /// variables are removed from the environment only while the process is single-threaded.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Self::from_vars(|name| match env::var(name) {
            Ok(v) => Some(v),
            Err(env::VarError::NotPresent) => None,
            Err(env::VarError::NotUnicode(v)) => Some(v.to_string_lossy().into_owned()),
        })?;
        config.inherited_listener = listener::take_inherited()?;
        Ok(config)
    }

    /// Builds the configuration from variables looked up through `var`, without touching the
    /// process (no inherited listener). Empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut config = Self::default();
        if let Some(v) = get("PORT") {
            config.port = v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "PORT",
                value: v.clone(),
                reason: "expected a port number from 0 to 65535".to_owned(),
            })?;
        }
        if let Some(v) = get("OUTRIDER_VERSION") {
            config.version = v;
        }
        if let Some(v) = get("OUTRIDER_INSTANCE") {
            config.instance = v;
        }
        if let Some(v) = get("DEMO_FAULT") {
            config.faults = v.parse()?;
        }
        if let Some(v) = get("DRAIN_TIMEOUT") {
            config.drain_timeout = parse_duration(v.trim()).map_err(|reason| ConfigError::Invalid {
                name: "DRAIN_TIMEOUT",
                value: v.clone(),
                reason,
            })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.version, "unknown");
        assert_eq!(c.instance, "unknown");
        assert!(c.faults.is_empty());
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert!(c.inherited_listener.is_none());
    }

    #[test]
    fn reads_every_variable() {
        let c = from(&[
            ("PORT", "9123"),
            ("OUTRIDER_VERSION", "1.3.0"),
            ("OUTRIDER_INSTANCE", "i-42"),
            ("DEMO_FAULT", "latency=200ms"),
            ("DRAIN_TIMEOUT", "3s"),
        ])
        .unwrap();
        assert_eq!(c.port, 9123);
        assert_eq!(c.version, "1.3.0");
        assert_eq!(c.instance, "i-42");
        assert_eq!(c.faults.latency, Some(Duration::from_millis(200)));
        assert_eq!(c.drain_timeout, Duration::from_secs(3));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = from(&[("OUTRIDER_VERSION", ""), ("DEMO_FAULT", ""), ("PORT", "")]).unwrap();
        assert_eq!(c.version, "unknown");
        assert!(c.faults.is_empty());
        assert_eq!(c.port, 8080);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = from(&[("PORT", "80800")]).unwrap_err().to_string();
        assert!(err.starts_with("PORT="), "{err}");
        let err = from(&[("DRAIN_TIMEOUT", "10")]).unwrap_err().to_string();
        assert!(err.starts_with("DRAIN_TIMEOUT="), "{err}");
        let err = from(&[("DEMO_FAULT", "error-rate=0.3,bogus=1")]).unwrap_err().to_string();
        assert!(err.starts_with("DEMO_FAULT: ") && err.contains("`bogus`"), "{err}");
    }
}
