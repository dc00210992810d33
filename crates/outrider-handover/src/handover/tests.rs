//! Handover between generations living in threads of this test process, and against
//! hand-written peers that misbehave.

use std::{
    ffi::OsStr,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::BorrowedFd,
        unix::fs::{FileTypeExt, PermissionsExt},
    },
    thread,
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::socket::{Backlog, bind, listen},
};
use tempfile::TempDir;

use super::*;
use crate::{sys, tcp_listener};

/// Upper bound for anything that should happen promptly; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn handover_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handover.sock");
    (dir, path)
}

fn bind_tcp() -> io::Result<NamedSockets> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(vec![("http".to_owned(), listener.into())])
}

fn must_not_bind() -> io::Result<NamedSockets> {
    Err(io::Error::other("bind_fresh must not be called: a predecessor holds the sockets"))
}

fn start(path: &Path) -> (TcpListener, Generation) {
    start_with(Handover::new(path), bind_tcp)
}

fn start_with(handover: Handover, bind_fresh: impl FnOnce() -> io::Result<NamedSockets>) -> (TcpListener, Generation) {
    let (sockets, generation) = handover.start(bind_fresh).unwrap();
    assert_eq!(sockets.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["http"]);
    let listener = tcp_listener(sockets.into_iter().next().unwrap().1).unwrap();
    (listener, generation)
}

fn addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().unwrap()
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a holder listens at `path`.
fn held(path: &Path) -> bool {
    let Ok(addr) = UnixAddr::new(path) else { return false };
    let Ok(socket) = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None) else {
        return false;
    };
    connect(socket.as_raw_fd(), &addr).is_ok()
}

/// A hand-written successor: a blocking connection with a receive timeout.
fn raw_connect(path: &Path) -> OwnedFd {
    let socket = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    connect(socket.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    setsockopt(&socket, sockopt::ReceiveTimeout, &timeval(PATIENCE)).unwrap();
    socket
}

fn raw_send_bytes(socket: &OwnedFd, bytes: &[u8]) {
    let sent = nix::sys::socket::send(socket.as_raw_fd(), bytes, MsgFlags::empty()).unwrap();
    assert_eq!(sent, bytes.len());
}

fn raw_recv(socket: &OwnedFd) -> Incoming {
    wire::recv(socket.as_fd(), MsgFlags::empty()).unwrap()
}

fn hello() -> Message {
    Message::Hello { protocol: PROTOCOL, pid: Some(1) }
}

#[test]
fn no_predecessor_binds_fresh_and_holds_the_path() {
    let (_dir, path) = handover_path();
    let (listener, generation) = start(&path);
    assert!(!generation.inherited());
    assert_eq!(generation.path(), path);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(held(&path));
    let _client = TcpStream::connect(addr(&listener)).unwrap();
    listener.accept().unwrap();

    generation.drain();
    assert!(!path.exists(), "the holder removes its socket file when it drains");
    generation.drain();
}

#[test]
fn stale_socket_file_means_no_predecessor() {
    let (_dir, path) = handover_path();
    {
        let stale = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(stale.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&stale, Backlog::new(1).unwrap()).unwrap();
    }
    assert!(path.exists() && !held(&path));
    let (_listener, generation) = start(&path);
    assert!(!generation.inherited());
    assert!(held(&path), "the stale file was replaced by a live holder");
}

#[test]
fn successor_serves_on_the_same_listener_as_its_predecessor() {
    let (_dir, path) = handover_path();
    let (old, first) = start(&path);
    let (new, second) = start_with(Handover::new(&path), must_not_bind);
    assert!(second.inherited());
    assert_eq!(addr(&new), addr(&old));

    // One accept queue: whichever generation accepts gets the next connection.
    let a = TcpStream::connect(addr(&old)).unwrap();
    assert_eq!(new.accept().unwrap().1, a.local_addr().unwrap());
    let b = TcpStream::connect(addr(&old)).unwrap();
    assert_eq!(old.accept().unwrap().1, b.local_addr().unwrap());

    // The old generation stops accepting and closes its listener: the new one still serves.
    first.drain();
    drop(old);
    let c = TcpStream::connect(addr(&new)).unwrap();
    assert_eq!(new.accept().unwrap().1, c.local_addr().unwrap());
    drop(second);
}

#[test]
fn a_draining_holder_passes_the_path_to_its_successor() {
    let (_dir, path) = handover_path();
    let (first_listener, first) = start(&path);
    let (second_listener, second) = start_with(Handover::new(&path), must_not_bind);
    first.drain();
    drop(first_listener);
    eventually("the successor holds the path", || held(&path));

    let (third_listener, third) = start_with(Handover::new(&path), must_not_bind);
    assert!(third.inherited());
    assert_eq!(addr(&third_listener), addr(&second_listener));

    // And on again.
    second.drain();
    eventually("the third generation holds the path", || held(&path));
    let (fourth_listener, fourth) = start_with(Handover::new(&path), must_not_bind);
    assert_eq!(addr(&fourth_listener), addr(&third_listener));
    drop((third, fourth));
}

#[test]
fn a_successor_that_dies_leaves_the_holder_serving() {
    let (_dir, path) = handover_path();
    let (listener, holder) = start(&path);

    // A successor process that crashes right after receiving the sockets.
    let crashed = raw_connect(&path);
    wire::send(crashed.as_fd(), &hello(), &[], MsgFlags::empty()).unwrap();
    match raw_recv(&crashed) {
        Incoming::Message(Message::Sockets { names, .. }, fds) => {
            assert_eq!(names, ["http"]);
            assert_eq!(fds.len(), 1);
        }
        other => panic!("expected sockets, got {other:?}"),
    }
    drop(crashed);

    // A successor generation that is stopped before its predecessor drains.
    let (_, killed) = start_with(Handover::new(&path), must_not_bind);
    drop(killed);

    assert!(held(&path));
    let (next_listener, next) = start_with(Handover::new(&path), must_not_bind);
    assert!(next.inherited());
    assert_eq!(addr(&next_listener), addr(&listener));
    drop((holder, next));
}

#[test]
fn several_successors_may_connect_at_once() {
    let (_dir, path) = handover_path();
    let (_listener, holder) = start(&path);
    let a = raw_connect(&path);
    let b = raw_connect(&path);
    wire::send(b.as_fd(), &hello(), &[], MsgFlags::empty()).unwrap();
    wire::send(a.as_fd(), &hello(), &[], MsgFlags::empty()).unwrap();
    for successor in [&a, &b] {
        assert!(matches!(raw_recv(successor), Incoming::Message(Message::Sockets { .. }, fds) if fds.len() == 1));
    }
    // Draining tells every connected successor.
    holder.drain();
    for successor in [&a, &b] {
        assert!(matches!(raw_recv(successor), Incoming::Message(Message::Draining, _)));
        assert!(matches!(raw_recv(successor), Incoming::Eof));
    }
}

#[test]
fn protocol_errors_close_that_connection_only() {
    let (_dir, path) = handover_path();
    let (listener, holder) = start_with(Handover::new(&path).hello_timeout(Duration::from_millis(200)), bind_tcp);

    let expect_error = |socket: &OwnedFd, needle: &str| {
        match raw_recv(socket) {
            Incoming::Message(Message::Error { message }, _) => assert!(message.contains(needle), "{message}"),
            other => panic!("expected an error message, got {other:?}"),
        }
        assert!(matches!(raw_recv(socket), Incoming::Eof));
    };

    let malformed = raw_connect(&path);
    raw_send_bytes(&malformed, b"{\"type\": \"hello\", ");
    expect_error(&malformed, "not a protocol message");

    let future = raw_connect(&path);
    raw_send_bytes(&future, br#"{"type":"hello","protocol":2,"pid":9}"#);
    expect_error(&future, "unsupported protocol 2");

    let rude = raw_connect(&path);
    wire::send(rude.as_fd(), &Message::Ready { pid: None }, &[], MsgFlags::empty()).unwrap();
    expect_error(&rude, "unexpected ready message");

    // Connected, then silent: closed after the hello timeout.
    let started = Instant::now();
    let silent = raw_connect(&path);
    assert!(matches!(raw_recv(&silent), Incoming::Eof));
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());

    // The holder still serves.
    let (next_listener, next) = start_with(Handover::new(&path), must_not_bind);
    assert_eq!(addr(&next_listener), addr(&listener));
    drop((holder, next));
}

/// A hand-written holder at `path` that answers the first successor with `respond`, then
/// waits until that successor closes the connection.
fn fake_holder(path: &Path, respond: impl FnOnce(BorrowedFd<'_>) + Send + 'static) -> thread::JoinHandle<()> {
    let listener = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(listener.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&listener, Backlog::new(4).unwrap()).unwrap();
    thread::spawn(move || {
        let connection = sys::accept(listener.as_fd()).unwrap();
        fcntl(&connection, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        setsockopt(&connection, sockopt::ReceiveTimeout, &timeval(PATIENCE)).unwrap();
        match raw_recv(&connection) {
            Incoming::Message(Message::Hello { protocol: PROTOCOL, pid }, _) => {
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected hello, got {other:?}"),
        }
        respond(connection.as_fd());
        while !matches!(raw_recv(&connection), Incoming::Eof) {}
    })
}

fn send_sockets(socket: BorrowedFd<'_>, names: &[&str], fds: &[BorrowedFd<'_>]) {
    let names = names.iter().map(|n| (*n).to_owned()).collect();
    wire::send(socket, &Message::Sockets { protocol: PROTOCOL, names }, fds, MsgFlags::empty()).unwrap();
}

fn start_against(path: &Path, respond: impl FnOnce(BorrowedFd<'_>) + Send + 'static) -> HandoverError {
    let holder = fake_holder(path, respond);
    let err = Handover::new(path).timeout(Duration::from_millis(300)).start(must_not_bind).unwrap_err();
    holder.join().unwrap();
    err
}

#[test]
fn successor_fails_cleanly_when_the_predecessor_misbehaves() {
    let refused = |socket: BorrowedFd<'_>| {
        wire::send(socket, &Message::Error { message: "busy".into() }, &[], MsgFlags::empty()).unwrap();
    };
    let silent = |_: BorrowedFd<'_>| {};
    let hangs_up = |socket: BorrowedFd<'_>| {
        nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Write).unwrap();
    };
    let too_few_fds = |socket: BorrowedFd<'_>| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        send_sockets(socket, &["http", "admin"], &[listener.as_fd()]);
    };
    let not_listening = |socket: BorrowedFd<'_>| {
        let (stream, _peer) = UnixStream::pair().unwrap();
        send_sockets(socket, &["http"], &[stream.as_fd()]);
    };
    let draining = |socket: BorrowedFd<'_>| {
        wire::send(socket, &Message::Draining, &[], MsgFlags::empty()).unwrap();
    };

    let (_dir, path) = handover_path();
    let check = |err: HandoverError, what: &str, ok: fn(&HandoverError) -> bool| {
        assert!(ok(&err), "{what}: {err:?}");
        let _ = std::fs::remove_file(&path);
    };
    check(start_against(&path, refused), "refused", |e| matches!(e, HandoverError::Refused(m) if m == "busy"));
    check(start_against(&path, silent), "silent", |e| matches!(e, HandoverError::Timeout { .. }));
    check(
        start_against(&path, hangs_up),
        "hangs up",
        |e| matches!(e, HandoverError::Protocol(m) if m.contains("closed")),
    );
    check(
        start_against(&path, too_few_fds),
        "count",
        |e| matches!(e, HandoverError::Protocol(m) if m.contains("names 2 sockets but carries 1")),
    );
    check(
        start_against(&path, not_listening),
        "not listening",
        |e| matches!(e, HandoverError::Protocol(m) if m.contains("\"http\" is not usable")),
    );
    check(
        start_against(&path, draining),
        "draining",
        |e| matches!(e, HandoverError::Protocol(m) if m.contains("got draining")),
    );
}

#[test]
fn unusable_paths_are_reported() {
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
    let err = Handover::new(&long).start(must_not_bind).unwrap_err();
    assert!(matches!(err, HandoverError::Connect { .. }), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let err = Handover::new(dir.path().join("missing/handover.sock")).start(bind_tcp).unwrap_err();
    assert!(matches!(err, HandoverError::Listen { .. }), "{err:?}");

    let err =
        Handover::new(dir.path().join("h.sock")).start(|| Err(io::Error::from(io::ErrorKind::AddrInUse))).unwrap_err();
    assert!(matches!(err, HandoverError::Bind(_)), "{err:?}");
}

#[test]
fn timeout_variable() {
    assert_eq!(parse_timeout(None).unwrap(), DEFAULT_TIMEOUT);
    assert_eq!(parse_timeout(Some(OsStr::new(" "))).unwrap(), DEFAULT_TIMEOUT);
    assert_eq!(parse_timeout(Some(OsStr::new("250"))).unwrap(), Duration::from_millis(250));
    for bad in ["0", "5s", "-1"] {
        let err = parse_timeout(Some(OsStr::new(bad))).unwrap_err();
        assert!(err.to_string().starts_with("OUTRIDER_HANDOVER_TIMEOUT_MS="), "{err}");
    }
}
