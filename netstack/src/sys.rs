//! Platform code (TAP devices, network namespaces). Only `sys/*` may use `unsafe`.

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux;

#[cfg(target_os = "linux")]
pub use linux::{async_fd, in_netns, open_tap, TapMode};

/// A platform call failed.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    IfName(String),
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("TUNSETIFF on {0:?}")]
    SetIff(String, #[source] std::io::Error),
    #[error("TUNSETOFFLOAD (checksum offload) on {0:?}")]
    SetOffload(String, #[source] std::io::Error),
    #[error("opening network namespace {0:?}")]
    OpenNetns(std::path::PathBuf, #[source] std::io::Error),
    #[error("entering a network namespace")]
    Setns(#[source] nix::Error),
    #[error("platform I/O")]
    Io(#[source] std::io::Error),
}
