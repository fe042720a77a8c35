//! Linux system calls the agent needs that have no safe wrapper: terminal
//! ioctls, child set-up before exec, and static network configuration.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Errors from the system calls in this module.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{what}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("interface name {0:?} is too long")]
    IfName(String),
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Os { what, source }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets the window size of the terminal behind `fd`.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid
    // for the duration of the call; the fd is borrowed, so it is open.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) })
}

/// The window size `(rows, cols)` of the terminal behind `fd`.
pub fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer, which is valid
    // and exclusively borrowed for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_row, ws.ws_col))
}

/// Registers an owned fd with the tokio reactor.
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an `OwnedFd` owns an open descriptor, keeps it open until it is
    // dropped (which happens when the `AsyncFd` is dropped), and its
    // `as_raw_fd` always returns that same descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

fn ifreq(name: &str) -> Result<libc::ifreq, SysError> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(SysError::IfName(name.to_string()));
    }
    // SAFETY: `ifreq` is plain old data (integers, arrays, a union of those);
    // all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` have the same size (16 bytes) and
    // the kernel reads a `sockaddr_in` back out of this `sockaddr`.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Sock(RawFd);

impl Sock {
    fn inet() -> Result<Sock, SysError> {
        // SAFETY: plain socket(2) call; the fd is owned by `Sock` and closed on drop.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os("socket for interface ioctls")(io::Error::last_os_error()));
        }
        Ok(Sock(fd))
    }

    fn ioctl_ifreq(&self, op: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every SIOC[GS]IF* request reads/writes one `ifreq`, which
        // is valid and exclusively borrowed; the socket fd is open.
        check(unsafe { libc::ioctl(self.0, op, req as *mut libc::ifreq) })
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: the fd was returned by socket(2) and is closed exactly once.
        unsafe { libc::close(self.0) };
    }
}

/// Brings interface `name` up, with an IPv4 address, prefix and MTU when given.
pub fn configure_interface(
    name: &str,
    addr: Option<(Ipv4Addr, u8)>,
    mtu: Option<u32>,
) -> Result<(), SysError> {
    let sock = Sock::inet()?;
    if let Some((ip, prefix)) = addr {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(ip);
        sock.ioctl_ifreq(libc::SIOCSIFADDR, &mut req)
            .map_err(os(format!("set address of {name}")))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
        sock.ioctl_ifreq(libc::SIOCSIFNETMASK, &mut req)
            .map_err(os(format!("set netmask of {name}")))?;
    }
    if let Some(mtu) = mtu {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = i32::try_from(mtu).unwrap_or(i32::MAX);
        sock.ioctl_ifreq(libc::SIOCSIFMTU, &mut req)
            .map_err(os(format!("set mtu of {name}")))?;
    }
    let mut req = ifreq(name)?;
    sock.ioctl_ifreq(libc::SIOCGIFFLAGS, &mut req)
        .map_err(os(format!("read flags of {name}")))?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    sock.ioctl_ifreq(libc::SIOCSIFFLAGS, &mut req)
        .map_err(os(format!("bring {name} up")))?;
    Ok(())
}

/// Adds the IPv4 default route via `gateway` on interface `dev`.
pub fn add_default_route(dev: &str, gateway: Ipv4Addr) -> Result<(), SysError> {
    let sock = Sock::inet()?;
    let dev_c = std::ffi::CString::new(dev).map_err(|_| SysError::IfName(dev.to_string()))?;
    // SAFETY: `rtentry` is plain old data; all-zero is valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    rt.rt_dev = dev_c.as_ptr().cast_mut();
    // SAFETY: SIOCADDRT reads one `rtentry`; it and the device name it points
    // to (`dev_c`) outlive the call.
    let ret = unsafe { libc::ioctl(sock.0, libc::SIOCADDRT, &mut rt as *mut libc::rtentry) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map_err(os(format!("add default route via {gateway}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_longer_than_ifnamsiz_are_refused() {
        assert!(matches!(
            ifreq("a-very-long-interface-name"),
            Err(SysError::IfName(_))
        ));
        assert!(ifreq("eth0").is_ok());
    }

    #[test]
    fn pty_window_size_round_trips() {
        let pty = nix::pty::openpty(None, None).unwrap();
        use std::os::fd::AsFd;
        set_winsize(pty.master.as_fd(), 33, 101).unwrap();
        assert_eq!(get_winsize(pty.slave.as_fd()).unwrap(), (33, 101));
    }
}
