//! Picking the engine: explicit choice, or auto (libkrun, else qemu+KVM,
//! else qemu TCG with a warning).

use serde::Serialize;

use crate::engine::{Accel, Engine, EngineChoice, EngineKind};
use crate::krun::KrunEngine;
use crate::probe::{probe, EngineMissing, ProbeResult};
use crate::qemu::QemuEngine;
use crate::VmmError;

/// Why no engine can be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "libkrun was requested but cannot boot the guest here: {reason}; \
         run `bottle doctor`, or choose qemu (`--engine qemu`)"
    )]
    LibkrunUnusable { reason: String },
    #[error(transparent)]
    QemuMissing(#[from] EngineMissing),
}

/// What was picked and why (the plan prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub engine: EngineKind,
    pub accel: Accel,
    pub reason: String,
    /// One line for the user, e.g. the TCG speed warning.
    pub warning: Option<String>,
}

/// The TCG warning.
pub const TCG_WARNING: &str =
    "no usable KVM: the VM runs under QEMU's software emulation (TCG), several times slower than hardware virtualization";

/// Probe results in, decision out: pure, so it is unit-tested.
pub fn decide(
    requested: EngineChoice,
    krun: &dyn Fn() -> ProbeResult,
    qemu_kvm: &dyn Fn() -> ProbeResult,
    qemu_present: Result<(), EngineMissing>,
) -> Result<Selection, SelectError> {
    let tcg = |why: String| -> Result<Selection, SelectError> {
        qemu_present.clone()?;
        Ok(Selection {
            engine: EngineKind::Qemu,
            accel: Accel::Tcg,
            reason: why,
            warning: Some(TCG_WARNING.into()),
        })
    };
    match requested {
        EngineChoice::Libkrun => {
            let r = krun();
            if r.ok {
                Ok(Selection {
                    engine: EngineKind::Libkrun,
                    accel: Accel::Kvm,
                    reason: "requested libkrun; its probe passed".into(),
                    warning: None,
                })
            } else {
                Err(SelectError::LibkrunUnusable { reason: r.reason })
            }
        }
        EngineChoice::Qemu => {
            qemu_present.clone()?;
            let k = qemu_kvm();
            if k.ok {
                Ok(Selection {
                    engine: EngineKind::Qemu,
                    accel: Accel::Kvm,
                    reason: "requested qemu; KVM probe passed".into(),
                    warning: None,
                })
            } else {
                tcg(format!(
                    "requested qemu; KVM probe failed ({}), using TCG",
                    k.reason
                ))
            }
        }
        EngineChoice::Auto => {
            let r = krun();
            if r.ok {
                return Ok(Selection {
                    engine: EngineKind::Libkrun,
                    accel: Accel::Kvm,
                    reason: "auto: libkrun probe passed".into(),
                    warning: None,
                });
            }
            let k = if qemu_present.is_ok() {
                qemu_kvm()
            } else {
                ProbeResult {
                    ok: false,
                    reason: "qemu missing".into(),
                    boot_ms: None,
                }
            };
            if k.ok {
                return Ok(Selection {
                    engine: EngineKind::Qemu,
                    accel: Accel::Kvm,
                    reason: format!(
                        "auto: libkrun unusable ({}); qemu KVM probe passed",
                        r.reason
                    ),
                    warning: None,
                });
            }
            tcg(format!(
                "auto: libkrun unusable ({}); qemu KVM unusable ({})",
                r.reason, k.reason
            ))
        }
    }
}

/// Picks an engine, probing (cached) as needed. `BOTTLE_ACCEL=tcg` skips
/// every KVM probe (hosts known to lack usable KVM).
pub fn select_engine(requested: EngineChoice) -> Result<(Box<dyn Engine>, Selection), VmmError> {
    let no_kvm = std::env::var("BOTTLE_ACCEL")
        .map(|v| v == "tcg")
        .unwrap_or(false);
    let skip = || ProbeResult {
        ok: false,
        reason: "BOTTLE_ACCEL=tcg".into(),
        boot_ms: None,
    };
    let krun = || {
        if no_kvm {
            skip()
        } else {
            probe(EngineKind::Libkrun, Accel::Kvm)
        }
    };
    let qemu_kvm = || {
        if no_kvm {
            skip()
        } else {
            probe(EngineKind::Qemu, Accel::Kvm)
        }
    };
    let present = QemuEngine::new(Accel::Tcg)
        .version()
        .map(drop)
        .map_err(|_| EngineMissing::Qemu);
    let sel = decide(requested, &krun, &qemu_kvm, present)?;
    Ok((engine_for(sel.engine, sel.accel), sel))
}

/// The engine for a decided kind and acceleration (no probing).
pub fn engine_for(kind: EngineKind, accel: Accel) -> Box<dyn Engine> {
    match kind {
        EngineKind::Libkrun => Box::new(KrunEngine::new()),
        EngineKind::Qemu => Box::new(QemuEngine::new(accel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ProbeResult {
        ProbeResult {
            ok: true,
            reason: "booted".into(),
            boot_ms: Some(100),
        }
    }
    fn bad() -> ProbeResult {
        ProbeResult {
            ok: false,
            reason: "KVM internal error".into(),
            boot_ms: None,
        }
    }

    #[test]
    fn auto_prefers_libkrun_when_its_probe_passes() {
        let s = decide(EngineChoice::Auto, &ok, &ok, Ok(())).unwrap();
        assert_eq!((s.engine, s.accel), (EngineKind::Libkrun, Accel::Kvm));
        assert!(s.warning.is_none());
    }

    #[test]
    fn auto_falls_back_to_qemu_kvm_then_tcg_with_warning() {
        let s = decide(EngineChoice::Auto, &bad, &ok, Ok(())).unwrap();
        assert_eq!((s.engine, s.accel), (EngineKind::Qemu, Accel::Kvm));
        let s = decide(EngineChoice::Auto, &bad, &bad, Ok(())).unwrap();
        assert_eq!((s.engine, s.accel), (EngineKind::Qemu, Accel::Tcg));
        assert!(s.warning.is_some());
        assert!(s.reason.contains("KVM internal error"));
    }

    #[test]
    fn requested_libkrun_that_cannot_boot_is_an_error_with_the_reason() {
        let e = decide(EngineChoice::Libkrun, &bad, &ok, Ok(())).unwrap_err();
        assert!(matches!(e, SelectError::LibkrunUnusable { .. }));
        assert!(e.to_string().contains("KVM internal error"));
        assert!(e.to_string().contains("--engine qemu"));
    }

    #[test]
    fn no_qemu_and_no_libkrun_is_an_error() {
        let e = decide(EngineChoice::Auto, &bad, &bad, Err(EngineMissing::Qemu)).unwrap_err();
        assert_eq!(e, SelectError::QemuMissing(EngineMissing::Qemu));
        assert!(e.to_string().contains("apt-get install qemu-system-x86"));
    }

    #[test]
    fn requested_qemu_never_probes_libkrun() {
        let panics = || -> ProbeResult { panic!("libkrun probed") };
        let s = decide(EngineChoice::Qemu, &panics, &bad, Ok(())).unwrap();
        assert_eq!(s.accel, Accel::Tcg);
    }
}
