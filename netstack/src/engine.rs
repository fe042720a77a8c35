//! The engine: one task that moves frames between the transport, the gate,
//! smoltcp and the flows.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use crate::config::{NetConfig, Tuning};
use crate::counters::LiveCounters;
use crate::device::QueueDevice;
use crate::flow::{ConnInfo, Flow};
use crate::forward::Forward;
use crate::gate::{DnsService, Gate, Verdict};
use crate::transport::{DropKind, FrameTransport, Recv, TransportError};

/// Frames read from the transport per engine turn.
const RX_BATCH: usize = 128;
/// Idle listening sockets kept per forwarded port.
const SPARE_LISTENERS: usize = 4;

/// Asks the engine to stop.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl Stop {
    pub(crate) fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

pub(crate) struct Engine<T: FrameTransport> {
    transport: T,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    gate: Gate,
    forwards: BTreeMap<u16, Forward>,
    /// Sockets listening or mid-handshake, per forwarded port.
    listeners: HashMap<u16, Vec<SocketHandle>>,
    flows: Vec<(SocketHandle, Flow)>,
    counters: Arc<LiveCounters>,
    tuning: Tuning,
    frame_max: usize,
    epoch: std::time::Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
    stop: Arc<Stop>,
    stopping: bool,
}

impl<T: FrameTransport> std::fmt::Debug for Engine<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl<T: FrameTransport> Engine<T> {
    pub(crate) fn new(
        config: NetConfig,
        tuning: Tuning,
        transport: T,
        forwards: BTreeMap<u16, Forward>,
        dns: Arc<DnsService>,
        counters: Arc<LiveCounters>,
        stop: Arc<Stop>,
    ) -> Self {
        let checksums = crate::gate::rx_checksums(transport.trusts_l4_checksums());
        let gate = Gate::new(
            config.clone(),
            dns,
            Arc::clone(&counters),
            checksums.clone(),
        );
        let mut device = QueueDevice::new(config.mtu, tuning.tx_queue_frames, checksums);
        let mut ic = Config::new(HardwareAddress::Ethernet(EthernetAddress(
            config.gateway_mac,
        )));
        ic.random_seed = rand::random::<u64>();
        let epoch = std::time::Instant::now();
        let mut iface = Interface::new(ic, &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(config.gateway),
                config.prefix_len,
            ));
        });
        let frame_max = config.mtu + 14;
        Engine {
            transport,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            gate,
            forwards,
            listeners: HashMap::new(),
            flows: Vec::new(),
            counters,
            tuning,
            frame_max,
            epoch,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            stop,
            stopping: false,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(
            i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    fn socket_count(&self) -> usize {
        self.flows.len() + self.listeners.values().map(Vec::len).sum::<usize>()
    }

    /// Makes sure `want` sockets listen on `port` before a batch holding that many SYNs.
    fn ensure_listeners(&mut self, port: u16, want: usize) {
        let listening = self.listeners.get(&port).map_or(0, |hs| {
            hs.iter()
                .filter(|h| self.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen)
                .count()
        });
        for _ in listening..want {
            if self.socket_count() >= self.tuning.max_flows {
                LiveCounters::inc(&self.counters.flows_rejected);
                return;
            }
            let rx = tcp::SocketBuffer::new(vec![0u8; self.tuning.tcp_rx_buffer]);
            let tx = tcp::SocketBuffer::new(vec![0u8; self.tuning.tcp_tx_buffer]);
            let mut sock = tcp::Socket::new(rx, tx);
            sock.set_nagle_enabled(false);
            if sock.listen(IpListenEndpoint { addr: None, port }).is_err() {
                return;
            }
            let h = self.sockets.add(sock);
            self.listeners.entry(port).or_default().push(h);
        }
    }

    /// Hands established connections to their handlers; drops dead listeners.
    fn accept(&mut self) {
        let mut accepted = Vec::new();
        for (port, handles) in self.listeners.iter_mut() {
            let mut spare = 0;
            handles.retain(|h| {
                let sock = self.sockets.get::<tcp::Socket>(*h);
                match sock.state() {
                    tcp::State::Listen => {
                        spare += 1;
                        if spare > SPARE_LISTENERS {
                            self.sockets.remove(*h);
                            return false;
                        }
                        true
                    }
                    tcp::State::SynReceived => true,
                    tcp::State::Closed => {
                        self.sockets.remove(*h);
                        false
                    }
                    _ => {
                        accepted.push((*port, *h));
                        false
                    }
                }
            });
        }
        for (port, h) in accepted {
            let sock = self.sockets.get::<tcp::Socket>(h);
            let Some(remote) = sock.remote_endpoint() else {
                self.sockets.remove(h);
                continue;
            };
            let ip = match remote.addr {
                IpAddress::Ipv4(a) => IpAddr::V4(a),
            };
            let info = ConnInfo {
                guest_addr: SocketAddr::new(ip, remote.port),
                port,
            };
            // Listeners exist only on forwarded ports.
            let Some(fwd) = self.forwards.get(&port) else {
                self.sockets.remove(h);
                continue;
            };
            let flow = fwd.open(info, self.tuning.pipe_buffer);
            LiveCounters::inc(&self.counters.flows_accepted);
            LiveCounters::inc(&self.counters.flows_active);
            self.flows.push((h, flow));
        }
    }

    fn pump_flows(&mut self, cx: &mut Context<'_>) {
        let sockets = &mut self.sockets;
        let counters = &self.counters;
        self.flows.retain_mut(|(h, flow)| {
            let done = flow.pump(sockets.get_mut::<tcp::Socket>(*h), cx);
            if done {
                sockets.remove(*h);
                LiveCounters::dec(&counters.flows_active);
            }
            !done
        });
    }

    /// Reads a batch of frames; returns whether the batch was cut short by the limit.
    fn receive(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, TransportError>> {
        let mut syns: Vec<u16> = Vec::new();
        let mut more = false;
        for i in 0..=RX_BATCH {
            if i == RX_BATCH || self.device.tx_full() {
                // Come back for the rest once the transport has taken frames.
                more = true;
                break;
            }
            let mut buf = self.device.rx_buffer();
            let polled = self.transport.poll_recv(cx, &mut buf);
            let n = match polled {
                Poll::Pending => {
                    self.device.recycle_rx(buf);
                    break;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(Recv::Dropped(kind))) => {
                    self.device.recycle_rx(buf);
                    LiveCounters::inc(&self.counters.frames_in);
                    LiveCounters::inc(match kind {
                        DropKind::Oversized => &self.counters.drop_oversized,
                        DropKind::Malformed => &self.counters.drop_malformed,
                    });
                    continue;
                }
                Poll::Ready(Ok(Recv::Frame(n))) => n,
            };
            LiveCounters::inc(&self.counters.frames_in);
            LiveCounters::add(&self.counters.bytes_in, n as u64);
            if n > self.frame_max {
                self.device.recycle_rx(buf);
                LiveCounters::inc(&self.counters.drop_oversized);
                continue;
            }
            match self.gate.classify(&buf[..n]) {
                Verdict::Stack => self.device.push_rx(buf, n),
                Verdict::Syn { port } => {
                    if self.forwards.contains_key(&port) {
                        syns.push(port);
                    } else {
                        // No listener: smoltcp answers with RST.
                        LiveCounters::inc(&self.counters.rst_closed_port);
                    }
                    self.device.push_rx(buf, n);
                }
                Verdict::Reply(reply) => {
                    self.device.recycle_rx(buf);
                    self.device.push_tx(reply);
                }
                Verdict::Drop => self.device.recycle_rx(buf),
            }
        }
        if !syns.is_empty() {
            syns.sort_unstable();
            for chunk in syns.chunk_by(|a, b| a == b) {
                self.ensure_listeners(chunk[0], chunk.len());
            }
        }
        Poll::Ready(Ok(more))
    }

    /// Sends queued frames; true when the queue is empty.
    fn flush(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError> {
        while let Some(frame) = self.device.tx_front() {
            let len = frame.bytes().len();
            match self.transport.poll_send(cx, frame.bytes()) {
                Poll::Ready(Ok(())) => {
                    LiveCounters::inc(&self.counters.frames_out);
                    LiveCounters::add(&self.counters.bytes_out, len as u64);
                    self.device.pop_tx();
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        match self.transport.poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) => Ok(self.device.tx_empty()),
            Poll::Pending => Ok(false),
        }
    }

    fn abort_all(&mut self) {
        for (h, _) in &self.flows {
            self.sockets.get_mut::<tcp::Socket>(*h).abort();
            LiveCounters::dec(&self.counters.flows_active);
        }
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    /// One turn of the engine. Ready when stopped or the transport ended.
    pub(crate) fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.stop.waker.register(cx.waker());
        if self.stop.flag.load(Ordering::SeqCst) && !self.stopping {
            self.stopping = true;
            self.abort_all();
            let _ = self.flush(cx);
            return Poll::Ready(Ok(()));
        }
        let more = match self.receive(cx) {
            Poll::Ready(Ok(more)) => more,
            Poll::Ready(Err(TransportError::Closed)) => return Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => false,
        };
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.accept();
        self.pump_flows(cx);
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        let drained = match self.flush(cx) {
            Ok(d) => d,
            Err(TransportError::Closed) => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(e)),
        };
        // A full transmit queue means the transport returned Pending and will
        // wake us; otherwise there is more to read now.
        if (more || self.device.rx_pending()) && !self.device.tx_full() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let now = self.now();
        let delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let delay = match delay {
            // With frames stuck behind a full transport, wait for it rather than spin.
            Some(d) if !drained => Some(d.max(Duration::from_millis(1))),
            other => other,
        };
        if let Some(d) = delay {
            if d.is_zero() {
                cx.waker().wake_by_ref();
            } else {
                self.sleep.as_mut().reset(tokio::time::Instant::now() + d);
                if self.sleep.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }
}

use std::future::Future;
