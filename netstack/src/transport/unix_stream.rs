//! Unix stream transport: each frame is preceded by its length as 4 bytes,
//! big-endian (QEMU `-netdev stream`, libkrun `krun_add_net_unixstream`, passt).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use super::{DropKind, FrameTransport, Recv, TransportError};

/// Read buffer size: room for several maximum-size frames per syscall.
const READ_BUF: usize = 512 << 10;
/// Queued output above which `poll_send` first tries to flush.
const WRITE_HIGH: usize = 512 << 10;

/// Frames over a unix stream socket with a 4-byte big-endian length prefix.
#[derive(Debug)]
pub struct UnixStreamTransport {
    io: UnixStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Bytes of an oversized frame still to discard.
    skip: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

/// Accepts exactly one peer on `listener` (the VMM connects as a client).
pub async fn accept_unix_stream(
    listener: &UnixListener,
) -> Result<UnixStreamTransport, TransportError> {
    let (io, _) = listener.accept().await.map_err(TransportError::Io)?;
    Ok(UnixStreamTransport::new(io))
}

impl UnixStreamTransport {
    /// Wraps a connected stream.
    pub fn new(io: UnixStream) -> Self {
        UnixStreamTransport {
            io,
            rbuf: vec![0; READ_BUF],
            rstart: 0,
            rend: 0,
            skip: 0,
            wbuf: Vec::with_capacity(WRITE_HIGH + 70_000),
            wpos: 0,
        }
    }

    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)).map_err(TransportError::Io)?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Err(TransportError::Closed));
        }
        self.rend += n;
        Poll::Ready(Ok(()))
    }
}

impl FrameTransport for UnixStreamTransport {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Recv, TransportError>> {
        loop {
            let avail = self.rend - self.rstart;
            if self.skip > 0 {
                let n = self.skip.min(avail);
                self.rstart += n;
                self.skip -= n;
                if self.skip == 0 {
                    return Poll::Ready(Ok(Recv::Dropped(DropKind::Oversized)));
                }
            } else if avail >= 4 {
                let mut len_bytes = [0u8; 4];
                len_bytes.copy_from_slice(&self.rbuf[self.rstart..self.rstart + 4]);
                let len = u32::from_be_bytes(len_bytes) as usize;
                if len == 0 {
                    self.rstart += 4;
                    return Poll::Ready(Ok(Recv::Dropped(DropKind::Malformed)));
                }
                if len > buf.len() || len > self.rbuf.len() - 4 {
                    self.rstart += 4;
                    self.skip = len;
                    continue;
                }
                if avail >= 4 + len {
                    let start = self.rstart + 4;
                    buf[..len].copy_from_slice(&self.rbuf[start..start + len]);
                    self.rstart = start + len;
                    if self.rstart == self.rend {
                        self.rstart = 0;
                        self.rend = 0;
                    }
                    return Poll::Ready(Ok(Recv::Frame(len)));
                }
                if self.rstart + 4 + len > self.rbuf.len() {
                    self.rbuf.copy_within(self.rstart..self.rend, 0);
                    self.rend -= self.rstart;
                    self.rstart = 0;
                }
            } else if self.rstart > 0 && self.rstart + 4 > self.rbuf.len() {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            }
            ready!(self.fill(cx))?;
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: &[u8],
    ) -> Poll<Result<(), TransportError>> {
        if self.wbuf.len() - self.wpos > WRITE_HIGH {
            ready!(self.poll_flush(cx))?;
        }
        let len = u32::try_from(frame.len())
            .map_err(|_| TransportError::Io(std::io::ErrorKind::InvalidInput.into()))?;
        self.wbuf.extend_from_slice(&len.to_be_bytes());
        self.wbuf.extend_from_slice(frame);
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))
                .map_err(TransportError::Io)?;
            if n == 0 {
                return Poll::Ready(Err(TransportError::Closed));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn recv(t: &mut UnixStreamTransport, buf: &mut [u8]) -> Result<Recv, TransportError> {
        poll_fn(|cx| t.poll_recv(cx, buf)).await
    }

    #[tokio::test]
    async fn frames_round_trip_with_length_prefix() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut t = UnixStreamTransport::new(a);
        poll_fn(|cx| t.poll_send(cx, b"hello")).await.unwrap();
        poll_fn(|cx| t.poll_flush(cx)).await.unwrap();
        let mut got = [0u8; 9];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\0\0\0\x05hello");

        b.write_all(b"\0\0\0\x03abc\0\0\0\x02xy").await.unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(recv(&mut t, &mut buf).await.unwrap(), Recv::Frame(3));
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(recv(&mut t, &mut buf).await.unwrap(), Recv::Frame(2));
        assert_eq!(&buf[..2], b"xy");
    }

    #[tokio::test]
    async fn oversized_frame_is_skipped_and_the_next_one_arrives() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut t = UnixStreamTransport::new(a);
        let mut msg = 20u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&[7u8; 20]);
        msg.extend_from_slice(b"\0\0\0\x01z");
        b.write_all(&msg).await.unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(
            recv(&mut t, &mut buf).await.unwrap(),
            Recv::Dropped(DropKind::Oversized)
        );
        assert_eq!(recv(&mut t, &mut buf).await.unwrap(), Recv::Frame(1));
        assert_eq!(buf[0], b'z');
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn random_streams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), max in 1usize..2000) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let (a, mut b) = UnixStream::pair().unwrap();
                let mut t = UnixStreamTransport::new(a);
                b.write_all(&bytes).await.unwrap();
                drop(b);
                let mut buf = vec![0u8; max];
                // Every outcome is fine except a panic; the stream must end.
                for _ in 0..=bytes.len() {
                    if recv(&mut t, &mut buf).await.is_err() {
                        return;
                    }
                }
                panic!("transport never reported the end of the stream");
            });
        }
    }

    #[tokio::test]
    async fn peer_close_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut t = UnixStreamTransport::new(a);
        drop(b);
        let mut buf = [0u8; 10];
        assert!(matches!(
            recv(&mut t, &mut buf).await,
            Err(TransportError::Closed)
        ));
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut t = UnixStreamTransport::new(a);
        let writer = tokio::spawn(async move {
            for chunk in [&b"\0\0"[..], b"\0\x04ab", b"cd"] {
                b.write_all(chunk).await.unwrap();
                b.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            b
        });
        let mut buf = [0u8; 10];
        assert_eq!(recv(&mut t, &mut buf).await.unwrap(), Recv::Frame(4));
        assert_eq!(&buf[..4], b"abcd");
        drop(writer.await.unwrap());
    }
}
