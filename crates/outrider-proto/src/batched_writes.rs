//! A connection that gathers the writes of a burst into one system call.
//!
//! A push to thousands of streams multiplexed on one HTTP/2 connection wakes the connection's
//! task once per stream, and the runtime runs it right after the stream that woke it: left
//! alone, the connection writes (and the kernel sends) one frame at a time. [`BatchedWrites`]
//! makes the first write after each flush step back once — the task yields to the others
//! already queued, whose frames join the connection's queue meanwhile — and then writes
//! everything queued at once. When nothing else is runnable the step back costs one trip
//! through the scheduler.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An I/O stream whose writes wait for the runtime's queued tasks once per flush.
#[derive(Debug)]
pub struct BatchedWrites<T> {
    inner: T,
    /// Whether the writes since the last flush have already yielded.
    yielded: bool,
}

impl<T> BatchedWrites<T> {
    /// `inner`, with its writes batched.
    pub fn new(inner: T) -> Self {
        Self { inner, yielded: false }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Yields once per flush: `Pending` after waking the task again, so that it runs after
    /// the tasks already queued.
    fn step_back(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.step_back(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.step_back(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// Not vectored, so that HTTP/2 copies frames of up to 1 KiB into its write buffer (and
    /// writes many in one call) instead of writing each such frame's payload on its own.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.yielded = false;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    /// Counts the times it was woken.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Records each write call's bytes.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl AsyncWrite for Calls {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_first_write_after_each_flush_steps_back_once_and_wakes_its_task() {
        let wakes = Arc::new(Wakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedWrites::new(Calls::default());
        let mut io = Pin::new(&mut io);

        assert!(io.as_mut().poll_write(&mut cx, b"a").is_pending(), "steps back");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and asks to be polled again");
        assert!(matches!(io.as_mut().poll_write(&mut cx, b"a"), Poll::Ready(Ok(1))));
        assert!(matches!(io.as_mut().poll_write(&mut cx, b"b"), Poll::Ready(Ok(1))), "once per flush");
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert!(io.as_mut().poll_write(&mut cx, b"c").is_pending(), "again after the flush");
        assert!(matches!(io.as_mut().poll_write(&mut cx, b"c"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(io.get_ref().0, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], "nothing lost or repeated");
        assert!(!io.is_write_vectored(), "HTTP/2 copies small frames into its buffer");
    }

    #[tokio::test]
    async fn a_connection_with_batched_writes_carries_every_byte_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64);
        let (mut a, mut b) = (BatchedWrites::new(a), BatchedWrites::new(b));
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for chunk in sent.chunks(333) {
                    a.write_all(chunk).await.unwrap();
                    a.flush().await.unwrap();
                }
                a.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, sent);
    }
}
