//! The handover protocol's messages and how they travel: one JSON object per `SOCK_SEQPACKET`
//! message, descriptors attached to the message they belong to as `SCM_RIGHTS`.

use std::{
    io::{self, IoSlice},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use nix::{
    errno::Errno,
    sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg},
};
use serde::{Deserialize, Serialize};

use crate::sys;

/// The protocol version this crate speaks.
pub(crate) const PROTOCOL: u64 = 1;

/// The largest message either side sends or accepts.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// Successor → holder, first message.
    Hello {
        protocol: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// Holder → successor: one descriptor per name attached, in this order.
    Sockets { protocol: u64, names: Vec<String> },
    /// Successor → holder, once it serves on the sockets.
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// Holder → successor: the holder has stopped being the holder.
    Draining,
    /// Either way: the sender refuses and closes the connection.
    Error { message: String },
}

impl Message {
    /// The value of the `type` field.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Sockets { .. } => "sockets",
            Message::Ready { .. } => "ready",
            Message::Draining => "draining",
            Message::Error { .. } => "error",
        }
    }
}

/// What one receive produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A well-formed message and the descriptors attached to it.
    Message(Message, Vec<OwnedFd>),
    /// The peer closed the connection.
    Eof,
    /// A message that is not one of the protocol's (the reason says why).
    Malformed(String),
}

/// Sends `message` with `fds` attached. `MSG_NOSIGNAL` is always added to `flags`.
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    message: &Message,
    fds: &[BorrowedFd<'_>],
    flags: MsgFlags,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "handover message longer than 64 KiB"));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(&bytes)];
    loop {
        match sendmsg::<UnixAddr>(socket.as_raw_fd(), &iov, cmsgs, flags | MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("sent {n} of {} bytes of a message", bytes.len()))),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message (`MSG_CMSG_CLOEXEC` is always added to `flags`).
pub(crate) fn recv(socket: BorrowedFd<'_>, flags: MsgFlags) -> io::Result<Incoming> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let received = loop {
        match sys::recv_with_fds(socket, &mut buf, flags) {
            Ok(r) => break r,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    if received.len == 0 && received.fds.is_empty() {
        return Ok(Incoming::Eof);
    }
    if received.flags.contains(MsgFlags::MSG_TRUNC) {
        return Ok(Incoming::Malformed("message longer than 64 KiB".to_owned()));
    }
    match serde_json::from_slice(&buf[..received.len]) {
        Ok(message) => Ok(Incoming::Message(message, received.fds)),
        Err(e) => Ok(Incoming::Malformed(format!("not a protocol message: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_shape() {
        let cases = [
            (Message::Hello { protocol: 1, pid: Some(42) }, r#"{"type":"hello","protocol":1,"pid":42}"#),
            (
                Message::Sockets { protocol: 1, names: vec!["http".into(), "admin".into()] },
                r#"{"type":"sockets","protocol":1,"names":["http","admin"]}"#,
            ),
            (Message::Ready { pid: Some(7) }, r#"{"type":"ready","pid":7}"#),
            (Message::Draining, r#"{"type":"draining"}"#),
            (Message::Error { message: "no".into() }, r#"{"type":"error","message":"no"}"#),
        ];
        for (message, json) in cases {
            assert_eq!(serde_json::to_string(&message).unwrap(), json);
            assert_eq!(serde_json::from_str::<Message>(json).unwrap(), message);
        }
        // Unknown fields are ignored (room for later versions); a missing pid is tolerated.
        let hello: Message = serde_json::from_str(r#"{"type":"hello","protocol":2,"features":[]}"#).unwrap();
        assert_eq!(hello, Message::Hello { protocol: 2, pid: None });
        assert!(serde_json::from_str::<Message>(r#"{"type":"hullo"}"#).is_err());
        assert!(serde_json::from_str::<Message>(r#"{"type":"hello","protocol":-1}"#).is_err());
    }
}
