//! `outrider server`: runs the manager until SIGINT or SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use outrider_manager::{InstanceRetention, ManagerConfig, Retention, TlsFiles, Tuning, executor::SystemClock};
use outrider_model::HumanDuration;

/// Flags of `outrider server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Directory of the admin token, and of the embedded store unless --store names another.
    #[arg(long, env = "OUTRIDER_DATA_DIR", default_value = "./outrider-data")]
    pub data_dir: PathBuf,
    /// The store: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]` for an etcd cluster (keys under
    /// PREFIX/); left out, the embedded store in the data dir.
    #[arg(long, env = "OUTRIDER_STORE")]
    pub store: Option<String>,
    /// Address for the REST API and agent sync (gRPC) on one port.
    #[arg(long, env = "OUTRIDER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// An instance whose agent has been away this long is `gone`: it no longer counts in
    /// plans (its agent simply registers again if it returns).
    #[arg(long, default_value = "5m")]
    pub instance_ttl: HumanDuration,
    /// A gone instance is removed this long after it went.
    #[arg(long, default_value = "1d")]
    pub instance_retention: HumanDuration,
    /// Events kept per tenant; older ones are deleted (`since` cursors keep working).
    #[arg(long, env = "OUTRIDER_EVENT_RETENTION", default_value_t = 100_000)]
    pub event_retention: usize,
    /// The Prometheus server (`http://host:9090`) that plans' analysis queries run on.
    #[arg(long, env = "OUTRIDER_PROMETHEUS")]
    pub prometheus: Option<String>,
    /// The server's certificate chain (PEM): the port then speaks TLS only.
    #[arg(long, env = "OUTRIDER_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long, env = "OUTRIDER_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) of agents' client certificates: agents must then sync with a certificate
    /// it signed (operators keep using tokens).
    #[arg(long, env = "OUTRIDER_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// A CA (PEM) that `https://` webhook receivers may be signed by, besides the system's.
    #[arg(long, env = "OUTRIDER_WEBHOOK_CA", value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// This manager's name among several on one etcd (default: host name and process id).
    #[arg(long, env = "OUTRIDER_NAME", value_parser = manager_name)]
    pub name: Option<String>,
    /// With several managers on etcd: how long a dead manager keeps its leadership (the
    /// executor's longest pause when the leader dies), 2s to 5m.
    #[arg(long, default_value = "5s", value_parser = leader_lease)]
    pub leader_lease: HumanDuration,
}

/// A `--name`: 1 to 63 letters, digits, `-`, `_` or `.`.
fn manager_name(s: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok { Ok(s.to_owned()) } else { Err("1 to 63 letters, digits, '-', '_' or '.'".into()) }
}

/// A `--leader-lease` within what etcd grants and what keeps a dead leader's pause short.
fn leader_lease(s: &str) -> Result<HumanDuration, String> {
    let d: HumanDuration = s.parse()?;
    let (min, max) = (std::time::Duration::from_secs(2), std::time::Duration::from_secs(300));
    if d.0 < min || d.0 > max {
        return Err(format!("{s} is outside 2s..5m"));
    }
    Ok(d)
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the manager.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let instances = InstanceRetention { ttl: args.instance_ttl.0, keep_gone: args.instance_retention.0 };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: args.client_ca }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = ManagerConfig {
        tls,
        webhook_ca: args.webhook_ca,
        instances,
        prometheus: args.prometheus.clone(),
        store: args.store.clone(),
        name: args.name.clone(),
        leader_lease: args.leader_lease.0,
        ..ManagerConfig::new(args.data_dir.clone(), args.listen)
    };
    let retention = Retention { events_per_tenant: args.event_retention.max(1), ..Retention::default() };
    let tuning = Tuning { retention, ..Tuning::default() };
    let manager = outrider_manager::start_with(config, Arc::new(SystemClock), tuning).await?;
    let store = args.store.unwrap_or_else(|| args.data_dir.display().to_string());
    eprintln!(
        "outrider manager on {scheme}://{} (data in {store}, admin token in {})",
        manager.addr,
        args.data_dir.join("admin.token").display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    manager.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{leader_lease, manager_name};

    #[test]
    fn a_leader_lease_outside_2s_to_5m_or_unreadable_is_refused() {
        assert_eq!(leader_lease("5s").unwrap().0, std::time::Duration::from_secs(5));
        for bad in ["1s", "500ms", "6m", "0s", "soon", ""] {
            assert!(leader_lease(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_manager_name_is_short_and_safe_for_a_key() {
        assert!(manager_name("m1").is_ok() && manager_name("host-1.example_2").is_ok());
        for bad in ["", "a/b", "m 1", "m1\n", &"x".repeat(64)] {
            assert!(manager_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
