//! What a VM is made of: the engine-independent spec the launcher fills in.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// vsock port the guest agent dials (guest -> host CID 2) under libkrun.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Name of the virtio-serial port the guest agent opens under qemu.
pub const AGENT_PORT_NAME: &str = "agent";
/// Line the guest agent writes to the console once its channel is connected.
pub const READY_MARKER: &str = "BOTTLE-GUEST-READY";

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
    /// Extra kernel command line words, e.g. `bottle.net=...`.
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

/// Kernel command line words every engine passes, before engine-specific ones.
pub(crate) fn common_cmdline(spec: &VmSpec) -> Vec<String> {
    let mut words: Vec<String> = ["panic=-1", "quiet", "loglevel=4", "reboot=t"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let has_root = spec
        .cmdline_extra
        .iter()
        .any(|w| w.starts_with("bottle.root="));
    if spec.root_disk.is_some() && !has_root {
        words.push("bottle.root=/dev/vda".into());
    }
    words.extend(spec.cmdline_extra.iter().cloned());
    words
}

#[cfg(test)]
pub(crate) fn test_spec() -> VmSpec {
    VmSpec {
        cpus: 1,
        memory_mib: 256,
        kernel: "/k/vmlinux".into(),
        initramfs: "/k/tiny.cpio.gz".into(),
        root_disk: None,
        cmdline_extra: vec!["bottle.hostname=demo".into()],
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
    fn explicit_bottle_root_is_not_repeated() {
        let mut s = test_spec();
        s.root_disk = Some("/img/root.ext4".into());
        s.cmdline_extra = vec!["bottle.root=/dev/vda".into()];
        let n = common_cmdline(&s)
            .iter()
            .filter(|w| w.starts_with("bottle.root="))
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn root_disk_adds_bottle_root() {
        let mut s = test_spec();
        s.root_disk = Some("/img/root.ext4".into());
        assert!(common_cmdline(&s).contains(&"bottle.root=/dev/vda".to_string()));
    }
}
