//! DHCP server with exactly one lease: the configured guest address, for the
//! guest's MAC. Router and DNS server are the gateway.

use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Address,
};

use crate::config::NetConfig;

/// Lease time offered, in seconds.
pub const LEASE_SECS: u32 = 86_400;
/// BOOTP's minimum message size; some clients reject shorter replies.
const MIN_REPLY: usize = 300;
const OPT_MTU: u8 = 26;

/// Why a DHCP message got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    #[error("malformed DHCP message")]
    Malformed,
    #[error("DHCP message from a MAC other than the guest's")]
    OtherClient,
    #[error("DHCP request addressed to another server")]
    OtherServer,
    #[error("DHCP message type not served")]
    Unserved,
    #[error("DHCP reply does not fit")]
    Emit,
}

/// A reply to broadcast back to the client.
#[derive(Debug, PartialEq, Eq)]
pub struct DhcpReply {
    pub payload: Vec<u8>,
    pub kind: DhcpMessageType,
}

/// Answers DISCOVER with OFFER and REQUEST with ACK (or NAK).
pub fn handle(
    config: &NetConfig,
    guest_mac: EthernetAddress,
    payload: &[u8],
) -> Result<DhcpReply, DhcpError> {
    let packet = DhcpPacket::new_checked(payload).map_err(|_| DhcpError::Malformed)?;
    let req = DhcpRepr::parse(&packet).map_err(|_| DhcpError::Malformed)?;
    if req.client_hardware_address != guest_mac {
        return Err(DhcpError::OtherClient);
    }
    let gateway: Ipv4Address = config.gateway;
    let kind = match req.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => {
            if req.server_identifier.is_some_and(|s| s != gateway) {
                return Err(DhcpError::OtherServer);
            }
            let wanted = req.requested_ip.unwrap_or(req.client_ip);
            if wanted == config.guest {
                DhcpMessageType::Ack
            } else {
                DhcpMessageType::Nak
            }
        }
        _ => return Err(DhcpError::Unserved),
    };
    let nak = kind == DhcpMessageType::Nak;
    let mut dns = heapless::Vec::new();
    if !nak {
        dns.push(gateway).map_err(|_| DhcpError::Emit)?;
    }
    let mtu = u16::try_from(config.mtu).unwrap_or(u16::MAX).to_be_bytes();
    let extra = [DhcpOption {
        kind: OPT_MTU,
        data: &mtu,
    }];
    let reply = DhcpRepr {
        message_type: kind,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: req.client_hardware_address,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: if nak {
            Ipv4Address::UNSPECIFIED
        } else {
            config.guest
        },
        server_ip: Ipv4Address::UNSPECIFIED,
        router: (!nak).then_some(gateway),
        subnet_mask: (!nak).then(|| config.netmask()),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(gateway),
        parameter_request_list: None,
        dns_servers: (!nak).then_some(dns),
        max_size: None,
        lease_duration: (!nak).then_some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if nak { &[] } else { &extra },
    };
    let mut buf = vec![0u8; reply.buffer_len().max(MIN_REPLY)];
    let mut out = DhcpPacket::new_unchecked(&mut buf[..]);
    reply.emit(&mut out).map_err(|_| DhcpError::Emit)?;
    Ok(DhcpReply { payload: buf, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 9]);

    fn client_msg(
        kind: DhcpMessageType,
        requested: Option<Ipv4Address>,
        mac: EthernetAddress,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0xdead_beef,
            secs: 0,
            client_hardware_address: mac,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: Ipv4Address::UNSPECIFIED,
            server_ip: Ipv4Address::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: Some(&[1, 3, 6]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn check(reply: &DhcpReply, f: impl FnOnce(&DhcpRepr<'_>)) {
        let packet = DhcpPacket::new_checked(&reply.payload[..]).unwrap();
        f(&DhcpRepr::parse(&packet).unwrap());
    }

    #[test]
    fn discover_gets_an_offer_of_the_guest_address() {
        let c = NetConfig::default();
        let r = handle(&c, MAC, &client_msg(DhcpMessageType::Discover, None, MAC)).unwrap();
        check(&r, |p| {
            assert_eq!(p.message_type, DhcpMessageType::Offer);
            assert_eq!(p.your_ip, c.guest);
            assert_eq!(p.router, Some(c.gateway));
            assert_eq!(p.subnet_mask, Some(c.netmask()));
            assert_eq!(p.dns_servers.as_ref().unwrap().as_slice(), &[c.gateway]);
            assert_eq!(p.server_identifier, Some(c.gateway));
        });
    }

    #[test]
    fn request_for_the_guest_address_gets_ack_and_others_nak() {
        let c = NetConfig::default();
        let ack = handle(
            &c,
            MAC,
            &client_msg(DhcpMessageType::Request, Some(c.guest), MAC),
        )
        .unwrap();
        assert_eq!(ack.kind, DhcpMessageType::Ack);
        let other = Ipv4Address::new(10, 0, 2, 99);
        let nak = handle(
            &c,
            MAC,
            &client_msg(DhcpMessageType::Request, Some(other), MAC),
        )
        .unwrap();
        assert_eq!(nak.kind, DhcpMessageType::Nak);
    }

    #[test]
    fn other_mac_gets_no_lease() {
        let c = NetConfig::default();
        let other = EthernetAddress([2, 0, 0, 0, 0, 7]);
        let msg = client_msg(DhcpMessageType::Discover, None, other);
        assert_eq!(handle(&c, MAC, &msg), Err(DhcpError::OtherClient));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = handle(&NetConfig::default(), MAC, &bytes);
        }
    }
}
