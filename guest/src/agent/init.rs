//! PID 1 duties in the VM: mounts, the root switch, static network, the
//! files the guest needs (resolv.conf, hosts, the agent user), power off.

use std::net::Ipv4Addr;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::passwd;
use crate::auth::ChannelKey;
use crate::sys;
use bottle_contract::{BootConfig, NetConfig, Root};

/// Errors of the init steps.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {what} on {target}")]
    Mount {
        what: String,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("root switch: {0}")]
    Switch(String, #[source] nix::Error),
    #[error("network")]
    Net(#[from] sys::SysError),
    #[error("hostname")]
    Hostname(#[source] nix::Error),
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    std::fs::create_dir_all(target).map_err(|e| InitError::Io(format!("mkdir {target}"), e))?;
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            what: fstype.into(),
            target: target.into(),
            source,
        }),
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts and /run (the first stage).
pub fn mount_early() -> Result<(), InitError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Mounts /tmp (after any root switch).
pub fn mount_tmp() -> Result<(), InitError> {
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
}

/// Mounts `device` read-only under a tmpfs overlay at /mnt/root, moves the
/// early mounts there and makes it the root. Returns with `/` switched.
pub fn switch_root(device: &str) -> Result<(), InitError> {
    let ro = MsFlags::MS_RDONLY;
    std::fs::create_dir_all("/mnt/lower")
        .map_err(|e| InitError::Io("mkdir /mnt/lower".into(), e))?;
    if let Err(ext4) = mount(Some(device), "/mnt/lower", Some("ext4"), ro, None::<&str>) {
        mount(Some(device), "/mnt/lower", Some("erofs"), ro, None::<&str>).map_err(|_| {
            InitError::Mount {
                what: format!("{device} (ext4 or erofs)"),
                target: "/mnt/lower".into(),
                source: ext4,
            }
        })?;
    }
    mount_fs(
        "tmpfs",
        "/mnt/rw",
        "tmpfs",
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    for d in ["/mnt/rw/upper", "/mnt/rw/work", "/mnt/root"] {
        std::fs::create_dir_all(d).map_err(|e| InitError::Io(format!("mkdir {d}"), e))?;
    }
    mount_fs(
        "overlay",
        "/mnt/root",
        "overlay",
        MsFlags::empty(),
        Some("lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"),
    )?;
    for d in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("/mnt/root{d}");
        std::fs::create_dir_all(&target)
            .map_err(|e| InitError::Io(format!("mkdir {target}"), e))?;
        mount(
            Some(d),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| InitError::Switch(format!("move {d}"), e))?;
    }
    nix::unistd::chdir("/mnt/root").map_err(|e| InitError::Switch("chdir".into(), e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| InitError::Switch("move new root onto /".into(), e))?;
    nix::unistd::chroot(".").map_err(|e| InitError::Switch("chroot".into(), e))?;
    nix::unistd::chdir("/").map_err(|e| InitError::Switch("chdir /".into(), e))?;
    Ok(())
}

/// Takes the channel key from `path`: reads it and deletes the file, so no
/// later process finds it. `None` (with a message) when it is missing or bad.
pub fn take_key(path: &Path) -> Option<ChannelKey> {
    if !path.exists() {
        return None;
    }
    let key = ChannelKey::read(path);
    if let Err(e) = std::fs::remove_file(path) {
        eprintln!("bottle-guest: cannot delete {}: {e}", path.display());
    }
    match key {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("bottle-guest: {e}");
            None
        }
    }
}

/// Leaves the key at `path` (root-only, created fresh) for init's stage 2.
pub fn hand_over_key(path: &Path, key: &ChannelKey) -> Result<(), InitError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| InitError::Io(format!("write {}", path.display()), e);
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    f.write_all(key.to_hex().as_bytes()).map_err(io)
}

/// Configures `lo`, and `eth0` from `net` with `mtu`, plus the default route.
pub fn configure_network(net: Option<NetConfig>, mtu: Option<u32>) -> Result<(), InitError> {
    sys::configure_interface("lo", Some((Ipv4Addr::LOCALHOST, 8)), None)?;
    if let Some(net) = net {
        sys::configure_interface("eth0", Some((net.addr, net.prefix)), mtu)?;
        sys::add_default_route("eth0", net.gateway)?;
    }
    Ok(())
}

fn write(path: &str, contents: &str) -> Result<(), InitError> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| InitError::Io(format!("mkdir {}", parent.display()), e))?;
    }
    std::fs::write(path, contents).map_err(|e| InitError::Io(format!("write {path}"), e))
}

/// The `/etc/resolv.conf` and `/etc/hosts` contents for a gateway.
pub fn name_files(gateway: Ipv4Addr, hostname: &str) -> (String, String) {
    (
        format!("nameserver {gateway}\n"),
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n{gateway}\t{}\n",
            bottle_contract::PROXY_HOST
        ),
    )
}

/// Writes resolv.conf/hosts, sets the hostname, and adds the agent user.
pub fn write_files(cfg: &BootConfig) -> Result<(), InitError> {
    let hostname = cfg.hostname.clone().unwrap_or_else(|| "bottle".to_string());
    nix::unistd::sethostname(&hostname).map_err(InitError::Hostname)?;
    if let Some(net) = cfg.net {
        let (resolv, hosts) = name_files(net.gateway, &hostname);
        write("/etc/resolv.conf", &resolv)?;
        write("/etc/hosts", &hosts)?;
    }
    ensure_agent_user()
}

fn ensure_agent_user() -> Result<(), InitError> {
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let passwd_file = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_else(|_| "root:x:0:0:root:/root:/bin/sh\n".to_string());
    if let Some(new) = passwd::with_agent_user(&passwd_file, shell) {
        write("/etc/passwd", &new)?;
    }
    let group_file =
        std::fs::read_to_string("/etc/group").unwrap_or_else(|_| "root:x:0:\n".to_string());
    if let Some(new) = passwd::with_agent_group(&group_file) {
        write("/etc/group", &new)?;
    }
    let home = passwd::AGENT_HOME;
    if !Path::new(home).exists() {
        std::fs::create_dir_all(home).map_err(|e| InitError::Io(format!("mkdir {home}"), e))?;
        std::os::unix::fs::chown(home, Some(passwd::AGENT_UID), Some(passwd::AGENT_UID))
            .map_err(|e| InitError::Io(format!("chown {home}"), e))?;
    }
    Ok(())
}

/// Syncs and powers off, or reboots. Without ACPI (QEMU `microvm,acpi=off`)
/// a power-off only halts the CPU, so it reboots instead: the VMMs run with
/// `-no-reboot` (or exit on reset), so a reboot ends the VM either way.
pub fn power_off(reboot: bool) {
    use nix::sys::reboot::{reboot as sys_reboot, RebootMode};
    nix::unistd::sync();
    let can_power_off = Path::new("/sys/firmware/acpi").exists();
    let mode = if reboot || !can_power_off {
        RebootMode::RB_AUTOBOOT
    } else {
        RebootMode::RB_POWER_OFF
    };
    let err = sys_reboot(mode);
    eprintln!("bottle-guest: reboot failed: {err:?}");
}

/// Whether the root described by `cfg` needs a switch.
pub fn root_device(cfg: &BootConfig) -> Option<&str> {
    match &cfg.root {
        Root::Initramfs => None,
        Root::Device(d) => Some(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_taken_once_and_handed_over_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = ChannelKey::from_bytes([7; crate::auth::KEY_BYTES]);
        let handover = dir.path().join("k");
        hand_over_key(&handover, &key).unwrap();
        let mode = std::fs::metadata(&handover).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        assert_eq!(take_key(&handover), Some(key));
        assert!(!handover.exists(), "taking the key deletes it");
        assert_eq!(take_key(&handover), None);
        std::fs::write(&handover, "not a key").unwrap();
        assert_eq!(take_key(&handover), None);
        assert!(!handover.exists());
    }

    #[test]
    fn resolver_and_hosts_point_at_the_gateway() {
        let (resolv, hosts) = name_files("10.0.2.2".parse().unwrap(), "demo");
        assert_eq!(resolv, "nameserver 10.0.2.2\n");
        assert!(hosts.contains("10.0.2.2\tproxy.internal\n"));
        assert!(hosts.contains("demo"));
    }
}
