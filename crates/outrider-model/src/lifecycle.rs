//! How the agent carries out the `hot` and `warm` upgrade modes of a sidecar: the listening
//! sockets it owns, how a new generation takes the sockets over, and how an instance is
//! taken out of traffic and put back. See `docs/handover.md` for the protocols.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{HumanDuration, Probe, Scrape, ValidationError, validate_name};

/// How the agent runs a sidecar's processes: health checks, stop, agent-owned sockets, the
/// hot-upgrade handover and the warm-upgrade actions. A [`crate::Sidecar`] declares it and
/// every [`crate::DesiredSidecar`] carries it to the agent; both flatten it into their JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Must pass before the sidecar counts as `running` (static health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Checked while it runs (dynamic health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Time between SIGTERM and SIGKILL when it is stopped (default 10s).
    #[serde(default = "Lifecycle::default_drain")]
    pub drain_time: HumanDuration,
    /// Listening sockets the agent owns and passes to every generation (`LISTEN_FDS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<ListenSocket>,
    /// How a hot upgrade hands the listening sockets over (default `listen-fds`).
    #[serde(default)]
    pub handover: Handover,
    /// The sidecar says it is ready with `READY=1` on `NOTIFY_SOCKET` (sd_notify); the
    /// agent waits for it before the startup probe. Recommended with shared sockets, where a
    /// probe on the port may be answered by the old generation.
    #[serde(default)]
    pub notify_ready: bool,
    /// How long a new generation must stay up after its readiness signals (`READY=1`, the
    /// startup probe, or just its spawn when it has neither) before the old generation of a
    /// hot upgrade is told to drain, or a warm upgrade puts the instance back in traffic. A
    /// generation that exits within it is a failed upgrade and the old one keeps serving.
    /// Default 3s, at most 5m; `0s` turns the wait off.
    #[serde(default = "Lifecycle::default_min_ready")]
    pub min_ready: HumanDuration,
    /// How a warm upgrade takes the instance out of traffic and puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<Warm>,
    /// The sidecar's own Prometheus endpoint and the figures the agent derives from it
    /// (absent: nothing is scraped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape: Option<Scrape>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            startup_probe: None,
            liveness_probe: None,
            drain_time: Self::default_drain(),
            sockets: Vec::new(),
            handover: Handover::default(),
            notify_ready: false,
            min_ready: Self::default_min_ready(),
            warm: None,
            scrape: None,
        }
    }
}

/// Default of [`Lifecycle::min_ready`].
pub const DEFAULT_MIN_READY: Duration = Duration::from_secs(3);
/// Largest [`Lifecycle::min_ready`].
pub const MAX_MIN_READY: Duration = Duration::from_secs(300);

impl Lifecycle {
    fn default_drain() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    fn default_min_ready() -> HumanDuration {
        HumanDuration(DEFAULT_MIN_READY)
    }

    /// Checks every field, for a sidecar that supports the hot (`hot`) and warm
    /// (`warm_mode`) upgrade modes or not.
    pub(crate) fn validate(&self, hot: bool, warm_mode: bool) -> Result<(), ValidationError> {
        if let Some(p) = &self.startup_probe {
            p.validate("startup_probe")?;
        }
        if let Some(p) = &self.liveness_probe {
            p.validate("liveness_probe")?;
        }
        if self.min_ready.0 > MAX_MIN_READY {
            return Err(ValidationError::new(
                "min_ready",
                format!("{} is above the longest allowed, {}", self.min_ready, HumanDuration(MAX_MIN_READY)),
            ));
        }
        let Self { sockets, handover, warm, scrape, .. } = self;
        if let Some(s) = scrape {
            s.validate()?;
        }
        for (i, s) in sockets.iter().enumerate() {
            validate_name("sockets.name", &s.name)?;
            if sockets[..i].iter().any(|o| o.name == s.name) {
                return Err(ValidationError::new("sockets", format!("socket {:?} is listed twice", s.name)));
            }
            if !s.listen.contains(':') {
                return Err(ValidationError::new("sockets.listen", format!("{:?} is not host:port", s.listen)));
            }
        }
        handover.validate()?;
        if hot && *handover == Handover::ListenFds && sockets.is_empty() {
            return Err(ValidationError::new(
                "handover",
                "hot upgrades with the listen-fds handover need agent-owned `sockets`; list them, or use handover scm-rights or signal",
            ));
        }
        match warm {
            Some(w) => w.validate()?,
            None if warm_mode => {
                return Err(ValidationError::new(
                    "warm",
                    "the warm mode needs `warm.drain`: how to take the instance out of traffic",
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// A listening TCP socket the agent binds and owns, and passes to every generation of the
/// sidecar through the `LISTEN_FDS` convention (fd 3 onwards, names in `LISTEN_FDNAMES`).
/// Because the agent keeps it open, connections wait in its queue instead of being refused
/// while generations change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSocket {
    /// Name passed in `LISTEN_FDNAMES` (`http`).
    pub name: String,
    /// `host:port` to bind; may hold placeholders (`127.0.0.1:${label.port}`).
    pub listen: String,
}

/// How a hot upgrade passes the listening sockets from the old generation to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Handover {
    /// The agent owns the sockets (`sockets`) and each generation inherits them through
    /// `LISTEN_FDS`: the sidecar needs no handover code. The default.
    #[default]
    ListenFds,
    /// The sidecar owns its sockets; the new generation asks the old one for them over the
    /// unix socket named by `OUTRIDER_HANDOVER_SOCKET` (`SCM_RIGHTS`).
    ScmRights,
    /// The sidecar upgrades itself on a signal, nginx-style: the agent swaps the executable
    /// behind `${artifact}` (a stable symlink), sends `signal` to the running process, waits
    /// for a new pid in `pid_file`, then sends `stop_signal` to the old process.
    Signal {
        /// Signal that starts the sidecar's own upgrade (default `SIGUSR2`).
        #[serde(default = "Handover::default_signal")]
        signal: String,
        /// Signal that makes the old process drain and exit (default `SIGTERM`; nginx: `SIGQUIT`).
        #[serde(default = "Handover::default_stop_signal")]
        stop_signal: String,
        /// Where the sidecar writes its pid; may hold placeholders. Default: a file in the
        /// agent's data dir, passed as `OUTRIDER_PID_FILE`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid_file: Option<String>,
    },
}

/// Signals a sidecar may be sent for a reload or a stop.
pub const SIGNALS: [&str; 7] = ["SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGWINCH"];

impl Handover {
    fn default_signal() -> String {
        "SIGUSR2".into()
    }
    fn default_stop_signal() -> String {
        "SIGTERM".into()
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if let Self::Signal { signal, stop_signal, pid_file } = self {
            for s in [signal, stop_signal] {
                if !SIGNALS.contains(&s.as_str()) {
                    return Err(ValidationError::new(
                        "handover",
                        format!("{s:?} is not one of {}", SIGNALS.join(", ")),
                    ));
                }
            }
            if pid_file.as_deref().is_some_and(str::is_empty) {
                return Err(ValidationError::new("handover", "pid_file must not be empty"));
            }
        }
        Ok(())
    }
}

/// A step the agent runs around a warm upgrade: an HTTP call or a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// URL to call; may hold placeholders. Any 2xx answer is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// HTTP method (default `POST`).
    #[serde(default = "Action::default_method")]
    pub method: String,
    /// Command to run; may hold placeholders. Exit status 0 is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Time the action may take.
    #[serde(default = "Action::default_timeout")]
    pub timeout: HumanDuration,
}

impl Action {
    fn default_method() -> String {
        "POST".into()
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }

    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        match (&self.http, &self.exec) {
            (Some(u), None) if !u.is_empty() => {}
            (None, Some(c)) if !c.is_empty() => {}
            _ => return Err(ValidationError::new(field, "set exactly one of http, exec (non-empty)")),
        }
        if !matches!(self.method.as_str(), "GET" | "POST" | "PUT" | "DELETE") {
            return Err(ValidationError::new(field, format!("method {:?}: use GET, POST, PUT or DELETE", self.method)));
        }
        if self.timeout.0.is_zero() {
            return Err(ValidationError::new(field, "timeout must be above zero"));
        }
        Ok(())
    }
}

/// How a warm upgrade takes the instance out of traffic and puts it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warm {
    /// Takes the instance out of traffic (deregister, mark unready …).
    pub drain: Action,
    /// Puts it back; run after the new process is ready, and after a failed upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undrain: Option<Action>,
    /// Time for in-flight work to finish after `drain`, before the restart (default 1s).
    #[serde(default = "Warm::default_wait")]
    pub wait: HumanDuration,
}

impl Warm {
    fn default_wait() -> HumanDuration {
        HumanDuration::from_secs(1)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.drain.validate("warm.drain")?;
        if let Some(u) = &self.undrain {
            u.validate("warm.undrain")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_parses_by_kind_with_defaults() {
        let h: Handover = serde_json::from_str(r#"{"kind":"signal"}"#).unwrap();
        assert_eq!(h, Handover::Signal { signal: "SIGUSR2".into(), stop_signal: "SIGTERM".into(), pid_file: None });
        assert_eq!(serde_json::from_str::<Handover>(r#"{"kind":"scm-rights"}"#).unwrap(), Handover::ScmRights);
        assert!(serde_json::from_str::<Handover>(r#"{"kind":"teleport"}"#).is_err());
        let bad: Handover = serde_json::from_str(r#"{"kind":"signal","signal":"SIGKILL"}"#).unwrap();
        assert!(bad.validate().is_err());
    }

    /// Checks the lifecycle made of these hot and warm settings.
    fn validate(
        sockets: &[ListenSocket],
        handover: &Handover,
        warm: Option<&Warm>,
        hot: bool,
        warm_mode: bool,
    ) -> Result<(), ValidationError> {
        let lifecycle = Lifecycle {
            sockets: sockets.to_vec(),
            handover: handover.clone(),
            warm: warm.cloned(),
            ..Lifecycle::default()
        };
        lifecycle.validate(hot, warm_mode)
    }

    #[test]
    fn hot_needs_a_way_to_keep_sockets_and_warm_needs_a_drain() {
        let socket = ListenSocket { name: "http".into(), listen: "127.0.0.1:${label.port}".into() };
        assert!(validate(&[], &Handover::ListenFds, None, true, false).is_err());
        assert!(validate(std::slice::from_ref(&socket), &Handover::ListenFds, None, true, false).is_ok());
        assert!(validate(&[], &Handover::ScmRights, None, true, false).is_ok());
        assert!(validate(&[socket.clone(), socket], &Handover::ListenFds, None, true, false).is_err());
        assert_eq!(validate(&[], &Handover::ListenFds, None, false, true).unwrap_err().field, "warm");
        let warm: Warm =
            serde_json::from_str(r#"{"drain":{"exec":["true"]},"undrain":{"http":"http://x/up"}}"#).unwrap();
        assert!(validate(&[], &Handover::ListenFds, Some(&warm), false, true).is_ok());
        let both: Warm = serde_json::from_str(r#"{"drain":{"exec":["true"],"http":"http://x"}}"#).unwrap();
        assert_eq!(validate(&[], &Handover::ListenFds, Some(&both), false, true).unwrap_err().field, "warm.drain");
    }

    #[test]
    fn min_ready_defaults_to_a_few_seconds_and_is_bounded() {
        let check = |json: &str| {
            let l: Lifecycle = serde_json::from_str(json).unwrap();
            l.validate(false, false).map(|()| l.min_ready)
        };
        assert_eq!(check("{}"), Ok(HumanDuration::from_secs(3)));
        assert_eq!(check(r#"{"min_ready":"0s"}"#), Ok(HumanDuration::from_secs(0)));
        assert_eq!(check(r#"{"min_ready":"5m"}"#), Ok(HumanDuration::from_secs(300)));
        assert_eq!(check(r#"{"min_ready":"301s"}"#).unwrap_err().field, "min_ready");
        assert!(serde_json::from_str::<Lifecycle>(r#"{"min_ready":"soon"}"#).is_err());
    }
}
