//! Name resolution, the SSRF guard and dialing: resolve once, check every
//! address, dial exactly the checked addresses in order.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use tokio::net::TcpStream;

/// A boxed future, for the object-safe traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves host names. The default asks the system; tests map names to loopback.
pub trait Resolver: Send + Sync + fmt::Debug {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// Opens TCP connections. The default dials for real; tests can refuse
/// anything that is not loopback, so a bug can never send packets elsewhere.
pub trait Dialer: Send + Sync + fmt::Debug {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>>;
}

/// `getaddrinfo` through tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Names pinned to addresses, like curl's `--resolve` (and, with a port,
/// `--connect-to`): split DNS, or a test upstream on loopback under its real
/// name. TLS still verifies the name; the SSRF guard still checks the
/// address. Other names go to `fallback`.
#[derive(Debug, Clone)]
pub struct PinnedResolver {
    pins: std::collections::HashMap<String, AddressPin>,
    fallback: std::sync::Arc<dyn Resolver>,
}

/// Where a pinned name goes: an address, and optionally another port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPin {
    pub ip: std::net::IpAddr,
    pub port: Option<u16>,
}

impl AddressPin {
    /// `ADDR` or `ADDR:PORT` (`[v6]:PORT` for IPv6).
    pub fn parse(raw: &str) -> Option<AddressPin> {
        if let Ok(ip) = raw.parse() {
            return Some(AddressPin { ip, port: None });
        }
        let addr: SocketAddr = raw.parse().ok()?;
        (addr.port() != 0).then_some(AddressPin {
            ip: addr.ip(),
            port: Some(addr.port()),
        })
    }
}

impl PinnedResolver {
    /// `pins`: host name (any case, trailing dot ignored) → pin.
    pub fn new(
        pins: impl IntoIterator<Item = (String, AddressPin)>,
        fallback: std::sync::Arc<dyn Resolver>,
    ) -> Self {
        Self {
            pins: pins
                .into_iter()
                .map(|(h, p)| (normal_host(&h), p))
                .collect(),
            fallback,
        }
    }
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Resolver for PinnedResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        match self.pins.get(&normal_host(host)) {
            Some(pin) => {
                let addr = SocketAddr::new(pin.ip, pin.port.unwrap_or(port));
                Box::pin(async move { Ok(vec![addr]) })
            }
            None => self.fallback.resolve(host, port),
        }
    }
}

/// Plain `connect(2)` with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }
}

/// Why an `allow_ips` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` in allow_ips is not an address or CIDR such as 10.1.0.0/16")]
pub struct BadNet(pub String);

/// An address block from `allow_ips`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(raw: &str) -> Result<Self, BadNet> {
        let bad = || BadNet(raw.to_string());
        let (addr, prefix) = match raw.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw.trim(), None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) seen as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why an address is not a public unicast destination, or `None` when it is.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [169, 254, 169, 254] => "cloud metadata",
        [0, ..] => "unspecified (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "private (10.0.0.0/8)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT (100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [192, 0, 2, _] => "documentation (192.0.2.0/24)",
        [198, 51, 100, _] => "documentation (198.51.100.0/24)",
        [203, 0, 113, _] => "documentation (203.0.113.0/24)",
        [a, ..] if (224..240).contains(&a) => "multicast",
        [a, ..] if a >= 240 => "reserved or broadcast",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("cloud metadata");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let seg = ip.segments();
    let embedded_v4 = |ip: Ipv6Addr| {
        let o = ip.octets();
        Ipv4Addr::new(o[12], o[13], o[14], o[15])
    };
    // IPv4-mapped, IPv4-compatible and NAT64 forms carry an IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4).map(|_| "IPv4-mapped non-public address");
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        return Some("IPv4-compatible (deprecated)");
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return special_v4(embedded_v4(ip)).map(|_| "NAT64 of a non-public address");
    }
    // Local-use NAT64 (RFC 8215): a site's own translator, whatever it embeds.
    if seg[..3] == [0x64, 0xff9b, 1] {
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return special_v4(v4).map(|_| "6to4 of a non-public address");
    }
    match (seg[0], seg[1]) {
        // Teredo tunnels to an (obfuscated) IPv4 address through a relay.
        (0x2001, 0) => return Some("Teredo (2001::/32)"),
        (0x2001, 2) if seg[2] == 0 => return Some("benchmarking (2001:2::/48)"),
        (0x2001, 0x0db8) => return Some("documentation (2001:db8::/32)"),
        (0x3fff, s) if s & 0xf000 == 0 => return Some("documentation (3fff::/20)"),
        (0x0100, 0) if seg[2..4] == [0, 0] => return Some("discard-only (100::/64)"),
        _ => {}
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => Some("unique local (fc00::/7)"),
        s if s & 0xffc0 == 0xfe80 => Some("link-local"),
        s if s & 0xffc0 == 0xfec0 => Some("site-local (deprecated)"),
        s if s & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// Addresses that are exempt from the SSRF guard.
#[derive(Debug, Clone, Default)]
pub struct IpAllowlist(Vec<IpNet>);

impl IpAllowlist {
    pub fn parse(entries: &[String]) -> Result<Self, BadNet> {
        entries
            .iter()
            .map(|e| IpNet::parse(e))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// `Err(reason)` when the address may not be dialed.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        match special_purpose(ip) {
            Some(why) if !self.contains(ip) => Err(why),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_classified() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
        ] {
            assert!(special_purpose(ip(a)).is_some(), "{a} should be refused");
        }
    }

    #[test]
    fn documentation_teredo_local_nat64_benchmarking_and_discard_ranges_are_refused() {
        for (a, why) in [
            ("192.0.2.1", "documentation (192.0.2.0/24)"),
            ("198.51.100.255", "documentation (198.51.100.0/24)"),
            ("203.0.113.7", "documentation (203.0.113.0/24)"),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("2001:db8:ffff::1", "documentation (2001:db8::/32)"),
            ("3fff::1", "documentation (3fff::/20)"),
            ("3fff:fff:ffff::1", "documentation (3fff::/20)"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo (2001::/32)"),
            ("2001::1", "Teredo (2001::/32)"),
            ("64:ff9b:1::808:808", "local-use NAT64 (64:ff9b:1::/48)"),
            ("64:ff9b:1:ffff::1", "local-use NAT64 (64:ff9b:1::/48)"),
            ("2001:2::1", "benchmarking (2001:2::/48)"),
            ("100::1", "discard-only (100::/64)"),
            ("::ffff:192.0.2.1", "IPv4-mapped non-public address"),
            ("64:ff9b::cb00:7107", "NAT64 of a non-public address"),
        ] {
            assert_eq!(special_purpose(ip(a)), Some(why), "{a}");
        }
        // Neighbours of each range are public.
        for a in [
            "192.0.3.1",
            "198.51.101.1",
            "203.0.114.1",
            "2001:db9::1",
            "3fff:1000::1",
            "2001:1::1",
            "2001:2:1::1",
            "64:ff9b:2::1",
            "100:0:0:1::1",
        ] {
            assert_eq!(special_purpose(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn the_older_ranges_stay_refused() {
        for a in ["198.18.0.1", "192.0.0.8"] {
            assert!(special_purpose(ip(a)).is_some(), "{a} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(special_purpose(ip(a)), None, "{a} should pass");
        }
    }

    #[test]
    fn metadata_is_named_as_such() {
        assert_eq!(
            special_purpose(ip("169.254.169.254")),
            Some("cloud metadata")
        );
        assert_eq!(special_purpose(ip("fd00:ec2::254")), Some("cloud metadata"));
    }

    #[test]
    fn allowlisted_nets_exempt_addresses_including_mapped_forms() {
        let allow = IpAllowlist::parse(&["127.0.0.1".into(), "10.1.0.0/16".into()]).unwrap();
        assert!(allow.check(ip("127.0.0.1")).is_ok());
        assert!(allow.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(allow.check(ip("10.1.200.3")).is_ok());
        assert!(allow.check(ip("10.2.0.1")).is_err());
        assert!(allow.check(ip("127.0.0.2")).is_err());
        assert!(allow.check(ip("::1")).is_err());
    }

    #[test]
    fn bad_allow_ips_entries_are_refused() {
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("example.com").is_err());
        assert!(IpNet::parse("::/129").is_err());
        assert!(IpNet::parse("::/0").unwrap().contains(ip("fe80::1")));
        assert!(IpNet::parse("[::1]").unwrap().contains(ip("::1")));
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;

    #[derive(Debug)]
    struct Nowhere;
    impl Resolver for Nowhere {
        fn resolve<'a>(&'a self, _: &'a str, _: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
            Box::pin(async { Err(io::Error::other("not pinned")) })
        }
    }

    #[tokio::test]
    async fn pinned_names_resolve_to_their_pin_and_others_fall_through() {
        let r = PinnedResolver::new(
            [
                (
                    "API.Example.com.".to_string(),
                    AddressPin::parse("127.0.0.1:8443").unwrap(),
                ),
                (
                    "split.corp".to_string(),
                    AddressPin::parse("10.1.2.3").unwrap(),
                ),
            ],
            std::sync::Arc::new(Nowhere),
        );
        assert_eq!(
            r.resolve("api.example.com", 443).await.unwrap(),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        assert_eq!(
            r.resolve("split.corp", 443).await.unwrap(),
            vec!["10.1.2.3:443".parse().unwrap()]
        );
        assert!(r.resolve("other.example", 443).await.is_err());
        assert_eq!(AddressPin::parse("[::1]:9").unwrap().port, Some(9));
        assert!(AddressPin::parse("host:1").is_none());
        assert!(AddressPin::parse("127.0.0.1:0").is_none());
    }
}
