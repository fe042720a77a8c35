//! Request targets: the `host:port` of a CONNECT or of an absolute-form URI,
//! parsed from untrusted bytes into a checked value.

use crate::policy::normalize_host;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a target was refused before any policy was consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target is empty")]
    Empty,
    #[error("target is longer than 300 bytes")]
    TooLong,
    #[error("target carries user info (`user@host`)")]
    UserInfo,
    #[error("target has no port")]
    MissingPort,
    #[error("port `{0}` is not a number between 1 and 65535")]
    BadPort(String),
    #[error("`{0}` is not a valid IPv6 literal")]
    BadIpv6(String),
    #[error("`{0}` is a numeric host in a non-canonical form (write the dotted quad)")]
    NumericHost(String),
    #[error("`{0}` is not a valid host name: {1}")]
    BadName(String, &'static str),
}

/// A parsed destination: a normalised name or an IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Lower-case ASCII name, or the canonical text of the IP literal (no brackets).
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP literal.
    pub ip: Option<IpAddr>,
}

impl Target {
    /// `host:port` as it goes in a URI authority (IPv6 bracketed).
    pub fn authority(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

/// Parse `host[:port]`; `default_port` is used when the port is absent
/// (`None` makes the port mandatory, as in CONNECT).
pub fn parse_authority(raw: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Empty);
    }
    if raw.len() > 300 {
        return Err(TargetError::TooLong);
    }
    if raw.contains('@') {
        return Err(TargetError::UserInfo);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| TargetError::BadIpv6(raw.into()))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| TargetError::BadIpv6(raw.into()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| TargetError::BadIpv6(raw.into()))?,
            ),
        };
        let port = resolve_port(port, default_port)?;
        return Ok(Target {
            host: ip.to_string(),
            port,
            ip: Some(IpAddr::V6(ip)),
        });
    } else {
        match raw.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let port = resolve_port(port, default_port)?;
    parse_host(host, port)
}

/// Parse a bare host (no port), e.g. an SNI value.
pub fn parse_host(host: &str, port: u16) -> Result<Target, TargetError> {
    if host.is_empty() {
        return Err(TargetError::Empty);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Target {
            host: ip.to_string(),
            port,
            ip: Some(IpAddr::V4(ip)),
        });
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if looks_numeric(trimmed) {
        return Err(TargetError::NumericHost(host.into()));
    }
    let name = normalize_host(host).map_err(|why| TargetError::BadName(host.into(), why))?;
    if looks_numeric(&name) {
        return Err(TargetError::NumericHost(host.into()));
    }
    Ok(Target {
        host: name,
        port,
        ip: None,
    })
}

fn resolve_port(port: Option<&str>, default_port: Option<u16>) -> Result<u16, TargetError> {
    match port {
        None => default_port.ok_or(TargetError::MissingPort),
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TargetError::BadPort(p.into()));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(TargetError::BadPort(p.into())),
                Ok(n) => Ok(n),
            }
        }
    }
}

/// Forms that `inet_aton` reads as IPv4: `127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`.
fn looks_numeric(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let hex = label
                .strip_prefix("0x")
                .or_else(|| label.strip_prefix("0X"));
            !label.is_empty()
                && (label.bytes().all(|b| b.is_ascii_digit())
                    || hex.is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn connect_target_needs_a_port() {
        assert_eq!(
            parse_authority("example.com", None),
            Err(TargetError::MissingPort)
        );
        let t = parse_authority("Example.COM.:443", None).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.ip), ("example.com", 443, None));
    }

    #[test]
    fn ipv6_literals_are_parsed_and_bracketed_again() {
        let t = parse_authority("[::1]:8443", None).unwrap();
        assert_eq!(t.ip, Some("::1".parse().unwrap()));
        assert_eq!(t.authority(), "[::1]:8443");
        assert!(parse_authority("[::1", None).is_err());
        assert!(parse_authority("[::1]x", None).is_err());
        assert!(parse_authority("::1:443", None).is_err());
    }

    #[test]
    fn non_canonical_numeric_hosts_are_refused() {
        for raw in [
            "127.1:80",
            "0x7f000001:80",
            "2130706433:80",
            "0177.0.0.1:80",
            "127.0.0.1.:80",
        ] {
            assert!(
                matches!(parse_authority(raw, None), Err(TargetError::NumericHost(_))),
                "{raw}"
            );
        }
        assert!(parse_authority("127.0.0.1:80", None).unwrap().ip.is_some());
    }

    #[test]
    fn bad_ports_and_userinfo_are_refused() {
        assert!(matches!(
            parse_authority("a.com:0", None),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            parse_authority("a.com:70000", None),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            parse_authority("a.com:+80", None),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            parse_authority("a.com:", None),
            Err(TargetError::BadPort(_))
        ));
        assert_eq!(
            parse_authority("u@a.com:80", None),
            Err(TargetError::UserInfo)
        );
        assert_eq!(parse_authority("a.com", Some(80)).unwrap().port, 80);
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_targets_never_panics(raw in ".{0,80}") {
            let _ = parse_authority(&raw, None);
            let _ = parse_authority(&raw, Some(443));
        }

        #[test]
        fn a_parsed_target_round_trips_through_its_authority(
            name in "[a-z][a-z0-9-]{0,10}[a-z0-9]\\.[a-z]{2,5}", port in 1u16..
        ) {
            let t = parse_authority(&format!("{name}:{port}"), None).unwrap();
            prop_assert_eq!(parse_authority(&t.authority(), None).unwrap(), t);
        }

        #[test]
        fn every_accepted_name_is_lower_case_ascii(raw in "[A-Za-z0-9.:\\-\\[\\]]{1,40}") {
            if let Ok(t) = parse_authority(&raw, Some(80)) {
                prop_assert!(t.host.is_ascii());
                prop_assert_eq!(t.host.to_ascii_lowercase(), t.host.clone());
                prop_assert!(t.port != 0);
            }
        }
    }
}
