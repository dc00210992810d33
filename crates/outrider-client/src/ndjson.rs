//! Newline-delimited JSON over a chunked body: lines may be cut anywhere across chunks.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::ClientError;

/// Longest line accepted; a longer one ends the stream with a decode error instead of
/// buffering without bound.
pub(crate) const MAX_LINE: usize = 16 * 1024 * 1024;

/// Decodes each non-blank line of `body` as a `T`. A line that does not decode yields an error
/// and the stream goes on with the next line; a transport error or an overlong line yields an
/// error and ends the stream. A last line without a final newline is decoded too. `what` names
/// the stream in decode errors.
pub(crate) fn decode_lines<T, S, E>(body: S, what: String) -> impl Stream<Item = Result<T, ClientError>> + Send
where
    T: DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<ClientError> + Send + 'static,
{
    let lines = Lines { body: Box::pin(body), buf: BytesMut::new(), scanned: 0, eof: false, done: false, what };
    futures::stream::unfold(lines, |mut lines| async move {
        let item = lines.next_item().await?;
        Some((item, lines))
    })
}

/// The state of [`decode_lines`].
struct Lines<S> {
    body: std::pin::Pin<Box<S>>,
    /// Bytes received and not yet split into lines.
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    /// The body has ended.
    eof: bool,
    /// Nothing more will be yielded.
    done: bool,
    what: String,
}

impl<S, E> Lines<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<ClientError>,
{
    async fn next_item<T: DeserializeOwned>(&mut self) -> Option<Result<T, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(line) = self.take_line() {
                match self.decode(&line) {
                    Some(item) => return Some(item),
                    None => continue,
                }
            }
            if self.eof {
                self.done = true;
                let rest = std::mem::take(&mut self.buf);
                return self.decode(&rest);
            }
            if self.buf.len() > MAX_LINE {
                self.done = true;
                let source =
                    <serde_json::Error as serde::de::Error>::custom(format!("a line is longer than {MAX_LINE} bytes"));
                return Some(Err(ClientError::Decode { what: self.what.clone(), source }));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => self.eof = true,
            }
        }
    }

    /// The next complete line (with its newline) from the buffer.
    fn take_line(&mut self) -> Option<Bytes> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = self.buf.split_to(self.scanned + i + 1).freeze();
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// The value on `line`, or `None` for a blank line (keep-alives).
    fn decode<T: DeserializeOwned>(&self, line: &[u8]) -> Option<Result<T, ClientError>> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return None;
        }
        Some(serde_json::from_slice(line).map_err(|source| ClientError::Decode { what: self.what.clone(), source }))
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Item {
        n: u32,
        s: String,
    }

    fn chunks_of(text: &[u8], size: usize) -> Vec<Result<Bytes, ClientError>> {
        text.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect()
    }

    fn decode_all(chunks: Vec<Result<Bytes, ClientError>>) -> Vec<Result<Item, ClientError>> {
        block_on(decode_lines(futures::stream::iter(chunks), "test lines".into()).collect())
    }

    const TEXT: &str = "{\"n\":1,\"s\":\"café\"}\n\n  \r\n{\"n\":2,\"s\":\"a\\nb\"}\r\n{\"n\":3,\"s\":\"日本\"}";

    #[test]
    fn lines_split_at_every_byte_decode_the_same() {
        let want =
            vec![Item { n: 1, s: "café".into() }, Item { n: 2, s: "a\nb".into() }, Item { n: 3, s: "日本".into() }];
        for size in 1..=TEXT.len() {
            let got: Vec<Item> = decode_all(chunks_of(TEXT.as_bytes(), size)).into_iter().map(Result::unwrap).collect();
            assert_eq!(got, want, "chunk size {size}");
        }
    }

    #[test]
    fn a_bad_line_is_an_error_and_the_stream_goes_on() {
        let got = decode_all(chunks_of(b"{\"n\":1,\"s\":\"x\"}\nnot json\n{\"n\":2,\"s\":\"y\"}\n", 5));
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[1], Err(ClientError::Decode { what, .. }) if what == "test lines"));
        assert_eq!(got[2].as_ref().unwrap().n, 2);
    }

    #[test]
    fn a_transport_error_ends_the_stream() {
        let mut chunks = chunks_of(b"{\"n\":1,\"s\":\"x\"}\n{\"n\"", 7);
        chunks.push(Err(ClientError::InvalidInput("cut".into())));
        chunks.push(Ok(Bytes::from_static(b":2,\"s\":\"y\"}\n")));
        let got = decode_all(chunks);
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Err(ClientError::InvalidInput(m)) if m == "cut"));
    }

    #[test]
    fn an_overlong_line_ends_the_stream() {
        let big = Bytes::from(vec![b'x'; MAX_LINE / 2 + 1]);
        let got = decode_all(vec![Ok(big.clone()), Ok(big.clone()), Ok(big)]);
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Err(ClientError::Decode { .. })));
    }
}
