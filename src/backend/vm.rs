//! The VM backend: a microVM (libkrun or QEMU microvm) whose only network is
//! the bundle's netstack. The bundle process starts and supervises the VM, so
//! launching here means writing the bundle's config and starting it, and
//! tearing down means stopping the VM, then the bundle.

use super::{image_available, Availability, Backend, BackendError, Found};
use crate::bundle::{BundleConfig, Mode, VmLaunch};
use crate::doctor::Check;
use crate::manifest::BackendName;
use crate::plan::{Engine, Plan};
use crate::state::{Metadata, StateDir};
use bottle_vmm::probe::{self, EngineMissing, ProbeResult};
use bottle_vmm::{Accel, EngineKind};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct VmBackend;

/// Kernel and initramfs every VM boots.
pub(crate) fn boot_assets() -> Result<(PathBuf, PathBuf), (String, String)> {
    let kernel = bottle_vmm::kernel::locate().map_err(|e| (format!("no guest kernel: {e}"), "run scripts/build-kernel.sh (builds it from Debian's linux-source-6.1, a few minutes, cached)".to_string()))?;
    let initramfs = crate::images::tiny_initramfs().map_err(|e| {
        (
            format!("the tiny image (initramfs with the guest agent): {e:#}"),
            "run `bottle image build tiny` (needs scripts/build-guest.sh first)".to_string(),
        )
    })?;
    Ok((kernel, initramfs))
}

/// An engine's version, asked once per process: planning needs it for the
/// availability check and for each cached-probe key, and asking QEMU means
/// spawning `qemu-system-x86_64 --version`.
fn engine_version(engine: EngineKind) -> Result<String, EngineMissing> {
    type Version = std::sync::OnceLock<Result<String, EngineMissing>>;
    static QEMU: Version = std::sync::OnceLock::new();
    static KRUN: Version = std::sync::OnceLock::new();
    let cell = match engine {
        EngineKind::Qemu => &QEMU,
        EngineKind::Libkrun => &KRUN,
    };
    cell.get_or_init(|| probe::engine_version(engine)).clone()
}

/// A probe result only if one is cached (planning must not boot anything).
fn cached_probe(engine: EngineKind, accel: Accel, kernel: &std::path::Path) -> Option<ProbeResult> {
    let version = match engine_version(engine) {
        Ok(v) => v,
        Err(why) => {
            return Some(ProbeResult {
                ok: false,
                reason: why.to_string(),
                boot_ms: None,
            })
        }
    };
    let key = probe::cache_key(engine, accel, &version, kernel);
    probe::cached(&bottle_vmm::cache_root().join("probes.json"), &key)
}

/// The engine for `choice` from cached boot probes only (planning must not
/// boot anything); `None` when a probe it needs is not cached yet.
pub fn decide_engine(choice: bottle_vmm::EngineChoice) -> Option<bottle_vmm::Selection> {
    let kernel = bottle_vmm::kernel::locate().ok()?;
    let krun = cached_probe(EngineKind::Libkrun, Accel::Kvm, &kernel)?;
    let kvm = if std::env::var("BOTTLE_ACCEL").is_ok_and(|v| v == "tcg") {
        ProbeResult {
            ok: false,
            reason: "BOTTLE_ACCEL=tcg".into(),
            boot_ms: None,
        }
    } else {
        cached_probe(EngineKind::Qemu, Accel::Kvm, &kernel)?
    };
    let qemu_present = engine_version(EngineKind::Qemu).map(|_| ());
    bottle_vmm::select::decide(choice, &|| krun.clone(), &|| kvm.clone(), qemu_present).ok()
}

impl Backend for VmBackend {
    fn name(&self) -> BackendName {
        BackendName::Vm
    }

    fn doctor(&self) -> Vec<Check> {
        let guest = crate::images::guest_binary().ok();
        bottle_vmm::doctor(guest.as_deref())
            .into_iter()
            .map(|c| Check {
                name: c.name,
                ok: c.ok,
                detail: c.detail,
                fix: c.fix,
            })
            .collect()
    }

    fn availability(&self) -> Availability {
        let (kernel, _) = match boot_assets() {
            Ok(a) => a,
            Err((why, fix)) => return Availability::Unavailable { why, fix },
        };
        let qemu = engine_version(EngineKind::Qemu);
        let krun = engine_version(EngineKind::Libkrun);
        match (&qemu, &krun) {
            (Err(q), Err(k)) => Availability::Unavailable {
                why: format!("no VM engine: qemu: {q}; libkrun: {k}"),
                fix: "apt-get install qemu-system-x86 (or install libkrun)".to_string(),
            },
            _ => {
                let tcg_ok = cached_probe(EngineKind::Qemu, Accel::Tcg, &kernel);
                if let Some(r) = tcg_ok.filter(|r| !r.ok) {
                    if krun.is_err() {
                        return Availability::Unavailable {
                            why: format!("qemu cannot boot the guest here: {}", r.reason),
                            fix: "run `bottle doctor` for details".to_string(),
                        };
                    }
                }
                Availability::Ready {
                    detail: format!("guest kernel {}", kernel.display()),
                }
            }
        }
    }

    fn prepare(&self, plan: &mut Plan) -> Result<(), BackendError> {
        image_available(plan)?;
        let decided = decide_engine(plan.requested.engine);
        match decided {
            Some(sel) => {
                plan.engine = Some(Engine::Vm(sel.engine, sel.accel));
                plan.engine_reason = Some(sel.reason);
                if let Some(w) = sel.warning {
                    plan.warnings.push(w);
                }
            }
            None => {
                plan.engine = Some(Engine::VmProbed(plan.requested.engine));
                plan.engine_reason = Some(
                    "decided at launch by boot probes (libkrun, else qemu with KVM, else qemu TCG)"
                        .to_string(),
                );
            }
        }
        plan.start = crate::pool::preview(plan);
        Ok(())
    }

    fn launch(&self, plan: &Plan, state: &StateDir) -> Result<(), BackendError> {
        let config = bundle_config(plan)?;
        crate::bundle::start(state, &config, Duration::from_secs(120))?;
        Ok(())
    }

    fn enumerate(&self) -> Result<Vec<Found>, BackendError> {
        let root =
            crate::state::state_root().map_err(|e| BackendError::failed("no state root", e))?;
        Ok(crate::bundle::processes(&root)
            .into_iter()
            .map(|(pid, identity)| Found {
                identity,
                handle: pid.to_string(),
                running: true,
            })
            .collect())
    }

    fn teardown(&self, meta: &Metadata, _state: &StateDir) -> Result<(), BackendError> {
        // The VM first (the bundle would stop it too, but it may be gone).
        if let Some(pid) = meta.vm_pid {
            crate::sys::process::stop_process(pid, meta.process_tag(), Duration::from_secs(2));
            crate::timing::step("vm-stopped");
        }
        crate::bundle::stop(meta);
        Ok(())
    }

    fn remove_orphan(&self, found: &Found) -> Result<(), BackendError> {
        // The handle is the bundle's pid; the VM dies with it.
        if let Ok(pid) = found.handle.parse::<u32>() {
            crate::sys::process::stop_process(pid, &found.identity, Duration::from_secs(3));
        }
        Ok(())
    }
}

/// The bundle config of a VM bottle for `plan` (a fresh MAC each time).
pub fn bundle_config(plan: &Plan) -> Result<BundleConfig, BackendError> {
    let (kernel, initramfs) =
        boot_assets().map_err(|(why, fix)| BackendError::Unavailable(format!("{why}; {fix}")))?;
    let def =
        crate::images::for_plan(plan).map_err(|e| BackendError::Unavailable(format!("{e:#}")))?;
    let root_disk = match &def {
        crate::images::ImageDef::Tiny => None,
        crate::images::ImageDef::Debian(_) => {
            let dir = crate::images::find(&def)
                .map_err(|e| BackendError::Unavailable(format!("{e:#}")))?;
            Some(crate::images::root_disk(&dir).ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "image `{}` has no root disk in {}; rebuild it with `bottle image build {}`",
                    plan.image,
                    dir.display(),
                    plan.image
                ))
            })?)
        }
    };
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    let seed: [u8; 4] = rand::random();
    mac[2..].copy_from_slice(&seed);
    let mode = Mode::Vm(VmLaunch {
        engine: plan.requested.engine,
        decided: plan.engine.and_then(Engine::decided_vm),
        cpus: u8::try_from(plan.cpus).unwrap_or(u8::MAX),
        memory_mib: plan.memory_mib,
        kernel,
        initramfs,
        root_disk,
        gateway: plan.network.gateway,
        guest: plan.network.guest,
        prefix_len: plan.network.subnet.prefix_len,
        mtu: plan.network.mtu,
        guest_mac: mac,
    });
    let config = BundleConfig::for_plan(plan, mode)
        .map_err(|e| BackendError::failed("cannot read the upstream CAs", e))?;
    Ok(config)
}
