//! Unix datagram transport: one raw Ethernet frame per datagram. vfkit-style
//! peers (libkrun's `krun_add_net_unixgram`) first send the 4 bytes `VFKT`,
//! which are skipped.

use std::path::{Path, PathBuf};
use std::task::{ready, Context, Poll};

use tokio::io::ReadBuf;
use tokio::net::UnixDatagram;

use super::{would_block, DropKind, FrameTransport, Recv, TransportError};

/// The greeting vfkit-style peers send before any frame.
pub const VFKT_GREETING: &[u8; 4] = b"VFKT";

/// Frames over a unix datagram socket.
#[derive(Debug)]
pub struct UnixDatagramTransport {
    sock: UnixDatagram,
    /// Where replies go when the socket is not connected (learned from the
    /// first datagram).
    peer: Option<PathBuf>,
    connected: bool,
}

impl UnixDatagramTransport {
    /// Wraps a socket already connected to its peer.
    pub fn from_connected(sock: UnixDatagram) -> Self {
        UnixDatagramTransport {
            sock,
            peer: None,
            connected: true,
        }
    }

    /// Binds `path` and learns the peer from the first datagram it sends
    /// (its socket must be bound to a path). Frames to the guest sent before
    /// that are dropped.
    pub fn bind(path: &Path) -> Result<Self, TransportError> {
        let sock = UnixDatagram::bind(path).map_err(TransportError::Io)?;
        Ok(UnixDatagramTransport {
            sock,
            peer: None,
            connected: false,
        })
    }
}

impl FrameTransport for UnixDatagramTransport {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Recv, TransportError>> {
        loop {
            let mut rb = ReadBuf::new(buf);
            let n = if self.connected {
                ready!(self.sock.poll_recv(cx, &mut rb)).map_err(TransportError::Io)?;
                rb.filled().len()
            } else {
                let from =
                    ready!(self.sock.poll_recv_from(cx, &mut rb)).map_err(TransportError::Io)?;
                if let Some(p) = from.as_pathname() {
                    if self.peer.as_deref() != Some(p) {
                        self.peer = Some(p.to_path_buf());
                    }
                }
                rb.filled().len()
            };
            if n == VFKT_GREETING.len() && &buf[..n] == VFKT_GREETING {
                continue;
            }
            if n == 0 {
                return Poll::Ready(Ok(Recv::Dropped(DropKind::Malformed)));
            }
            return Poll::Ready(Ok(Recv::Frame(n)));
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: &[u8],
    ) -> Poll<Result<(), TransportError>> {
        let res = if self.connected {
            ready!(self.sock.poll_send(cx, frame))
        } else if let Some(peer) = &self.peer {
            ready!(self.sock.poll_send_to(cx, frame, peer))
        } else {
            return Poll::Ready(Ok(()));
        };
        match res {
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) if would_block(&e) => Poll::Pending,
            // ENOBUFS and friends: the frame is lost, like on a wire.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Poll::Ready(Ok(())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Poll::Ready(Err(TransportError::Closed))
            }
            Err(e) => Poll::Ready(Err(TransportError::Io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn greeting_is_skipped_and_frames_pass() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut t = UnixDatagramTransport::from_connected(a);
        b.send(VFKT_GREETING).await.unwrap();
        b.send(b"frame-one").await.unwrap();
        let mut buf = [0u8; 64];
        let got = poll_fn(|cx| t.poll_recv(cx, &mut buf)).await.unwrap();
        assert_eq!(got, Recv::Frame(9));
        assert_eq!(&buf[..9], b"frame-one");
        poll_fn(|cx| t.poll_send(cx, b"back")).await.unwrap();
        let mut out = [0u8; 8];
        assert_eq!(b.recv(&mut out).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn bound_socket_learns_its_peer_from_the_first_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("net.sock");
        let theirs = dir.path().join("vm.sock");
        let mut t = UnixDatagramTransport::bind(&ours).unwrap();
        let vm = UnixDatagram::bind(&theirs).unwrap();
        vm.send_to(VFKT_GREETING, &ours).await.unwrap();
        vm.send_to(b"0123456789abcdef", &ours).await.unwrap();
        let mut buf = [0u8; 64];
        let got = poll_fn(|cx| t.poll_recv(cx, &mut buf)).await.unwrap();
        assert_eq!(got, Recv::Frame(16));
        poll_fn(|cx| t.poll_send(cx, b"reply")).await.unwrap();
        let mut out = [0u8; 8];
        assert_eq!(vm.recv(&mut out).await.unwrap(), 5);
    }
}
