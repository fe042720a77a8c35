//! Counters the engine bumps and the dashboard reads.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters shared between the engine and readers.
        #[derive(Debug, Default)]
        pub(crate) struct LiveCounters { $(pub(crate) $name: AtomicU64,)* }

        /// A snapshot of the counters.
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct Counters { $($(#[$doc])* pub $name: u64,)* }

        impl LiveCounters {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Frames received from the guest.
    frames_in,
    /// Frames sent to the guest.
    frames_out,
    /// Bytes received from the guest (Ethernet frames).
    bytes_in,
    /// Bytes sent to the guest (Ethernet frames).
    bytes_out,
    /// Dropped: unparsable Ethernet/ARP/IPv4/UDP/TCP, bad checksum, truncated.
    drop_malformed,
    /// Dropped: larger than the MTU allows.
    drop_oversized,
    /// Dropped: destination MAC not ours, or a source MAC other than the guest's.
    drop_foreign_mac,
    /// Dropped: ARP not asking for the gateway.
    drop_arp,
    /// Dropped: IPv6 (any kind).
    drop_ipv6,
    /// Dropped: any EtherType other than IPv4/ARP/IPv6.
    drop_ethertype,
    /// Dropped: IPv4 fragments.
    drop_fragment,
    /// Dropped: source address neither the guest's nor 0.0.0.0 for DHCP.
    drop_spoofed,
    /// Dropped: packets to addresses other than the gateway (non-TCP-SYN).
    drop_other_address,
    /// Dropped: IP protocols other than TCP/UDP/ICMP to the gateway.
    drop_protocol,
    /// Dropped: frames the guest sent while the transmit queue was full.
    drop_queue_full,
    /// TCP SYNs to other addresses, answered with RST.
    rst_other_address,
    /// TCP SYNs to gateway ports nothing is forwarded on (answered with RST).
    rst_closed_port,
    /// UDP to gateway ports other than DNS and DHCP (port unreachable).
    udp_closed_port,
    /// DHCP replies sent (offers, acks, naks).
    dhcp_replies,
    /// DHCP messages ignored (other MAC, wrong server, unknown type).
    dhcp_ignored,
    /// DNS queries answered (UDP and TCP).
    dns_answered,
    /// DNS queries dropped as malformed.
    dns_malformed,
    /// DNS queries dropped by the rate limit.
    dns_rate_limited,
    /// TCP flows handed to a forward handler.
    flows_accepted,
    /// TCP flows currently open.
    flows_active,
    /// SYNs refused because the flow limit was reached.
    flows_rejected,
}

impl LiveCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Counters {
    /// What the stack refused, by reason (running totals; the bundle writes
    /// the growth into the audit log). Zero reasons included.
    pub fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        [
            ("tcp-other-address", self.rst_other_address),
            ("tcp-closed-port", self.rst_closed_port),
            ("tcp-flow-limit", self.flows_rejected),
            ("udp-closed-port", self.udp_closed_port),
            ("dropped-other-address", self.drop_other_address),
            ("dropped-ipv6", self.drop_ipv6),
            ("dropped-protocol", self.drop_protocol),
            ("dropped-spoofed", self.drop_spoofed),
            ("dropped-fragment", self.drop_fragment),
            (
                "dropped-malformed",
                self.drop_malformed + self.drop_oversized,
            ),
            ("dropped-foreign-mac", self.drop_foreign_mac),
            ("dns-rate-limited", self.dns_rate_limited),
        ]
        .into_iter()
        .collect()
    }

    /// Sum of every drop counter.
    pub fn drops(&self) -> u64 {
        self.drop_malformed
            + self.drop_oversized
            + self.drop_foreign_mac
            + self.drop_arp
            + self.drop_ipv6
            + self.drop_ethertype
            + self.drop_fragment
            + self.drop_spoofed
            + self.drop_other_address
            + self.drop_protocol
            + self.drop_queue_full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_increments() {
        let live = LiveCounters::default();
        LiveCounters::inc(&live.frames_in);
        LiveCounters::add(&live.drop_ipv6, 2);
        let snap = live.snapshot();
        assert_eq!(snap.frames_in, 1);
        assert_eq!(snap.drops(), 2);
    }

    #[test]
    fn refusals_name_each_reason() {
        let live = LiveCounters::default();
        LiveCounters::inc(&live.rst_other_address);
        LiveCounters::add(&live.rst_closed_port, 2);
        LiveCounters::inc(&live.flows_rejected);
        let r = live.snapshot().refusals();
        assert_eq!(r["tcp-other-address"], 1);
        assert_eq!(r["tcp-closed-port"], 2);
        assert_eq!(r["tcp-flow-limit"], 1);
        assert_eq!(r["dns-rate-limited"], 0);
    }
}
