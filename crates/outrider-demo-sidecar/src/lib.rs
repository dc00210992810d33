//! `outrider-demo-sidecar`: the reference sidecar used by the Outrider demo and tests.
//!
//! A small HTTP/1 service answering:
//!
//! - `GET /` → `{"service": "demo", "version": …, "instance": $OUTRIDER_INSTANCE, "pid": N}`
//! - `GET /healthz` → `200 ok` (`503` while draining or with the `fail-health` fault)
//! - `GET /metrics` → `requests_total`, `errors_total`, `request_duration_seconds`,
//!   `requests_in_flight` and `demo_info{version}` in the Prometheus text format
//!
//! It implements the three ways Outrider hot-upgrades a sidecar (`docs/handover.md`), with
//! the [`outrider_handover`] crate. Its socket comes from, in this order:
//!
//! 1. `LISTEN_FDS` / `LISTEN_FDNAMES` (`LISTEN_PID` optional): a socket the agent owns and
//!    passes to every generation; the one named `http`, else the first;
//! 2. `OUTRIDER_HANDOVER_SOCKET`: acquired from the previous generation over that unix socket
//!    (`SCM_RIGHTS`), or bound at `127.0.0.1:$PORT` when there is none; the successor timeout
//!    is `OUTRIDER_HANDOVER_TIMEOUT_MS` (default 5000);
//! 3. otherwise `127.0.0.1:$PORT` (`PORT`, default 8080).
//!
//! Environment:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `PORT` | port to bind at `127.0.0.1` when no socket is inherited or handed over |
//! | `OUTRIDER_VERSION` | the version `GET /` reports |
//! | `OUTRIDER_VERSION_FILE` | a file holding the version; overrides `OUTRIDER_VERSION` (a signal reload keeps the old environment) |
//! | `OUTRIDER_INSTANCE` | the instance id `GET /` reports |
//! | `DEMO_FAULT` | fault knobs, see [`Faults`] |
//! | `DRAIN_TIMEOUT` | longest drain after SIGTERM (default `10s`) |
//! | `DRAIN_IDLE_GRACE` | how long a keep-alive connection may stay idle while draining (default `1s`) |
//! | `NOTIFY_SOCKET` | `READY=1` is sent there once the sidecar serves (never with `fail-health`), `STOPPING=1` when it drains |
//! | `OUTRIDER_HANDOVER_SOCKET`, `OUTRIDER_HANDOVER_TIMEOUT_MS` | the `SCM_RIGHTS` handover (above) |
//! | `OUTRIDER_PID_FILE` | enables the signal reload: the pid is written there once serving; SIGUSR2 starts the program at `argv[0]` again with the socket as fd 3 (see `docs/handover.md`) |
//! | `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` | inherited sockets (above) |
//!
//! On SIGTERM or SIGINT the sidecar drains without failing a request: it stops accepting and
//! closes its listening socket (another generation keeps accepting on the same socket),
//! answers `/healthz` with 503, answers every further request normally but with
//! `Connection: close`, closes connections that stay idle for `DRAIN_IDLE_GRACE`, and exits 0
//! once no connection is left or `DRAIN_TIMEOUT` has passed.

mod config;
mod connections;
mod effects;
mod fault;
mod metrics;
mod reload;
mod server;

use std::{
    future::{Future, pending},
    io,
    net::{Ipv4Addr, TcpListener},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    pin::pin,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use outrider_handover::{Generation, HandoverError, NotListening, notify_ready, notify_stopping, tcp_listener};
use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

pub use config::{
    Config, ConfigError, DEFAULT_DRAIN_IDLE_GRACE, DEFAULT_DRAIN_TIMEOUT, DEFAULT_PORT, HTTP_SOCKET, UNKNOWN,
};
pub use fault::{FaultError, Faults, KNOWN_KNOBS, format_duration, parse_duration, parse_size};
pub use metrics::Metrics;
pub use reload::ReloadError;

use connections::Connections;
use reload::Reload;
use server::AppState;

/// Why the sidecar could not start or stopped with a failure. Causes are kept as sources,
/// so print the whole chain (`main` does).
#[derive(Debug, Error)]
pub enum RunError {
    /// The `exit-immediately` fault.
    #[error("fault exit-immediately (DEMO_FAULT): exiting at start")]
    ExitImmediately,
    /// The `crash-after` fault.
    #[error("fault crash-after={after} (DEMO_FAULT): crashing")]
    Crashed {
        /// The fault's delay, as written.
        after: String,
    },
    /// The shutdown signal handlers cannot be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    SignalHandlers(#[source] io::Error),
    /// The fresh socket cannot be bound.
    #[error("cannot listen on 127.0.0.1:{port}")]
    Bind {
        /// The port.
        port: u16,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// The blocking task running the handover failed.
    #[error("the handover task failed")]
    HandoverTask(#[source] tokio::task::JoinError),
    /// The socket handover from the previous generation failed.
    #[error("socket handover (OUTRIDER_HANDOVER_SOCKET)")]
    Handover(#[source] HandoverError),
    /// The previous generation handed over no socket.
    #[error("the previous generation handed over no socket")]
    NothingHandedOver,
    /// The handed-over socket is not a listening TCP socket.
    #[error("handed-over socket {name:?}")]
    HandedOver {
        /// Its name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: NotListening,
    },
    /// The listening socket cannot be served on.
    #[error("cannot {step}")]
    Listener {
        /// What failed (`make the listener non-blocking`…).
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The signal reload cannot be set up.
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

/// Runs the sidecar until SIGTERM or SIGINT, on the socket it inherited (`LISTEN_FDS`), else
/// the one handed over by its predecessor (`OUTRIDER_HANDOVER_SOCKET`), else a fresh
/// `127.0.0.1:{config.port}`.
///
/// Returns `Ok(())` after a graceful shutdown, and an error when the sidecar cannot start or
/// a fault (`exit-immediately`, `crash-after`) ends it; `main` turns that into exit status 1.
pub async fn run(mut config: Config) -> Result<(), RunError> {
    check_exit_immediately(&config.faults)?;
    let shutdown = shutdown_signal().map_err(RunError::SignalHandlers)?;
    if config.faults.handover_hang {
        hang(config.handover_socket.as_deref(), shutdown).await;
        return Ok(());
    }
    let port = config.port;
    let (listener, generation) = match (config.inherited_listener.take(), config.handover_socket.clone()) {
        (Some(listener), _) => (listener, None),
        (None, Some(path)) => {
            let (listener, generation) = acquire(path, port).await?;
            (listener, Some(generation))
        }
        (None, None) => (bind(port)?, None),
    };
    serve(config, listener, shutdown, generation).await
}

/// Serves on `listener` until `shutdown` completes, then drains (see the crate docs).
///
/// `config.port`, `config.handover_socket` and `config.inherited_listener` are ignored. This
/// is the entry point for tests, which bind `127.0.0.1:0` themselves.
pub async fn run_with_listener<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), RunError>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve(config, listener, shutdown, None).await
}

fn check_exit_immediately(faults: &Faults) -> Result<(), RunError> {
    if faults.exit_immediately {
        return Err(RunError::ExitImmediately);
    }
    Ok(())
}

fn bind(port: u16) -> Result<TcpListener, RunError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|source| RunError::Bind { port, source })
}

/// Acquires the socket from the previous generation, or binds `127.0.0.1:{port}` when there
/// is none.
async fn acquire(path: std::path::PathBuf, port: u16) -> Result<(TcpListener, Generation), RunError> {
    let started = tokio::task::spawn_blocking(move || {
        Generation::start(path, || {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
            Ok(vec![(HTTP_SOCKET.to_owned(), OwnedFd::from(listener))])
        })
    });
    let (mut sockets, generation) = started.await.map_err(RunError::HandoverTask)?.map_err(RunError::Handover)?;
    let index = sockets.iter().position(|(name, _)| name == HTTP_SOCKET).unwrap_or(0);
    if index >= sockets.len() {
        return Err(RunError::NothingHandedOver);
    }
    let (name, fd) = sockets.swap_remove(index);
    let listener = tcp_listener(fd).map_err(|source| RunError::HandedOver { name, source })?;
    Ok((listener, generation))
}

/// The `handover-hang` fault: never serve nor become ready; with a handover socket, connect
/// to the predecessor and never say hello. Returns on shutdown.
async fn hang(handover_socket: Option<&Path>, shutdown: impl Future<Output = ()>) {
    let connection = handover_socket.map(|path| {
        let connected = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
            .and_then(|s| connect(s.as_raw_fd(), &UnixAddr::new(path)?).map(|()| s));
        match &connected {
            Ok(_) => warn!(path = %path.display(), "fault handover-hang: connected to the handover socket; never saying hello"),
            Err(e) => warn!(path = %path.display(), "fault handover-hang: cannot connect to the handover socket: {e}"),
        }
        connected
    });
    warn!("fault handover-hang (DEMO_FAULT): not serving, never ready");
    shutdown.await;
    drop(connection);
}

async fn serve<F>(
    config: Config,
    listener: TcpListener,
    shutdown: F,
    generation: Option<Generation>,
) -> Result<(), RunError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let Config { version, instance, faults, drain_timeout, drain_idle_grace, pid_file, .. } = config;
    check_exit_immediately(&faults)?;
    let failed = |step| move |source| RunError::Listener { step, source };
    listener.set_nonblocking(true).map_err(failed("make the listener non-blocking"))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(failed("register the listener"))?;
    let addr = listener.local_addr().map_err(failed("read the listen address"))?;
    let pid = std::process::id();
    let fault_spec = if faults.is_empty() { "none".to_owned() } else { faults.to_string() };
    info!(
        %version,
        %instance,
        pid,
        %addr,
        faults = %fault_spec,
        handed_over = generation.as_ref().map(Generation::inherited),
        "outrider-demo-sidecar listening"
    );

    let _effects = effects::start(&faults);
    let crash_after = faults.crash_after;
    let fail_health = faults.fail_health;
    let state = Arc::new(AppState::new(version, instance, faults));
    let connections = Connections::new(server::router(state.clone()), drain_idle_grace);
    let mut reload = pid_file.map(Reload::start).transpose()?;
    if !fail_health {
        match notify_ready() {
            Ok(true) => info!("notified readiness (NOTIFY_SOCKET)"),
            Ok(false) => {}
            Err(e) => warn!("cannot notify readiness on NOTIFY_SOCKET: {e}"),
        }
    }

    let mut crash = pin!(async move {
        match crash_after {
            Some(after) => tokio::time::sleep(after).await,
            None => pending().await,
        }
    });
    let crashed = || RunError::Crashed { after: crash_after.map(format_duration).unwrap_or_default() };
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut crash => return Err(crashed()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.serve(stream),
                Err(e) => {
                    // Out of descriptors, usually: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            event = next_reload_event(reload.as_mut()) => {
                if let Some(reload) = reload.as_mut() {
                    reload.handle(event, &listener);
                }
            }
        }
    }

    state.draining.store(true, Ordering::SeqCst);
    connections.start_draining();
    info!(open_connections = connections.open(), "shutdown requested: no longer accepting; draining");
    if let Some(generation) = generation
        && let Err(e) = tokio::task::spawn_blocking(move || generation.drain()).await
    {
        warn!("the handover drain failed: {e}");
    }
    if let Err(e) = notify_stopping() {
        debug!("cannot notify stopping on NOTIFY_SOCKET: {e}");
    }
    drop(listener);

    let outcome = tokio::select! {
        () = connections.closed() => {
            info!("drained; exiting");
            Ok(())
        }
        () = tokio::time::sleep(drain_timeout) => {
            warn!(
                drain_timeout = %format_duration(drain_timeout),
                open_connections = connections.open(),
                "drain timeout elapsed with connections still open; exiting anyway"
            );
            Ok(())
        }
        () = &mut crash => Err(crashed()),
    };
    if let Some(reload) = reload {
        reload.exit();
    }
    outcome
}

/// The next signal-reload event, or never without a pid file.
async fn next_reload_event(reload: Option<&mut Reload>) -> reload::Event {
    match reload {
        Some(reload) => reload.next().await,
        None => pending().await,
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
