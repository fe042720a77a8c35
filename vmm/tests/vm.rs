//! VM tests with the real guest kernel: qemu under TCG here, libkrun where
//! its probe passes. One binary, run serially (2 cores): every test takes
//! the same lock.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bottle_test_harness::skip;
use bottle_vmm::probe::HoldingListener;
use bottle_vmm::proc_scan::group_has_live_members;
use bottle_vmm::{
    Accel, Engine, EngineKind, KrunEngine, MacAddr, QemuEngine, VmProcess, VmSpec, VmmError,
};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Generous: a loaded 2-core CI machine under TCG.
const DEADLINE: Duration = Duration::from_secs(60);

/// The engine under test: libkrun with `BOTTLE_ENGINE=libkrun` (CI on KVM
/// runners), else qemu under TCG (works everywhere).
fn engine() -> Box<dyn Engine> {
    if std::env::var("BOTTLE_ENGINE").as_deref() == Ok("libkrun") {
        Box::new(KrunEngine::with_helper(
            env!("CARGO_BIN_EXE_bottle-vmm-krun").into(),
            vec![],
        ))
    } else {
        Box::new(QemuEngine::new(Accel::Tcg))
    }
}

/// Kernel and tiny image (placeholder init, so the marker needs no agent),
/// or None after reporting a skip.
fn parts() -> Option<(PathBuf, PathBuf)> {
    if !skip::require_programs(&[("qemu-system-x86_64", "qemu-system-x86")]) {
        return None;
    }
    let kernel = bottle_vmm::kernel::locate();
    if !skip::require(
        kernel.is_ok(),
        "guest kernel not built: run scripts/build-kernel.sh",
    ) {
        return None;
    }
    if !skip::require(
        std::path::Path::new(bottle_vmm::image::BUSYBOX).is_file(),
        "apt-get install busybox-static",
    ) {
        return None;
    }
    let tiny = bottle_vmm::image::ensure_tiny(None).unwrap();
    Some((kernel.unwrap(), tiny))
}

struct Sockets {
    _dir: tempfile::TempDir,
    _net: HoldingListener,
    _agent: HoldingListener,
}

fn spec(kernel: PathBuf, initramfs: PathBuf, extra: &[&str]) -> (VmSpec, Sockets) {
    let dir = tempfile::tempdir().unwrap();
    let s = VmSpec {
        cpus: 1,
        memory_mib: 256,
        kernel,
        initramfs,
        root_disk: None,
        boot: bottle_contract::BootConfig::default(),
        cmdline_extra: extra.iter().map(|s| s.to_string()).collect(),
        net_socket: dir.path().join("net.sock"),
        agent_socket: dir.path().join("agent.sock"),
        console_log: dir.path().join("console.log"),
        guest_mac: MacAddr::local([1, 2, 3, 4, 5]),
    };
    let net = HoldingListener::bind(&s.net_socket).unwrap();
    let agent = HoldingListener::bind(&s.agent_socket).unwrap();
    (
        s,
        Sockets {
            _dir: dir,
            _net: net,
            _agent: agent,
        },
    )
}

fn console(s: &VmSpec) -> String {
    std::fs::read_to_string(&s.console_log).unwrap_or_default()
}

#[test]
fn tiny_image_boots_to_the_marker_and_kill_leaves_no_vm_process() {
    let _g = serial();
    let Some((k, i)) = parts() else { return };
    let (s, _socks) = spec(k, i, &[]);
    let mut vm = engine().spawn(&s).unwrap();
    let pid = vm.pid();
    let r = bottle_vmm::wait_for_marker_or_exit(&mut vm, &s.console_log, DEADLINE);
    assert!(r.is_ok(), "{r:?}\nconsole:\n{}", console(&s));
    assert!(
        vm.try_wait().unwrap().is_none(),
        "VM should still run after the marker"
    );
    vm.kill().unwrap();
    assert!(!group_has_live_members(pid), "qemu survived kill");
}

#[test]
fn dropping_the_vm_process_kills_the_vm() {
    let _g = serial();
    let Some((k, i)) = parts() else { return };
    let (s, _socks) = spec(k, i, &[]);
    let vm = engine().spawn(&s).unwrap();
    let pid = vm.pid();
    drop(vm);
    assert!(!group_has_live_members(pid), "qemu survived drop");
}

#[test]
fn guest_poweroff_ends_the_vm_process() {
    let _g = serial();
    let Some((k, i)) = parts() else { return };
    let (s, _socks) = spec(k, i, &["bottle.test=poweroff"]);
    let mut vm = engine().spawn(&s).unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = vm.try_wait().unwrap() {
            assert!(st.success(), "qemu exit {st}\n{}", console(&s));
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "VM did not power off\n{}",
            console(&s)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(console(&s).contains(bottle_vmm::READY_MARKER));
}

/// Counts spawns and remembers pids, to watch the watchdog.
#[derive(Debug)]
struct Counting {
    inner: Box<dyn Engine>,
    spawns: AtomicUsize,
    pids: Mutex<Vec<u32>>,
}

impl Engine for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn spawn(&self, spec: &VmSpec) -> Result<VmProcess, VmmError> {
        self.spawns.fetch_add(1, Ordering::SeqCst);
        let vm = self.inner.spawn(spec)?;
        self.pids.lock().unwrap().push(vm.pid());
        Ok(vm)
    }
}

#[test]
fn watchdog_kills_a_guest_that_never_gets_ready_and_retries_once() {
    let _g = serial();
    let Some((k, i)) = parts() else { return };
    // A shell as init: boots fine, never prints the marker.
    let (s, _socks) = spec(k, i, &["rdinit=/bin/sh"]);
    let e = Arc::new(Counting {
        inner: engine(),
        spawns: AtomicUsize::new(0),
        pids: Mutex::new(vec![]),
    });
    let r = bottle_vmm::boot_with_watchdog(e.as_ref(), &s, Duration::from_secs(3));
    assert!(matches!(r, Err(VmmError::BootTimeout(_))), "{r:?}");
    assert_eq!(e.spawns.load(Ordering::SeqCst), 2);
    for pid in e.pids.lock().unwrap().iter() {
        assert!(!group_has_live_members(*pid), "hung VM {pid} left running");
    }
}

#[test]
fn qemu_tcg_probe_boots_and_its_result_is_cached() {
    let _g = serial();
    if parts().is_none() {
        return;
    }
    let fresh = bottle_vmm::probe::probe_fresh(EngineKind::Qemu, Accel::Tcg);
    assert!(fresh.ok, "{}", fresh.reason);
    assert!(fresh.boot_ms.is_some());
    // Same boot_ms back means it came from the cache, not a second boot.
    assert_eq!(bottle_vmm::probe(EngineKind::Qemu, Accel::Tcg), fresh);
}

#[test]
fn libkrun_probe_reports_a_reason() {
    let _g = serial();
    let r = bottle_vmm::probe(EngineKind::Libkrun, Accel::Kvm);
    if std::env::var("BOTTLE_ENGINE").as_deref() == Ok("libkrun") {
        assert!(
            r.ok,
            "BOTTLE_ENGINE=libkrun but its probe failed: {}",
            r.reason
        );
    }
    if r.ok {
        assert!(r.boot_ms.is_some());
    } else {
        assert!(!r.reason.trim().is_empty());
        eprintln!("libkrun probe here: {}", r.reason);
    }
}

#[test]
fn krun_helper_without_libkrun_exits_with_the_reason() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let s = VmSpec {
        cpus: 1,
        memory_mib: 128,
        kernel: dir.path().join("vmlinux"),
        initramfs: dir.path().join("i.cpio"),
        root_disk: None,
        boot: bottle_contract::BootConfig::default(),
        cmdline_extra: vec![],
        net_socket: dir.path().join("net.sock"),
        agent_socket: dir.path().join("agent.sock"),
        console_log: dir.path().join("console.log"),
        guest_mac: MacAddr::local([0; 5]),
    };
    std::env::set_var("BOTTLE_LIBKRUN", "/nonexistent/libkrun.so.1");
    let engine =
        bottle_vmm::KrunEngine::with_helper(env!("CARGO_BIN_EXE_bottle-vmm-krun").into(), vec![]);
    let mut vm = engine.spawn(&s).unwrap();
    let st = vm.wait().unwrap();
    std::env::remove_var("BOTTLE_LIBKRUN");
    assert_eq!(st.code(), Some(2));
    let log = std::fs::read_to_string(vm.engine_log()).unwrap();
    assert!(
        log.contains("cannot load /nonexistent/libkrun.so.1"),
        "{log}"
    );
}

#[test]
fn debian_image_boots_read_only_with_node_and_git() {
    let _g = serial();
    let Some((k, i)) = parts() else { return };
    // Any build of the Debian image will do: the probe init boots its tree.
    let dir = bottle_vmm::image::ImageStore::open()
        .list()
        .unwrap_or_default()
        .into_iter()
        .find(|i| i.name == "debian")
        .map(|i| i.dir);
    let img = dir.map(|d| d.join("root.ext4")).filter(|p| p.is_file());
    if !skip::require(
        img.is_some(),
        "Debian image not built: scripts/build-image.sh debian (root, ~5 min, Debian mirror)",
    ) {
        return;
    }
    let img = img.unwrap();
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    let (mut s, _socks) = spec(k, i, &["bottle.test=tools"]);
    s.root_disk = Some(img.clone());
    s.memory_mib = 512;
    let mut vm = engine().spawn(&s).unwrap();
    let r = bottle_vmm::wait_for_marker_or_exit(&mut vm, &s.console_log, DEADLINE);
    vm.kill().unwrap();
    let con = console(&s);
    assert!(r.is_ok(), "{r:?}\n{con}");
    assert!(
        con.lines().any(|l| l.starts_with('v') && l.contains('.')),
        "no node version:\n{con}"
    );
    assert!(con.contains("git version"), "no git version:\n{con}");
    // The shared image is opened read-only: the guest's writes went to tmpfs.
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), before);
}

#[test]
fn doctor_reports_every_vm_fact() {
    let _g = serial();
    if parts().is_none() {
        return;
    }
    let checks = bottle_vmm::doctor(None);
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "kvm access",
        "qemu",
        "libkrun library",
        "guest kernel",
        "libkrun kernel",
        "tiny image (agent)",
        "boot probe libkrun/kvm",
        "boot probe qemu/kvm",
        "boot probe qemu/tcg",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
    let tcg = checks
        .iter()
        .find(|c| c.name == "boot probe qemu/tcg")
        .unwrap();
    assert!(tcg.ok, "{}", tcg.detail);
    assert!(checks
        .iter()
        .filter(|c| !c.ok)
        .all(|c| !c.detail.is_empty()));
}
