//! JSON answers for the errors HTTP/1 itself produces. When hyper cannot parse a request
//! (a malformed request line, control characters in a header, a bad `Content-Length`, a head
//! over the parse buffer), it writes a bare `400`, `414` or `431` with an empty body and
//! closes the connection. [`JsonHeadErrors`] sits between hyper and the socket, replaces that
//! bare answer with the API's `{"error": {"code", "message"}}` of the same status, and closes
//! with a lingering close: it shuts its side down, then reads and discards what the client
//! still sends for a moment, so that the client reads the answer instead of a reset.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

use crate::{Error, api};

/// How long a lingering close waits for the client to stop sending.
const LINGER: Duration = Duration::from_secs(2);

/// Where the connection is in replacing an answer.
enum Phase {
    /// Passing bytes through.
    Plain,
    /// Writing the JSON answer that replaced hyper's (what is left of it).
    Answering(Vec<u8>, usize),
    /// The answer is out; closing (lingering) when hyper shuts down.
    Answered,
    /// Write side shut, discarding what the client still sends until EOF or the deadline.
    Lingering(Pin<Box<Sleep>>),
    /// Closed.
    Closed,
}

/// An I/O stream whose bare HTTP/1 parse-error answers become JSON errors.
pub(super) struct JsonHeadErrors<IO> {
    inner: IO,
    phase: Phase,
}

impl<IO> JsonHeadErrors<IO> {
    pub(super) fn new(inner: IO) -> Self {
        Self { inner, phase: Phase::Plain }
    }
}

/// The JSON answer replacing `buf`, if `buf` starts with one of hyper's bare parse-error
/// answers: a `400`, `414` or `431` head with no content type and an empty body.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&rest[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.get(..3)?;
    let mut date = None;
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => empty = value.trim() == "0",
            "content-type" => return None,
            "date" => date = Some(value.trim()),
            _ => {}
        }
    }
    if !empty {
        return None;
    }
    let (error, reason) = match status {
        "400" => (
            Error::invalid(
                "malformed HTTP request: the request line, a header name or value (control \
                 characters) or the Content-Length cannot be parsed",
            ),
            "Bad Request",
        ),
        "414" => (Error::UriTooLong("the URI is too long".into()), "URI Too Long"),
        "431" => (
            Error::HeadersTooLarge(format!("the request head is over {} bytes", super::PARSE_BUFFER)),
            "Request Header Fields Too Large",
        ),
        _ => return None,
    };
    let body = api::error_body(&error).to_string();
    let date = date.map(|d| format!("date: {d}\r\n")).unwrap_or_default();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n{date}\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<IO: AsyncWrite + Unpin> JsonHeadErrors<IO> {
    /// Writes what is left of a replacing answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Phase::Answering(bytes, sent) = &mut self.phase {
            if *sent == bytes.len() {
                self.phase = Phase::Answered;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonHeadErrors<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for JsonHeadErrors<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.phase {
            Phase::Plain => match replacement(buf) {
                Some(answer) => {
                    tracing::debug!("answering an unparsable request with a JSON error");
                    this.phase = Phase::Answering(answer, 0);
                    // The bytes are taken; `poll_flush` sends the answer.
                    let _ = this.poll_answer(cx)?;
                    Poll::Ready(Ok(buf.len()))
                }
                None => Pin::new(&mut this.inner).poll_write(cx, buf),
            },
            // Nothing follows hyper's error answer; whatever does is dropped with it.
            _ => {
                ready!(this.poll_answer(cx))?;
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        if matches!(self.phase, Phase::Plain) && !first.starts_with(b"HTTP/1.1 4") {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        loop {
            let this = &mut *self;
            match &mut this.phase {
                Phase::Plain | Phase::Closed => return Pin::new(&mut this.inner).poll_shutdown(cx),
                // `poll_answer` is done: the answer is out.
                Phase::Answering(..) | Phase::Answered => {
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.phase = Phase::Lingering(Box::pin(tokio::time::sleep(LINGER)));
                }
                Phase::Lingering(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.phase = Phase::Closed;
                        return Poll::Ready(Ok(()));
                    }
                    let mut scratch = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() => {}
                        // EOF or a reset: the client is done.
                        _ => {
                            this.phase = Phase::Closed;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_bare_parse_error_answers_are_replaced() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: D\r\n\r\n";
        let answer = String::from_utf8(replacement(bare).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"), "{answer}");
        assert!(answer.contains("date: D\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_argument");
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(replacement(big).unwrap()).unwrap().contains("headers_too_large"));
        for kept in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"HTTP/1.1 400\"}",
        ] {
            assert_eq!(replacement(kept), None, "{}", String::from_utf8_lossy(kept));
        }
    }
}
