//! Facts for `bottle doctor`: what the VM backend has and lacks here.

use serde::Serialize;

use crate::engine::{Accel, EngineKind};
use crate::probe::{kvm_accessible, probe};

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when not ok.
    pub fix: Option<String>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
        fix: if ok { None } else { fix.map(String::from) },
    }
}

/// Runs every check, including the (cached) boot probes.
pub fn doctor() -> Vec<Check> {
    let mut out = Vec::new();
    let kvm = kvm_accessible();
    out.push(check(
        "kvm access",
        kvm.is_ok(),
        kvm.clone()
            .err()
            .unwrap_or_else(|| "/dev/kvm is readable and writable".into()),
        Some("enable virtualization, or: sudo usermod -aG kvm $USER (then log in again)"),
    ));
    let qemu = crate::qemu::QemuEngine::new(Accel::Tcg).version();
    out.push(check(
        "qemu",
        qemu.is_ok(),
        match &qemu {
            Ok(v) => format!("qemu-system-x86_64 {v}"),
            Err(e) => e.to_string(),
        },
        Some("apt-get install qemu-system-x86"),
    ));
    let lib = crate::krun::KrunEngine::check_library();
    out.push(check(
        "libkrun library",
        lib.is_ok(),
        match &lib {
            Ok(()) => format!("{} loads (version {})", crate::krun::library(), crate::krun::library_version().unwrap_or_else(|| "?".into())),
            Err(e) => e.to_string(),
        },
        Some("build libkrun with NET=1 BLK=1 (see docs/vm.md), or set BOTTLE_LIBKRUN=/path/libkrun.so.1"),
    ));
    let kernel = crate::kernel::locate();
    out.push(check(
        "guest kernel",
        kernel.is_ok(),
        match &kernel {
            Ok(k) => format!("both engines boot {}", k.display()),
            Err(e) => e.to_string(),
        },
        Some("scripts/build-kernel.sh"),
    ));
    let fw = std::env::var("BOTTLE_LIBKRUNFW").ok();
    out.push(check(
        "libkrun kernel",
        fw.is_none(),
        match &fw {
            None => "libkrun boots the project kernel (krun_set_kernel, ELF vmlinux)".into(),
            Some(v) => {
                format!("BOTTLE_LIBKRUNFW={v} is set, but libkrunfw kernels are not supported yet")
            }
        },
        Some("unset BOTTLE_LIBKRUNFW"),
    ));
    let tiny = crate::image::find_tiny();
    out.push(check(
        "tiny image (agent)",
        tiny.is_some(),
        tiny.map(|p| p.display().to_string())
            .unwrap_or_else(|| "not built".into()),
        Some("scripts/build-guest.sh, then bottle image build tiny"),
    ));
    for (engine, accel) in [
        (EngineKind::Libkrun, Accel::Kvm),
        (EngineKind::Qemu, Accel::Kvm),
        (EngineKind::Qemu, Accel::Tcg),
    ] {
        let r = probe(engine, accel);
        let detail = match r.boot_ms {
            Some(ms) if r.ok => format!("{} (boot {ms} ms)", r.reason),
            _ => r.reason.clone(),
        };
        out.push(check(
            &format!("boot probe {engine}/{accel}"),
            r.ok,
            detail,
            None,
        ));
    }
    out
}
