//! `outrider-handover`: what a sidecar written in Rust needs so that the Outrider agent can
//! upgrade it without dropping a connection. `docs/handover.md` describes the conventions
//! for sidecars in any language.
//!
//! - [`listen_fds`]: take over sockets the agent owns and passes to every generation
//!   (`LISTEN_FDS`, `LISTEN_FDNAMES`).
//! - [`Generation`] / [`Handover`]: a sidecar that binds its own sockets hands them from one
//!   generation to the next over the unix socket in `OUTRIDER_HANDOVER_SOCKET`
//!   (`SCM_RIGHTS`, protocol v1).
//! - [`notify_ready`], [`notify_stopping`]: tell the agent over `NOTIFY_SOCKET` that this
//!   generation serves, or has begun to stop.
//!
//! ```no_run
//! use std::{net::TcpListener, os::fd::OwnedFd};
//!
//! use outrider_handover::{Handover, tcp_listener};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let handover = Handover::from_env()?.expect("OUTRIDER_HANDOVER_SOCKET is set");
//! let (mut sockets, generation) = handover.start(|| {
//!     let listener = TcpListener::bind("127.0.0.1:8080")?;
//!     Ok(vec![("http".to_owned(), OwnedFd::from(listener))])
//! })?;
//! let listener = tcp_listener(sockets.remove(0).1)?;
//! // ... serve on `listener`, then:
//! outrider_handover::notify_ready()?;
//! // ... on SIGTERM:
//! generation.drain();
//! drop(listener); // stop accepting; finish the open connections, then exit
//! # Ok(())
//! # }
//! ```

mod handover;
pub mod listen_fds;
mod notify;
mod sys;

pub use handover::{
    DEFAULT_HELLO_TIMEOUT, DEFAULT_TIMEOUT, Generation, Handover, HandoverError, NamedSockets, SOCKET_ENV, TIMEOUT_ENV,
};
pub use listen_fds::{ListenFds, ListenFdsError, NotListening, tcp_listener};
pub use notify::{NOTIFY_SOCKET_ENV, notify, notify_ready, notify_stopping};
