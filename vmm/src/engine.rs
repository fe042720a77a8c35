//! The engine contract: start a VM from a [`VmSpec`] in its own process.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};

use serde::{Deserialize, Serialize};

use crate::{sys, VmSpec, VmmError};

/// A VMM that can boot a [`VmSpec`].
pub trait Engine: fmt::Debug + Send + Sync {
    /// Short name: `qemu` or `libkrun`.
    fn name(&self) -> &'static str;
    /// Starts the VM in a new process. The spec's sockets must be listening.
    fn spawn(&self, spec: &VmSpec) -> Result<VmProcess, VmmError>;
}

/// Which engine the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    Auto,
    Libkrun,
    Qemu,
}

impl std::str::FromStr for EngineChoice {
    type Err = VmmError;
    fn from_str(s: &str) -> Result<Self, VmmError> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "libkrun" => Ok(EngineChoice::Libkrun),
            "qemu" => Ok(EngineChoice::Qemu),
            other => Err(VmmError::UnknownEngine(other.to_string())),
        }
    }
}

/// A concrete engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Libkrun,
    Qemu,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Libkrun => "libkrun",
            EngineKind::Qemu => "qemu",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (no KVM needed; slower).
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running VM process. It leads its own process group and dies with the
/// thread that spawned it (`PR_SET_PDEATHSIG`); dropping it kills the VM.
#[derive(Debug)]
pub struct VmProcess {
    child: Child,
    engine: &'static str,
    status: Option<ExitStatus>,
    engine_log: PathBuf,
}

impl VmProcess {
    pub(crate) fn new(child: Child, engine: &'static str, engine_log: PathBuf) -> Self {
        VmProcess {
            child,
            engine,
            status: None,
            engine_log,
        }
    }

    /// The VM process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The engine that started it.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    /// Where the engine's own stderr goes (not the guest console).
    pub fn engine_log(&self) -> &std::path::Path {
        &self.engine_log
    }

    /// Waits for the VM to exit.
    pub fn wait(&mut self) -> Result<ExitStatus, VmmError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().map_err(|source| VmmError::Spawn {
            engine: self.engine,
            source,
        })?;
        self.status = Some(s);
        Ok(s)
    }

    /// The exit status if the VM has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmmError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let s = self.child.try_wait().map_err(|source| VmmError::Spawn {
            engine: self.engine,
            source,
        })?;
        self.status = s;
        Ok(s)
    }

    /// Kills the VM's whole process group with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<(), VmmError> {
        if self.status.is_some() {
            return Ok(());
        }
        sys::kill_group(self.child.id()).map_err(|source| VmmError::Spawn {
            engine: self.engine,
            source,
        })?;
        self.wait().map(drop)
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_choice_parses_the_three_names() {
        assert_eq!("auto".parse::<EngineChoice>().unwrap(), EngineChoice::Auto);
        assert_eq!("qemu".parse::<EngineChoice>().unwrap(), EngineChoice::Qemu);
        assert_eq!(
            "libkrun".parse::<EngineChoice>().unwrap(),
            EngineChoice::Libkrun
        );
        assert!("firecracker".parse::<EngineChoice>().is_err());
    }

    #[test]
    fn dropping_a_vm_process_kills_its_group() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 600 & wait"]);
        sys::guard_child(&mut cmd);
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let mut p = VmProcess::new(child, "test", "/dev/null".into());
        assert!(p.try_wait().unwrap().is_none());
        p.kill().unwrap();
        assert!(!crate::proc_scan::group_has_live_members(pid as u32));
    }
}
