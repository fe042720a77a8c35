//! A dial forward's flow: the engine itself moves bytes between the guest's
//! smoltcp socket and one host TCP connection to a fixed address, with no
//! in-process pipe and no task of its own. Each byte is copied once per
//! direction, between smoltcp's buffer and the kernel's socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use smoltcp::socket::tcp::{Socket, State};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::flow::{guest_finished, Step};

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

enum Host {
    Connecting(Connecting),
    Up(TcpStream),
    /// The dial failed or the host connection broke; the guest side is closing.
    Gone,
}

/// The engine's end of one dialled connection.
pub(crate) struct DialFlow {
    addr: SocketAddr,
    host: Host,
    fin_to_host: bool,
    host_eof: bool,
}

impl std::fmt::Debug for DialFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.host {
            Host::Connecting(_) => "connecting",
            Host::Up(_) => "up",
            Host::Gone => "gone",
        };
        f.debug_struct("DialFlow")
            .field("addr", &self.addr)
            .field("host", &host)
            .finish_non_exhaustive()
    }
}

impl DialFlow {
    /// Starts dialling `addr`; the first pump polls the connect.
    pub(crate) fn connect(addr: SocketAddr) -> DialFlow {
        DialFlow {
            addr,
            host: Host::Connecting(Box::pin(TcpStream::connect(addr))),
            fin_to_host: false,
            host_eof: false,
        }
    }

    /// Moves what it can in both directions; true when the flow is finished.
    pub(crate) fn pump(&mut self, sock: &mut Socket<'_>, cx: &mut Context<'_>) -> bool {
        if let Host::Connecting(dial) = &mut self.host {
            match dial.as_mut().poll(cx) {
                Poll::Pending => return finished(sock),
                Poll::Ready(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    self.host = Host::Up(tcp);
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(addr = %self.addr, error = %e, "dial forward failed");
                    self.give_up(sock, cx);
                }
            }
        }
        let Host::Up(tcp) = &mut self.host else {
            // Whatever the guest still sends is dropped while its side closes.
            while sock.can_recv() && sock.recv(|b| (b.len(), ())).is_ok() {}
            return finished(sock);
        };
        let mut broken = false;
        // Guest → host.
        while sock.can_recv() {
            let step = sock.recv(|buf| match tcp.try_write(buf) {
                Ok(n) if n > 0 => (n, Step::Moved),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Step::Blocked),
                _ => (0, Step::Gone),
            });
            match step {
                Ok(Step::Moved) => {}
                Ok(Step::Blocked) => {
                    // Readiness may have come back since the attempt.
                    if tcp.poll_write_ready(cx).is_pending() {
                        break;
                    }
                }
                Ok(Step::Gone) => {
                    broken = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !broken && !self.fin_to_host && guest_finished(sock) {
            // A TCP shutdown of the write half completes at once.
            let _ = Pin::new(&mut *tcp).poll_shutdown(cx);
            self.fin_to_host = true;
        }
        // Host → guest.
        while !broken && !self.host_eof && sock.can_send() {
            let step = sock.send(|buf| match tcp.try_read(buf) {
                Ok(0) => (0, None),
                Ok(n) => (n, Some(Step::Moved)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Some(Step::Blocked)),
                Err(_) => (0, Some(Step::Gone)),
            });
            match step {
                Ok(None) => {
                    self.host_eof = true;
                    sock.close();
                }
                Ok(Some(Step::Moved)) => {}
                Ok(Some(Step::Blocked)) => {
                    if tcp.poll_read_ready(cx).is_pending() {
                        break;
                    }
                }
                Ok(Some(Step::Gone)) => broken = true,
                Err(_) => break,
            }
        }
        if broken {
            self.give_up(sock, cx);
        }
        finished(sock)
    }

    /// Drops the host side and resets the guest's connection. The engine
    /// sends the RST on its next poll of the interface and is asked for one
    /// more turn, in which the flow is found finished.
    fn give_up(&mut self, sock: &mut Socket<'_>, cx: &mut Context<'_>) {
        self.host = Host::Gone;
        sock.abort();
        cx.waker().wake_by_ref();
    }
}

/// Closed for good: an aborted socket keeps its endpoint until its RST is out.
fn finished(sock: &Socket<'_>) -> bool {
    match sock.state() {
        State::TimeWait => true,
        State::Closed => sock.remote_endpoint().is_none(),
        _ => false,
    }
}
