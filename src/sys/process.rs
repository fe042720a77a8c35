//! Processes bottle started, found and stopped through `/proc` and signals.

use std::path::Path;
use std::time::Duration;

/// Whether a pid is a live process whose command line mentions `needle`
/// (so a recycled pid is never mistaken for ours).
pub fn pid_matches(pid: u32, needle: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => needle.is_empty() || String::from_utf8_lossy(&cmdline).contains(needle),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
    }
}

/// Stop a process we started: SIGTERM, wait up to `grace`, then SIGKILL.
/// Nothing happens when `pid` is gone or is not ours (`needle`, see
/// [`pid_matches`]), so stopping twice is harmless. The wait ends the moment
/// the process exits (a pidfd), not at the next tick of a poll.
pub fn stop_process(pid: u32, needle: &str, grace: Duration) {
    use nix::sys::signal::Signal;
    // The pidfd names one process even if its pid is reused once it is
    // gone; the check after opening it makes sure that process is ours.
    let pidfd = PidFd::open(pid);
    if !pid_matches(pid, needle) {
        return;
    }
    let send = |sig: Signal| match &pidfd {
        Some(fd) => fd.signal(sig),
        None => signal(pid, sig),
    };
    send(Signal::SIGTERM);
    if wait_gone(pid, needle, pidfd.as_ref(), grace) {
        return;
    }
    send(Signal::SIGKILL);
    wait_gone(pid, needle, pidfd.as_ref(), Duration::from_secs(2));
}

/// Waits up to `limit` for the process to exit; whether it did.
fn wait_gone(pid: u32, needle: &str, pidfd: Option<&PidFd>, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !pid_matches(pid, needle) {
            return true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        match pidfd {
            // Readable once the process has exited (a zombie counts: it
            // runs nothing any more).
            Some(fd) if fd.wait_exited(left) => return true,
            Some(_) => {}
            None => std::thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

/// A pidfd (Linux 5.3+): signals that cannot reach a recycled pid, and a
/// descriptor that becomes readable when the process exits.
struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    fn open(pid: u32) -> Option<PidFd> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .ok()
            .map(PidFd)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(sig) = rustix::process::Signal::from_named_raw(sig as i32) {
            let _ = rustix::process::pidfd_send_signal(&self.0, sig);
        }
    }

    /// Whether the process exited within `limit`.
    fn wait_exited(&self, limit: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = u16::try_from(limit.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => n > 0,
            Err(_) => {
                // Interrupted or refused: do not spin.
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        }
    }
}

/// Processes started as `… MARKER <dir>/<name> …` with `dir` equal to
/// `root`: (pid, name). Processes under other roots (other users, other
/// test sandboxes) are not listed.
pub fn started_with(marker: &str, root: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(dir) = args
            .iter()
            .position(|a| *a == marker.as_bytes())
            .and_then(|pos| args.get(pos + 1))
        else {
            continue;
        };
        let dir = Path::new(std::str::from_utf8(dir).unwrap_or_default());
        if dir.parent() != Some(root) {
            continue;
        }
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            found.push((pid, name.to_string()));
        }
    }
    found
}

/// What a process has used: CPU time so far and resident memory now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User and system time, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident set size, in bytes.
    pub memory_bytes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns + o.cpu_ns,
            memory_bytes: self.memory_bytes + o.memory_bytes,
        }
    }
}

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ: 100 on every
/// architecture Linux exports it for, whatever the kernel's own HZ).
const USER_HZ: u64 = 100;

/// The usage of `pid` from `/proc/PID/stat` (utime, stime) and
/// `/proc/PID/status` (VmRSS): two small reads, no children. `None` when
/// the process is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_usage(&stat, &status)
}

/// [`usage`] from the two files' text.
fn parse_usage(stat: &str, status: &str) -> Option<Usage> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start past the last `)`. utime and stime are fields
    // 14 and 15, so the 12th and 13th after the state (field 3).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // `VmRSS:	  8192 kB` (absent for a zombie: then no memory).
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(Usage {
        cpu_ns: ticks.saturating_mul(1_000_000_000 / USER_HZ),
        memory_bytes: kib.saturating_mul(1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kills the child when the test ends, passing or not.
    struct Reap(std::process::Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_process_started_under_a_root_is_found_and_stopped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("x-abcde");
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do sleep 0.1; done", "__marker"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut child = Reap(child);
        // Until the child has exec'd, its command line is ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pid_matches(pid, "__marker") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let other = tempfile::tempdir().unwrap();
        assert!(started_with("__marker", other.path()).is_empty());
        assert!(
            started_with("__marker", root.path()).contains(&(pid, "x-abcde".to_string())),
            "{:?}",
            started_with("__marker", root.path())
        );
        assert!(pid_matches(pid, "x-abcde"));
        assert!(!pid_matches(pid, "someone-else"));
        // Not ours by its command line: left alone.
        stop_process(pid, "someone-else", Duration::from_millis(10));
        assert!(pid_matches(pid, "x-abcde"));
        // Stopped (with SIGKILL after the grace if SIGTERM is ignored).
        stop_process(pid, "x-abcde", Duration::from_millis(500));
        let _ = child.0.wait();
        assert!(!pid_matches(pid, ""));
        // Stopping again is harmless.
        stop_process(pid, "x-abcde", Duration::from_millis(10));
    }

    /// Starts `sh -c SCRIPT` and waits until its command line shows `shown`.
    fn start_marked(script: &str, shown: &str) -> Reap {
        let child = std::process::Command::new("sh")
            .args(["-c", script, "__marker"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pid_matches(child.id(), shown) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Reap(child)
    }

    /// Stops `sh -c SCRIPT` once it shows `shown`, with `grace`: how long
    /// the stop took and the signal the process died of.
    fn stop_marked(script: &str, shown: &str, grace: Duration) -> (Duration, Option<i32>) {
        let mut child = start_marked(script, shown);
        let began = std::time::Instant::now();
        stop_process(child.0.id(), shown, grace);
        let took = began.elapsed();
        let status = child.0.wait().unwrap();
        (took, std::os::unix::process::ExitStatusExt::signal(&status))
    }

    #[test]
    fn a_stop_returns_when_the_process_exits_not_when_the_grace_ends() {
        let (took, signal) = stop_marked("exec sleep 30", "30", Duration::from_secs(20));
        assert!(
            took < Duration::from_secs(10),
            "waited {took:?} for a process that exits on SIGTERM"
        );
        assert_eq!(signal, Some(15));
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        // The shell ignores TERM and waits on a child of its own. Its
        // command line shows `trap` from its exec on, before the trap is
        // set: the file it writes after the trap says when it is.
        let dir = tempfile::tempdir().unwrap();
        let trapped = dir.path().join("trapped");
        let script = format!(
            "trap '' TERM; : > '{}'; while :; do sleep 1; done",
            trapped.display()
        );
        let mut child = start_marked(&script, "trap");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !trapped.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(trapped.exists(), "the shell never set its trap");
        let began = std::time::Instant::now();
        stop_process(child.0.id(), "trap", Duration::from_millis(300));
        let took = began.elapsed();
        let status = child.0.wait().unwrap();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    #[test]
    fn usage_reads_cpu_time_and_resident_memory() {
        // A command name with a space and a parenthesis, as the kernel prints it.
        let stat = "4242 (qemu sys) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000000 2048 18446744073709551615";
        let status = "Name:\tqemu\nVmPeak:\t  9000 kB\nVmRSS:\t    8192 kB\nThreads:\t3\n";
        let u = parse_usage(stat, status).unwrap();
        assert_eq!(u.cpu_ns, 3_000_000_000, "300 ticks at 100 Hz");
        assert_eq!(u.memory_bytes, 8192 * 1024);
        assert_eq!(parse_usage("garbage", status), None);
        // This process: some CPU time, some memory; a gone pid has none.
        let me = usage(std::process::id()).unwrap();
        assert!(me.memory_bytes > 0, "{me:?}");
        assert_eq!(usage(u32::MAX), None);
    }
}
