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

/// Options libkrun's devices need in the guest kernel it boots through
/// `krun_set_kernel` (virtio-mmio transport, console, vsock for the agent
/// channel, net and block).
const LIBKRUN_KERNEL_OPTIONS: &[&str] = &[
    "CONFIG_VIRTIO_MMIO=y",
    "CONFIG_VIRTIO_CONSOLE=y",
    "CONFIG_VIRTIO_VSOCKETS=y",
    "CONFIG_VIRTIO_NET=y",
    "CONFIG_VIRTIO_BLK=y",
];

/// Whether libkrun can boot `kernel`: an uncompressed x86-64 ELF (what
/// `krun_set_kernel` takes as `KRUN_KERNEL_FORMAT_ELF`) built with the
/// options its devices need (read from the `config` saved beside it).
pub fn libkrun_kernel_check(kernel: &std::path::Path) -> Result<String, String> {
    if let Ok(v) = std::env::var("BOTTLE_LIBKRUNFW") {
        return Err(format!(
            "BOTTLE_LIBKRUNFW={v} is set, but libkrunfw kernels (virtio-fs root) are not supported"
        ));
    }
    let mut head = [0u8; 20];
    let read = std::fs::File::open(kernel)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .map_err(|e| format!("cannot read {}: {e}", kernel.display()));
    read?;
    // ELF magic, 64-bit, little-endian, e_machine = EM_X86_64 (62).
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 || head[18] != 62 {
        return Err(format!(
            "{} is not an uncompressed x86-64 ELF vmlinux",
            kernel.display()
        ));
    }
    let config_path = kernel.with_file_name("config");
    let config = std::fs::read_to_string(&config_path).map_err(|e| {
        format!(
            "cannot read the kernel's config {}: {e}",
            config_path.display()
        )
    })?;
    let missing: Vec<&str> = LIBKRUN_KERNEL_OPTIONS
        .iter()
        .copied()
        .filter(|o| !config.lines().any(|l| l.trim() == *o))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks {} (libkrun's devices need them)",
            kernel.display(),
            missing.join(", ")
        ));
    }
    Ok(format!(
        "{} is an ELF vmlinux with virtio-mmio, console, vsock, net and block",
        kernel.display()
    ))
}

/// Runs every check, including the (cached) boot probes. `guest_bin` is
/// the static guest agent the tiny image must carry.
pub fn doctor(guest_bin: Option<&std::path::Path>) -> Vec<Check> {
    let mut out = Vec::new();
    let kvm = kvm_accessible();
    out.push(check(
        "kvm access",
        kvm.is_ok(),
        match &kvm {
            Ok(()) => "/dev/kvm is readable and writable".to_string(),
            Err(e) => e.to_string(),
        },
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
    let krun_kernel = match &kernel {
        Ok(k) => libkrun_kernel_check(k),
        Err(e) => Err(format!("no kernel to check: {e}")),
    };
    out.push(check(
        "libkrun kernel",
        krun_kernel.is_ok(),
        krun_kernel.clone().unwrap_or_else(|e| e),
        Some("rebuild the kernel: FORCE=1 scripts/build-kernel.sh (and unset BOTTLE_LIBKRUNFW)"),
    ));
    let tiny = guest_bin.map(|g| crate::image::find_tiny(Some(g)));
    let (ok, detail) = match tiny {
        None => (false, "no static guest agent found".to_string()),
        Some(Err(e)) => (false, e.to_string()),
        Some(Ok(None)) => (false, "not built for this guest agent".to_string()),
        Some(Ok(Some(p))) => (true, p.display().to_string()),
    };
    out.push(check(
        "tiny image (agent)",
        ok,
        detail,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_head() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18] = 62;
        h
    }

    #[test]
    fn libkrun_kernel_check_wants_an_elf_with_the_device_options() {
        let t = tempfile::tempdir().unwrap();
        let k = t.path().join("vmlinux");
        std::fs::write(&k, elf_head()).unwrap();
        let all = LIBKRUN_KERNEL_OPTIONS.join("\n");
        std::fs::write(t.path().join("config"), &all).unwrap();
        assert!(libkrun_kernel_check(&k).is_ok());

        let without_vsock = all.replace(
            "CONFIG_VIRTIO_VSOCKETS=y",
            "# CONFIG_VIRTIO_VSOCKETS is not set",
        );
        std::fs::write(t.path().join("config"), without_vsock).unwrap();
        let e = libkrun_kernel_check(&k).unwrap_err();
        assert!(e.contains("CONFIG_VIRTIO_VSOCKETS=y"), "{e}");

        std::fs::write(&k, b"\x1f\x8b compressed bzImage").unwrap();
        let e = libkrun_kernel_check(&k).unwrap_err();
        assert!(e.contains("not an uncompressed x86-64 ELF"), "{e}");

        std::fs::remove_file(t.path().join("config")).unwrap();
        std::fs::write(&k, elf_head()).unwrap();
        let e = libkrun_kernel_check(&k).unwrap_err();
        assert!(e.contains("config"), "{e}");
    }
}
