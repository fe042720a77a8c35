//! The warm pool end to end (`bottle pool`, docs/pool.md): a pooled tiny
//! guest is claimed by `bottle run --vm`, gets the bottle's policy, name and
//! provisioning, is replaced by a fresh one, and nothing is left once the
//! pool is stopped and `bottle cleanup` ran.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A plain HTTP upstream on host loopback, answering every request with `body`.
fn http_upstream(body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            let Ok(mut s) = stream else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    (port, handle)
}

/// Stops the pool and sweeps when the test ends, passing or not.
struct PoolGuard<'a>(&'a Sandbox);

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["pool", "stop"]);
        let _ = self.0.run(&["cleanup"]);
    }
}

/// `bottle pool status --json`.
fn status(sb: &Sandbox) -> serde_json::Value {
    let out = sb.run(&["pool", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The qemu pid of the pool's one ready guest, waiting (up to 60 s) for it.
fn ready_guest(sb: &Sandbox) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(sb);
        if let Some(g) = s["guests"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["status"] == "ready"))
        {
            return g["vm_pid"].as_u64().expect("a ready guest has a qemu pid");
        }
        assert!(
            Instant::now() < deadline,
            "the pool was not refilled within 60 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pooled_guest_is_claimed_with_the_bottles_policy_and_name_then_replaced() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let _guard = PoolGuard(&sb);
    let (port, upstream) = http_upstream("hello-from-upstream");
    let manifest = sb.manifest(&format!(
        r#"
[bottles.t]
image = "tiny"
cpus = 1
memory_mib = 256
allow = ["localhost"]
allow_ports = [{port}]
allow_ips = ["127.0.0.1"]

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
"#
    ));
    let start = sb.run(&[
        "pool", "start", "--size", "1", "--cpus", "1", "--memory", "256",
    ]);
    assert!(start.status.success(), "{}", stderr(&start));
    let first_qemu = ready_guest(&sb);
    // The pooled guest is listed apart from bottles.
    let ls = stdout(&sb.run(&["ls"]));
    assert!(ls.starts_with("pool\tpool-"), "{ls}");
    assert!(ls.contains("\tready\t"), "{ls}");

    let script = format!(
        "hostname; \
         echo \"dns: $(nslookup -type=a proxy.internal 2>&1 | grep -A1 'Name:' | grep Address | head -n1)\"; \
         wget -q -O - http://localhost:{port}/ 2>&1; echo; \
         wget -q -O - http://unlisted.example/ 2>&1 | head -n1"
    );
    let out = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--manifest"])
        .arg(&manifest)
        .args(["a", "--", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(se.contains("warm: a pooled guest is ready"), "{se}");
    assert!(se.contains("warm: claimed pooled guest pool-"), "{se}");
    assert!(se.contains(&format!("(qemu pid {first_qemu})")), "{se}");
    let identity = se
        .split("(identity ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_string();
    // The bottle's name, not the pool's, not the guest's boot default.
    assert_eq!(so.lines().next(), Some(identity.as_str()), "{so}");
    assert!(so.contains("dns: Address: 10.0.2.2"), "{so}");
    // The bottle's policy: its allowed upstream answers, anything else is refused.
    assert!(so.contains("hello-from-upstream"), "{so}");
    assert!(so.contains("403"), "an unlisted host is refused: {so}");
    drop(upstream);
    // The claimed guest is gone with its bottle; its audit log names the bottle.
    assert!(
        !std::path::Path::new(&format!("/proc/{first_qemu}")).exists(),
        "the claimed guest's qemu outlived its bottle"
    );
    let logs = stdout(&sb.run(&["logs", &identity]));
    let line = logs
        .lines()
        .find(|l| l.contains("unlisted.example"))
        .unwrap_or_else(|| panic!("no audit line for the refusal:\n{logs}"));
    let record: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(record["identity"], identity.as_str());
    assert_eq!(record["decision"], "deny");

    // The pool was refilled with a fresh guest; the next bottle claims it.
    let second_qemu = ready_guest(&sb);
    assert_ne!(second_qemu, first_qemu);
    let out = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--manifest"])
        .arg(&manifest)
        .args(["a", "--", "/bin/sh", "-c", "hostname"])
        .output()
        .unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(se.contains(&format!("(qemu pid {second_qemu})")), "{se}");
    assert_ne!(so.trim(), identity, "a second bottle has its own name");

    // Stop and clean up: no qemu, no bundle, no pool state is left.
    let stop = sb.run(&["pool", "stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let cleanup = sb.run(&["cleanup"]);
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    let state = sb.state_dir().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_matching(&state).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = processes_matching(&state);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let pool_dir = sb.state_dir().join("pool");
    let entries: Vec<String> = std::fs::read_dir(&pool_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pool-") || n == "pool.json")
                .collect()
        })
        .unwrap_or_default();
    assert!(entries.is_empty(), "pool state left behind: {entries:?}");
    assert!(status(&sb).is_null());
}

/// `bottle run --vm --yes --manifest MANIFEST a -- /bin/true`, which must
/// succeed; its stderr.
fn run_true(sb: &Sandbox, manifest: &std::path::Path) -> String {
    let out = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--manifest"])
        .arg(manifest)
        .args(["a", "--", "/bin/true"])
        .output()
        .unwrap();
    let se = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{se}");
    se
}

#[test]
fn without_a_matching_pooled_guest_the_bottle_boots_cold_then_a_pool_of_its_shape_serves_it() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let _guard = PoolGuard(&sb);
    let manifest = sb.manifest(
        r#"
[bottles.t]
image = "tiny"
cpus = 1
memory_mib = 384

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
"#,
    );
    let start = sb.run(&[
        "pool", "start", "--size", "1", "--cpus", "1", "--memory", "256",
    ]);
    assert!(start.status.success(), "{}", stderr(&start));
    let pooled = ready_guest(&sb);
    let se = run_true(&sb, &manifest);
    assert!(
        se.contains("cold boot: this bottle needs 1 vCPU, 384 MiB (the pool's: 1 vCPU, 256 MiB)"),
        "{se}"
    );
    assert!(!se.contains("warm: claimed"), "{se}");
    // The pooled guest was not touched.
    assert_eq!(ready_guest(&sb), pooled);

    // A pool of the bottle's shape next to the first: the bottle claims
    // from it, and the first pool's guest is still not touched.
    let start = sb.run(&[
        "pool", "start", "--size", "1", "--cpus", "1", "--memory", "384",
    ]);
    assert!(start.status.success(), "{}", stderr(&start));
    let s = status(&sb);
    let pools = s["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "{s}");
    let ready_of = |mib: u64| -> u64 {
        let s = status(&sb);
        let pool = s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["shape"]["memory_mib"] == mib)
            .unwrap_or_else(|| panic!("no pool of {mib} MiB: {s}"))
            .clone();
        pool["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["status"] == "ready")
            .and_then(|g| g["vm_pid"].as_u64())
            .unwrap_or_else(|| panic!("no ready guest of {mib} MiB: {s}"))
    };
    let second = ready_of(384);
    let text = stdout(&sb.run(&["pool", "status"]));
    assert!(
        text.contains("1 vCPU, 256 MiB") && text.contains("1 vCPU, 384 MiB"),
        "{text}"
    );
    let se = run_true(&sb, &manifest);
    assert!(se.contains(&format!("(qemu pid {second})")), "{se}");
    assert_eq!(ready_of(256), pooled);
    let stop = stdout(&sb.run(&["pool", "stop"]));
    assert!(stop.contains("pooled guests removed"), "{stop}");
    assert!(status(&sb).is_null());
}

#[test]
fn a_pool_of_an_engine_that_cannot_run_here_is_refused_and_leaves_nothing() {
    let sb = Sandbox::new();
    let out = sb
        .bottle()
        .args(["pool", "start", "--engine", "libkrun"])
        .env("BOTTLE_LIBKRUN", "/nonexistent/libkrun.so.1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("libkrun was requested but cannot boot the guest here"),
        "{err}"
    );
    assert!(err.contains("--engine qemu"), "{err}");
    assert!(!sb.state_dir().join("pool").exists(), "{err}");
    let s = status(&sb);
    assert!(s["guests"].as_array().is_none_or(|g| g.is_empty()), "{s}");
}
