//! What the agent keeps from the processes it starts.

/// The agent's own credential: removed from the environment of sidecars, probes and actions.
pub const TOKEN_ENV: &str = "OUTRIDER_TOKEN";
