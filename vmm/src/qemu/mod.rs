//! The qemu engine: `qemu-system-x86_64 -machine microvm`, KVM or TCG.

mod cmdline;

pub use cmdline::{command_line, guest_cmdline};

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::engine::{Accel, Engine, VmProcess};
use crate::{sys, VmSpec, VmmError};

/// Default binary; `BOTTLE_QEMU` overrides it.
pub const QEMU_BIN: &str = "qemu-system-x86_64";

/// Boots VMs with QEMU's microvm machine.
#[derive(Debug, Clone)]
pub struct QemuEngine {
    binary: PathBuf,
    accel: Accel,
}

impl QemuEngine {
    /// An engine using `BOTTLE_QEMU` or `qemu-system-x86_64` from PATH.
    pub fn new(accel: Accel) -> Self {
        let binary = std::env::var_os("BOTTLE_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| QEMU_BIN.into());
        QemuEngine { binary, accel }
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// `QEMU emulator version 7.2.22 (...)` -> `7.2.22`. Asked once per
    /// binary: the answer is cached under the binary's path, inode, size
    /// and modification time (an upgrade changes them), since running
    /// `--version` costs ~15 ms of every launch.
    pub fn version(&self) -> Result<String, VmmError> {
        let identity = binary_identity(&self.binary);
        let cache = crate::paths::StampCache::new("qemu-versions.json");
        if let Some(v) = identity.as_deref().and_then(|id| cache.get(id)) {
            return Ok(v);
        }
        let v = self.ask_version()?;
        if let Some(id) = identity {
            cache.put(id, v.clone());
        }
        Ok(v)
    }

    fn ask_version(&self) -> Result<String, VmmError> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .map_err(|_| {
                VmmError::MissingProgram("qemu-system-x86_64", "apt-get install qemu-system-x86")
            })?;
        parse_version(&String::from_utf8_lossy(&out.stdout)).ok_or(VmmError::MissingProgram(
            "qemu-system-x86_64",
            "apt-get install qemu-system-x86",
        ))
    }
}

/// The [`crate::paths::file_stamp`] of the program `binary` names (looked
/// up on PATH when it has no slash, links resolved), or `None` when it is
/// not found.
fn binary_identity(binary: &std::path::Path) -> Option<String> {
    let path = if binary.components().count() > 1 {
        binary.to_path_buf()
    } else {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())?
    };
    crate::paths::file_stamp(&std::fs::canonicalize(path).ok()?)
}

pub(crate) fn parse_version(out: &str) -> Option<String> {
    let line = out.lines().next()?;
    let rest = line.strip_prefix("QEMU emulator version ")?;
    let v = rest.split_whitespace().next()?;
    Some(v.to_string())
}

impl Engine for QemuEngine {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn spawn(&self, spec: &VmSpec) -> Result<VmProcess, VmmError> {
        spec.validate()?;
        let log_path = crate::engine_log_path(&spec.console_log);
        let log = std::fs::File::create(&log_path)
            .map_err(VmmError::io("create engine log", &log_path))?;
        // The console file is (re)created by us so an old boot's marker never counts.
        std::fs::File::create(&spec.console_log)
            .map_err(VmmError::io("create console log", &spec.console_log))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(command_line(spec, self.accel))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        sys::guard_child(&mut cmd);
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            engine: "qemu",
            source,
        })?;
        tracing::debug!(pid = child.id(), accel = %self.accel, "qemu started");
        Ok(VmProcess::new(child, "qemu", log_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_is_parsed() {
        let out = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright...";
        assert_eq!(parse_version(out).as_deref(), Some("7.2.22"));
        assert_eq!(parse_version("something else"), None);
    }
}
