//! The host↔guest contract: every name, port, socket and boot setting that
//! the host (launcher, bundle, VM engines, Docker backend, netstack, guards)
//! and the guest agent must agree on, in one place both sides use.
//!
//! The wire protocol itself is `bottle_guest::proto`; this crate holds what
//! surrounds it, and has no dependencies beyond `serde` and `thiserror` so
//! that every crate of the workspace can use it (it is re-exported as
//! `bottle_guest::contract`, next to the protocol).
//!
//! - [`boot`]: the kernel command line's `bottle.*` keys as a typed
//!   [`BootConfig`] with [`BootConfig::to_cmdline`] and [`BootConfig::parse`].
//! - The constants below: the guest's one name for the host, the guard
//!   ports and sockets, the agent channel, the agent user.
#![deny(unsafe_code)]

pub mod boot;

pub use boot::{BootConfig, BootError, Channel, NetConfig, Root};

/// The one name the guest sees for the host side: DNS answers it (VM) or
/// `/etc/hosts` maps it to loopback (Docker); everything else fails.
pub const PROXY_HOST: &str = "proxy.internal";

/// The intercepting TLS firewall / egress proxy on [`PROXY_HOST`].
pub const PROXY_PORT: u16 = 8888;
/// git-gate on [`PROXY_HOST`] (the `git://` port).
pub const GIT_PORT: u16 = 9418;
/// supervise (MCP) on [`PROXY_HOST`].
pub const SUPERVISE_PORT: u16 = 9100;

/// The URL of the proxy, as the agent's `HTTP(S)_PROXY`.
pub fn proxy_url() -> String {
    format!("http://{PROXY_HOST}:{PROXY_PORT}")
}

/// The git-gate mirror URL of the remote `name` (`git://proxy.internal/<name>.git`).
pub fn git_gate_url(name: &str) -> String {
    format!("git://{PROXY_HOST}/{name}.git")
}

/// A guard: its port on [`PROXY_HOST`] and, under Docker, the unix socket
/// (in [`docker::SOCKET_DIR`]) the guest agent forwards that port to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub port: u16,
    pub socket: &'static str,
}

/// The proxy's guard socket.
pub const PROXY_SOCKET: &str = "proxy.sock";
/// git-gate's guard socket.
pub const GIT_GATE_SOCKET: &str = "git-gate.sock";
/// supervise's guard socket.
pub const SUPERVISE_SOCKET: &str = "supervise.sock";

/// The guards: proxy, git-gate, supervise (the same ports in a VM and a container).
pub const GUARDS: [Guard; 3] = [
    Guard {
        port: PROXY_PORT,
        socket: PROXY_SOCKET,
    },
    Guard {
        port: GIT_PORT,
        socket: GIT_GATE_SOCKET,
    },
    Guard {
        port: SUPERVISE_PORT,
        socket: SUPERVISE_SOCKET,
    },
];

/// The agent user: who the agent's commands run as and who owns its files.
pub mod agent_user {
    /// Its name in `/etc/passwd` and `/etc/group`.
    pub const NAME: &str = "agent";
    /// Its uid and gid.
    pub const UID: u32 = 1000;
    /// Its home directory.
    pub const HOME: &str = "/home/agent";
}

/// The guest agent binary inside an image (VM root disk and container).
pub const GUEST_BINARY: &str = "/sbin/bottle-guest";

/// The line the guest agent writes to the console once its channel is
/// connected (the VM boot probe and the tiny test image wait for it).
pub const READY_MARKER: &str = "BOTTLE-GUEST-READY";

/// Where the agent dials the host in a VM.
pub mod vm {
    /// The virtio-serial port the guest agent opens under qemu.
    pub const AGENT_PORT_NAME: &str = "agent";
    /// The vsock port the guest agent dials (guest → host CID 2) under libkrun.
    pub const AGENT_VSOCK_PORT: u32 = 1024;
    /// The root disk's device in the guest (virtio-blk).
    pub const ROOT_DEVICE: &str = "/dev/vda";
}

/// The socket directory a container sees (bind-mounted read-only).
pub mod docker {
    /// Where the bottle's socket directory appears inside the container.
    pub const SOCKET_DIR: &str = "/run/bottle";
    /// The guest channel's socket in that directory (mode 0000: only a
    /// process with `CAP_DAC_OVERRIDE`, the guest agent, can connect).
    pub const AGENT_SOCKET: &str = "agent.sock";
    /// The channel key's file in that directory (mode 0000, as the socket).
    pub const KEY_FILE: &str = "agent.key";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_proxy_internal_and_the_guard_ports() {
        assert_eq!(proxy_url(), "http://proxy.internal:8888");
        assert_eq!(git_gate_url("app"), "git://proxy.internal/app.git");
    }

    #[test]
    fn every_guard_has_its_own_port_and_socket() {
        for (i, a) in GUARDS.iter().enumerate() {
            for b in &GUARDS[i + 1..] {
                assert_ne!(a.port, b.port);
                assert_ne!(a.socket, b.socket);
            }
        }
    }
}
