//! Network namespaces for netstack tests: a uniquely named namespace that is
//! deleted (with its devices and any `/etc/netns/NAME` files) when dropped,
//! and a child-process guard that kills on drop.
//!
//! Only `ip` (iproute2) is used; the namespace starts with no links at all,
//! so the only way out is whatever the test attaches (the netstack's TAP).

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `bt-<prefix>-<pid>-<n>` (names stay under 32 characters).
    pub fn new(prefix: &str) -> std::io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix: String = prefix
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        let name = format!("bt-{prefix}-{}-{n}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let ns = Netns { name };
        // Loopback up, as in any real guest.
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` inside the namespace and returns its output.
    pub fn output(&self, argv: &[&str]) -> std::io::Result<Output> {
        let (program, rest) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty argv"))?;
        self.command(program).args(rest).output()
    }

    /// Runs `argv` inside the namespace; an error unless it exits 0.
    pub fn run(&self, argv: &[&str]) -> std::io::Result<Output> {
        let out = self.output(argv)?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{argv:?} in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out)
    }

    /// Gives programs run through `ip netns exec` their own `/etc/resolv.conf`
    /// (removed on drop).
    pub fn set_resolv_conf(&self, contents: &str) -> std::io::Result<()> {
        let dir = PathBuf::from("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resolv.conf"), contents)
    }

    /// Brings `dev` up with `addr/prefix` and a default route via `gateway`,
    /// as DHCP would.
    pub fn configure(
        &self,
        dev: &str,
        addr_cidr: &str,
        gateway: &str,
        mtu: usize,
    ) -> std::io::Result<()> {
        let mtu = mtu.to_string();
        self.run(&["ip", "link", "set", dev, "mtu", &mtu, "up"])?;
        self.run(&["ip", "addr", "add", addr_cidr, "dev", dev])?;
        self.run(&["ip", "route", "add", "default", "via", gateway, "dev", dev])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs in it, then delete it (and its TAP devices).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this machine can create TAP devices (`/dev/net/tun` exists).
pub fn have_tun() -> bool {
    std::path::Path::new("/dev/net/tun").exists()
}
