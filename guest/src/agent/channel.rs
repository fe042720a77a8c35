//! Dialing the host: a unix socket (Docker), vsock to the host (libkrun), or
//! the virtio-serial port named by the command line (qemu).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::fdio::FdStream;
use bottle_contract::Channel;

/// Errors opening the channel (the caller retries).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connect to {0}")]
    Unix(String, #[source] std::io::Error),
    #[error("vsock connect to host port {0}")]
    Vsock(u32, #[source] nix::Error),
    #[error("no virtio port named {0:?} under /sys/class/virtio-ports")]
    NoPort(String),
    #[error("open virtio port {0}")]
    Port(String, #[source] std::io::Error),
    #[error("bad channel {0:?}: expected unix:PATH, vsock:PORT or virtio-port:NAME")]
    Parse(String),
}

/// Where the agent dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Boot(Channel),
}

impl std::str::FromStr for Target {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Target, ChannelError> {
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(|p| Target::Boot(Channel::Vsock(p)))
                .map_err(|_| ChannelError::Parse(s.into()));
        }
        if let Some(name) = s
            .strip_prefix("virtio-port:")
            .filter(|n| !n.is_empty() && !n.contains('/'))
        {
            return Ok(Target::Boot(Channel::VirtioPort(name.into())));
        }
        Err(ChannelError::Parse(s.into()))
    }
}

/// A connected byte stream to the host.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// The vsock CID of the host.
const HOST_CID: u32 = 2;

/// Opens the channel once.
pub async fn dial(target: &Target) -> Result<Box<dyn Conn>, ChannelError> {
    match target {
        Target::Unix(path) => tokio::net::UnixStream::connect(path)
            .await
            .map(|s| Box::new(s) as Box<dyn Conn>)
            .map_err(|e| ChannelError::Unix(path.display().to_string(), e)),
        Target::Boot(Channel::Vsock(port)) => {
            let port = *port;
            let fd = vsock_connect(port).map_err(|e| ChannelError::Vsock(port, e))?;
            let s = FdStream::new(fd).map_err(|e| {
                ChannelError::Vsock(port, nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))
            })?;
            Ok(Box::new(s))
        }
        Target::Boot(Channel::VirtioPort(name)) => {
            let dev = find_port(
                Path::new("/sys/class/virtio-ports"),
                Path::new("/dev"),
                name,
            )?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .map_err(|e| ChannelError::Port(dev.display().to_string(), e))?;
            let s = FdStream::new(OwnedFd::from(file))
                .map_err(|e| ChannelError::Port(dev.display().to_string(), e))?;
            Ok(Box::new(s))
        }
    }
}

/// Dials until it works, backing off up to a second between tries.
pub async fn dial_retry(target: &Target) -> Box<dyn Conn> {
    let mut delay = Duration::from_millis(20);
    let mut reported = false;
    loop {
        match dial(target).await {
            Ok(c) => return c,
            Err(e) => {
                if !reported {
                    eprintln!("bottle-guest: {e}; retrying");
                    reported = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn vsock_connect(port: u32) -> Result<OwnedFd, nix::Error> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, port),
    )?;
    Ok(fd)
}

/// Finds the device of the virtio port `name`, creating its node in `dev`
/// from the sysfs `dev` attribute when missing (there is no udev).
pub fn find_port(sys: &Path, dev: &Path, name: &str) -> Result<PathBuf, ChannelError> {
    let no_port = || ChannelError::NoPort(name.to_string());
    let entries = std::fs::read_dir(sys).map_err(|_| no_port())?;
    for entry in entries.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() != name {
            continue;
        }
        let node = dev.join(entry.file_name());
        if !node.exists() {
            let numbers =
                std::fs::read_to_string(entry.path().join("dev")).map_err(|_| no_port())?;
            let (major, minor) = numbers.trim().split_once(':').ok_or_else(no_port)?;
            let (major, minor) = (
                major.parse().map_err(|_| no_port())?,
                minor.parse().map_err(|_| no_port())?,
            );
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| ChannelError::Port(node.display().to_string(), e.into()))?;
        }
        return Ok(node);
    }
    Err(no_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_the_command_line_forms() {
        assert_eq!(
            "unix:/run/bottle/agent.sock".parse::<Target>().unwrap(),
            Target::Unix("/run/bottle/agent.sock".into())
        );
        assert_eq!(
            "vsock:1024".parse::<Target>().unwrap(),
            Target::Boot(Channel::Vsock(1024))
        );
        assert_eq!(
            "virtio-port:agent".parse::<Target>().unwrap(),
            Target::Boot(Channel::VirtioPort("agent".into()))
        );
        assert!("tcp:1.2.3.4:5".parse::<Target>().is_err());
        assert!("unix:".parse::<Target>().is_err());
    }

    #[test]
    fn virtio_port_is_found_by_name_in_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p0", "console"), ("vport0p1", "agent")] {
            std::fs::create_dir(sys.path().join(port)).unwrap();
            std::fs::write(sys.path().join(port).join("name"), format!("{name}\n")).unwrap();
            std::fs::write(dev.path().join(port), b"").unwrap();
        }
        assert_eq!(
            find_port(sys.path(), dev.path(), "agent").unwrap(),
            dev.path().join("vport0p1")
        );
        assert!(matches!(
            find_port(sys.path(), dev.path(), "other"),
            Err(ChannelError::NoPort(_))
        ));
    }
}
