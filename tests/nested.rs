//! The libkrun engine for real: `scripts/nested-runner` boots an L1 VM with
//! a working /dev/kvm (the host's KVM, or QEMU TCG emulating an AMD CPU
//! with SVM and nested paging) and runs `scripts/nested-suite.sh` inside
//! it: `bottle doctor`'s libkrun boot probe, the demo's view from inside,
//! the escape probes against a decoy namespace, `bottle exec` into a
//! detached bottle (with and without a terminal), `stop`, and kill -9 of the bundle, all on libkrun.
//!
//! Needs qemu-system-x86_64, busybox-static, the guest kernel, libkrun
//! built by scripts/build-libkrun.sh and apt's linux-image-cloud-amd64
//! (fetched once); `scripts/setup --debug` prepares all of them. Skips
//! with the reason otherwise (a failure with BOTTLE_TEST_STRICT=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bottle_test_harness::skip;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME")
        .join("bottle")
}

/// Whether `scripts/build-libkrun.sh` has a cached build (it takes minutes,
/// so the test does not start one: `scripts/setup --debug` does).
fn libkrun_built() -> bool {
    let dir = cache().join("libkrun");
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("libkrun.so.1").is_file())
    })
}

fn kernel_built() -> bool {
    std::fs::read_dir(cache().join("kernel")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("vmlinux").is_file())
    })
}

/// One L1 VM at a time: each takes 4 GiB and both cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the runner can work here (after a skip report when not).
fn runner_ready() -> bool {
    skip::require_root("the nested runner (netns, veth inside L1; apt-get download)")
        && skip::require_programs(&[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("cpio", "cpio"),
            ("busybox", "busybox-static"),
        ])
        && skip::require(
            kernel_built(),
            "no guest kernel (run scripts/build-kernel.sh or scripts/setup --debug)",
        )
        && skip::require(
            libkrun_built(),
            "libkrun is not built (run scripts/build-libkrun.sh or scripts/setup --debug)",
        )
}

#[test]
fn runner_streams_the_command_output_and_passes_its_exit_status() {
    let _g = serial();
    if !runner_ready() {
        return;
    }
    let out = Command::new(repo().join("scripts/nested-runner"))
        .args(["--", "sh", "-c", "echo \"hello from $(uname -r)\"; exit 3"])
        .current_dir(repo())
        .output()
        .expect("run scripts/nested-runner");
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stdout:\n{so}\nstderr:\n{se}");
    // The command ran in L1 (Debian's cloud kernel), not on the host.
    assert!(
        so.lines()
            .any(|l| l.starts_with("hello from ") && l.ends_with("-cloud-amd64")),
        "stdout:\n{so}\nstderr:\n{se}"
    );
    assert!(
        !so.lines()
            .any(|l| l.starts_with('[') || l.starts_with("NESTED-EXIT-STATUS")),
        "kernel messages and the status marker stay out of stdout:\n{so}"
    );
}

#[test]
fn libkrun_suite_passes_inside_the_nested_runner() {
    let _g = serial();
    if !runner_ready() {
        return;
    }
    let started = std::time::Instant::now();
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(repo().join("scripts/nested-runner"))
        .args(["--", "/nested-suite.sh"])
        .env("NESTED_LOG", log.path())
        .current_dir(repo())
        .output()
        .expect("run scripts/nested-runner");
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "nested runner: {:.1} s\n{so}",
        started.elapsed().as_secs_f64()
    );
    let context = || {
        let console = std::fs::read_to_string(log.path()).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        format!(
            "stdout:\n{so}\nstderr:\n{se}\nconsole tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    };
    assert!(
        !so.lines().any(|l| l.starts_with("FAIL ")),
        "a check failed inside L1:\n{}",
        context()
    );
    for check in [
        "kvm-device",
        "doctor-libkrun-probe",
        "demo-view",
        "demo-leaves-nothing",
        "escape-decoy-self-test",
        "escape-probes",
        "escape-decoy-untouched",
        "escape-loopback-untouched",
        "exec-detach",
        "exec-output-and-status",
        "exec-pty",
        "stop",
        "stop-leaves-nothing",
        "kill-9-takes-the-vm-down",
        "kill-9-listed-dead",
        "kill-9-cleanup-leaves-nothing",
    ] {
        assert!(
            so.lines().any(|l| l == format!("PASS {check}")),
            "no `PASS {check}`:\n{}",
            context()
        );
    }
    assert_eq!(out.status.code(), Some(0), "{}", context());
}

/// The root crate's VM suite itself (tests/vm.rs, strict), on libkrun in L1.
#[test]
fn vm_tests_pass_on_libkrun_inside_the_nested_runner() {
    let _g = serial();
    if !runner_ready() || !skip::require_programs(&[("python3", "python3")]) {
        return;
    }
    let started = std::time::Instant::now();
    let out = Command::new(repo().join("scripts/nested-vm-tests"))
        .current_dir(repo())
        .output()
        .expect("run scripts/nested-vm-tests");
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "nested vm tests: {:.1} s\n{so}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    // `nested-vm-tests: passed N of N; failed: none; retried: …; L1 boots:
    // K; not run: none` (a test that failed once in L1 and passed on its
    // second run is named there, with its first output above; a fresh L1
    // after one that locked up counts in the boots).
    let result = so
        .lines()
        .rfind(|l| l.starts_with("nested-vm-tests: passed "))
        .unwrap_or_else(|| panic!("no summary line:\n{so}\nstderr:\n{se}"));
    let counts: Vec<&str> = result
        .trim_start_matches("nested-vm-tests: passed ")
        .split(';')
        .next()
        .unwrap_or_default()
        .split(" of ")
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == counts[1] && counts[0] != "0",
        "{result}\n{so}"
    );
    assert!(
        result.contains("; failed: none;") && result.ends_with("; not run: none"),
        "{result}\n{so}"
    );
    for name in [
        "guest_sees_only_proxy_internal",
        "exec_on_a_terminal_gets_a_pty_and_follows_resizes",
        "kill_9_of_the_bundle_takes_the_vm_down_and_cleanup_removes_the_state",
    ] {
        assert!(
            so.contains(&format!("test {name} ... ok")),
            "{name} did not pass in L1:\n{so}"
        );
    }
}
