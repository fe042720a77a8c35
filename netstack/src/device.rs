//! The smoltcp device: two frame queues between the engine and the interface.

use std::collections::VecDeque;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Frames from the guest wait in `rx`; frames for the guest collect in `tx`.
#[derive(Debug)]
pub(crate) struct QueueDevice {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: VecDeque<Vec<u8>>,
    /// Largest Ethernet frame (MTU + 14).
    frame_max: usize,
    tx_limit: usize,
}

impl QueueDevice {
    pub(crate) fn new(mtu: usize, tx_limit: usize) -> Self {
        QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            frame_max: mtu + 14,
            tx_limit,
        }
    }

    pub(crate) fn tx_full(&self) -> bool {
        self.tx.len() >= self.tx_limit
    }
}

#[derive(Debug)]
pub(crate) struct Rx(Vec<u8>);

#[derive(Debug)]
pub(crate) struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        if self.tx_full() {
            return None;
        }
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_max;
        caps
    }
}
