//! A simulated guest (its own smoltcp interface) talks to the stack over each
//! transport, through a seeded lossy, reordering link. No root needed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bottle_netstack::transport::Recv;
use bottle_netstack::{
    spawn, ChannelTransport, Counters, Forward, FrameTransport, GuestStream, NetConfig,
    NetstackHandle, UnixDatagramTransport, UnixStreamTransport,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0f];

/// The guest's device: frames from the stack wait in `inq`; what the guest
/// sends collects in `outq`. Loss and reordering are applied by `Link`.
struct GuestDev {
    inq: VecDeque<Vec<u8>>,
    outq: Vec<Vec<u8>>,
}

struct RxT(Vec<u8>);
struct TxT<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for RxT {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl TxToken for TxT<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}
impl Device for GuestDev {
    type RxToken<'a> = RxT;
    type TxToken<'a> = TxT<'a>;
    fn receive(&mut self, _: Instant) -> Option<(RxT, TxT<'_>)> {
        let f = self.inq.pop_front()?;
        Some((RxT(f), TxT(&mut self.outq)))
    }
    fn transmit(&mut self, _: Instant) -> Option<TxT<'_>> {
        Some(TxT(&mut self.outq))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The guest end of the link, with seeded loss and reordering.
struct Link {
    transport: Box<dyn FrameTransport>,
    rng: StdRng,
    loss: f64,
    reorder: f64,
    lost: u64,
    /// Flip the TCP checksum of every frame the guest sends.
    corrupt_tcp: bool,
}

/// Flips the TCP checksum of an Ethernet/IPv4/TCP frame (others untouched).
fn corrupt_tcp_checksum(frame: &mut [u8]) {
    let ipv4_tcp = frame.len() > 34 && frame[12..14] == [0x08, 0x00] && frame[23] == 6;
    if !ipv4_tcp {
        return;
    }
    let at = 14 + usize::from(frame[14] & 0x0f) * 4 + 16;
    if let Some(sum) = frame.get_mut(at..at + 2) {
        sum[0] ^= 0xff;
        sum[1] ^= 0x5a;
    }
}

impl Link {
    fn pull(&mut self, dev: &mut GuestDev) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = vec![0u8; 65_536];
        while let Poll::Ready(r) = self.transport.poll_recv(&mut cx, &mut buf) {
            let Ok(Recv::Frame(n)) = r else { break };
            if self.rng.gen_bool(self.loss) {
                self.lost += 1;
                continue;
            }
            dev.inq.push_back(buf[..n].to_vec());
            let len = dev.inq.len();
            if len >= 2 && self.rng.gen_bool(self.reorder) {
                dev.inq.swap(len - 1, len - 2);
            }
        }
    }

    fn push(&mut self, dev: &mut GuestDev) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = std::mem::take(&mut dev.outq);
        if frames.len() >= 2 && self.rng.gen_bool(self.reorder) {
            frames.swap(0, 1);
        }
        for mut f in frames {
            if self.rng.gen_bool(self.loss) {
                self.lost += 1;
                continue;
            }
            if self.corrupt_tcp {
                corrupt_tcp_checksum(&mut f);
            }
            assert!(
                self.transport.poll_send(&mut cx, &f).is_ready(),
                "guest link blocked"
            );
        }
        let _ = self.transport.poll_flush(&mut cx);
    }
}

struct Guest {
    iface: Interface,
    dev: GuestDev,
    sockets: SocketSet<'static>,
    link: Link,
    epoch: std::time::Instant,
}

impl Guest {
    fn new(transport: Box<dyn FrameTransport>, seed: u64, loss: f64, reorder: f64) -> Guest {
        let mut dev = GuestDev {
            inq: VecDeque::new(),
            outq: Vec::new(),
        };
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(10, 0, 2, 2))
            .unwrap();
        let link = Link {
            transport,
            rng: StdRng::seed_from_u64(seed),
            loss,
            reorder,
            lost: 0,
            corrupt_tcp: false,
        };
        Guest {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            link,
            epoch: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// One round: receive, let smoltcp work, send.
    async fn step(&mut self) {
        self.link.pull(&mut self.dev);
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.link.push(&mut self.dev);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn echo() -> Forward {
    Forward::Handler(Arc::new(|mut s: GuestStream, _| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = s.shutdown().await;
        });
    }))
}

fn config() -> NetConfig {
    NetConfig {
        guest_mac: Some(GUEST_MAC),
        ..NetConfig::default()
    }
}

/// A guest socket with `buffer` bytes each way, connecting from `local_port`
/// to the gateway's echo port 7.
fn connect_to_echo(guest: &mut Guest, buffer: usize, local_port: u16) -> SocketHandle {
    let rx = tcp::SocketBuffer::new(vec![0u8; buffer]);
    let tx = tcp::SocketBuffer::new(vec![0u8; buffer]);
    let h = guest.sockets.add(tcp::Socket::new(rx, tx));
    let remote = IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), 7);
    guest
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(guest.iface.context(), remote, local_port)
        .unwrap();
    h
}

/// Sends `total` bytes to the echo port and checks every byte comes back.
async fn echo_through(guest: &mut Guest, stack: &NetstackHandle, total: usize) -> Counters {
    let h = connect_to_echo(guest, 64 << 10, 49_152);
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut got) = (0usize, Vec::with_capacity(total));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while got.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled: sent {sent}, got {}",
            got.len()
        );
        guest.step().await;
        let s = guest.sockets.get_mut::<tcp::Socket>(h);
        if s.can_send() && sent < total {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        if s.can_recv() {
            let mut buf = [0u8; 16384];
            let n = s.recv_slice(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == data, "echoed bytes differ");
    guest.sockets.get_mut::<tcp::Socket>(h).close();
    // Wait until the stack has closed its side too.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stack.counters().flows_active != 0 {
        assert!(std::time::Instant::now() < deadline, "flow never closed");
        guest.step().await;
    }
    stack.counters()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_survives_seeded_loss_and_reordering() {
    let (ours, theirs) = ChannelTransport::pair();
    let stack = spawn(config(), ours, BTreeMap::from([(7, echo())])).unwrap();
    let mut guest = Guest::new(Box::new(theirs), 7, 0.05, 0.05);
    let c = echo_through(&mut guest, &stack, 300_000).await;
    assert!(
        guest.link.lost > 0,
        "the link lost nothing; the test proves nothing"
    );
    assert_eq!(c.flows_accepted, 1);
    assert_eq!(c.drop_malformed, 0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_over_the_unix_stream_transport() {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let stack = spawn(
        config(),
        UnixStreamTransport::new(a),
        BTreeMap::from([(7, echo())]),
    )
    .unwrap();
    let mut guest = Guest::new(Box::new(UnixStreamTransport::new(b)), 11, 0.0, 0.0);
    let c = echo_through(&mut guest, &stack, 200_000).await;
    assert_eq!(c.flows_accepted, 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_over_the_unix_datagram_transport_after_a_greeting() {
    let (a, b) = tokio::net::UnixDatagram::pair().unwrap();
    b.send(b"VFKT").await.unwrap();
    let stack = spawn(
        config(),
        UnixDatagramTransport::from_connected(a),
        BTreeMap::from([(7, echo())]),
    )
    .unwrap();
    let mut guest = Guest::new(
        Box::new(UnixDatagramTransport::from_connected(b)),
        13,
        0.0,
        0.0,
    );
    let c = echo_through(&mut guest, &stack, 100_000).await;
    assert_eq!(c.flows_accepted, 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_dns_and_refused_ports_through_the_simulated_link() {
    let (ours, theirs) = ChannelTransport::pair();
    let stack = spawn(config(), ours, BTreeMap::new()).unwrap();
    let mut guest = Guest::new(Box::new(theirs), 17, 0.0, 0.0);

    // DNS over UDP.
    let meta = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0u8; 2048]);
    let u = guest.sockets.add(udp::Socket::new(meta(), meta()));
    guest
        .sockets
        .get_mut::<udp::Socket>(u)
        .bind(40_000)
        .unwrap();
    let q = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05proxy\x08internal\x00\x00\x01\x00\x01";
    let dns = IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), 53);
    guest
        .sockets
        .get_mut::<udp::Socket>(u)
        .send_slice(q, dns)
        .unwrap();
    let mut answer = Vec::new();
    for _ in 0..4000 {
        guest.step().await;
        let s = guest.sockets.get_mut::<udp::Socket>(u);
        if let Ok((data, _)) = s.recv() {
            answer = data.to_vec();
            break;
        }
    }
    assert_eq!(&answer[..2], &[0, 7]);
    assert_eq!(&answer[answer.len() - 4..], &[10, 0, 2, 2]);

    // A port nobody forwards: the connection is reset.
    let rx = tcp::SocketBuffer::new(vec![0u8; 4096]);
    let tx = tcp::SocketBuffer::new(vec![0u8; 4096]);
    let h = guest.sockets.add(tcp::Socket::new(rx, tx));
    let remote = IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), 9999);
    guest
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(guest.iface.context(), remote, 49_200)
        .unwrap();
    for _ in 0..4000 {
        guest.step().await;
        if guest.sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed {
            break;
        }
    }
    assert_eq!(
        guest.sockets.get::<tcp::Socket>(h).state(),
        tcp::State::Closed
    );
    let counters = stack.counters();
    assert_eq!(counters.flows_accepted, 0);
    // Counted by reason, for the audit log's summary.
    assert!(counters.refusals()["tcp-closed-port"] >= 1, "{counters:?}");
    assert_eq!(counters.refusals()["tcp-other-address"], 0);
    stack.shutdown().await;
}

/// The VM transports (qemu's stream, libkrun's datagrams) carry frames whose
/// checksums the guest computed in full: one whose TCP checksum is wrong is
/// dropped, so a guest that corrupts them never connects. Only a TAP with
/// checksum offload (tests/netns.rs) is trusted not to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tcp_checksum_over_the_vm_transports_is_dropped() {
    let (sa, sb) = tokio::net::UnixStream::pair().unwrap();
    let (da, db) = tokio::net::UnixDatagram::pair().unwrap();
    let links: [(Box<dyn FrameTransport>, Box<dyn FrameTransport>); 2] = [
        (
            Box::new(UnixStreamTransport::new(sa)),
            Box::new(UnixStreamTransport::new(sb)),
        ),
        (
            Box::new(UnixDatagramTransport::from_connected(da)),
            Box::new(UnixDatagramTransport::from_connected(db)),
        ),
    ];
    for (ours, theirs) in links {
        assert!(!ours.trusts_l4_checksums());
        let stack = spawn(config(), ours, BTreeMap::from([(7, echo())])).unwrap();
        let mut guest = Guest::new(theirs, 17, 0.0, 0.0);
        guest.link.corrupt_tcp = true;
        let h = connect_to_echo(&mut guest, 4096, 49_153);
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            guest.step().await;
            assert_ne!(
                guest.sockets.get::<tcp::Socket>(h).state(),
                tcp::State::Established,
                "a SYN with a wrong checksum was answered"
            );
        }
        assert_eq!(stack.counters().flows_accepted, 0);
        // The same guest with its checksums left alone connects (its SYN is
        // retransmitted): the test above could have seen a connection.
        guest.link.corrupt_tcp = false;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while guest.sockets.get::<tcp::Socket>(h).state() != tcp::State::Established {
            assert!(std::time::Instant::now() < until, "never connected");
            guest.step().await;
        }
        assert_eq!(stack.counters().flows_accepted, 1);
        stack.shutdown().await;
    }
}
