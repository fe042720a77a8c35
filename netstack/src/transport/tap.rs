//! TAP transport: one frame per `read`/`write` on a TAP file descriptor
//! opened with `IFF_TAP | IFF_NO_PI`, and in [`TapMode::ChecksumOffload`]
//! with `IFF_VNET_HDR`: each frame then travels behind a 10-byte virtio-net
//! header (read and written with the frame in one `readv`/`writev`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;

use super::{would_block, DropKind, FrameTransport, Recv, TransportError};
use crate::sys::{self, TapMode};

/// `struct virtio_net_hdr` without the `num_buffers` field.
const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the receiver need not check the checksum.
const VNET_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`; anything else is a segmentation-offload frame,
/// which this device never turned on.
const VNET_GSO_NONE: u8 = 0;

/// Frames over a TAP device.
#[derive(Debug)]
pub struct TapTransport {
    fd: AsyncFd<OwnedFd>,
    mode: TapMode,
}

impl TapTransport {
    /// Wraps an open, non-blocking TAP fd opened in `mode`. Must run inside
    /// a tokio runtime.
    pub fn from_fd(fd: OwnedFd, mode: TapMode) -> Result<Self, TransportError> {
        Ok(TapTransport {
            fd: sys::async_fd(fd).map_err(TransportError::Io)?,
            mode,
        })
    }

    /// Creates (or attaches to) TAP device `name` in the network namespace at
    /// `netns` (e.g. `/run/netns/NAME`); this thread's namespace is restored.
    pub fn open_in_netns(netns: &Path, name: &str) -> Result<Self, sys::SysError> {
        Self::open_in_netns_as(netns, name, TapMode::Plain)
    }

    /// [`TapTransport::open_in_netns`] in a given [`TapMode`].
    pub fn open_in_netns_as(
        netns: &Path,
        name: &str,
        mode: TapMode,
    ) -> Result<Self, sys::SysError> {
        let fd = sys::in_netns(netns, || sys::open_tap(name, mode))??;
        TapTransport::from_fd(fd, mode).map_err(|e| match e {
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
        let offload = self.mode == TapMode::ChecksumOffload;
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx)).map_err(TransportError::Io)?;
            let mut hdr = [0u8; VNET_HDR_LEN];
            let read = guard.try_io(|fd| {
                let fd = fd.get_ref();
                if offload {
                    let mut parts = [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)];
                    nix::sys::uio::readv(fd, &mut parts).map_err(to_io)
                } else {
                    nix::unistd::read(fd.as_raw_fd(), buf).map_err(to_io)
                }
            });
            match read {
                Ok(Ok(0)) => return Poll::Ready(Err(TransportError::Closed)),
                Ok(Ok(n)) if !offload => return Poll::Ready(Ok(Recv::Frame(n))),
                // A header and no frame, or a segmentation-offload frame.
                Ok(Ok(n)) if n <= VNET_HDR_LEN || hdr[1] != VNET_GSO_NONE => {
                    return Poll::Ready(Ok(Recv::Dropped(DropKind::Malformed)))
                }
                Ok(Ok(n)) => return Poll::Ready(Ok(Recv::Frame(n - VNET_HDR_LEN))),
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
        // Our checksums are complete: the namespace's kernel need not verify them.
        let hdr = [VNET_F_DATA_VALID, VNET_GSO_NONE, 0, 0, 0, 0, 0, 0, 0, 0];
        let offload = self.mode == TapMode::ChecksumOffload;
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx)).map_err(TransportError::Io)?;
            let written = guard.try_io(|fd| {
                if offload {
                    let parts = [IoSlice::new(&hdr), IoSlice::new(frame)];
                    nix::sys::uio::writev(fd.get_ref(), &parts).map_err(to_io)
                } else {
                    nix::unistd::write(fd.get_ref(), frame).map_err(to_io)
                }
            });
            match written {
                Ok(Ok(_)) => return Poll::Ready(Ok(())),
                // The interface is down or its queue is full: the frame is lost, like on a wire.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) if would_block(&e) => continue,
                Ok(Err(e)) => return Poll::Ready(Err(TransportError::Io(e))),
                Err(_would_block) => continue,
            }
        }
    }

    fn trusts_l4_checksums(&self) -> bool {
        self.mode == TapMode::ChecksumOffload
    }
}
