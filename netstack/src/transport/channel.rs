//! In-memory transport: frames over tokio channels, for simulations and
//! in-process tests (no sockets, no privileges).

use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{FrameTransport, Recv, TransportError};

/// One end of an in-memory link; frames sent on one end arrive at the other.
#[derive(Debug)]
pub struct ChannelTransport {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl ChannelTransport {
    /// A connected pair of ends.
    pub fn pair() -> (ChannelTransport, ChannelTransport) {
        let (a_tx, b_rx) = mpsc::unbounded_channel();
        let (b_tx, a_rx) = mpsc::unbounded_channel();
        (
            ChannelTransport { rx: a_rx, tx: a_tx },
            ChannelTransport { rx: b_rx, tx: b_tx },
        )
    }

    /// Splits into the raw channel halves (receiver of frames for this end,
    /// sender towards the other end), for a peer that is not a stack.
    pub fn into_parts(
        self,
    ) -> (
        mpsc::UnboundedReceiver<Vec<u8>>,
        mpsc::UnboundedSender<Vec<u8>>,
    ) {
        (self.rx, self.tx)
    }
}

impl FrameTransport for ChannelTransport {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Recv, TransportError>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Err(TransportError::Closed)),
            Poll::Ready(Some(frame)) => {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Poll::Ready(Ok(Recv::Frame(if frame.len() > buf.len() {
                    buf.len()
                } else {
                    n
                })))
            }
        }
    }

    fn poll_send(
        &mut self,
        _cx: &mut Context<'_>,
        frame: &[u8],
    ) -> Poll<Result<(), TransportError>> {
        match self.tx.send(frame.to_vec()) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(TransportError::Closed)),
        }
    }
}
