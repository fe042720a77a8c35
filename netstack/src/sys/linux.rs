//! Linux: TAP devices through `/dev/net/tun`, and entering network namespaces.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::SysError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// The kernel may hand over frames whose L4 checksum is only partial.
const TUN_F_CSUM: libc::c_uint = 0x01;

/// How a TAP device carries frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapMode {
    /// Plain frames with full checksums.
    Plain,
    /// Each frame behind a 10-byte virtio-net header, with checksum offload
    /// on: the namespace's kernel leaves TCP/UDP checksums to us (never
    /// segmentation offload: frames stay within the MTU).
    ChecksumOffload,
}

/// `struct ifreq` as TUNSETIFF reads it: name, flags, padding to 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and creates or attaches TAP device `name` in the
/// calling thread's network namespace. The fd is non-blocking; frames carry
/// no packet-info header, and a vnet header only in
/// [`TapMode::ChecksumOffload`].
pub fn open_tap(name: &str, mode: TapMode) -> Result<OwnedFd, SysError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(SysError::IfName(name.to_owned()));
    }
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(SysError::OpenTun)?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: match mode {
            TapMode::Plain => IFF_TAP | IFF_NO_PI,
            TapMode::ChecksumOffload => IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        },
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `file`, which
    // outlives the call; TUNSETIFF reads and writes a `struct ifreq`, and `req`
    // is a properly aligned, fully initialised 40-byte ifreq-compatible value
    // that lives across the call.
    let rc = unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        return Err(SysError::SetIff(
            name.to_owned(),
            std::io::Error::last_os_error(),
        ));
    }
    if mode == TapMode::ChecksumOffload {
        // SAFETY: `fd` is the TAP descriptor set up above, owned by `file`;
        // TUNSETOFFLOAD takes its flags as the integer argument itself.
        let rc = unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, libc::c_ulong::from(TUN_F_CSUM)) };
        if rc < 0 {
            return Err(SysError::SetOffload(
                name.to_owned(),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(OwnedFd::from(file))
}

/// Registers `fd` with the current tokio reactor (non-blocking fds only).
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(std::io::Error::other(
            "no tokio runtime to register the fd with",
        ));
    }
    // SAFETY: an `OwnedFd` is a valid open descriptor that only closes when
    // dropped, and `AsyncFd` owns it until it is dropped or unwrapped, so the
    // descriptor stays open and `as_raw_fd` keeps returning the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Runs `f` with the calling thread inside the network namespace at `netns`,
/// then moves the thread back. Sockets and devices created by `f` stay in
/// that namespace.
pub fn in_netns<T>(netns: &Path, f: impl FnOnce() -> T) -> Result<T, SysError> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| SysError::OpenNetns("/proc/thread-self/ns/net".into(), e))?;
    let target = File::open(netns).map_err(|e| SysError::OpenNetns(netns.to_path_buf(), e))?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(SysError::Setns)?;
    let out = f();
    // Failing to return would leave this thread in the guest's namespace:
    // nothing it did afterwards could be trusted, so stop the process.
    if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
        eprintln!("fatal: cannot return to the original network namespace: {e}");
        std::process::abort();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_interface_name_is_rejected() {
        assert!(matches!(
            open_tap("a-very-long-interface", TapMode::Plain),
            Err(SysError::IfName(_))
        ));
        assert!(matches!(
            open_tap("", TapMode::Plain),
            Err(SysError::IfName(_))
        ));
    }
}
