//! The policy in front of smoltcp: every frame from the guest is classified
//! here first. Only ARP for the gateway, and TCP/ICMP/UDP addressed to the
//! gateway reach smoltcp; DHCP and UDP DNS are answered here; TCP SYNs to any
//! other address get a RST; everything else is counted and dropped.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr,
};

use crate::config::NetConfig;
use crate::counters::LiveCounters;
use crate::{dhcp, dns};
use bottle_util::TokenBucket;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;

/// What to do with one frame from the guest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to smoltcp.
    Stack,
    /// A TCP SYN to the gateway: hand it to smoltcp after making sure a
    /// listener for `port` exists (if `port` is forwarded).
    Syn { port: u16 },
    /// Answered here: send this frame to the guest.
    Reply(Vec<u8>),
    /// Dropped (already counted).
    Drop,
}

/// The DNS answerer with its rate limit, shared by the UDP path and the TCP handler.
#[derive(Debug)]
pub(crate) struct DnsService {
    name: String,
    gateway: Ipv4Addr,
    limit: Mutex<TokenBucket>,
    counters: Arc<LiveCounters>,
}

impl DnsService {
    pub(crate) fn new(config: &NetConfig, per_second: u32, counters: Arc<LiveCounters>) -> Self {
        DnsService {
            name: config.dns_name.clone(),
            gateway: config.gateway,
            limit: Mutex::new(TokenBucket::new(
                per_second,
                per_second.max(1),
                Instant::now(),
            )),
            counters,
        }
    }

    /// The response to `query`, or `None` when it is dropped (malformed or over the rate).
    pub(crate) fn respond(&self, query: &[u8]) -> Option<Vec<u8>> {
        let allowed = match self.limit.lock() {
            Ok(mut b) => b.take(Instant::now()),
            Err(_) => false,
        };
        if !allowed {
            LiveCounters::inc(&self.counters.dns_rate_limited);
            return None;
        }
        match dns::answer(query, &self.name, self.gateway) {
            Ok(r) => {
                LiveCounters::inc(&self.counters.dns_answered);
                Some(r)
            }
            Err(_) => {
                LiveCounters::inc(&self.counters.dns_malformed);
                None
            }
        }
    }
}

/// Classifies frames from the guest.
#[derive(Debug)]
pub(crate) struct Gate {
    config: NetConfig,
    gw_mac: EthernetAddress,
    guest_mac: Option<EthernetAddress>,
    dns: Arc<DnsService>,
    counters: Arc<LiveCounters>,
    rx_checksums: ChecksumCapabilities,
}

/// Checksums the gate computes on the frames it sends (all of them); what
/// it checks on frames it reads is `rx_checksums`.
fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// What the gate and smoltcp check on frames from the guest: everything,
/// or (when the transport says the guest's kernel leaves TCP/UDP checksums
/// partial, see `FrameTransport::trusts_l4_checksums`) the IPv4 header only.
pub(crate) fn rx_checksums(trust_l4: bool) -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    if trust_l4 {
        caps.tcp = smoltcp::phy::Checksum::Tx;
        caps.udp = smoltcp::phy::Checksum::Tx;
    }
    caps
}

impl Gate {
    pub(crate) fn new(
        config: NetConfig,
        dns: Arc<DnsService>,
        counters: Arc<LiveCounters>,
        rx_checksums: ChecksumCapabilities,
    ) -> Self {
        Gate {
            gw_mac: EthernetAddress(config.gateway_mac),
            guest_mac: config.guest_mac.map(EthernetAddress),
            config,
            dns,
            counters,
            rx_checksums,
        }
    }

    fn drop(&self, counter: &std::sync::atomic::AtomicU64) -> Verdict {
        LiveCounters::inc(counter);
        Verdict::Drop
    }

    /// Decides what happens to `frame`.
    pub(crate) fn classify(&mut self, frame: &[u8]) -> Verdict {
        let c = Arc::clone(&self.counters);
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return self.drop(&c.drop_malformed);
        };
        if eth.ethertype() == EthernetProtocol::Ipv6 {
            return self.drop(&c.drop_ipv6);
        }
        let src = eth.src_addr();
        if !src.is_unicast() {
            return self.drop(&c.drop_foreign_mac);
        }
        match self.guest_mac {
            Some(g) if g != src => return self.drop(&c.drop_foreign_mac),
            Some(_) => {}
            None => self.guest_mac = Some(src),
        }
        let dst = eth.dst_addr();
        if dst != self.gw_mac && !dst.is_broadcast() {
            return self.drop(&c.drop_foreign_mac);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(eth.payload(), src),
            EthernetProtocol::Ipv4 => self.ipv4(eth.payload(), src, dst.is_broadcast()),
            _ => self.drop(&c.drop_ethertype),
        }
    }

    fn arp(&self, payload: &[u8], src: EthernetAddress) -> Verdict {
        let c = &self.counters;
        let Ok(Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        })) = ArpPacket::new_checked(payload).map(|p| ArpRepr::parse(&p))
        else {
            return self.drop(&c.drop_malformed);
        };
        let for_gateway = target_protocol_addr == self.config.gateway
            && source_hardware_addr == src
            && (source_protocol_addr == self.config.guest || source_protocol_addr.is_unspecified());
        match operation {
            ArpOperation::Request | ArpOperation::Reply if for_gateway => Verdict::Stack,
            _ => self.drop(&c.drop_arp),
        }
    }

    fn ipv4(&mut self, payload: &[u8], src_mac: EthernetAddress, broadcast: bool) -> Verdict {
        let c = Arc::clone(&self.counters);
        let Ok(ip) = Ipv4Packet::new_checked(payload) else {
            return self.drop(&c.drop_malformed);
        };
        if ip.more_frags() || ip.frag_offset() != 0 {
            return self.drop(&c.drop_fragment);
        }
        let Ok(repr) = Ipv4Repr::parse(&ip, &self.rx_checksums) else {
            return self.drop(&c.drop_malformed);
        };
        let body = ip.payload();
        let (src, dst) = (repr.src_addr, repr.dst_addr);
        let gateway = self.config.gateway;

        // DHCP: from 0.0.0.0 (or the guest) to broadcast or the gateway.
        if repr.next_header == IpProtocol::Udp
            && (dst.is_broadcast() || dst == gateway)
            && (src.is_unspecified() || src == self.config.guest)
        {
            if let Ok(udp) = UdpPacket::new_checked(body) {
                if udp.dst_port() == DHCP_SERVER_PORT {
                    return self.dhcp(&udp, src, dst, src_mac);
                }
            }
        }
        if src != self.config.guest {
            return self.drop(&c.drop_spoofed);
        }
        if dst != gateway || broadcast {
            return self.other_address(&repr, body, src_mac);
        }
        match repr.next_header {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(body) else {
                    return self.drop(&c.drop_malformed);
                };
                let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
                if UdpRepr::parse(&udp, &s, &d, &self.rx_checksums).is_err() {
                    return self.drop(&c.drop_malformed);
                }
                if udp.dst_port() == DNS_PORT {
                    return match self.dns.respond(udp.payload()) {
                        Some(answer) => Verdict::Reply(self.udp_frame(
                            src_mac,
                            gateway,
                            src,
                            DNS_PORT,
                            udp.src_port(),
                            &answer,
                        )),
                        None => Verdict::Drop,
                    };
                }
                // smoltcp answers with ICMP port unreachable.
                LiveCounters::inc(&c.udp_closed_port);
                Verdict::Stack
            }
            IpProtocol::Tcp => match TcpPacket::new_checked(body) {
                Ok(tcp) if tcp.syn() && !tcp.ack() => Verdict::Syn {
                    port: tcp.dst_port(),
                },
                Ok(_) => Verdict::Stack,
                Err(_) => self.drop(&c.drop_malformed),
            },
            IpProtocol::Icmp => Verdict::Stack,
            _ => self.drop(&c.drop_protocol),
        }
    }

    fn dhcp(
        &self,
        udp: &UdpPacket<&[u8]>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        src_mac: EthernetAddress,
    ) -> Verdict {
        let c = &self.counters;
        let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
        if UdpRepr::parse(udp, &s, &d, &self.rx_checksums).is_err() {
            return self.drop(&c.drop_malformed);
        }
        match dhcp::handle(&self.config, src_mac, udp.payload()) {
            Ok(reply) => {
                LiveCounters::inc(&c.dhcp_replies);
                Verdict::Reply(self.udp_frame(
                    EthernetAddress::BROADCAST,
                    self.config.gateway,
                    Ipv4Addr::BROADCAST,
                    DHCP_SERVER_PORT,
                    DHCP_CLIENT_PORT,
                    &reply.payload,
                ))
            }
            Err(_) => self.drop(&c.dhcp_ignored),
        }
    }

    /// Anything addressed past the gateway: a SYN gets a RST as if the
    /// destination refused, the rest is dropped. Nothing is ever forwarded.
    fn other_address(&self, repr: &Ipv4Repr, body: &[u8], src_mac: EthernetAddress) -> Verdict {
        let c = &self.counters;
        if repr.next_header == IpProtocol::Tcp
            && !repr.dst_addr.is_broadcast()
            && !repr.dst_addr.is_multicast()
        {
            if let Ok(tcp) = TcpPacket::new_checked(body) {
                if tcp.syn() && !tcp.ack() && !tcp.rst() {
                    LiveCounters::inc(&c.rst_other_address);
                    return Verdict::Reply(self.rst_frame(src_mac, repr, &tcp));
                }
            }
        }
        self.drop(&c.drop_other_address)
    }

    fn udp_frame(
        &self,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; ETH_LEN + IPV4_LEN + UDP_LEN + data.len()];
        self.eth_ip(
            &mut buf,
            dst_mac,
            src,
            dst,
            IpProtocol::Udp,
            UDP_LEN + data.len(),
        );
        let udp = UdpRepr {
            src_port: sport,
            dst_port: dport,
        };
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut buf[ETH_LEN + IPV4_LEN..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            data.len(),
            |p| p.copy_from_slice(data),
            &checksums(),
        );
        buf
    }

    fn rst_frame(
        &self,
        dst_mac: EthernetAddress,
        repr: &Ipv4Repr,
        syn: &TcpPacket<&[u8]>,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; ETH_LEN + IPV4_LEN + TCP_LEN];
        let (src, dst) = (repr.dst_addr, repr.src_addr);
        self.eth_ip(&mut buf, dst_mac, src, dst, IpProtocol::Tcp, TCP_LEN);
        let seg_len = syn.payload().len() + 1 + usize::from(syn.fin());
        let rst = TcpRepr {
            src_port: syn.dst_port(),
            dst_port: syn.src_port(),
            control: TcpControl::Rst,
            seq_number: TcpSeqNumber(0),
            ack_number: Some(syn.seq_number() + seg_len),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        rst.emit(
            &mut TcpPacket::new_unchecked(&mut buf[ETH_LEN + IPV4_LEN..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &checksums(),
        );
        buf
    }

    fn eth_ip(
        &self,
        buf: &mut [u8],
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProtocol,
        payload_len: usize,
    ) {
        let eth = EthernetRepr {
            src_addr: self.gw_mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut *buf));
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len,
            hop_limit: 64,
        };
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut buf[ETH_LEN..]),
            &checksums(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GUEST_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 9]);

    fn gate() -> Gate {
        let config = NetConfig::default();
        let counters = Arc::new(LiveCounters::default());
        let dns = Arc::new(DnsService::new(&config, 1000, Arc::clone(&counters)));
        Gate::new(config, dns, counters, rx_checksums(false))
    }

    fn frame(
        dst: Ipv4Addr,
        proto: IpProtocol,
        l4: &dyn Fn(&mut [u8], Ipv4Addr, Ipv4Addr),
        l4_len: usize,
    ) -> Vec<u8> {
        let g = gate();
        let mut buf = vec![0u8; ETH_LEN + IPV4_LEN + l4_len];
        let eth = EthernetRepr {
            src_addr: GUEST_MAC,
            dst_addr: g.gw_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let src = g.config.guest;
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len: l4_len,
            hop_limit: 64,
        };
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut buf[ETH_LEN..]),
            &checksums(),
        );
        l4(&mut buf[ETH_LEN + IPV4_LEN..], src, dst);
        buf
    }

    fn syn_to(dst: Ipv4Addr, port: u16) -> Vec<u8> {
        frame(
            dst,
            IpProtocol::Tcp,
            &|b, s, d| {
                let r = TcpRepr {
                    src_port: 40000,
                    dst_port: port,
                    control: TcpControl::Syn,
                    seq_number: TcpSeqNumber(1000),
                    ack_number: None,
                    window_len: 1000,
                    window_scale: None,
                    max_seg_size: None,
                    sack_permitted: false,
                    sack_ranges: [None; 3],
                    timestamp: None,
                    payload: &[],
                };
                r.emit(
                    &mut TcpPacket::new_unchecked(b),
                    &s.into(),
                    &d.into(),
                    &checksums(),
                );
            },
            TCP_LEN,
        )
    }

    #[test]
    fn syn_to_the_gateway_goes_to_the_stack() {
        let mut g = gate();
        assert_eq!(
            g.classify(&syn_to(Ipv4Addr::new(10, 0, 2, 2), 8888)),
            Verdict::Syn { port: 8888 }
        );
    }

    #[test]
    fn syn_to_any_other_address_gets_a_rst() {
        for dst in [
            [10, 0, 2, 3],
            [169, 254, 169, 254],
            [192, 168, 0, 1],
            [127, 0, 0, 1],
        ] {
            let mut g = gate();
            let Verdict::Reply(rst) = g.classify(&syn_to(Ipv4Addr::from(dst), 80)) else {
                panic!("no reply for {dst:?}");
            };
            let eth = EthernetFrame::new_checked(&rst[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.rst());
            assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
            assert_eq!(ip.src_addr(), Ipv4Addr::from(dst));
            assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        }
    }

    #[test]
    fn udp_to_other_addresses_is_dropped() {
        let mut g = gate();
        let f = frame(
            Ipv4Addr::new(1, 1, 1, 1),
            IpProtocol::Udp,
            &|b, s, d| {
                UdpRepr {
                    src_port: 5000,
                    dst_port: 53,
                }
                .emit(
                    &mut UdpPacket::new_unchecked(b),
                    &s.into(),
                    &d.into(),
                    4,
                    |p| p.copy_from_slice(b"abcd"),
                    &checksums(),
                );
            },
            UDP_LEN + 4,
        );
        assert_eq!(g.classify(&f), Verdict::Drop);
        assert_eq!(g.counters.snapshot().drop_other_address, 1);
    }

    #[test]
    fn dns_query_to_the_gateway_is_answered_in_place() {
        let mut g = gate();
        let q = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05proxy\x08internal\x00\x00\x01\x00\x01";
        let f = frame(
            Ipv4Addr::new(10, 0, 2, 2),
            IpProtocol::Udp,
            &|b, s, d| {
                UdpRepr {
                    src_port: 5000,
                    dst_port: 53,
                }
                .emit(
                    &mut UdpPacket::new_unchecked(b),
                    &s.into(),
                    &d.into(),
                    q.len(),
                    |p| p.copy_from_slice(q),
                    &checksums(),
                );
            },
            UDP_LEN + q.len(),
        );
        let Verdict::Reply(r) = g.classify(&f) else {
            panic!("no answer")
        };
        assert_eq!(&r[r.len() - 4..], &[10, 0, 2, 2]);
    }

    #[test]
    fn frames_from_a_second_mac_are_dropped() {
        let mut g = gate();
        g.classify(&syn_to(Ipv4Addr::new(10, 0, 2, 2), 1));
        let mut f = syn_to(Ipv4Addr::new(10, 0, 2, 2), 1);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 8]);
        assert_eq!(g.classify(&f), Verdict::Drop);
        assert_eq!(g.counters.snapshot().drop_foreign_mac, 1);
    }

    #[test]
    fn ipv6_is_dropped() {
        let mut g = gate();
        let mut f = syn_to(Ipv4Addr::new(10, 0, 2, 2), 1);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(g.classify(&f), Verdict::Drop);
        assert_eq!(g.counters.snapshot().drop_ipv6, 1);
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = gate().classify(&bytes);
        }

        #[test]
        fn random_ipv4_arp_and_udp_payloads_never_panic(
            ethertype in prop_oneof![Just([8u8, 0]), Just([8u8, 6])],
            proto in prop_oneof![Just(6u8), Just(17u8), Just(1u8), any::<u8>()],
            mut body in proptest::collection::vec(any::<u8>(), 20..300),
        ) {
            let mut g = gate();
            let mut f = Vec::new();
            f.extend_from_slice(&g.gw_mac.0);
            f.extend_from_slice(&GUEST_MAC.0);
            f.extend_from_slice(&ethertype);
            if ethertype == [8, 0] {
                // A plausible IPv4 header so deeper parsers see the random rest.
                body[0] = 0x45;
                body[9] = proto;
                let total = u16::try_from(body.len()).unwrap().to_be_bytes();
                body[2..4].copy_from_slice(&total);
                body[6] = 0;
                body[7] = 0;
                body[12..16].copy_from_slice(&[10, 0, 2, 15]);
                let mut p = Ipv4Packet::new_unchecked(&mut body[..]);
                p.fill_checksum();
            }
            f.extend_from_slice(&body);
            let _ = g.classify(&f);
        }
    }
}
