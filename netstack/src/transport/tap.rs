//! TAP transport: one frame per `read`/`write` on a TAP file descriptor
//! opened with `IFF_TAP | IFF_NO_PI` (no packet-info or vnet header).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;

use super::{would_block, FrameTransport, Recv, TransportError};
use crate::sys;

/// Frames over a TAP device.
#[derive(Debug)]
pub struct TapTransport {
    fd: AsyncFd<OwnedFd>,
}

impl TapTransport {
    /// Wraps an open, non-blocking TAP fd. Must run inside a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TransportError> {
        Ok(TapTransport {
            fd: sys::async_fd(fd).map_err(TransportError::Io)?,
        })
    }

    /// Creates (or attaches to) TAP device `name` in the network namespace at
    /// `netns` (e.g. `/run/netns/NAME`); this thread's namespace is restored.
    pub fn open_in_netns(netns: &Path, name: &str) -> Result<Self, sys::SysError> {
        let fd = sys::in_netns(netns, || sys::open_tap(name))??;
        TapTransport::from_fd(fd).map_err(|e| match e {
            TransportError::Io(io) => sys::SysError::Io(io),
            TransportError::Closed => sys::SysError::Io(std::io::ErrorKind::BrokenPipe.into()),
        })
    }
}

fn to_io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl FrameTransport for TapTransport {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Recv, TransportError>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx)).map_err(TransportError::Io)?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(to_io))
            {
                Ok(Ok(0)) => return Poll::Ready(Err(TransportError::Closed)),
                Ok(Ok(n)) => return Poll::Ready(Ok(Recv::Frame(n))),
                Ok(Err(e)) => return Poll::Ready(Err(TransportError::Io(e))),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: &[u8],
    ) -> Poll<Result<(), TransportError>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx)).map_err(TransportError::Io)?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), frame).map_err(to_io)) {
                Ok(Ok(_)) => return Poll::Ready(Ok(())),
                // The interface is down or its queue is full: the frame is lost, like on a wire.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) if would_block(&e) => continue,
                Ok(Err(e)) => return Poll::Ready(Err(TransportError::Io(e))),
                Err(_would_block) => continue,
            }
        }
    }
}
