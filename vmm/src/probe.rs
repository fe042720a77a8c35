//! Boot probes: can this engine boot our guest here, and how fast?
//!
//! A probe boots the tiny image with the placeholder init (kernel and
//! engine, no agent handshake) to the ready marker within a deadline (a
//! crawl counts as failure) while holding the net and agent sockets open
//! like the real launcher does. Results are cached per host kernel release,
//! engine, accelerator, engine version and guest kernel in
//! `<cache>/probes.json`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{Accel, Engine, EngineKind};
use crate::krun::KrunEngine;
use crate::qemu::QemuEngine;
use crate::spec::MacAddr;
use crate::{VmSpec, VmmError};

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// Why it failed, or what booted.
    pub reason: String,
    /// Spawn to marker, when it booted.
    pub boot_ms: Option<u64>,
}

impl ProbeResult {
    fn fail(reason: impl Into<String>) -> Self {
        ProbeResult {
            ok: false,
            reason: reason.into(),
            boot_ms: None,
        }
    }
}

/// How long a probe waits for the marker. TCG gets longer: it is the last
/// resort and shared CI machines are slow; KVM that needs longer is broken.
pub fn probe_deadline(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(10),
        Accel::Tcg => Duration::from_secs(30),
    }
}

/// Why `/dev/kvm` cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist (no hardware virtualization exposed)")]
    Missing,
    #[error("/dev/kvm: {0} (add yourself to the kvm group)")]
    Denied(Arc<std::io::Error>),
}

/// Whether /dev/kvm can be opened read-write by us.
pub fn kvm_accessible() -> Result<(), KvmError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KvmError::Missing),
        Err(e) => Err(KvmError::Denied(Arc::new(e))),
    }
}

/// Why an engine is not installed (it has no version to ask).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineMissing {
    #[error("qemu-system-x86_64 not found; install it: apt-get install qemu-system-x86")]
    Qemu,
    #[error("{library} not found; install libkrun built with NET=1 BLK=1, or set BOTTLE_LIBKRUN")]
    Libkrun { library: String },
}

/// Engine version string used in the cache key, or why there is none.
pub fn engine_version(engine: EngineKind) -> Result<String, EngineMissing> {
    match engine {
        EngineKind::Qemu => QemuEngine::new(Accel::Tcg)
            .version()
            .map_err(|_| EngineMissing::Qemu),
        EngineKind::Libkrun => {
            crate::krun::library_version().ok_or_else(|| EngineMissing::Libkrun {
                library: crate::krun::library(),
            })
        }
    }
}

fn probes_file() -> PathBuf {
    crate::paths::cache_root().join("probes.json")
}

/// The cache key of a probe.
pub fn cache_key(
    engine: EngineKind,
    accel: Accel,
    engine_version: &str,
    guest_kernel: &Path,
) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        crate::sys::kernel_release(),
        engine,
        accel,
        engine_version,
        guest_kernel.display()
    )
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProbeCache {
    probes: BTreeMap<String, ProbeResult>,
}

fn load_cache(path: &Path) -> ProbeCache {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Reads one cached result.
pub fn cached(path: &Path, key: &str) -> Option<ProbeResult> {
    load_cache(path).probes.get(key).cloned()
}

/// Stores one result (read-modify-write, atomic rename).
pub fn store(path: &Path, key: &str, result: &ProbeResult) -> Result<(), VmmError> {
    let mut c = load_cache(path);
    c.probes.insert(key.to_string(), result.clone());
    let bytes = serde_json::to_vec_pretty(&c).map_err(|e| VmmError::ProbeCache(e.to_string()))?;
    crate::paths::write_atomic(path, &bytes).map_err(VmmError::io("write probe cache", path))
}

/// Probes `engine` with `accel`, using the cached result when there is one.
pub fn probe(engine: EngineKind, accel: Accel) -> ProbeResult {
    probe_with(engine, accel, true)
}

/// Probes without reading the cache (the result is still stored).
pub fn probe_fresh(engine: EngineKind, accel: Accel) -> ProbeResult {
    probe_with(engine, accel, false)
}

fn probe_with(engine: EngineKind, accel: Accel, use_cache: bool) -> ProbeResult {
    if engine == EngineKind::Libkrun && accel == Accel::Tcg {
        return ProbeResult::fail("libkrun runs only with KVM");
    }
    if accel == Accel::Kvm {
        if let Err(why) = kvm_accessible() {
            return ProbeResult::fail(why.to_string());
        }
    }
    let version = match engine_version(engine) {
        Ok(v) => v,
        Err(why) => return ProbeResult::fail(why.to_string()),
    };
    // Missing kernel or image are fixable by building them: never cached.
    let kernel = match crate::kernel::locate() {
        Ok(k) => k,
        Err(e) => return ProbeResult::fail(e.to_string()),
    };
    let initramfs = match crate::image::ensure_tiny(None) {
        Ok(i) => i,
        Err(e) => return ProbeResult::fail(format!("tiny image: {e}")),
    };
    let key = cache_key(engine, accel, &version, &kernel);
    let file = probes_file();
    if use_cache {
        if let Some(r) = cached(&file, &key) {
            return r;
        }
    }
    let boxed: Box<dyn Engine> = match engine {
        EngineKind::Qemu => Box::new(QemuEngine::new(accel)),
        EngineKind::Libkrun => Box::new(KrunEngine::new()),
    };
    let mut result = boot_once(boxed.as_ref(), &kernel, &initramfs, probe_deadline(accel));
    if !result.ok && accel == Accel::Kvm && result.reason.starts_with("guest did not print") {
        result
            .reason
            .push_str(" (KVM here is too slow or cannot run the guest; a crawl counts as failure)");
    }
    if let Err(e) = store(&file, &key, &result) {
        tracing::warn!("could not cache probe result: {e}");
    }
    result
}

/// Listens on a unix socket and holds every connection open until dropped.
#[derive(Debug)]
pub struct HoldingListener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HoldingListener {
    pub fn bind(path: &Path) -> Result<Self, VmmError> {
        let l = UnixListener::bind(path).map_err(VmmError::io("listen", path))?;
        l.set_nonblocking(true)
            .map_err(VmmError::io("listen", path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok((c, _)) = l.accept() {
                    let _ = c.set_nonblocking(true);
                    held.push(c);
                }
                // Drain so the peer never blocks on a full socket.
                for c in held.iter_mut() {
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(HoldingListener {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HoldingListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Boots `kernel` + `initramfs` once on `engine` to the marker.
pub fn boot_once(
    engine: &dyn Engine,
    kernel: &Path,
    initramfs: &Path,
    deadline: Duration,
) -> ProbeResult {
    let dir = match tempfile::Builder::new().prefix("bottle-probe-").tempdir() {
        Ok(d) => d,
        Err(e) => return ProbeResult::fail(format!("temp dir: {e}")),
    };
    let spec = VmSpec {
        cpus: 1,
        memory_mib: 256,
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
        root_disk: None,
        boot: bottle_contract::BootConfig::default(),
        cmdline_extra: vec!["bottle.probe=1".into()],
        net_socket: dir.path().join("net.sock"),
        agent_socket: dir.path().join("agent.sock"),
        console_log: dir.path().join("console.log"),
        guest_mac: MacAddr::local([0, 0, 0, 0, 1]),
    };
    let (_net, _agent) = match (
        HoldingListener::bind(&spec.net_socket),
        HoldingListener::bind(&spec.agent_socket),
    ) {
        (Ok(n), Ok(a)) => (n, a),
        (Err(e), _) | (_, Err(e)) => return ProbeResult::fail(e.to_string()),
    };
    let start = std::time::Instant::now();
    let mut vm = match engine.spawn(&spec) {
        Ok(vm) => vm,
        Err(e) => return ProbeResult::fail(e.to_string()),
    };
    let r = crate::marker::wait_for_marker_or_exit(&mut vm, &spec.console_log, deadline);
    let elapsed = start.elapsed();
    let _ = vm.kill();
    match r {
        Ok(_) => ProbeResult {
            ok: true,
            reason: format!("{} booted the guest to its ready marker", engine.name()),
            boot_ms: Some(elapsed.as_millis() as u64),
        },
        Err(e) => {
            let why = explain(&spec.console_log, vm.engine_log());
            ProbeResult::fail(match why {
                Some(w) => format!("{e}: {w}"),
                None => e.to_string(),
            })
        }
    }
}

/// The most telling line from the engine's log or the console.
fn explain(console: &Path, engine_log: &Path) -> Option<String> {
    let log = std::fs::read_to_string(engine_log).unwrap_or_default();
    if log.contains("KVM_EXIT_INTERNAL_ERROR") || log.contains("internal error") {
        return Some("KVM internal error: this host's KVM cannot run the guest (nested/software hypervisor?)".into());
    }
    let last = |s: &str| {
        s.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.contains("module ui-ui-"))
            .map(String::from)
    };
    last(&log).or_else(|| {
        last(&std::fs::read_to_string(console).unwrap_or_default()).map(|l| format!("console: {l}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_cache_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("probes.json");
        assert!(cached(&f, "k").is_none());
        let r = ProbeResult {
            ok: true,
            reason: "booted".into(),
            boot_ms: Some(700),
        };
        store(&f, "k", &r).unwrap();
        store(&f, "other", &ProbeResult::fail("no")).unwrap();
        assert_eq!(cached(&f, "k"), Some(r));
        assert!(!cached(&f, "other").unwrap().ok);
    }

    #[test]
    fn corrupt_probe_cache_is_treated_as_empty() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("probes.json");
        std::fs::write(&f, b"{not json").unwrap();
        assert!(cached(&f, "k").is_none());
        store(&f, "k", &ProbeResult::fail("x")).unwrap();
        assert!(cached(&f, "k").is_some());
    }

    #[test]
    fn cache_key_names_engine_accel_and_versions() {
        let k = cache_key(
            EngineKind::Qemu,
            Accel::Tcg,
            "7.2.22",
            Path::new("/c/vmlinux"),
        );
        assert!(k.contains("|qemu|tcg|7.2.22|/c/vmlinux"));
    }

    #[test]
    fn libkrun_without_kvm_is_refused_at_once() {
        let r = probe(EngineKind::Libkrun, Accel::Tcg);
        assert!(!r.ok);
        assert!(r.reason.contains("KVM"));
    }

    #[test]
    fn kvm_internal_error_is_explained() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("e.log");
        std::fs::write(&log, "error: KVM_EXIT_INTERNAL_ERROR suberror 1\n").unwrap();
        let w = explain(&d.path().join("none"), &log).unwrap();
        assert!(w.contains("KVM internal error"));
    }
}
