//! Detached sessions on the VM backend: `bottle run --detach` returns while
//! the agent's command runs on, `bottle attach` joins that same session (its
//! earlier output replayed), and the exit status reaches whoever attaches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const TINY: &str = r#"
[bottles.t]
image = "tiny"
cpus = 1
memory_mib = 256
allow = ["allowed.localhost"]

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
"#;

#[test]
fn detach_returns_while_the_command_runs_and_attach_joins_that_session() {
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(TINY);
    let script = "echo started-$((40 + 2)); sleep 6; echo finished; exit 3";
    let out = sb
        .bottle()
        .env("BOTTLE_TIMING", "1")
        .args(["run", "--vm", "--yes", "--detach", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/sh", "-c", script])
        .output()
        .expect("run bottle");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let identity = stdout(&out).trim().to_string();
    let _stop = StopOnDrop(&sb, identity.clone());
    assert!(err.contains(&format!("{identity} runs detached")), "{err}");
    let timing = |step: &str| -> u64 {
        err.lines()
            .find_map(|l| l.strip_prefix(&format!("bottle: timing {step} ")))
            .and_then(|r| r.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("no timing for {step}:\n{err}"))
    };
    let after_provisioning = timing("command-started") - timing("provisioned");
    assert!(
        after_provisioning < 1000,
        "run --detach took {after_provisioning} ms after provisioning to return"
    );

    // The command still runs in the guest, owned by the bottle.
    let ps = sb.run(&[
        "exec",
        &identity,
        "--",
        "/bin/sh",
        "-c",
        "ps | grep -q '[s]leep 6' && echo running",
    ]);
    assert_eq!(stdout(&ps).trim(), "running", "{}", stderr(&ps));

    // Attach: the earlier output is replayed, the rest streams, the exit
    // status is the command's.
    let started = Instant::now();
    let attach = sb.run(&["attach", &identity]);
    let text = stdout(&attach);
    assert!(
        text.contains("started-42"),
        "replayed output missing:\n{text}"
    );
    assert!(text.contains("finished"), "live output missing:\n{text}");
    assert_eq!(attach.status.code(), Some(3), "{}", stderr(&attach));
    assert!(started.elapsed() < Duration::from_secs(60));

    // After the end: attach says so and gives the same status; the
    // transcript holds the whole output; the bottle still runs.
    let again = sb.run(&["attach", &identity]);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already ended (exit 3)"),
        "{}",
        stderr(&again)
    );
    let transcript =
        std::fs::read_to_string(sb.state_dir().join(&identity).join("session.log")).unwrap();
    assert!(transcript.contains("started-42") && transcript.contains("finished"));
    let exec = sb.run(&["exec", &identity, "--", "/bin/true"]);
    assert!(exec.status.success(), "{}", stderr(&exec));

    let stop = sb.run(&["stop", &identity]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(sb.state_entries().is_empty(), "{:?}", sb.state_entries());
    let state = sb.state_dir().display().to_string();
    assert!(processes_matching(&state).is_empty());
}

#[test]
fn stop_while_detached_ends_the_session_holder_too() {
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(TINY);
    let out = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--detach", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/sh", "-c", "sleep 600"])
        .output()
        .expect("run bottle");
    assert!(out.status.success(), "{}", stderr(&out));
    let identity = stdout(&out).trim().to_string();
    let _stop = StopOnDrop(&sb, identity.clone());
    let holder = processes_matching("__session");
    let state = sb.state_dir().display().to_string();
    assert!(
        !processes_matching(&format!("{state}/{identity}")).is_empty(),
        "no session holder for {identity}"
    );
    let stop = sb.run(&["stop", &identity]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(
        processes_matching(&state).is_empty(),
        "left behind: {:?} (holders before: {holder:?})",
        processes_matching(&state)
    );
    // Attaching to a stopped bottle is a clear error.
    let attach = sb.run(&["attach", &identity]);
    assert_eq!(attach.status.code(), Some(1));
    assert!(stderr(&attach).contains(&identity), "{}", stderr(&attach));
}

/// The first-run regression (issue 12): `bottle doctor` builds its probe
/// image (placeholder init, no agent) in the image store; `bottle run --vm
/// demo` afterwards must still boot the tiny image with the guest agent.
#[test]
fn doctor_then_run_demo_in_a_fresh_cache_shows_the_view_from_inside() {
    if !require_vm() {
        return;
    }
    let kernel = bottle_vmm::kernel::locate().expect("kernel (require_vm checked it)");
    let sb = Sandbox::new();
    let cache = sb.dir.path().join("cache");
    let bottle = |args: &[&str]| {
        sb.bottle()
            .env("XDG_CACHE_HOME", &cache)
            .env("BOTTLE_KERNEL", &kernel)
            .args(args)
            .output()
            .expect("run bottle")
    };
    let build = bottle(&["image", "build", "tiny"]);
    assert!(build.status.success(), "{}", stderr(&build));
    let doctor = bottle(&["doctor"]);
    let report = stdout(&doctor);
    assert!(report.contains("boot probe qemu/tcg"), "{report}");
    // The probe image is in the store under its own name, beside tiny.
    let ls = stdout(&bottle(&["image", "ls"]));
    assert!(ls.lines().any(|l| l.starts_with("tiny-probe\t")), "{ls}");
    assert!(
        ls.lines()
            .any(|l| l.starts_with("tiny\t") && l.contains("\tyes")),
        "{ls}"
    );
    for attempt in ["first", "second"] {
        let run = bottle(&["run", "--vm", "--yes", "demo"]);
        let out = stdout(&run);
        assert!(
            run.status.success(),
            "{attempt} run: {}\n{out}",
            stderr(&run)
        );
        for want in [
            "== bottle demo: the view from inside ==",
            "example.org: NXDOMAIN",
            "403",
            "refused (no route out)",
            "== done ==",
        ] {
            assert!(out.contains(want), "{attempt} run lacks `{want}`:\n{out}");
        }
    }
}

/// The bundle and its VM run in a cgroup of their own with memory and pids
/// limits (where the host's cgroups are writable), removed at stop.
#[test]
fn the_bundle_and_vm_run_in_their_own_limited_cgroup() {
    if !require_vm() {
        return;
    }
    let how = bottle::sys::cgroup::describe();
    if !skip::require(how.is_ok(), &format!("cgroups: {how:?}")) {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(TINY);
    let out = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--detach", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/sh", "-c", "sleep 600"])
        .output()
        .expect("run bottle");
    assert!(out.status.success(), "{}", stderr(&out));
    let identity = stdout(&out).trim().to_string();
    let _stop = StopOnDrop(&sb, identity.clone());
    let meta = sb.metadata(&identity);
    let dirs: Vec<std::path::PathBuf> = meta["cgroup"]["dirs"]
        .as_array()
        .unwrap_or_else(|| panic!("no cgroup in {meta}"))
        .iter()
        .map(|d| d.as_str().unwrap().into())
        .collect();
    let bundle = meta["bundle_pid"].as_u64().unwrap().to_string();
    let vm = meta["vm_pid"].as_u64().unwrap().to_string();
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == bundle),
            "bundle not in {dir:?}: {procs}"
        );
        assert!(procs.lines().any(|p| p == vm), "VM not in {dir:?}: {procs}");
        let limited = ["memory.max", "memory.limit_in_bytes", "pids.max"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .any(|v| v.trim() != "max" && v.trim().parse::<u64>().is_ok_and(|n| n < 1 << 40));
        assert!(limited, "no limit set in {dir:?}");
    }
    let stop = sb.run(&["stop", &identity]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    for dir in &dirs {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
}

/// The VM backend's teardown stops the VM, the bundle and their cgroup by
/// itself, and a second call succeeds; `bottle stop` afterwards still
/// removes the state.
#[test]
fn the_vm_backends_teardown_stops_everything_and_runs_twice() {
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let identity = sb.run_detached("--vm", TINY);
    let _stop = StopOnDrop(&sb, identity.clone());
    let meta = teardown_twice(&sb, &identity);
    let (bundle, vm) = (meta.bundle_pid.unwrap(), meta.vm_pid.unwrap());
    assert!(
        !bottle::sys::process::pid_matches(bundle, &identity),
        "bundle {bundle} still runs"
    );
    assert!(
        !bottle::sys::process::pid_matches(vm, &identity),
        "VM {vm} still runs"
    );
    for dir in meta.cgroup.iter().flat_map(|c| &c.dirs) {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
    let stop = sb.run(&["stop", &identity]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(sb.state_entries().is_empty(), "{:?}", sb.state_entries());
}

/// The audit log survives the bottle: after `bottle stop`, `bottle logs ID`
/// still prints the proxy's decisions, chain verified.
#[test]
fn logs_of_a_stopped_bottle_are_kept_and_verified() {
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(TINY);
    let out = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--manifest"])
        .arg(&m)
        .args([
            "a",
            "--",
            "/bin/sh",
            "-c",
            "timeout 5 nc -w 2 proxy.internal 22 </dev/null; \
             wget -q -O - http://kept-after-stop.example/x 2>&1 | head -n1; hostname",
        ])
        .output()
        .expect("run bottle");
    assert!(out.status.success(), "{}", stderr(&out));
    let identity = stdout(&out)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(sb.state_entries().is_empty(), "{:?}", sb.state_entries());
    let logs = sb.run(&["logs", &identity]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert!(
        stdout(&logs).contains("kept-after-stop.example"),
        "{}",
        stdout(&logs)
    );
    // The netstack's refusals are summarised in the same chain (at stop).
    let summary = stdout(&logs)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["kind"] == "netstack")
        .unwrap_or_else(|| panic!("no netstack summary:\n{}", stdout(&logs)));
    assert!(
        summary["refused"]["tcp-closed-port"].as_u64() >= Some(1),
        "{summary}"
    );
    // The head kept at stop catches a tail cut afterwards.
    let audit = sb
        .state_dir()
        .join("logs")
        .join(&identity)
        .join("audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    let n = text.lines().count();
    let cut: String = text.lines().take(n - 1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&audit, cut).unwrap();
    let cut = sb.run(&["logs", &identity]);
    assert_eq!(cut.status.code(), Some(1), "{}", stdout(&cut));
    assert!(stderr(&cut).contains("was cut"), "{}", stderr(&cut));
    let unknown = sb.run(&["logs", "a-zzzzz"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no kept logs"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn on_the_vm_cp_in_is_the_agents_and_resume_brings_back_the_kept_workspace() {
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    std::fs::write(sb.cwd().join("notes.txt"), "v1\n").unwrap();
    let manifest = TINY.replace("copy_cwd = false", "copy_cwd = true").replace(
        "command = [\"/bin/true\"]",
        "command = [\"/bin/sleep\", \"600\"]",
    );
    let id = sb.run_detached("--vm", &manifest);
    let _stop = StopOnDrop(&sb, id.clone());
    let hello = sb.dir.path().join("hello.txt");
    std::fs::write(&hello, "in\n").unwrap();
    let cp = sb.run(&["cp", hello.to_str().unwrap(), &format!("{id}:/workspace/")]);
    assert!(cp.status.success(), "{}", stderr(&cp));
    let owner = sb.run(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "stat -c %u /workspace/hello.txt; echo v2 >> /workspace/notes.txt",
    ]);
    assert_eq!(stdout(&owner).trim(), "1000", "{}", stderr(&owner));

    let stop = sb.run(&["stop", &id]);
    assert!(
        stderr(&stop).contains("kept the workspace"),
        "{}",
        stderr(&stop)
    );
    let resumed = sb.run(&["resume", &id, "--yes", "--detach"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let seen = sb.run(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "cat /workspace/notes.txt /workspace/hello.txt",
    ]);
    assert_eq!(stdout(&seen), "v1\nv2\nin\n", "{}", stderr(&seen));
}
