//! The boot configuration: the `bottle.*` keys of the kernel command line.
//!
//! The host builds a [`BootConfig`] and writes it with
//! [`BootConfig::to_cmdline`]; the guest's init reads it back with
//! [`BootConfig::parse`]. Both go through the same checks, so what the host
//! can write the guest can read, and a bad value fails on the host before
//! anything boots.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::vm::AGENT_PORT_NAME;

/// A `bottle.*` key with a value the guest cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    #[error("bottle.net={0:?}: expected <ip>/<prefix>,<gateway> with a prefix of at most 32")]
    Net(String),
    #[error("bottle.mtu={0:?}: expected a number from 68 to 65535")]
    Mtu(String),
    #[error("bottle.channel={0:?}: expected virtio-port:<name> (1-63 characters, no `/` or space) or vsock:<port>")]
    Channel(String),
    #[error("bottle.root={0:?}: expected initramfs or a /dev/ path without `..` or spaces")]
    Root(String),
    #[error("bottle.hostname={0:?}: expected 1-63 of [a-z0-9-]")]
    Hostname(String),
}

/// The guest's static network configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// Where the agent dials the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// The virtio-serial port with this name (qemu).
    VirtioPort(String),
    /// vsock CID 2 (the host), this port (libkrun).
    Vsock(u32),
}

/// What the root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Root {
    /// Stay on the initramfs.
    Initramfs,
    /// Mount this block device read-only under a tmpfs overlay and switch to it.
    Device(String),
}

/// Everything init reads from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    pub net: Option<NetConfig>,
    pub mtu: Option<u32>,
    pub channel: Channel,
    pub root: Root,
    pub hostname: Option<String>,
}

impl Default for BootConfig {
    /// What a command line without `bottle.*` keys means: the virtio port
    /// [`AGENT_PORT_NAME`], the initramfs as root, no network.
    fn default() -> Self {
        BootConfig {
            net: None,
            mtu: None,
            channel: Channel::VirtioPort(AGENT_PORT_NAME.to_string()),
            root: Root::Initramfs,
            hostname: None,
        }
    }
}

const NET: &str = "bottle.net";
const MTU: &str = "bottle.mtu";
const CHANNEL: &str = "bottle.channel";
const ROOT: &str = "bottle.root";
const HOSTNAME: &str = "bottle.hostname";

impl BootConfig {
    /// Parses the `bottle.*` keys of a kernel command line. Other words,
    /// and `bottle.*` keys this version does not know, are ignored; a known
    /// key with a value the guest cannot use is an error naming it.
    pub fn parse(cmdline: &str) -> Result<BootConfig, BootError> {
        let mut cfg = BootConfig::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                NET => cfg.net = Some(parse_net(value)?),
                MTU => cfg.mtu = Some(parse_mtu(value)?),
                CHANNEL => cfg.channel = parse_channel(value)?,
                ROOT => cfg.root = parse_root(value)?,
                HOSTNAME => cfg.hostname = Some(parse_hostname(value)?),
                _ => {}
            }
        }
        Ok(cfg)
    }

    /// Checks every value as [`BootConfig::parse`] would read it back.
    pub fn check(&self) -> Result<(), BootError> {
        for word in self.words() {
            if let Some((key, value)) = word.split_once('=') {
                // The word must also stay one word on the command line.
                let one_word = !value.is_empty()
                    && !value
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '"');
                let parsed = match key {
                    NET => parse_net(value).map(drop),
                    MTU => parse_mtu(value).map(drop),
                    CHANNEL => parse_channel(value).map(drop),
                    ROOT => parse_root(value).map(drop),
                    _ => parse_hostname(value).map(drop),
                };
                parsed?;
                if !one_word {
                    return Err(error_for(key, value));
                }
            }
        }
        Ok(())
    }

    /// The `bottle.*` words, in a fixed order, without checking them (see
    /// [`BootConfig::check`]; [`BootConfig::to_cmdline`] does both).
    pub fn words(&self) -> Vec<String> {
        let mut words = Vec::with_capacity(5);
        if let Some(n) = &self.net {
            words.push(format!("{NET}={}/{},{}", n.addr, n.prefix, n.gateway));
        }
        if let Some(mtu) = self.mtu {
            words.push(format!("{MTU}={mtu}"));
        }
        words.push(match &self.channel {
            Channel::VirtioPort(name) => format!("{CHANNEL}=virtio-port:{name}"),
            Channel::Vsock(port) => format!("{CHANNEL}=vsock:{port}"),
        });
        words.push(match &self.root {
            Root::Initramfs => format!("{ROOT}=initramfs"),
            Root::Device(dev) => format!("{ROOT}={dev}"),
        });
        if let Some(h) = &self.hostname {
            words.push(format!("{HOSTNAME}={h}"));
        }
        words
    }

    /// The checked `bottle.*` words as one command line fragment.
    pub fn to_cmdline(&self) -> Result<String, BootError> {
        self.check()?;
        Ok(self.words().join(" "))
    }
}

fn error_for(key: &str, value: &str) -> BootError {
    let v = value.to_string();
    match key {
        NET => BootError::Net(v),
        MTU => BootError::Mtu(v),
        CHANNEL => BootError::Channel(v),
        ROOT => BootError::Root(v),
        _ => BootError::Hostname(v),
    }
}

fn parse_net(value: &str) -> Result<NetConfig, BootError> {
    let err = || BootError::Net(value.into());
    let (cidr, gateway) = value.split_once(',').ok_or_else(err)?;
    let (addr, prefix) = cidr.split_once('/').ok_or_else(err)?;
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(err)?;
    Ok(NetConfig {
        addr: addr.parse().map_err(|_| err())?,
        prefix,
        gateway: gateway.parse().map_err(|_| err())?,
    })
}

fn parse_mtu(value: &str) -> Result<u32, BootError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .ok_or_else(|| BootError::Mtu(value.into()))
}

fn parse_channel(value: &str) -> Result<Channel, BootError> {
    let err = || BootError::Channel(value.into());
    match value.split_once(':') {
        Some(("virtio-port", name))
            if !name.is_empty() && !name.contains('/') && name.len() < 64 =>
        {
            Ok(Channel::VirtioPort(name.to_string()))
        }
        Some(("vsock", port)) => port.parse().map(Channel::Vsock).map_err(|_| err()),
        _ => Err(err()),
    }
}

fn parse_root(value: &str) -> Result<Root, BootError> {
    match value {
        "initramfs" => Ok(Root::Initramfs),
        dev if dev.starts_with("/dev/") && !dev.contains("..") && dev.len() > 5 => {
            Ok(Root::Device(dev.to_string()))
        }
        _ => Err(BootError::Root(value.into())),
    }
}

fn parse_hostname(value: &str) -> Result<String, BootError> {
    let ok = (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(value.to_string())
    } else {
        Err(BootError::Hostname(value.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> BootConfig {
        BootConfig {
            net: Some(NetConfig {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 2),
            }),
            mtu: Some(1500),
            channel: Channel::Vsock(1024),
            root: Root::Device("/dev/vda".into()),
            hostname: Some("demo-ab12c".into()),
        }
    }

    #[test]
    fn to_cmdline_then_parse_gives_the_same_config() {
        let mut configs = vec![full(), BootConfig::default()];
        let mut qemu = full();
        qemu.channel = Channel::VirtioPort("agent".into());
        qemu.root = Root::Initramfs;
        qemu.net = None;
        configs.push(qemu);
        for cfg in configs {
            let line = cfg.to_cmdline().unwrap();
            assert_eq!(BootConfig::parse(&line).unwrap(), cfg, "{line}");
        }
    }

    #[test]
    fn full_command_line_is_parsed_among_other_words() {
        let cfg = BootConfig::parse(
            "console=ttyS0 quiet bottle.net=10.0.2.15/24,10.0.2.2 bottle.mtu=1500 \
             bottle.channel=vsock:1024 bottle.root=/dev/vda bottle.hostname=demo-ab12c \
             bottle.probe=1",
        )
        .unwrap();
        assert_eq!(cfg, full());
    }

    #[test]
    fn empty_command_line_means_virtio_port_agent_on_initramfs() {
        let cfg = BootConfig::parse("").unwrap();
        assert_eq!(cfg.channel, Channel::VirtioPort("agent".into()));
        assert_eq!(cfg.root, Root::Initramfs);
        assert!(cfg.net.is_none());
    }

    #[test]
    fn malformed_values_are_errors_naming_the_key() {
        let bad = |line: &str| BootConfig::parse(line).unwrap_err();
        assert!(matches!(
            bad("bottle.net=10.0.0.1,10.0.0.2"),
            BootError::Net(_)
        ));
        assert!(matches!(
            bad("bottle.net=10.0.0.1/33,10.0.0.2"),
            BootError::Net(_)
        ));
        assert!(matches!(bad("bottle.mtu=9"), BootError::Mtu(_)));
        assert!(matches!(bad("bottle.mtu=lots"), BootError::Mtu(_)));
        assert!(matches!(bad("bottle.channel=tcp:1"), BootError::Channel(_)));
        assert!(matches!(
            bad("bottle.channel=virtio-port:../x"),
            BootError::Channel(_)
        ));
        assert!(matches!(
            bad("bottle.root=/etc/../dev/sda"),
            BootError::Root(_)
        ));
        assert!(matches!(bad("bottle.root=nfs"), BootError::Root(_)));
        assert!(matches!(
            bad("bottle.hostname=Bad_Name"),
            BootError::Hostname(_)
        ));
        assert_eq!(
            bad("bottle.mtu=9").to_string(),
            "bottle.mtu=\"9\": expected a number from 68 to 65535"
        );
    }

    #[test]
    fn a_value_the_guest_would_refuse_is_refused_on_the_host() {
        let mut cfg = full();
        cfg.hostname = Some("Not A Host".into());
        assert!(matches!(cfg.to_cmdline(), Err(BootError::Hostname(_))));
        let mut cfg = full();
        cfg.root = Root::Device("/dev/vda init=/bin/sh".into());
        assert!(matches!(cfg.to_cmdline(), Err(BootError::Root(_))));
        let mut cfg = full();
        cfg.channel = Channel::VirtioPort("a b".into());
        assert!(matches!(cfg.to_cmdline(), Err(BootError::Channel(_))));
        let mut cfg = full();
        cfg.mtu = Some(70000);
        assert!(matches!(cfg.to_cmdline(), Err(BootError::Mtu(_))));
    }
}
