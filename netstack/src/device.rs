//! The smoltcp device: two frame queues between the engine and the interface.
//! Frame buffers are recycled through a pool so the hot path neither
//! allocates nor zeroes memory per frame.

use std::collections::VecDeque;

use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// A frame: a pooled buffer and how much of it is used.
#[derive(Debug)]
pub(crate) struct Frame {
    buf: Vec<u8>,
    len: usize,
}

impl Frame {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Most buffers kept for reuse per direction.
const POOL_MAX: usize = 512;

/// Frames from the guest wait in `rx`; frames for the guest collect in `tx`.
#[derive(Debug)]
pub(crate) struct QueueDevice {
    rx: VecDeque<Frame>,
    tx: VecDeque<Frame>,
    rx_pool: Vec<Vec<u8>>,
    tx_pool: Vec<Vec<u8>>,
    /// Largest Ethernet frame (MTU + 14).
    frame_max: usize,
    /// Receive buffer size: one more than the largest frame, to spot oversize.
    buf_len: usize,
    tx_limit: usize,
    checksums: ChecksumCapabilities,
}

impl QueueDevice {
    /// `checksums`: what smoltcp checks on received frames and computes on
    /// sent ones.
    pub(crate) fn new(mtu: usize, tx_limit: usize, checksums: ChecksumCapabilities) -> Self {
        QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            rx_pool: Vec::new(),
            tx_pool: Vec::new(),
            frame_max: mtu + 14,
            buf_len: mtu + 15,
            tx_limit,
            checksums,
        }
    }

    pub(crate) fn tx_full(&self) -> bool {
        self.tx.len() >= self.tx_limit
    }

    pub(crate) fn rx_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    pub(crate) fn tx_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// A buffer to receive one frame into (`frame_max + 1` bytes).
    pub(crate) fn rx_buffer(&mut self) -> Vec<u8> {
        self.rx_pool
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buf_len])
    }

    /// Queues the first `len` bytes of `buf` for smoltcp.
    pub(crate) fn push_rx(&mut self, buf: Vec<u8>, len: usize) {
        self.rx.push_back(Frame { buf, len });
    }

    /// Returns an unused receive buffer.
    pub(crate) fn recycle_rx(&mut self, buf: Vec<u8>) {
        if self.rx_pool.len() < POOL_MAX {
            self.rx_pool.push(buf);
        }
    }

    /// Queues a frame built outside smoltcp (DHCP, DNS, RST).
    pub(crate) fn push_tx(&mut self, buf: Vec<u8>) {
        let len = buf.len();
        self.tx.push_back(Frame { buf, len });
    }

    pub(crate) fn tx_front(&self) -> Option<&Frame> {
        self.tx.front()
    }

    pub(crate) fn pop_tx(&mut self) {
        if let Some(f) = self.tx.pop_front() {
            if self.tx_pool.len() < POOL_MAX && f.buf.len() == self.frame_max {
                self.tx_pool.push(f.buf);
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Rx<'a> {
    frame: Frame,
    pool: &'a mut Vec<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct Tx<'a> {
    queue: &'a mut VecDeque<Frame>,
    pool: &'a mut Vec<Vec<u8>>,
    frame_max: usize,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame.bytes());
        if self.pool.len() < POOL_MAX {
            self.pool.push(self.frame.buf);
        }
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = match self.pool.pop() {
            Some(b) if b.len() >= len => b,
            _ => vec![0u8; self.frame_max.max(len)],
        };
        let r = f(&mut buf[..len]);
        self.queue.push_back(Frame { buf, len });
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((
            Rx {
                frame,
                pool: &mut self.rx_pool,
            },
            Tx {
                queue: &mut self.tx,
                pool: &mut self.tx_pool,
                frame_max: self.frame_max,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        if self.tx_full() {
            return None;
        }
        Some(Tx {
            queue: &mut self.tx,
            pool: &mut self.tx_pool,
            frame_max: self.frame_max,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_max;
        caps.checksum = self.checksums.clone();
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_buffers_are_reused() {
        let mut d = QueueDevice::new(1500, 8, ChecksumCapabilities::default());
        let buf = d.rx_buffer();
        assert_eq!(buf.len(), 1515);
        let ptr = buf.as_ptr();
        d.push_rx(buf, 60);
        let (rx, _tx) = d.receive(Instant::from_millis(0)).unwrap();
        assert_eq!(rx.consume(|b| b.len()), 60);
        let again = d.rx_buffer();
        assert_eq!(again.as_ptr(), ptr);
    }

    #[test]
    fn transmitted_frames_have_the_requested_length() {
        let mut d = QueueDevice::new(1500, 8, ChecksumCapabilities::default());
        let tx = d.transmit(Instant::from_millis(0)).unwrap();
        tx.consume(42, |b| b.fill(7));
        assert_eq!(d.tx_front().unwrap().bytes(), &[7u8; 42][..]);
        d.pop_tx();
        assert!(d.tx_empty());
    }
}
