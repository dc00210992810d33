//! `outrider-demo-sidecar`: the reference sidecar used by the Outrider demo and tests.
//!
//! A small HTTP service on `127.0.0.1:$PORT` — or on a listening socket inherited through
//! `LISTEN_FDS` during a hot upgrade — answering:
//!
//! - `GET /` → `{"service": "demo", "version": $OUTRIDER_VERSION, "instance": $OUTRIDER_INSTANCE, "pid": N}`
//! - `GET /healthz` → `200 ok` (`503` while draining or with the `fail-health` fault)
//! - `GET /metrics` → `requests_total`, `errors_total`, `request_duration_seconds`,
//!   `requests_in_flight` and `demo_info{version}` in the Prometheus text format
//!
//! Faults are injected through `DEMO_FAULT` (see [`Faults`]), so that a "defective version"
//! is just a version whose environment sets a fault. On SIGTERM or SIGINT the sidecar stops
//! accepting, answers `/healthz` with 503, lets in-flight requests finish for up to
//! `DRAIN_TIMEOUT` (default 10s) and exits 0.

mod config;
mod effects;
mod fault;
pub mod listener;
mod metrics;
mod server;

use std::{
    future::{Future, IntoFuture, pending},
    net::{Ipv4Addr, TcpListener},
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::oneshot,
};
use tracing::{info, warn};

pub use config::{Config, ConfigError, DEFAULT_DRAIN_TIMEOUT, DEFAULT_PORT, UNKNOWN};
pub use fault::{FaultError, Faults, KNOWN_KNOBS, format_duration, parse_duration, parse_size};
pub use metrics::Metrics;

use server::AppState;

/// Runs the sidecar until SIGTERM or SIGINT: serves on the inherited listener if
/// `config` has one, otherwise binds `127.0.0.1:{config.port}`.
///
/// Returns `Ok(())` after a graceful shutdown, and an error when the sidecar cannot start or
/// a fault (`exit-immediately`, `crash-after`) ends it; `main` turns that into exit status 1.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let listener = match config.inherited_listener.take() {
        Some(listener) => listener,
        None => TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{}", config.port))?,
    };
    let shutdown = shutdown_signal().context("cannot install the SIGTERM/SIGINT handlers")?;
    run_with_listener(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` completes, then drains: stops accepting, answers
/// `/healthz` with 503 and waits up to `config.drain_timeout` for in-flight requests.
///
/// `config.port` and `config.inherited_listener` are ignored. This is the entry point for
/// tests, which bind `127.0.0.1:0` themselves.
pub async fn run_with_listener<F>(config: Config, listener: TcpListener, shutdown: F) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let Config { version, instance, faults, drain_timeout, .. } = config;
    if faults.exit_immediately {
        bail!("fault exit-immediately (DEMO_FAULT): exiting at start");
    }
    listener.set_nonblocking(true).context("cannot make the listener non-blocking")?;
    let listener = tokio::net::TcpListener::from_std(listener).context("cannot register the listener")?;
    let addr = listener.local_addr().context("cannot read the listen address")?;
    let pid = std::process::id();
    let fault_spec = if faults.is_empty() { "none".to_owned() } else { faults.to_string() };
    info!(
        %version,
        %instance,
        pid,
        %addr,
        faults = %fault_spec,
        "outrider-demo-sidecar listening"
    );

    let _effects = effects::start(&faults);
    let crash_after = faults.crash_after;
    let state = Arc::new(AppState::new(version, instance, faults));
    let app = server::router(state.clone());

    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        state.draining.store(true, Ordering::SeqCst);
        info!("shutdown requested: no longer accepting, draining in-flight requests");
        let _ = drain_tx.send(());
    };
    let serve = axum::serve(listener, app).with_graceful_shutdown(signal).into_future();
    let drain_deadline = async move {
        if drain_rx.await.is_err() {
            pending::<()>().await;
        }
        tokio::time::sleep(drain_timeout).await;
    };
    let crash = async move {
        match crash_after {
            Some(after) => tokio::time::sleep(after).await,
            None => pending().await,
        }
    };

    tokio::select! {
        served = serve => {
            served.context("serving HTTP")?;
            info!("drained; exiting");
            Ok(())
        }
        () = drain_deadline => {
            warn!(
                drain_timeout = %format_duration(drain_timeout),
                "drain timeout elapsed with requests still in flight; exiting anyway"
            );
            Ok(())
        }
        () = crash => {
            let after = crash_after.map(format_duration).unwrap_or_default();
            bail!("fault crash-after={after} (DEMO_FAULT): crashing")
        }
    }
}

/// A future that completes on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("received SIGTERM"),
            _ = int.recv() => info!("received SIGINT"),
        }
    })
}
