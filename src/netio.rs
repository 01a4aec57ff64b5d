//! Sockets as hyper sees them: tokio streams without vectored writes.
//!
//! A stream that says it writes vectored makes hyper queue a response's head and body as
//! separate buffers and send them with `writev`; one that does not makes it copy both into one
//! buffer and send that with `send`. Profiles of the proxy path on loopback showed `writev`'s
//! generic file path (`vfs_writev`, iovec import, `fdget_pos`) at ~3% of the gateway's CPU,
//! more than copying a typical head and body costs; HAProxy, measured beside Gatehouse, uses
//! `send` too. Large bodies still stream: hyper flattens one chunk at a time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;

/// A tokio stream for hyper, written with plain `write` (`send` on a socket).
#[derive(Debug)]
pub struct Flat<T>(TokioIo<T>);

impl<T> Flat<T> {
    pub fn new(io: T) -> Self {
        Flat(TokioIo::new(io))
    }
}

impl<T> Read for Flat<T>
where
    T: tokio::io::AsyncRead + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T> Write for Flat<T>
where
    T: tokio::io::AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // hyper picks its write strategy from `is_write_vectored`: this must stay false for
    // head and body to leave in one `send`.
    #[tokio::test]
    async fn writes_whole_buffers_and_reads_them_back() {
        use std::future::poll_fn;
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Flat::new(a);
        assert!(!a.is_write_vectored());
        let bufs = [io::IoSlice::new(b"head\r\n"), io::IoSlice::new(b"body")];
        let n = poll_fn(|cx| Pin::new(&mut a).poll_write_vectored(cx, &bufs))
            .await
            .unwrap();
        // Without vectored support only the first buffer is taken at a time.
        assert_eq!(n, 6);
        let mut got = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"head\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut b, b"pong")
            .await
            .unwrap();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        let mut rb = hyper::rt::ReadBuf::uninit(&mut buf);
        poll_fn(|cx| Pin::new(&mut a).poll_read(cx, rb.unfilled()))
            .await
            .unwrap();
        assert_eq!(rb.filled(), b"pong");
    }
}
