//! What a VM is made of: the engine-independent spec the launcher fills in.

use std::fmt;
use std::path::PathBuf;

use bottle_contract::{BootConfig, Channel, Root};
use serde::{Deserialize, Serialize};

/// The agent channel and the ready marker, as the contract fixes them.
pub use bottle_contract::vm::{AGENT_PORT_NAME, AGENT_VSOCK_PORT};
pub use bottle_contract::READY_MARKER;

/// A VM to start. Paths are absolute; sockets must already be listening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub cpus: u8,
    pub memory_mib: u32,
    /// Uncompressed ELF vmlinux with a PVH note.
    pub kernel: PathBuf,
    /// gzip'd newc cpio with the guest agent as /init.
    pub initramfs: PathBuf,
    /// Read-only root image on virtio-blk (`/dev/vda`), or none for the tiny image.
    pub root_disk: Option<PathBuf>,
    /// The guest's boot configuration (network, MTU, hostname). The engine
    /// sets its channel, and its root when there is a root disk.
    pub boot: BootConfig,
    /// Extra kernel command line words outside the contract (probes and
    /// test images), after the `bottle.*` words of [`VmSpec::boot`].
    pub cmdline_extra: Vec<String>,
    /// Unix STREAM socket the netstack listens on (4-byte BE length + frame).
    pub net_socket: PathBuf,
    /// Unix socket the host listens on; the guest agent dials out through it.
    pub agent_socket: PathBuf,
    /// File that receives the guest console.
    pub console_log: PathBuf,
    pub guest_mac: MacAddr,
}

impl VmSpec {
    /// Checks what every engine needs before anything is started.
    pub fn validate(&self) -> Result<(), crate::VmmError> {
        let bad = |m: String| Err(crate::VmmError::InvalidSpec(m));
        if self.cpus == 0 {
            return bad("cpus must be at least 1".into());
        }
        if self.memory_mib < 64 {
            return bad(format!("memory_mib {} is below 64", self.memory_mib));
        }
        if let Err(e) = self.boot_config(Channel::Vsock(AGENT_VSOCK_PORT)).check() {
            return bad(format!("{e}"));
        }
        for word in &self.cmdline_extra {
            if word.is_empty()
                || word
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
            {
                return bad(format!(
                    "kernel cmdline word {word:?} must be one word without quotes"
                ));
            }
        }
        for (what, p) in [
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("net_socket", &self.net_socket),
            ("agent_socket", &self.agent_socket),
            ("console_log", &self.console_log),
        ] {
            if !p.is_absolute() {
                return bad(format!("{what} path {} is not absolute", p.display()));
            }
            // qemu option values are comma-separated; a comma would inject options.
            if p.to_string_lossy().contains(',') {
                return bad(format!("{what} path {} contains a comma", p.display()));
            }
        }
        if let Some(d) = &self.root_disk {
            if !d.is_absolute() || d.to_string_lossy().contains(',') {
                return bad(format!(
                    "root_disk path {} must be absolute and comma-free",
                    d.display()
                ));
            }
        }
        Ok(())
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address from 5 bytes of `seed`.
    pub fn local(seed: [u8; 5]) -> Self {
        MacAddr([0x02, seed[0], seed[1], seed[2], seed[3], seed[4]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl VmSpec {
    /// The boot configuration as an engine passes it: its `channel`, and the
    /// root disk (attached as [`bottle_contract::vm::ROOT_DEVICE`]) as root.
    pub(crate) fn boot_config(&self, channel: Channel) -> BootConfig {
        let mut boot = self.boot.clone();
        boot.channel = channel;
        if self.root_disk.is_some() {
            boot.root = Root::Device(bottle_contract::vm::ROOT_DEVICE.to_string());
        }
        boot
    }
}

/// Kernel command line words every engine passes after its console: the
/// common ones, the boot configuration with the engine's `channel`, the extras.
pub(crate) fn common_cmdline(spec: &VmSpec, channel: Channel) -> Vec<String> {
    let mut words: Vec<String> = ["panic=-1", "quiet", "loglevel=4", "reboot=t"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    words.extend(spec.boot_config(channel).words());
    words.extend(spec.cmdline_extra.iter().cloned());
    words
}

#[cfg(test)]
pub(crate) fn test_spec() -> VmSpec {
    VmSpec {
        cpus: 1,
        memory_mib: 256,
        kernel: "/k/vmlinux".into(),
        initramfs: "/k/tiny.cpio".into(),
        root_disk: None,
        boot: BootConfig {
            hostname: Some("demo".into()),
            ..BootConfig::default()
        },
        cmdline_extra: vec![],
        net_socket: "/run/b/net.sock".into(),
        agent_socket: "/run/b/agent.sock".into(),
        console_log: "/run/b/console.log".into(),
        guest_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_prints_as_colon_separated_hex() {
        assert_eq!(
            MacAddr([2, 0xab, 0, 1, 0x10, 0xff]).to_string(),
            "02:ab:00:01:10:ff"
        );
    }

    #[test]
    fn local_mac_is_locally_administered_unicast() {
        let m = MacAddr::local([1, 2, 3, 4, 5]);
        assert_eq!(m.0[0] & 0x01, 0);
        assert_eq!(m.0[0] & 0x02, 0x02);
    }

    #[test]
    fn spec_with_comma_in_path_is_refused() {
        let mut s = test_spec();
        s.net_socket = "/tmp/a,server=on".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn cmdline_word_with_space_is_refused() {
        let mut s = test_spec();
        s.cmdline_extra = vec!["init=/bin/sh -c x".into()];
        assert!(s.validate().is_err());
    }

    #[test]
    fn boot_value_the_guest_would_refuse_is_refused() {
        let mut s = test_spec();
        s.boot.hostname = Some("Not_A_Host".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn relative_paths_are_refused() {
        let mut s = test_spec();
        s.kernel = "vmlinux".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn valid_spec_passes() {
        assert!(test_spec().validate().is_ok());
    }

    #[test]
    fn root_disk_is_the_root_and_the_guest_reads_back_the_config() {
        let mut s = test_spec();
        s.root_disk = Some("/img/root.ext4".into());
        let words = common_cmdline(&s, Channel::Vsock(AGENT_VSOCK_PORT));
        let n = words
            .iter()
            .filter(|w| w.starts_with("bottle.root="))
            .count();
        assert_eq!(n, 1);
        let boot = BootConfig::parse(&words.join(" ")).unwrap();
        assert_eq!(boot.root, Root::Device("/dev/vda".into()));
        assert_eq!(boot.channel, Channel::Vsock(1024));
        assert_eq!(boot.hostname.as_deref(), Some("demo"));
    }

    #[test]
    fn no_root_disk_means_initramfs() {
        let words = common_cmdline(&test_spec(), Channel::Vsock(AGENT_VSOCK_PORT));
        assert!(words.contains(&"bottle.root=initramfs".to_string()));
    }
}
