//! Frame transports between a guest and the stack, behind one trait.
//!
//! Each transport carries whole Ethernet frames: one per datagram
//! ([`UnixDatagramTransport`]), length-prefixed on a byte stream
//! ([`UnixStreamTransport`]), or one per `read`/`write` on a TAP device
//! ([`TapTransport`]).

use std::fmt::Debug;
use std::task::{Context, Poll};

mod channel;
mod tap;
mod unix_dgram;
mod unix_stream;

pub use channel::ChannelTransport;
pub use tap::TapTransport;
pub use unix_dgram::UnixDatagramTransport;
pub use unix_stream::{accept_unix_stream, UnixStreamTransport};

/// What a receive produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// A frame of this many bytes is at the start of the buffer. A length equal
    /// to the buffer's means the frame may have been cut: the caller treats it
    /// as oversized.
    Frame(usize),
    /// A frame arrived but was unusable (too large for the buffer, empty).
    Dropped(DropKind),
}

/// Why a transport dropped a frame itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKind {
    /// Longer than the receive buffer.
    Oversized,
    /// Empty or otherwise not a frame.
    Malformed,
}

/// A transport failed; the engine stops.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport closed by the peer")]
    Closed,
    #[error("transport I/O")]
    Io(#[source] std::io::Error),
}

/// Carries Ethernet frames to and from a guest.
///
/// `poll_send` may queue the frame internally; `poll_flush` pushes queued
/// frames out and must be called after a batch of sends.
pub trait FrameTransport: Send + Debug + 'static {
    /// Receives one frame into `buf`.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Recv, TransportError>>;
    /// Sends (or queues) one frame. `Pending` means no room now.
    fn poll_send(&mut self, cx: &mut Context<'_>, frame: &[u8])
        -> Poll<Result<(), TransportError>>;
    /// Writes out queued frames.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }
    /// Whether TCP and UDP checksums of received frames need no check: the
    /// frames come from a local kernel that may leave them partial
    /// (checksum offload). IPv4 header checksums are always checked.
    fn trusts_l4_checksums(&self) -> bool {
        false
    }
}

impl FrameTransport for Box<dyn FrameTransport> {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Recv, TransportError>> {
        (**self).poll_recv(cx, buf)
    }
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: &[u8],
    ) -> Poll<Result<(), TransportError>> {
        (**self).poll_send(cx, frame)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        (**self).poll_flush(cx)
    }
    fn trusts_l4_checksums(&self) -> bool {
        (**self).trusts_l4_checksums()
    }
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}
