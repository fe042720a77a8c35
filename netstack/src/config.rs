//! Addresses and sizes of the guest network.

use std::net::Ipv4Addr;

/// The guest network: one gateway (the stack) and one guest on a small subnet.
///
/// Defaults follow QEMU's user networking so stock guests feel at home:
/// gateway `10.0.2.2`, guest `10.0.2.15`, `/24`, MTU 1500, DNS name
/// `proxy.internal`, gateway MAC `52:55:0a:00:02:02`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Address of the stack itself: router, DHCP server, DNS server, forwards.
    pub gateway: Ipv4Addr,
    /// The one address the DHCP server leases.
    pub guest: Ipv4Addr,
    /// Prefix length of the subnet holding gateway and guest.
    pub prefix_len: u8,
    /// The gateway's fixed Ethernet address.
    pub gateway_mac: [u8; 6],
    /// When set, only frames from this MAC are accepted; otherwise the first
    /// source MAC seen becomes the guest.
    pub guest_mac: Option<[u8; 6]>,
    /// IP MTU (Ethernet payload size); 1500 by default, up to 65521.
    pub mtu: usize,
    /// The only name the DNS answerer knows; it resolves to the gateway.
    pub dns_name: String,
}

/// Default gateway MAC: locally administered, encodes 10.0.2.2 like QEMU's.
pub const DEFAULT_GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// Largest supported IP MTU (IPv4 total length is 16 bits, minus slack).
pub const MAX_MTU: usize = 65521;
/// Smallest MTU accepted (IPv4 minimum).
pub const MIN_MTU: usize = 576;

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            guest: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            gateway_mac: DEFAULT_GATEWAY_MAC,
            guest_mac: None,
            mtu: 1500,
            dns_name: bottle_contract::PROXY_HOST.to_owned(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("prefix length {0} is outside 8..=30")]
    Prefix(u8),
    #[error("gateway and guest are not in the same /{0} subnet")]
    Subnet(u8),
    #[error("gateway and guest must differ and be unicast addresses")]
    Address,
    #[error("MTU {0} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu(usize),
    #[error("gateway MAC must be a unicast address")]
    Mac,
    #[error("DNS name {0:?} is not a valid host name")]
    DnsName(String),
}

impl NetConfig {
    /// Checks that the configuration describes a usable network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(8..=30).contains(&self.prefix_len) {
            return Err(ConfigError::Prefix(self.prefix_len));
        }
        if self.subnet_of(self.gateway) != self.subnet_of(self.guest) {
            return Err(ConfigError::Subnet(self.prefix_len));
        }
        let bad = |a: Ipv4Addr| {
            a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()
        };
        let host_mask = !self.netmask_bits();
        let is_net_or_bcast =
            |a: Ipv4Addr| u32::from(a) & host_mask == 0 || u32::from(a) & host_mask == host_mask;
        if self.gateway == self.guest
            || bad(self.gateway)
            || bad(self.guest)
            || is_net_or_bcast(self.gateway)
            || is_net_or_bcast(self.guest)
        {
            return Err(ConfigError::Address);
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.gateway_mac[0] & 1 != 0 || self.gateway_mac == [0; 6] {
            return Err(ConfigError::Mac);
        }
        let name_ok = !self.dns_name.is_empty()
            && self.dns_name.len() <= 253
            && self.dns_name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err(ConfigError::DnsName(self.dns_name.clone()));
        }
        Ok(())
    }

    /// Subnet mask as an address (e.g. 255.255.255.0).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.netmask_bits())
    }

    fn netmask_bits(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0)
    }

    fn subnet_of(&self, a: Ipv4Addr) -> u32 {
        u32::from(a) & self.netmask_bits()
    }
}

/// Engine sizes; the defaults favour throughput while keeping 500+ flows cheap
/// (buffers are allocated zeroed, so untouched pages cost nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// smoltcp receive buffer per TCP flow (window scaling kicks in above 64 KiB).
    pub tcp_rx_buffer: usize,
    /// smoltcp send buffer per TCP flow.
    pub tcp_tx_buffer: usize,
    /// In-process pipe capacity between a flow and its handler, per direction.
    pub pipe_buffer: usize,
    /// Most concurrent TCP flows; SYNs beyond it get RST.
    pub max_flows: usize,
    /// DNS queries answered per second (UDP and TCP together); the rest are dropped.
    pub dns_per_second: u32,
    /// Frames queued towards the guest before smoltcp is told to back off.
    pub tx_queue_frames: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tcp_rx_buffer: 1 << 20,
            tcp_tx_buffer: 1 << 20,
            pipe_buffer: 1 << 20,
            max_flows: 2048,
            dns_per_second: 200,
            tx_queue_frames: 512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_documented() {
        let c = NetConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(c.guest, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
    }

    #[test]
    fn guest_outside_the_subnet_is_rejected() {
        let c = NetConfig {
            guest: Ipv4Addr::new(10, 0, 3, 15),
            ..NetConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Subnet(24)));
    }

    #[test]
    fn tiny_or_huge_mtu_is_rejected() {
        for mtu in [100, 70000] {
            let c = NetConfig {
                mtu,
                ..NetConfig::default()
            };
            assert_eq!(c.validate(), Err(ConfigError::Mtu(mtu)));
        }
    }

    #[test]
    fn multicast_gateway_mac_is_rejected() {
        let c = NetConfig {
            gateway_mac: [1, 0, 0, 0, 0, 1],
            ..NetConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Mac));
    }

    #[test]
    fn broadcast_guest_address_is_rejected() {
        let c = NetConfig {
            guest: Ipv4Addr::new(10, 0, 2, 255),
            ..NetConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Address));
    }
}
