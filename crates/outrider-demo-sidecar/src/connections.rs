//! The HTTP/1 connections: serving the router on each accepted connection, and draining them
//! without failing a request.
//!
//! While draining, every response carries `Connection: close`, so each keep-alive connection
//! closes right after its next response and its client reconnects — to another generation,
//! since this one no longer accepts. Idle connections are not closed at once (that would race
//! with a client's next request) but only after they stay idle for the grace period.

use std::{convert::Infallible, pin::pin, time::Duration};

use axum::{
    Router,
    http::{HeaderValue, Request, header},
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;
use tracing::debug;

/// The open connections of this process.
pub(crate) struct Connections {
    app: Router,
    idle_grace: Duration,
    draining: CancellationToken,
    tracker: TaskTracker,
}

impl Connections {
    pub(crate) fn new(app: Router, idle_grace: Duration) -> Self {
        Self { app, idle_grace, draining: CancellationToken::new(), tracker: TaskTracker::new() }
    }

    /// Serves `stream` in its own task.
    pub(crate) fn serve(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        self.tracker.spawn(connection(stream, self.app.clone(), self.draining.clone(), self.idle_grace));
    }

    /// Starts draining: from now on responses say `Connection: close`, and connections that
    /// stay idle for the grace period are closed.
    pub(crate) fn start_draining(&self) {
        self.draining.cancel();
        self.tracker.close();
    }

    /// How many connections are open.
    pub(crate) fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Completes once every connection is closed (after [`Connections::start_draining`]).
    pub(crate) async fn closed(&self) {
        self.tracker.wait().await;
    }
}

async fn connection(stream: TcpStream, app: Router, draining: CancellationToken, idle_grace: Duration) {
    let closing = draining.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        let closing = closing.clone();
        async move {
            let mut response = match app.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if closing.is_cancelled() {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    // No timer: hyper's header read timeout would also close idle keep-alive connections,
    // racing with the client's next request.
    let mut conn = pin!(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = draining.cancelled() => {}
    }
    // A connection that answers a request from now on closes itself after the response; one
    // that stays idle for the whole grace period is closed here.
    tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = tokio::time::sleep(idle_grace) => {}
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}

fn log_end(result: hyper::Result<()>) {
    if let Err(e) = result {
        debug!("connection ended with an error: {e}");
    }
}
