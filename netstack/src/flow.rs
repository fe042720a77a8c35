//! One accepted TCP connection: moves bytes between its smoltcp socket and
//! whatever the forward leads to: the in-process pipe whose other end a
//! handler holds, or a host connection ([`crate::dial`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use smoltcp::socket::tcp::{Socket, State};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use crate::dial::DialFlow;

/// The guest's side of one TCP connection, as an async byte stream.
/// Reading yields what the guest sent; writing sends to the guest; shutting
/// down the write half sends FIN; dropping it closes the connection.
#[derive(Debug)]
pub struct GuestStream(DuplexStream);

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Who connected, to which forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The guest's address and source port.
    pub guest_addr: SocketAddr,
    /// The gateway port the guest connected to.
    pub port: u16,
}

/// The engine's end of one connection.
#[derive(Debug)]
pub(crate) enum Flow {
    /// To an in-process handler, through a pipe.
    Pipe(PipeFlow),
    /// Straight to a host socket.
    Dial(DialFlow),
}

impl Flow {
    /// Moves what it can in both directions; true when the flow is finished.
    pub(crate) fn pump(&mut self, sock: &mut Socket<'_>, cx: &mut Context<'_>) -> bool {
        match self {
            Flow::Pipe(f) => f.pump(sock, cx),
            Flow::Dial(f) => f.pump(sock, cx),
        }
    }
}

/// A flow whose bytes go through an in-process pipe to a handler.
#[derive(Debug)]
pub(crate) struct PipeFlow {
    app: DuplexStream,
    fin_to_app: bool,
    app_eof: bool,
    app_gone: bool,
}

/// What one attempt to move bytes did.
pub(crate) enum Step {
    Moved,
    Blocked,
    Gone,
}

/// The guest sent FIN and everything before it was taken from the socket.
pub(crate) fn guest_finished(sock: &Socket<'_>) -> bool {
    !sock.may_recv()
        && sock.recv_queue() == 0
        && !matches!(
            sock.state(),
            State::Listen | State::SynReceived | State::SynSent
        )
}

impl PipeFlow {
    /// A flow and the stream for its handler.
    pub(crate) fn new(pipe_buffer: usize) -> (PipeFlow, GuestStream) {
        let (ours, theirs) = tokio::io::duplex(pipe_buffer);
        (
            PipeFlow {
                app: ours,
                fin_to_app: false,
                app_eof: false,
                app_gone: false,
            },
            GuestStream(theirs),
        )
    }

    /// Moves what it can in both directions; true when the flow is finished.
    pub(crate) fn pump(&mut self, sock: &mut Socket<'_>, cx: &mut Context<'_>) -> bool {
        // Guest → handler.
        while sock.can_recv() {
            if self.app_gone {
                let _ = sock.recv(|b| (b.len(), ()));
                continue;
            }
            let app = &mut self.app;
            let step = sock.recv(|buf| match Pin::new(&mut *app).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => (n, Step::Moved),
                Poll::Ready(_) => (0, Step::Gone),
                Poll::Pending => (0, Step::Blocked),
            });
            match step {
                Ok(Step::Moved) => {}
                Ok(Step::Gone) => {
                    self.app_gone = true;
                    sock.close();
                }
                Ok(Step::Blocked) | Err(_) => break,
            }
        }
        // Guest sent FIN and everything before it was delivered.
        if !self.fin_to_app
            && !self.app_gone
            && guest_finished(sock)
            && Pin::new(&mut self.app).poll_shutdown(cx).is_ready()
        {
            self.fin_to_app = true;
        }
        // Handler → guest.
        while !self.app_eof && sock.can_send() {
            let app = &mut self.app;
            let step = sock.send(|buf| {
                let mut rb = ReadBuf::new(buf);
                match Pin::new(&mut *app).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                        (rb.filled().len(), Step::Moved)
                    }
                    Poll::Ready(_) => (0, Step::Gone),
                    Poll::Pending => (0, Step::Blocked),
                }
            });
            match step {
                Ok(Step::Moved) => {}
                Ok(Step::Gone) => {
                    self.app_eof = true;
                    sock.close();
                }
                Ok(Step::Blocked) | Err(_) => break,
            }
        }
        matches!(sock.state(), State::Closed | State::TimeWait)
    }
}
