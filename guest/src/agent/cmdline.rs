//! The `bottle.*` keys of the kernel command line.

use std::net::Ipv4Addr;

/// Errors in the `bottle.*` keys.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("bottle.net={0:?}: expected <ip>/<prefix>,<gateway>")]
    Net(String),
    #[error("bottle.mtu={0:?}: expected a number from 68 to 65535")]
    Mtu(String),
    #[error("bottle.channel={0:?}: expected virtio-port:<name> or vsock:<port>")]
    Channel(String),
    #[error("bottle.root={0:?}: expected initramfs or a /dev/ path")]
    Root(String),
    #[error("bottle.hostname={0:?}: expected 1-63 of [a-z0-9-]")]
    Hostname(String),
}

/// The guest's static network configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// Where the agent dials the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// The virtio-serial port with this name.
    VirtioPort(String),
    /// vsock CID 2 (the host), this port.
    Vsock(u32),
}

/// What the root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// Stay on the initramfs.
    Initramfs,
    /// Mount this block device read-only under a tmpfs overlay and switch to it.
    Device(String),
}

/// Everything init reads from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub net: Option<NetConfig>,
    pub mtu: Option<u32>,
    pub channel: Channel,
    pub root: Root,
    pub hostname: Option<String>,
}

/// The channel used when the command line names none.
pub const DEFAULT_PORT_NAME: &str = "agent";

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            net: None,
            mtu: None,
            channel: Channel::VirtioPort(DEFAULT_PORT_NAME.to_string()),
            root: Root::Initramfs,
            hostname: None,
        }
    }
}

/// Parses the `bottle.*` keys of a kernel command line; other words are ignored.
pub fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut cfg = BootConfig::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "bottle.net" => cfg.net = Some(parse_net(value)?),
            "bottle.mtu" => {
                let mtu = value
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (68..=65535).contains(m));
                cfg.mtu = Some(mtu.ok_or_else(|| CmdlineError::Mtu(value.into()))?);
            }
            "bottle.channel" => cfg.channel = parse_channel(value)?,
            "bottle.root" => {
                cfg.root = match value {
                    "initramfs" => Root::Initramfs,
                    dev if dev.starts_with("/dev/") && !dev.contains("..") && dev.len() > 5 => {
                        Root::Device(dev.to_string())
                    }
                    _ => return Err(CmdlineError::Root(value.into())),
                }
            }
            "bottle.hostname" => {
                let ok = (1..=63).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(CmdlineError::Hostname(value.into()));
                }
                cfg.hostname = Some(value.to_string());
            }
            _ => {}
        }
    }
    Ok(cfg)
}

fn parse_net(value: &str) -> Result<NetConfig, CmdlineError> {
    let err = || CmdlineError::Net(value.into());
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

fn parse_channel(value: &str) -> Result<Channel, CmdlineError> {
    let err = || CmdlineError::Channel(value.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_command_line_is_parsed() {
        let cfg = parse(
            "console=ttyS0 quiet bottle.net=10.0.2.15/24,10.0.2.2 bottle.mtu=1500 \
             bottle.channel=vsock:1024 bottle.root=/dev/vda bottle.hostname=demo-ab12c",
        )
        .unwrap();
        assert_eq!(
            cfg,
            BootConfig {
                net: Some(NetConfig {
                    addr: "10.0.2.15".parse().unwrap(),
                    prefix: 24,
                    gateway: "10.0.2.2".parse().unwrap()
                }),
                mtu: Some(1500),
                channel: Channel::Vsock(1024),
                root: Root::Device("/dev/vda".into()),
                hostname: Some("demo-ab12c".into()),
            }
        );
    }

    #[test]
    fn empty_command_line_means_virtio_port_agent_on_initramfs() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.channel, Channel::VirtioPort("agent".into()));
        assert_eq!(cfg.root, Root::Initramfs);
        assert!(cfg.net.is_none());
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        assert!(matches!(
            parse("bottle.net=10.0.0.1,10.0.0.2"),
            Err(CmdlineError::Net(_))
        ));
        assert!(matches!(
            parse("bottle.net=10.0.0.1/33,10.0.0.2"),
            Err(CmdlineError::Net(_))
        ));
        assert!(matches!(parse("bottle.mtu=9"), Err(CmdlineError::Mtu(_))));
        assert!(matches!(
            parse("bottle.channel=tcp:1"),
            Err(CmdlineError::Channel(_))
        ));
        assert!(matches!(
            parse("bottle.channel=virtio-port:../x"),
            Err(CmdlineError::Channel(_))
        ));
        assert!(matches!(
            parse("bottle.root=/etc/../dev/sda"),
            Err(CmdlineError::Root(_))
        ));
        assert!(matches!(
            parse("bottle.hostname=Bad_Name"),
            Err(CmdlineError::Hostname(_))
        ));
    }

    #[test]
    fn virtio_port_channel_names_its_port() {
        let cfg = parse("bottle.channel=virtio-port:agent").unwrap();
        assert_eq!(cfg.channel, Channel::VirtioPort("agent".into()));
    }
}
