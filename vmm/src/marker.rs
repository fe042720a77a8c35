//! Waiting for the guest's ready marker, and the boot watchdog.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::engine::{Engine, VmProcess};
use crate::spec::READY_MARKER;
use crate::{VmSpec, VmmError};

const POLL: Duration = Duration::from_millis(5);

/// Incremental search for the marker at the start of a console line.
#[derive(Debug, Default)]
struct LineMatcher {
    /// Bytes of the current line seen so far (capped at the marker length).
    line: Vec<u8>,
    at_line_start_prefix: bool,
}

impl LineMatcher {
    fn new() -> Self {
        LineMatcher {
            line: Vec::new(),
            at_line_start_prefix: true,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> bool {
        let m = READY_MARKER.as_bytes();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                self.line.clear();
                self.at_line_start_prefix = true;
                continue;
            }
            if !self.at_line_start_prefix {
                continue;
            }
            self.line.push(b);
            if !m.starts_with(&self.line) {
                self.at_line_start_prefix = false;
                self.line.clear();
            } else if self.line.len() == m.len() {
                return true;
            }
        }
        false
    }
}

/// Waits until a console line starts with `BOTTLE-GUEST-READY`; returns the
/// time waited. Errors with [`VmmError::BootTimeout`] after `deadline`.
pub fn wait_for_marker(console_log: &Path, deadline: Duration) -> Result<Duration, VmmError> {
    wait_inner(console_log, deadline, None)
}

fn wait_inner(
    console_log: &Path,
    deadline: Duration,
    mut vm: Option<&mut VmProcess>,
) -> Result<Duration, VmmError> {
    let start = Instant::now();
    let mut matcher = LineMatcher::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Ok(mut f) = std::fs::File::open(console_log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(VmmError::io("read console log", console_log))?;
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                    if matcher.feed(&buf[..n]) {
                        return Ok(start.elapsed());
                    }
                }
            }
        }
        if let Some(vm) = vm.as_deref_mut() {
            if let Some(status) = vm.try_wait()? {
                return Err(VmmError::VmExited(status.to_string()));
            }
        }
        if start.elapsed() >= deadline {
            return Err(VmmError::BootTimeout(deadline));
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for the marker while watching `vm`: an early VM exit is reported
/// at once instead of waiting out the deadline.
pub fn wait_for_marker_or_exit(
    vm: &mut VmProcess,
    console_log: &Path,
    deadline: Duration,
) -> Result<Duration, VmmError> {
    wait_inner(console_log, deadline, Some(vm))
}

/// The outcome of [`boot_with_watchdog`].
#[derive(Debug)]
pub struct Booted {
    pub vm: VmProcess,
    /// Spawn to marker, of the attempt that succeeded.
    pub boot_time: Duration,
    /// Set when the first attempt hung and was killed; says so in words.
    pub retry_note: Option<String>,
}

/// Spawns `spec` and waits for the marker; if it does not appear within
/// `deadline` the VM is killed and started once more. A VM that exits on
/// its own is not retried (that is a real failure, not a rare hang).
pub fn boot_with_watchdog(
    engine: &dyn Engine,
    spec: &VmSpec,
    deadline: Duration,
) -> Result<Booted, VmmError> {
    let mut retry_note = None;
    for attempt in 0..2 {
        let start = Instant::now();
        let mut vm = engine.spawn(spec)?;
        match wait_for_marker_or_exit(&mut vm, &spec.console_log, deadline) {
            Ok(_) => {
                return Ok(Booted {
                    vm,
                    boot_time: start.elapsed(),
                    retry_note,
                })
            }
            Err(VmmError::BootTimeout(d)) if attempt == 0 => {
                vm.kill()?;
                let note = format!(
                    "{}: guest printed no ready marker within {:?}; killed it and retried once",
                    engine.name(),
                    d
                );
                tracing::warn!("{note}");
                retry_note = Some(note);
            }
            Err(e) => {
                vm.kill()?;
                return Err(e);
            }
        }
    }
    Err(VmmError::BootTimeout(deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn marker_at_line_start_matches() {
        let mut m = LineMatcher::new();
        assert!(m.feed(b"[ 0.1] boot\nBOTTLE-GUEST-READY\n"));
    }

    #[test]
    fn marker_split_across_reads_matches() {
        let mut m = LineMatcher::new();
        assert!(!m.feed(b"x\nBOTTLE-GUE"));
        assert!(m.feed(b"ST-READY v1\n"));
    }

    #[test]
    fn marker_inside_a_line_does_not_match() {
        let mut m = LineMatcher::new();
        assert!(!m.feed(b"Command line: bottle.x=BOTTLE-GUEST-READY\n"));
        assert!(!m.feed(b"BOTTLE-GUEST-REA\n"));
    }

    #[test]
    fn wait_for_marker_finds_it_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(b"hello\r\nBOTTLE-GUEST-READY\r\n")
            .unwrap();
        assert!(wait_for_marker(&p, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn wait_for_marker_times_out_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        std::fs::write(&p, "kernel panic\n").unwrap();
        let e = wait_for_marker(&p, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, VmmError::BootTimeout(_)));
    }
}
