//! Configuration from the environment.

use std::{env, net::TcpListener, path::PathBuf, time::Duration};

use outrider_handover::{ListenFdsError, listen_fds};
use thiserror::Error;

use crate::fault::{FaultError, Faults, parse_duration};

/// What `GET /` reports when `OUTRIDER_VERSION` or `OUTRIDER_INSTANCE` is not set.
pub const UNKNOWN: &str = "unknown";

/// The port used when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 8080;

/// How long in-flight requests may take to finish after SIGTERM when `DRAIN_TIMEOUT` is not set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a keep-alive connection may stay idle while draining when `DRAIN_IDLE_GRACE` is
/// not set.
pub const DEFAULT_DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// The name of the socket this sidecar serves on, among inherited or handed-over ones.
pub const HTTP_SOCKET: &str = "http";

/// The sidecar's configuration.
///
/// [`Config::from_env`] reads it from the environment the agent sets up; tests build it
/// directly, usually as `Config { version: "1.2.3".into(), ..Config::default() }`.
#[derive(Debug)]
pub struct Config {
    /// Port to listen on at `127.0.0.1` (`PORT`), unless a listener was inherited.
    pub port: u16,
    /// The version reported by `GET /` and `demo_info`: the content of the file named by
    /// `OUTRIDER_VERSION_FILE` when set, else `OUTRIDER_VERSION`.
    pub version: String,
    /// The instance id reported by `GET /` (`OUTRIDER_INSTANCE`).
    pub instance: String,
    /// Injected faults (`DEMO_FAULT`).
    pub faults: Faults,
    /// How long draining may take after SIGTERM before the process exits anyway
    /// (`DRAIN_TIMEOUT`).
    pub drain_timeout: Duration,
    /// How long a keep-alive connection may stay idle while draining before it is closed
    /// (`DRAIN_IDLE_GRACE`).
    pub drain_idle_grace: Duration,
    /// The unix socket path for the `SCM_RIGHTS` handover between generations
    /// (`OUTRIDER_HANDOVER_SOCKET`); used when no socket was inherited.
    pub handover_socket: Option<PathBuf>,
    /// Where this generation writes its pid once it serves; enables the SIGUSR2 reload
    /// (`OUTRIDER_PID_FILE`).
    pub pid_file: Option<PathBuf>,
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
            drain_idle_grace: DEFAULT_DRAIN_IDLE_GRACE,
            handover_socket: None,
            pid_file: None,
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
    Listen(ListenFdsError),
}

impl Config {
    /// Reads the configuration from the process environment (the variables of
    /// [`Config::from_vars`]) and takes over the socket inherited through `LISTEN_FDS` (with
    /// `LISTEN_PID` and `LISTEN_FDNAMES`): the one named `http`, else the first.
    ///
    /// Call this once, early in `main` and before starting an async runtime: the `LISTEN_*`
    /// variables are removed from the environment only while the process is single-threaded.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Self::from_vars(|name| match env::var(name) {
            Ok(v) => Some(v),
            Err(env::VarError::NotPresent) => None,
            Err(env::VarError::NotUnicode(v)) => Some(v.to_string_lossy().into_owned()),
        })?;
        let mut inherited = listen_fds::take().map_err(ConfigError::Listen)?;
        let name = if inherited.names().any(|n| n == HTTP_SOCKET) {
            Some(HTTP_SOCKET.to_owned())
        } else {
            inherited.names().next().map(str::to_owned)
        };
        if let Some(name) = name {
            config.inherited_listener = inherited.take_tcp_listener(&name).map_err(ConfigError::Listen)?;
            tracing::info!(socket = %name, "serving on an inherited socket (LISTEN_FDS)");
        }
        Ok(config)
    }

    /// Builds the configuration from variables looked up through `var`: `PORT`,
    /// `OUTRIDER_VERSION`, `OUTRIDER_VERSION_FILE` (read here), `OUTRIDER_INSTANCE`,
    /// `DEMO_FAULT`, `DRAIN_TIMEOUT`, `DRAIN_IDLE_GRACE`, `OUTRIDER_HANDOVER_SOCKET` and
    /// `OUTRIDER_PID_FILE`. No inherited listener. Empty values count as unset.
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
        if let Some(path) = get("OUTRIDER_VERSION_FILE") {
            let invalid =
                |reason: String| ConfigError::Invalid { name: "OUTRIDER_VERSION_FILE", value: path.clone(), reason };
            let content = std::fs::read_to_string(&path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
            let version = content.trim();
            if version.is_empty() {
                return Err(invalid("the file is empty".to_owned()));
            }
            config.version = version.to_owned();
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
        if let Some(v) = get("DRAIN_IDLE_GRACE") {
            config.drain_idle_grace = parse_duration(v.trim()).map_err(|reason| ConfigError::Invalid {
                name: "DRAIN_IDLE_GRACE",
                value: v.clone(),
                reason,
            })?;
        }
        config.handover_socket = get("OUTRIDER_HANDOVER_SOCKET").map(PathBuf::from);
        config.pid_file = get("OUTRIDER_PID_FILE").map(PathBuf::from);
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
        assert_eq!(c.drain_idle_grace, Duration::from_secs(1));
        assert!(c.handover_socket.is_none());
        assert!(c.pid_file.is_none());
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
            ("DRAIN_IDLE_GRACE", "250ms"),
            ("OUTRIDER_HANDOVER_SOCKET", "/run/demo/handover.sock"),
            ("OUTRIDER_PID_FILE", "/run/demo/demo.pid"),
        ])
        .unwrap();
        assert_eq!(c.port, 9123);
        assert_eq!(c.version, "1.3.0");
        assert_eq!(c.instance, "i-42");
        assert_eq!(c.faults.latency, Some(Duration::from_millis(200)));
        assert_eq!(c.drain_timeout, Duration::from_secs(3));
        assert_eq!(c.drain_idle_grace, Duration::from_millis(250));
        assert_eq!(c.handover_socket.as_deref(), Some(std::path::Path::new("/run/demo/handover.sock")));
        assert_eq!(c.pid_file.as_deref(), Some(std::path::Path::new("/run/demo/demo.pid")));
    }

    #[test]
    fn the_version_file_overrides_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("version");
        std::fs::write(&file, "2.0.0\n").unwrap();
        let path = file.to_str().unwrap();
        let c = from(&[("OUTRIDER_VERSION", "1.0.0"), ("OUTRIDER_VERSION_FILE", path)]).unwrap();
        assert_eq!(c.version, "2.0.0");

        std::fs::write(&file, " \n").unwrap();
        let err = from(&[("OUTRIDER_VERSION_FILE", path)]).unwrap_err().to_string();
        assert!(err.starts_with("OUTRIDER_VERSION_FILE=") && err.contains("empty"), "{err}");
        let missing = dir.path().join("missing");
        let err = from(&[("OUTRIDER_VERSION_FILE", missing.to_str().unwrap())]).unwrap_err().to_string();
        assert!(err.contains("cannot read it"), "{err}");
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
        let err = from(&[("DRAIN_IDLE_GRACE", "soon")]).unwrap_err().to_string();
        assert!(err.starts_with("DRAIN_IDLE_GRACE="), "{err}");
        let err = from(&[("DEMO_FAULT", "error-rate=0.3,bogus=1")]).unwrap_err().to_string();
        assert!(err.starts_with("DEMO_FAULT: ") && err.contains("`bogus`"), "{err}");
    }
}
