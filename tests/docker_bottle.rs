//! Docker backend end to end through the real `bottle` binary and a real
//! dockerd, under runc and under gVisor (runsc): the same escape suite as the
//! VM, exec and exit codes, an allowed upstream through the proxy, teardown,
//! and fail-closed when the bundle dies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn manifest(runtime: &str, extra: &str) -> String {
    format!(
        r#"
[bottles.t]
image = "tiny"
cpus = 1
memory_mib = 256
allow = ["allowed.localhost"]
{extra}

[bottles.t.docker]
runtime = "{runtime}"

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
"#
    )
}

fn run(sb: &Sandbox, manifest: &str, script: &str) -> std::process::Output {
    let m = sb.manifest(manifest);
    sb.bottle()
        .args(["run", "--docker", "--yes", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/sh", "-c", script])
        .output()
        .unwrap()
}

/// The Docker backend's teardown removes the container and stops the bundle
/// by itself, and a second call succeeds.
#[test]
fn the_docker_backends_teardown_removes_everything_and_runs_twice() {
    let _g = serial();
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let id = sb.run_detached("--docker", &manifest("runc", ""));
    let meta = teardown_twice(&sb, &id);
    let bundle = meta.bundle_pid.unwrap();
    assert!(
        !bottle::sys::process::pid_matches(bundle, &id),
        "bundle {bundle} still runs"
    );
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!names.contains(id.as_str()), "container left: {names}");
    let stop = sb.run(&["stop", &id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_nothing_left(&sb, &[id]);
}

fn assert_nothing_left(sb: &Sandbox, identities: &[String]) {
    assert!(
        sb.state_entries().is_empty(),
        "state left behind: {:?}",
        sb.state_entries()
    );
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout).into_owned();
    for id in identities {
        assert!(
            !names.contains(id.as_str()),
            "container of {id} left behind:\n{names}"
        );
    }
    let left = processes_matching(&sb.state_dir().display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn identity_from(stderr_text: &str) -> String {
    stderr_text
        .split("(identity ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("identity in the plan")
        .to_string()
}

fn escape_suite(runtime: &str) {
    let _g = serial();
    if !require_docker(runtime) {
        return;
    }
    let sb = Sandbox::new();
    let Some(tripwire) = escape::Tripwire::new() else {
        return;
    };
    let script = format!("echo \"interfaces: $(awk 'NR > 2 {{ sub(\":\", \"\", $1); printf \"%s \", $1 }}' /proc/net/dev)\"\necho \"uid: $(id -u)\"\n{}", escape::script(&tripwire));
    let out = run(&sb, &manifest(runtime, ""), &script);
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(se.contains(&format!("runtime {runtime}")), "{se}");
    assert!(
        so.contains("interfaces: lo \n"),
        "the only interface is lo:\n{so}"
    );
    assert!(so.contains("uid: 1000"), "{so}");
    escape::check(&so);
    tripwire.assert_untouched();
    assert_nothing_left(&sb, &[identity_from(&se)]);
}

#[test]
fn escape_suite_holds_under_runc() {
    escape_suite("runc");
}

#[test]
fn escape_suite_holds_under_runsc() {
    escape_suite("runsc");
}

#[test]
fn exec_codes_and_allowed_upstream_through_the_proxy() {
    let _g = serial();
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let upstream = bottle_test_harness::tls::Upstream::http();
    let extra = format!(
        "allow = [\"localhost\"]\nallow_ports = [{}]\nallow_ips = [\"127.0.0.1\"]",
        upstream.port()
    )
    .replace("allow = [\"allowed.localhost\"]", "");
    let m = manifest("runc", "").replace("allow = [\"allowed.localhost\"]", &extra);
    let out = run(
        &sb,
        &m,
        &format!(
            "wget -q -O - http://localhost:{}/via-proxy; echo to-stderr >&2; exit 5",
            upstream.port()
        ),
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(5), "stdout:\n{so}\nstderr:\n{se}");
    assert!(so.contains("GET /via-proxy"), "{so}");
    assert!(se.contains("to-stderr"));
    assert_nothing_left(&sb, &[identity_from(&se)]);
}

#[test]
fn killing_the_bundle_fails_closed_and_stop_removes_everything() {
    let _g = serial();
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let id = sb.run_detached("--docker", &manifest("runc", ""));
    let ls = stdout(&sb.run(&["ls"]));
    assert!(
        ls.starts_with(&format!("docker\t{id}\ta\trunning\t")),
        "{ls}"
    );
    let ask = "http_proxy=http://proxy.internal:8888 wget -q -O - http://unlisted.example/ 2>&1 | head -n1";
    let exec = sb.run(&["exec", &id, "--", "/bin/sh", "-c", ask]);
    assert!(
        stdout(&exec).contains("403"),
        "the proxy answers while the bundle lives: {}",
        stdout(&exec)
    );
    let meta = sb.metadata(&id);
    let bundle = meta["bundle_pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-9", &bundle.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The bundle is gone: ask through Docker itself, since bottle exec needs the bundle.
    let name = format!("bottle-{id}");
    let after = Command::new("docker")
        .args(["exec", &name, "/bin/sh", "-c", ask])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&after.stdout).contains("HTTP/"),
        "no answer without the bundle: {}",
        String::from_utf8_lossy(&after.stdout)
    );
    let stop = sb.run(&["stop", &id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_nothing_left(&sb, &[id]);
}

/// The host↔guest channel is the guest agent's alone: the agent user cannot
/// open the socket or read the key (whatever uid owns them on the host), a
/// root process in the container that forges a handshake is refused by the
/// host, and `bottle exec` still reaches the real guest agent.
fn channel_belongs_to_the_guest_agent(runtime: &str) {
    let _g = serial();
    if !require_docker(runtime) {
        return;
    }
    let sb = Sandbox::new();
    let id = sb.run_detached("--docker", &manifest(runtime, ""));
    let sock_dir = sb.state_dir().join(&id).join("sock");
    use std::os::unix::fs::PermissionsExt;
    for name in ["agent.sock", "agent.key"] {
        let mode = std::fs::metadata(sock_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0, "{name} must be mode 0000");
    }

    let attempt = "id -u; \
        timeout 2 /sbin/bottle-guest serve --connect unix:/run/bottle/agent.sock 2>&1 | head -n 3; \
        /sbin/bottle-guest dial unix:/run/bottle/agent.sock; echo \"dial=$?\"; \
        cat /run/bottle/agent.key >/dev/null 2>&1; echo \"key=$?\"; \
        chmod 666 /run/bottle/agent.sock 2>/dev/null; echo \"chmod=$?\"";
    let out = sb.run(&["exec", &id, "--", "/bin/sh", "-c", attempt]);
    let so = stdout(&out);
    assert!(
        so.starts_with("1000\n"),
        "the agent's commands run as uid 1000:\n{so}"
    );
    assert!(
        !so.contains("BOTTLE-GUEST-READY"),
        "the agent user got the channel:\n{so}"
    );
    assert!(so.contains("Permission denied"), "{so}");
    assert!(so.contains("dial=1"), "{so}");
    assert!(so.contains("key=1"), "the agent user read the key:\n{so}");
    assert!(!so.contains("chmod=0"), "{so}");

    // A root process in the container can open the socket; the host still
    // refuses it, with or without the key: the channel is taken.
    let name = format!("bottle-{id}");
    for key in [&[][..], &["--key-file", "/run/bottle/agent.key"][..]] {
        let forged = Command::new("docker")
            .args(["exec", "-u", "0", &name, "/sbin/bottle-guest", "dial"])
            .arg("unix:/run/bottle/agent.sock")
            .args(key)
            .output()
            .unwrap();
        let text = stdout(&forged);
        assert_eq!(forged.status.code(), Some(1), "{text}{}", stderr(&forged));
        assert!(
            text.contains("refused: a guest agent is already connected"),
            "{text}"
        );
    }

    // The real guest agent still answers, as before, and what it runs for
    // the agent has no capability (the container's are the guest agent's).
    let out = sb.run(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "echo $((6 * 7)); id -u; grep -E '^Cap(Prm|Eff|Inh)' /proc/self/status",
    ]);
    assert_eq!(
        stdout(&out),
        "42\n1000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n",
        "{}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(sb.state_dir().join(&id).join("bundle.log")).unwrap();
    assert!(log.contains("refused a guest connection"), "{log}");
    // ...and in the audit chain, verified.
    let audit = sb.run(&["logs", &id]);
    let audit = stdout(&audit);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"kind\":\"channel\"") && l.contains("refused a guest connection")),
        "{audit}"
    );
    let stop = sb.run(&["stop", &id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_nothing_left(&sb, &[id]);
}

#[test]
fn channel_belongs_to_the_guest_agent_under_runc() {
    channel_belongs_to_the_guest_agent("runc");
}

#[test]
fn channel_belongs_to_the_guest_agent_under_runsc() {
    channel_belongs_to_the_guest_agent("runsc");
}

/// The audit log outlives the bottle, and its head is kept with it: a log
/// whose last line was cut after the bottle stopped fails `bottle logs`.
#[test]
fn a_kept_audit_log_with_its_tail_cut_fails_verification() {
    let _g = serial();
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let out = run(
        &sb,
        &manifest("runc", ""),
        "for p in one two; do wget -q -O - http://unlisted.example/$p 2>&1 | head -n1; done",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(so.contains("403"), "{so}");
    let id = identity_from(&se);
    assert_nothing_left(&sb, std::slice::from_ref(&id));
    let logs = sb.run(&["logs", &id]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let lines: Vec<String> = stdout(&logs).lines().map(str::to_string).collect();
    assert!(
        lines.iter().any(|l| l.contains("/two")),
        "{}",
        stdout(&logs)
    );
    // The head the bottle recorded at stop names the last line.
    let kept = sb.state_dir().join("logs").join(&id);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(
        meta["audit_head"]["count"].as_u64(),
        Some(lines.len() as u64),
        "{meta}"
    );
    // Cut the last line: the chain itself still verifies, the head does not.
    let audit = kept.join("audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    let cut: String = text
        .lines()
        .take(lines.len() - 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&audit, cut).unwrap();
    let cut = sb.run(&["logs", &id]);
    assert_eq!(cut.status.code(), Some(1), "{}", stdout(&cut));
    assert!(
        stderr(&cut).contains("failed verification")
            && stderr(&cut).contains("was cut")
            && stderr(&cut).contains(&format!("recorded line {}", lines.len())),
        "{}",
        stderr(&cut)
    );
    assert!(
        stdout(&cut).is_empty(),
        "unverified lines printed: {}",
        stdout(&cut)
    );
}
