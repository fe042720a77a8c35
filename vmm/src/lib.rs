//! bottle's VM backend: the [`Engine`] contract and its two engines
//! (libkrun, qemu microvm), boot probes and engine selection, the guest
//! kernel, and guest images.
#![deny(unsafe_code)]

mod doctor;
mod engine;
mod error;
pub mod image;
pub mod kernel;
pub mod krun;
mod marker;
mod paths;
pub mod probe;
pub mod proc_scan;
pub mod qemu;
mod secret;
pub mod select;
mod spec;
mod sys;

pub use doctor::{doctor, Check};
pub use engine::{Accel, Engine, EngineChoice, EngineKind, VmProcess};
pub use error::VmmError;
pub use krun::{krun_main, KrunEngine, KRUN_SUBCOMMAND};
pub use marker::{boot_with_watchdog, wait_for_marker, wait_for_marker_or_exit, Booted};
pub use paths::cache_root;
pub use probe::{probe, EngineMissing, KvmError, ProbeResult};
pub use qemu::QemuEngine;
pub use secret::initramfs_with_secret;
pub use select::{engine_for, select_engine, SelectError, Selection, TCG_WARNING};
pub use spec::{MacAddr, VmSpec, AGENT_PORT_NAME, AGENT_VSOCK_PORT, READY_MARKER};
pub use sys::KrunError;

use std::path::{Path, PathBuf};

/// Where an engine's own stderr goes: `<console_log>.engine`.
pub fn engine_log_path(console_log: &Path) -> PathBuf {
    let mut s = console_log.as_os_str().to_owned();
    s.push(".engine");
    PathBuf::from(s)
}
