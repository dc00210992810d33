//! The accept loop: REST and gRPC on one port, HTTP/1 and HTTP/2, plain or TLS (`tls.rs`),
//! with the timeouts and connection caps that keep stalled or hostile clients from holding
//! the manager's fds.

mod head_errors;
pub mod tls;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::Request, response::IntoResponse};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use outrider_proto::batched_writes::BatchedWrites;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use self::tls::{ClientCert, Tls};
use crate::{Error, auth::Auth, metrics::Metrics};

/// Timeouts and caps of the listener.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Time a client has to send a request's headers.
    pub header_read: Duration,
    /// Time a REST request (its body included) has to be answered; gRPC streams are exempt.
    pub request: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle: Duration,
    /// A connection that has not authenticated yet is closed after this long.
    pub unauthenticated_idle: Duration,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake: Duration,
    /// Open connections at most (`None`: derived from the fd limit).
    pub max_connections: Option<usize>,
    /// Open connections that have not sent a valid token yet, at most (`None`: a quarter of
    /// `max_connections`). A new connection over this cap closes the oldest such connection,
    /// so clients with a token always get in.
    pub max_unauthenticated: Option<usize>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            unauthenticated_idle: Duration::from_secs(15),
            tls_handshake: Duration::from_secs(10),
            max_connections: None,
            max_unauthenticated: None,
        }
    }
}

/// Longest URI answered (longer: a JSON 414).
const MAX_URI: usize = 8 << 10;
/// Most header bytes answered (more: a JSON 431).
const MAX_HEADER_BYTES: usize = 64 << 10;
/// Most headers answered (more: a JSON 431).
const MAX_HEADERS: usize = 100;
/// Headers HTTP/1 parses before refusing with its own bare error: well above the limits
/// above, so that requests over them get a JSON error.
const PARSE_HEADERS: usize = 1_000;
/// Bytes HTTP/1 buffers for a request head: above `MAX_URI` and `MAX_HEADER_BYTES`, below
/// hyper's default (~400 KiB).
const PARSE_BUFFER: usize = 160 << 10;

/// The JSON error for a request over the URI or header limits.
fn oversized<B>(req: &Request<B>) -> Option<Error> {
    if req.uri().to_string().len() > MAX_URI {
        return Some(Error::UriTooLong(format!("the URI is over {MAX_URI} bytes")));
    }
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(Error::HeadersTooLarge(format!(
            "at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of headers"
        )));
    }
    None
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit where allowed; returns the soft limit.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    match lim.maximum {
        Some(hard) if hard > soft => {
            let raised = Rlimit { current: Some(hard), maximum: Some(hard) };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => hard,
                Err(e) => {
                    tracing::warn!(error = %e, soft, hard, "cannot raise the open file limit");
                    soft
                }
            }
        }
        _ => soft,
    }
}

/// The connection cap for an fd limit: half the fds, keeping 256 for the store and the rest.
fn default_max_connections(fd_limit: u64) -> usize {
    usize::try_from(fd_limit.saturating_sub(256) / 2).unwrap_or(usize::MAX).clamp(16, 50_000)
}

/// One connection's bookkeeping: requests in flight, since when it has been idle, and
/// whether it has authenticated.
struct ConnState {
    id: u64,
    evicted: CancellationToken,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    authenticated: AtomicBool,
}

/// Decrements the connection's in-flight count when a response (its body) is done.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(c: &Arc<ConnState>) -> Self {
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(c.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// A response body that holds the request's [`InFlight`] until it ends.
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Shared by the accept loop and the connections.
struct Shared {
    app: Router,
    auth: Auth,
    metrics: Arc<Metrics>,
    limits: ServeLimits,
    grpc_prefix: String,
    /// TLS on the port (none: plain HTTP).
    tls: Option<Tls>,
    /// Connections without a valid token yet, oldest first.
    unauthenticated: Mutex<BTreeMap<u64, CancellationToken>>,
    max_unauthenticated: usize,
    last_refusal_log: AtomicU64,
    started: Instant,
}

impl Shared {
    fn unauthenticated(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.unauthenticated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection as unauthenticated, closing the oldest one over the cap.
    fn admit_unauthenticated(&self, id: u64, evicted: CancellationToken) {
        let mut u = self.unauthenticated();
        if u.len() >= self.max_unauthenticated
            && let Some((_, oldest)) = u.pop_first()
        {
            oldest.cancel();
            drop(u);
            self.refuse("max_unauthenticated");
            u = self.unauthenticated();
        }
        u.insert(id, evicted);
    }

    /// Marks `state`'s connection authenticated: no longer subject to the unauthenticated
    /// limits.
    fn authenticated(&self, state: &ConnState) {
        state.authenticated.store(true, Ordering::SeqCst);
        self.unauthenticated().remove(&state.id);
    }

    /// Counts a refused connection; logs at most once every 10 s.
    fn refuse(&self, why: &'static str) {
        self.metrics.connections_refused.inc();
        let now = self.started.elapsed().as_secs();
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 10)
            && self.last_refusal_log.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(cap = why, "connection cap reached: refusing new connections");
        }
    }
}

/// Serves `app` on `listener` (TLS only, with `tls`) until `cancel`, then waits for open
/// connections to close.
#[allow(clippy::too_many_arguments, reason = "the listener's parts, passed once at start")]
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    auth: Auth,
    metrics: Arc<Metrics>,
    limits: ServeLimits,
    grpc_prefix: String,
    tls: Option<Tls>,
    cancel: CancellationToken,
) {
    let max = limits.max_connections.unwrap_or_else(|| default_max_connections(raise_fd_limit()));
    let max_unauthenticated = limits.max_unauthenticated.unwrap_or(max / 4).max(1);
    tracing::info!(max_connections = max, max_unauthenticated, "connection caps");
    let shared = Arc::new(Shared {
        app,
        auth,
        metrics,
        limits,
        grpc_prefix,
        tls,
        unauthenticated: Mutex::new(BTreeMap::new()),
        max_unauthenticated,
        last_refusal_log: AtomicU64::new(0),
        started: Instant::now(),
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read)
        .max_headers(PARSE_HEADERS)
        .max_buf_size(PARSE_BUFFER);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(max));
    let mut next_id = 0u64;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of fds or a transient accept error: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.refuse("max_connections");
            continue;
        };
        next_id += 1;
        let state = Arc::new(ConnState {
            id: next_id,
            evicted: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            authenticated: AtomicBool::new(false),
        });
        shared.admit_unauthenticated(state.id, state.evicted.clone());
        let _ = stream.set_nodelay(true);
        let (shared, builder, cancel) = (shared.clone(), builder.clone(), cancel.clone());
        tokio::spawn(async move {
            shared.metrics.connections_open.inc();
            match &shared.tls {
                None => connection(&shared, &builder, stream, state.clone(), None, &cancel).await,
                Some(tls) => {
                    if let Some((stream, peer)) = handshake(&shared, tls, stream, &state, &cancel).await {
                        connection(&shared, &builder, stream, state.clone(), peer, &cancel).await;
                    }
                }
            }
            shared.unauthenticated().remove(&state.id);
            shared.metrics.connections_open.dec();
            drop(permit);
        });
    }
    // Every connection holds a permit: all of them back means all connections are closed.
    let _ = permits.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)).await;
}

/// Runs the TLS handshake of a new connection within the handshake timeout; returns the
/// stream and, on a port with a client CA, what the client's certificate says. A client that
/// fails it (plain HTTP, a certificate the CA did not sign, an expired one) or stalls is
/// closed.
async fn handshake(
    shared: &Shared,
    tls: &Tls,
    stream: TcpStream,
    state: &ConnState,
    cancel: &CancellationToken,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<ClientCert>)> {
    let accepted = tokio::select! {
        r = tokio::time::timeout(shared.limits.tls_handshake, tls.acceptor.accept(stream)) => r,
        () = state.evicted.cancelled() => return None,
        () = cancel.cancelled() => return None,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return None;
        }
    };
    let peer = tls.client_ca.then(|| ClientCert::of(stream.get_ref().1.peer_certificates()));
    if matches!(peer, Some(ClientCert::Agent(_))) {
        // A verified agent certificate authenticates the connection like a valid token.
        shared.authenticated(state);
    }
    Some((stream, peer))
}

/// Serves one connection until it ends, idles out, or the manager stops. Each request
/// carries `peer` (what the client certificate says) in its extensions.
async fn connection<IO>(
    shared: &Arc<Shared>,
    builder: &Builder<TokioExecutor>,
    stream: IO,
    state: Arc<ConnState>,
    peer: Option<ClientCert>,
    cancel: &CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let (shared, state) = (shared.clone(), state.clone());
        hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let (shared, state) = (shared.clone(), state.clone());
            if let Some(peer) = &peer {
                req.extensions_mut().insert(peer.clone());
            }
            async move { Ok::<_, Infallible>(handle(&shared, &state, req).await) }
        })
    };
    let io = TokioIo::new(head_errors::JsonHeadErrors::new(BatchedWrites::new(stream)));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let period = (shared.limits.unauthenticated_idle / 2).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            () = state.evicted.cancelled() => break,
            () = cancel.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let authenticated = state.authenticated.load(Ordering::SeqCst);
                let limit = if authenticated { shared.limits.idle } else { shared.limits.unauthenticated_idle };
                let idle_since = *state.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                if state.in_flight.load(Ordering::SeqCst) == 0 && idle_since.elapsed() >= limit {
                    break;
                }
            }
        }
    }
}

/// Answers one request: marks the connection authenticated on a valid token, bounds REST
/// requests in time, and keeps the connection busy until the response ends.
async fn handle(
    shared: &Shared,
    state: &Arc<ConnState>,
    req: Request<hyper::body::Incoming>,
) -> axum::response::Response {
    let in_flight = InFlight::new(state);
    if !state.authenticated.load(Ordering::SeqCst) {
        let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if header.is_some_and(|h| shared.auth.check(Some(h)).is_ok()) {
            shared.authenticated(state);
        }
    }
    if let Some(e) = oversized(&req) {
        return e.into_response().map(|inner| Body::new(Guarded { inner, _in_flight: in_flight }));
    }
    let grpc = req.uri().path().starts_with(&shared.grpc_prefix);
    let call = shared.app.clone().oneshot(req.map(Body::new));
    let resp = if grpc {
        call.await.unwrap_or_else(|e| match e {})
    } else {
        match tokio::time::timeout(shared.limits.request, call).await {
            Ok(r) => r.unwrap_or_else(|e| match e {}),
            Err(_) => Error::RequestTimeout("the request did not arrive in time".into()).into_response(),
        }
    };
    resp.map(|inner| Body::new(Guarded { inner, _in_flight: in_flight }))
}
