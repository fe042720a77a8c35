//! The libkrun engine. `krun_start_enter` takes over its process, so each VM
//! runs in a helper process ([`krun_main`]) that this engine spawns.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::engine::{Engine, VmProcess};
use crate::spec::{common_cmdline, AGENT_VSOCK_PORT};
use crate::sys::{Krun, KrunError};
use crate::{sys, VmSpec, VmmError};

/// Default soname; `BOTTLE_LIBKRUN` overrides it (a soname or a path).
pub const LIBKRUN: &str = "libkrun.so.1";
/// Name of the helper binary this crate builds.
pub const HELPER_BIN: &str = "bottle-vmm-krun";
/// Without the helper, the current executable's hidden subcommand that runs
/// one VM: `EXE __krun SPEC` (`bottle` and `bottle-bundle` both have it).
pub const KRUN_SUBCOMMAND: &str = "__krun";
/// ELF vmlinux, for `krun_set_kernel`.
const KERNEL_FORMAT_ELF: u32 = 1;

/// The library name or path to load.
pub fn library() -> String {
    std::env::var("BOTTLE_LIBKRUN")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| LIBKRUN.into())
}

/// Version of the libkrun that would load, from the real file name the
/// soname resolves to (`libkrun.so.1.19.7` -> `1.19.7`); the file size when
/// the name carries no version.
pub fn library_version() -> Option<String> {
    let lib = library();
    let path = if lib.contains('/') {
        Some(PathBuf::from(&lib))
    } else {
        [
            "/usr/local/lib64",
            "/usr/local/lib",
            "/usr/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib",
            "/lib/x86_64-linux-gnu",
        ]
        .iter()
        .map(|d| PathBuf::from(d).join(&lib))
        .find(|p| p.exists())
    }?;
    let real = std::fs::canonicalize(&path).ok()?;
    let name = real.file_name()?.to_string_lossy().into_owned();
    match name.split_once(".so.") {
        Some((_, v)) if v.matches('.').count() >= 2 => Some(v.to_string()),
        _ => Some(format!("size-{}", std::fs::metadata(&real).ok()?.len())),
    }
}

/// The guest kernel command line under libkrun.
pub fn guest_cmdline(spec: &VmSpec) -> String {
    let mut words = vec!["console=hvc0".to_string()];
    words.extend(common_cmdline(
        spec,
        bottle_contract::Channel::Vsock(AGENT_VSOCK_PORT),
    ));
    words.join(" ")
}

/// Boots VMs with libkrun through a helper process.
#[derive(Debug, Clone)]
pub struct KrunEngine {
    program: PathBuf,
    args: Vec<String>,
}

impl KrunEngine {
    /// Finds the helper: `BOTTLE_KRUN_HELPER`, else `bottle-vmm-krun` next to
    /// the current executable (or one directory up, for test binaries), else
    /// the current executable's hidden `__krun` subcommand.
    pub fn new() -> Self {
        if let Some(p) = std::env::var_os("BOTTLE_KRUN_HELPER").filter(|v| !v.is_empty()) {
            return KrunEngine::with_helper(PathBuf::from(p), Vec::new());
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bottle"));
        if let Some(h) = bottle_util::exe::beside(&exe, HELPER_BIN) {
            return KrunEngine::with_helper(h, Vec::new());
        }
        KrunEngine::with_helper(exe, vec![KRUN_SUBCOMMAND.into()])
    }

    /// Runs `program args... <spec-json>` for each VM.
    pub fn with_helper(program: PathBuf, args: Vec<String>) -> Self {
        KrunEngine { program, args }
    }

    /// Loads the library in this process to check that it is usable.
    pub fn check_library() -> Result<(), KrunError> {
        Krun::load(&library()).map(drop)
    }
}

impl Default for KrunEngine {
    fn default() -> Self {
        KrunEngine::new()
    }
}

impl Engine for KrunEngine {
    fn name(&self) -> &'static str {
        "libkrun"
    }

    fn spawn(&self, spec: &VmSpec) -> Result<VmProcess, VmmError> {
        spec.validate()?;
        if std::env::var_os("BOTTLE_LIBKRUNFW").is_some() {
            return Err(VmmError::InvalidSpec(
                "BOTTLE_LIBKRUNFW is set, but libkrunfw kernels boot from a virtio-fs root, which bottle does not use yet; unset it to boot the project kernel".into(),
            ));
        }
        let json = serde_json::to_string(spec).map_err(|e| VmmError::InvalidSpec(e.to_string()))?;
        let log_path = crate::engine_log_path(&spec.console_log);
        let log = std::fs::File::create(&log_path)
            .map_err(VmmError::io("create engine log", &log_path))?;
        std::fs::File::create(&spec.console_log)
            .map_err(VmmError::io("create console log", &spec.console_log))?;
        let log2 = log
            .try_clone()
            .map_err(VmmError::io("dup engine log", &log_path))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        sys::guard_child(&mut cmd);
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            engine: "libkrun",
            source,
        })?;
        Ok(VmProcess::new(child, "libkrun", log_path))
    }
}

/// Configures libkrun from `spec` and enters the VM.
fn configure_and_enter(spec: &VmSpec) -> Result<std::convert::Infallible, VmmError> {
    spec.validate()?;
    let krun = Krun::load(&library())?;
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    krun.set_log_level(1)?;
    let ctx = krun.create_ctx()?;
    krun.set_vm_config(ctx, spec.cpus, spec.memory_mib)?;
    krun.set_kernel(
        ctx,
        &s(&spec.kernel),
        KERNEL_FORMAT_ELF,
        &s(&spec.initramfs),
        &guest_cmdline(spec),
    )?;
    krun.plain_vsock(ctx)?;
    krun.add_vsock_port(ctx, AGENT_VSOCK_PORT, &s(&spec.agent_socket))?;
    krun.add_net_unixstream(ctx, &s(&spec.net_socket), spec.guest_mac.0)?;
    if let Some(disk) = &spec.root_disk {
        krun.add_disk_ro(ctx, "root", &s(disk))?;
    }
    krun.set_console_output(ctx, &s(&spec.console_log))?;
    Err(krun.start_enter(ctx).into())
}

/// Entry point of the VM helper process: `spec_json` is a serialized
/// [`VmSpec`]. Never returns: the VM's exit ends the process, and a setup
/// failure prints why and exits with status 1 (2 when libkrun is missing).
pub fn krun_main(spec_json: &str) -> ! {
    let spec: VmSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bottle-vmm-krun: bad VM spec: {e}");
            std::process::exit(1)
        }
    };
    match configure_and_enter(&spec) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("bottle-vmm-krun: {e}");
            let code = if matches!(
                e,
                VmmError::Krun(KrunError::Load { .. } | KrunError::Symbol { .. })
            ) {
                2
            } else {
                1
            };
            std::process::exit(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec;

    #[test]
    fn krun_cmdline_uses_hvc_console_and_vsock_channel() {
        let c = guest_cmdline(&test_spec());
        assert!(c.starts_with("console=hvc0 "));
        assert!(c.contains("bottle.channel=vsock:1024"));
        assert!(c.contains("bottle.hostname=demo"));
    }
}
