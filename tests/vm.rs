//! VM backend end to end: the real `bottle` binary boots the real guest
//! kernel and tiny image (qemu TCG here, libkrun where its probe passes) on
//! the real netstack, with the proxy behind `proxy.internal`.
//!
//! VM tests share 2 cores, so they run one at a time (a lock).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

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

fn run_in_vm(sb: &Sandbox, manifest: &str, script: &str) -> std::process::Output {
    let m = sb.manifest(manifest);
    sb.bottle()
        .args(["run", "--vm", "--yes", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/sh", "-c", script])
        .output()
        .expect("run bottle")
}

fn assert_nothing_left(sb: &Sandbox) {
    assert!(
        sb.state_entries().is_empty(),
        "state left behind: {:?}",
        sb.state_entries()
    );
    let state = sb.state_dir().display().to_string();
    let left = processes_matching(&state);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn exec_passes_stdout_stderr_and_exit_code_through() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let out = run_in_vm(
        &sb,
        TINY,
        "echo to-stdout; echo to-stderr >&2; id -u; exit 7",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(7), "stdout:\n{so}\nstderr:\n{se}");
    assert!(so.contains("to-stdout"), "{so}");
    assert!(so.contains("\n1000\n"), "the agent runs as uid 1000: {so}");
    assert!(se.contains("to-stderr"), "{se}");
    assert!(!so.contains("to-stderr"));
    assert_nothing_left(&sb);
}

#[test]
fn guest_sees_only_proxy_internal() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let Some(tripwire) = escape::Tripwire::new() else {
        return;
    };
    let script = format!(
        "echo \"resolv: $(grep nameserver /etc/resolv.conf)\"\n\
         echo \"dns: $(nslookup -type=a proxy.internal 2>&1 | grep -A1 'Name:' | grep Address | head -n1)\"\n{}",
        escape::script(&tripwire)
    );
    let out = run_in_vm(&sb, TINY, &script);
    let so = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{so}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(so.contains("resolv: nameserver 10.0.2.2"), "{so}");
    assert!(so.contains("dns: Address: 10.0.2.2"), "{so}");
    escape::check(&so);
    tripwire.assert_untouched();
    assert_nothing_left(&sb);
}

/// A plain HTTP upstream on host loopback, answering every request with `body`.
fn http_upstream(body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
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

#[test]
fn allowed_upstream_on_host_loopback_answers_through_the_proxy() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let (port, upstream) = http_upstream("hello-from-upstream");
    let manifest = format!(
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
"#
    );
    let out = run_in_vm(
        &sb,
        &manifest,
        &format!("wget -q -O - http://localhost:{port}/ 2>&1"),
    );
    let so = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{so}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(so.contains("hello-from-upstream"), "{so}");
    drop(upstream);
    assert_nothing_left(&sb);
}

#[test]
fn workspace_is_copied_in_and_host_tree_is_never_written() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    std::fs::write(sb.cwd().join("README"), "host file\n").unwrap();
    std::fs::create_dir_all(sb.cwd().join(".git")).unwrap();
    std::fs::write(sb.cwd().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    let manifest = TINY.replace("copy_cwd = false", "copy_cwd = true");
    let out = run_in_vm(
        &sb,
        &manifest,
        "pwd; cat README; cat .git/HEAD; echo changed > README; cat README",
    );
    let so = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{so}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(
        so.starts_with("/workspace\nhost file\nref: refs/heads/main\nchanged"),
        "{so}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.cwd().join("README")).unwrap(),
        "host file\n"
    );
    assert_nothing_left(&sb);
}

#[test]
fn detached_bottle_is_listed_execs_and_stops_leaving_nothing() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let identity = sb.run_detached("--vm", TINY);
    let ls = stdout(&sb.run(&["ls"]));
    assert!(ls.starts_with(&format!("vm\t{identity}\ta\t")), "{ls}");
    assert!(ls.contains("\trunning\t"), "{ls}");
    let exec = sb.run(&["exec", &identity, "--", "/bin/sh", "-c", "hostname; exit 4"]);
    assert_eq!(exec.status.code(), Some(4), "{}", stderr(&exec));
    assert_eq!(stdout(&exec).trim(), identity);
    // The proxy's decision is in the bottle's audit log, hash chain verified.
    let ask = "wget -q -O - http://unlisted.example/path 2>&1 | head -n1; wget -q -O - http://second.example/ >/dev/null 2>&1";
    let denied = sb.run(&["exec", &identity, "--", "/bin/sh", "-c", ask]);
    assert!(stdout(&denied).contains("403"), "{}", stdout(&denied));
    let logs = sb.run(&["logs", &identity]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let line = stdout(&logs)
        .lines()
        .find(|l| l.contains("unlisted.example"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no audit line for the request:\n{}", stdout(&logs)));
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["identity"], identity.as_str());
    // Tampering with a line shows (each later line carries its hash).
    let audit = sb.state_dir().join(&identity).join("audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    std::fs::write(
        &audit,
        text.replacen("unlisted.example", "harmless.example", 1),
    )
    .unwrap();
    let tampered = sb.run(&["logs", &identity]);
    assert_eq!(tampered.status.code(), Some(1), "{}", stdout(&tampered));
    assert!(
        stderr(&tampered).contains("failed verification"),
        "{}",
        stderr(&tampered)
    );
    let stop = sb.run(&["stop", &identity]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_nothing_left(&sb);
}

#[test]
fn kill_9_of_the_bundle_takes_the_vm_down_and_cleanup_removes_the_state() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let identity = sb.run_detached("--vm", TINY);
    let meta = sb.metadata(&identity);
    let bundle = meta["bundle_pid"].as_u64().unwrap();
    let vm = meta["vm_pid"].as_u64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{vm}")).exists());
    std::process::Command::new("kill")
        .args(["-9", &bundle.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{vm}/cmdline")).exists()
        && std::fs::read(format!("/proc/{vm}/cmdline"))
            .map(|c| !c.is_empty())
            .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the VM outlived its bundle"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ls = stdout(&sb.run(&["ls"]));
    assert!(ls.contains("\tdead\t"), "{ls}");
    let cleanup = sb.run(&["cleanup"]);
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    assert_nothing_left(&sb);
}

#[test]
fn two_bottles_at_once_have_their_own_identity_and_network() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let ids = [sb.run_detached("--vm", TINY), sb.run_detached("--vm", TINY)];
    assert_eq!(sb.state_entries().len(), 2);
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        let net = sb.state_dir().join(id).join("net.sock");
        assert!(net.exists(), "each bottle has its own netstack socket");
        let exec = sb.run(&[
            "exec",
            id,
            "--",
            "/bin/sh",
            "-c",
            "hostname; ls /proc/net/ >/dev/null",
        ]);
        assert_eq!(stdout(&exec).trim(), id.as_str(), "{}", stderr(&exec));
    }
    for id in &ids {
        assert!(sb.run(&["stop", id]).status.success());
    }
    assert_nothing_left(&sb);
}

#[test]
fn interrupting_bottle_run_tears_the_bottle_down() {
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(TINY);
    let child = sb
        .bottle()
        .args(["run", "--vm", "--yes", "--manifest"])
        .arg(&m)
        .args(["a", "--", "sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the agent's command runs, then interrupt as a Ctrl-C would.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let running = sb.state_entries().first().is_some_and(|id| {
            std::fs::read_to_string(sb.state_dir().join(id).join("metadata.json"))
                .is_ok_and(|m| m.contains("\"running\""))
        });
        if running {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the bottle never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("interrupted by SIGINT"),
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&sb);
}

#[test]
fn exec_on_a_terminal_gets_a_pty_and_follows_resizes() {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let identity = sb.run_detached("--vm", TINY);
    // A pseudo-terminal the `bottle exec` process gets as its stdio.
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let slave_path = ptsname_r(&master).unwrap();
    let stty = |rows: u16, cols: u16| {
        let ok = std::process::Command::new("stty")
            .args([
                "-F",
                &slave_path,
                "rows",
                &rows.to_string(),
                "cols",
                &cols.to_string(),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "stty on {slave_path}");
    };
    stty(24, 80);
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    let child = sb
        .bottle()
        .args([
            "exec",
            &identity,
            "--",
            "/bin/sh",
            "-c",
            "stty size; sleep 3; stty size; tty",
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut reader = master;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |seen: &mut String, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&chunk),
                Err(_) => panic!("`{what}` never appeared on the terminal:\n{seen}"),
            }
        }
    };
    wait_for(&mut seen, "24 80");
    // Resize the terminal as a window manager would, then tell bottle.
    stty(40, 100);
    std::process::Command::new("kill")
        .args(["-WINCH", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for(&mut seen, "40 100");
    wait_for(&mut seen, "/dev/pts/");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{seen}");
    assert!(sb.run(&["stop", &identity]).status.success());
    assert_nothing_left(&sb);
}

/// The channel key the bundle appended to the VM's initramfs (the data of the
/// `bottle-channel.key` entry in the last newc segment).
fn channel_key_of(sb: &Sandbox, identity: &str) -> String {
    let image = std::fs::read(sb.state_dir().join(identity).join("initramfs.img")).unwrap();
    let name = b"bottle-channel.key\0";
    let at = image
        .windows(name.len())
        .rposition(|w| w == name)
        .expect("key entry in the initramfs");
    let data = (at + name.len()).next_multiple_of(4);
    String::from_utf8(image[data..data + 64].to_vec()).unwrap()
}

#[test]
fn the_agent_user_cannot_take_the_channel_or_read_its_key() {
    use std::os::unix::fs::PermissionsExt;
    let _g = serial();
    if !require_vm() {
        return;
    }
    let sb = Sandbox::new();
    let identity = sb.run_detached("--vm", TINY);
    let image = sb.state_dir().join(&identity).join("initramfs.img");
    let mode = std::fs::metadata(&image).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = channel_key_of(&sb, &identity);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");

    let attempt = format!(
        "id -u; \
         ls /bottle-channel.key /run/bottle-channel.key 2>/dev/null; echo \"files=$?\"; \
         timeout 2 /sbin/bottle-guest serve --connect virtio-port:agent 2>&1 | head -n 3; \
         /sbin/bottle-guest dial virtio-port:agent; echo \"port=$?\"; \
         /sbin/bottle-guest dial vsock:1024; echo \"vsock=$?\"; \
         grep -rl {key} /proc/cmdline /etc /run /tmp /home 2>/dev/null; echo \"grep=$?\""
    );
    let out = sb.run(&["exec", &identity, "--", "/bin/sh", "-c", &attempt]);
    let so = stdout(&out);
    assert!(so.starts_with("1000\n"), "{so}\n{}", stderr(&out));
    assert!(so.contains("files=1"), "init left the key behind:\n{so}");
    assert!(
        !so.contains("BOTTLE-GUEST-READY"),
        "the agent user got the channel:\n{so}"
    );
    assert!(so.contains("port=1") && so.contains("vsock=1"), "{so}");
    assert!(
        so.contains("grep=1"),
        "the key is readable by the agent user (command line or a file):\n{so}"
    );

    // The real guest agent still answers.
    let exec = sb.run(&[
        "exec",
        &identity,
        "--",
        "/bin/sh",
        "-c",
        "echo $((6 * 7)); id -u",
    ]);
    assert_eq!(stdout(&exec), "42\n1000\n", "{}", stderr(&exec));
    assert!(sb.run(&["stop", &identity]).status.success());
    assert_nothing_left(&sb);
}
