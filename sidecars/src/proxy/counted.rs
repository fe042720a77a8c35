//! Byte counting for what the audit log records of an exchange: a stream
//! wrapper for passthrough tunnels and a body wrapper for responses, the
//! latter writing the exchange's `completed` line when the body ends, fails
//! or is dropped unfinished.

use super::handler::Body;
use crate::audit::{Completion, Exchange, Outcome};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that counts the bytes read from it and notes whether it failed.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    pub read: u64,
    pub failed: bool,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            failed: false,
        }
    }

    fn note<T>(&mut self, r: &Poll<io::Result<T>>) {
        if matches!(r, Poll::Ready(Err(_))) {
            self.failed = true;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.read += (buf.filled().len() - before) as u64;
        }
        self.note(&r);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(&r);
        r
    }
}

/// A response body that completes its exchange in the audit log.
#[derive(Debug)]
pub struct AuditedBody {
    inner: Body,
    exchange: Option<Exchange>,
    status: u16,
    down: u64,
}

impl AuditedBody {
    pub fn new(inner: Body, exchange: Exchange, status: u16) -> Self {
        Self {
            inner,
            exchange: Some(exchange),
            status,
            down: 0,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(exchange) = self.exchange.take() {
            let bytes_up = exchange.bytes_up;
            let _ = exchange.complete(Completion {
                outcome,
                status: Some(self.status),
                bytes_up,
                bytes_down: self.down,
                rule: None,
            });
        }
    }
}

impl HttpBody for AuditedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.down += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Outcome::UpstreamFailed),
            Poll::Ready(None) => self.finish(Outcome::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    /// hyper stops polling a body that says it ended; one dropped before
    /// that was abandoned by the client.
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            Outcome::Ok
        } else {
            Outcome::Cancelled
        };
        self.finish(outcome);
    }
}
