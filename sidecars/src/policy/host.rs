//! Host patterns: `example.com` (that host only) or `*.example.com` (any name
//! below it, not the apex). Case-insensitive, IDNA-normalised, trailing dot
//! ignored.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("host pattern is empty")]
    Empty,
    #[error("`{0}` is not a valid host name: {1}")]
    InvalidName(String, &'static str),
    #[error("`{0}` has a wildcard that is not a leading `*.`; write `*.example.com`")]
    MisplacedWildcard(String),
    #[error("`{0}` has a scheme, port or path; write the bare host name such as `example.com`")]
    NotABareHost(String),
    #[error("`{0}` is an IP address; host patterns are names (put addresses in `allow_ips`)")]
    IpAddress(String),
}

/// A validated host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern {
    wildcard: bool,
    /// Normalised ASCII name (for `*.x`, the `x`).
    name: String,
}

impl HostPattern {
    /// Parse and normalise a pattern as written in a manifest.
    pub fn parse(raw: &str) -> Result<Self, HostPatternError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(HostPatternError::Empty);
        }
        if trimmed.contains("://") || trimmed.contains('/') || trimmed.contains(':') {
            return Err(HostPatternError::NotABareHost(raw.to_string()));
        }
        let (wildcard, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if rest.contains('*') {
            return Err(HostPatternError::MisplacedWildcard(raw.to_string()));
        }
        let name = normalize_host(rest)
            .map_err(|why| HostPatternError::InvalidName(raw.to_string(), why))?;
        if name.parse::<std::net::Ipv4Addr>().is_ok() || looks_numeric(&name) {
            return Err(HostPatternError::IpAddress(raw.to_string()));
        }
        Ok(Self { wildcard, name })
    }

    /// Whether `host` (any case, IDNA or ASCII, with or without a trailing
    /// dot) is covered by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match normalize_host(host) {
            Ok(host) => self.matches_normalized(&host),
            Err(_) => false,
        }
    }

    /// Like [`matches`](Self::matches) for a host already passed through
    /// [`normalize_host`].
    pub fn matches_normalized(&self, host: &str) -> bool {
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host.ends_with(&self.name)
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The name without the wildcard.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn looks_numeric(name: &str) -> bool {
    // `127.1`, `0x7f000001`, `2130706433`: forms that resolvers read as IPv4.
    name.split('.').all(|label| {
        !label.is_empty()
            && (label.bytes().all(|b| b.is_ascii_digit())
                || (label.starts_with("0x") && label[2..].bytes().all(|b| b.is_ascii_hexdigit())))
    })
}

/// Normalise a host name: IDNA to ASCII, lower case, no trailing dot, labels
/// checked. Returns a short reason on failure.
pub fn normalize_host(raw: &str) -> Result<String, &'static str> {
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.is_empty() {
        return Err("empty name");
    }
    let ascii = idna::domain_to_ascii(raw).map_err(|_| "not a valid internationalised name")?;
    if ascii.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("label starts or ends with `-`");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-` and `_` are allowed");
        }
    }
    Ok(ascii)
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        HostPattern::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_pattern_matches_case_insensitively_and_with_trailing_dot() {
        let p = HostPattern::parse("Api.Example.com").unwrap();
        assert!(p.matches("api.example.com"));
        assert!(p.matches("API.EXAMPLE.COM."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("evil-api.example.com"));
    }

    #[test]
    fn wildcard_matches_subdomains_but_not_apex_or_lookalikes() {
        let p = HostPattern::parse("*.github.com").unwrap();
        assert!(p.matches("api.github.com"));
        assert!(p.matches("a.b.github.com"));
        assert!(!p.matches("github.com"));
        assert!(!p.matches("evilgithub.com"));
    }

    #[test]
    fn idna_names_are_normalised() {
        let p = HostPattern::parse("bücher.example").unwrap();
        assert_eq!(p.name(), "xn--bcher-kva.example");
        assert!(p.matches("BÜCHER.example"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        assert!(matches!(
            HostPattern::parse(""),
            Err(HostPatternError::Empty)
        ));
        assert!(matches!(
            HostPattern::parse("https://x.com"),
            Err(HostPatternError::NotABareHost(_))
        ));
        assert!(matches!(
            HostPattern::parse("x.com:443"),
            Err(HostPatternError::NotABareHost(_))
        ));
        assert!(matches!(
            HostPattern::parse("a.*.com"),
            Err(HostPatternError::MisplacedWildcard(_))
        ));
        assert!(matches!(
            HostPattern::parse("-bad.com"),
            Err(HostPatternError::InvalidName(..))
        ));
        assert!(matches!(
            HostPattern::parse("10.0.0.1"),
            Err(HostPatternError::IpAddress(_))
        ));
        assert!(matches!(
            HostPattern::parse("127.1"),
            Err(HostPatternError::IpAddress(_))
        ));
        assert!(matches!(
            HostPattern::parse("0x7f000001"),
            Err(HostPatternError::IpAddress(_))
        ));
        assert!(matches!(
            HostPattern::parse("a b.com"),
            Err(HostPatternError::InvalidName(..))
        ));
    }
}
