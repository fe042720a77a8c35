//! `bottle dashboard` driven for real: the binary in a tmux pane of 80x24
//! (`send-keys`, `capture-pane`) next to a VM bottle (qemu) started by the
//! CLI and a Docker (runc) bottle the dashboard launches itself (`n`: agent,
//! backend, plan, `y`). The list shows both with their CPU and memory; the
//! VM's agent files a supervise request, the detail view shows it, `a`
//! Enter approves it and the agent's next request to that host passes; `A`
//! and `D` change the effective policy, which the detail view shows. `t`
//! hands the terminal to the agent's session and Ctrl-P Ctrl-Q brings the
//! dashboard back (outside tmux); inside tmux it opens a window. `s` y
//! stops the Docker bottle (the row says `resumable`) and `R` y resumes it.
//! Every step waits for the screen it expects, never for a fixed time. The
//! upstream is on the host's loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bottle_test_harness::tls::Upstream;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn manifest(port: u16) -> String {
    format!(
        r#"
[bottles.t]
image = "tiny"
allow = ["localhost"]
allow_ports = [{port}]
allow_ips = ["127.0.0.1"]
resolve = {{ "blocked.localhost" = "127.0.0.1:{port}" }}
supervise = true

[bottles.t.docker]
runtime = "runc"

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/sh"]
"#
    )
}

/// Run `script` in the bottle with two shell functions: `get HOST` (a GET
/// through the proxy, as its environment says; prints the status line) and
/// `mcp JSON` (one JSON-RPC POST to supervise). busybox wget returns when
/// the answer is complete: no fixed wait for it (nc needed one).
fn guest(sb: &Sandbox, id: &str, port: u16, script: &str) -> String {
    let full = format!(
        r#"get() {{
  wget -S -O - "http://$1:{port}/hello" 2>&1
}}
mcp() {{
  wget -Y off -q -O - --header 'Content-Type: application/json' --header 'Accept: application/json, text/event-stream' --header 'MCP-Protocol-Version: 2025-06-18' --post-data "$1" http://proxy.internal:9100/mcp 2>&1
}}
{script}"#
    );
    let out = sb.run(&["exec", id, "--", "/bin/sh", "-c", &full]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// A tmux server of its own (its socket in the sandbox), killed at the end.
struct Tmux(std::path::PathBuf);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.0);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "dash"])
            .args(keys)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "dash"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen once it shows `want` (within 60 s).
    fn wait_for(&self, want: &str) -> String {
        self.wait_until(want, |s| s.contains(want))
    }

    /// The screen once `ok` holds for it (within 60 s: a resume took 11 s
    /// with both cores busy); `what` names it.
    fn wait_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if ok(&screen) {
                println!("({what}: {:?})", start.elapsed());
                return screen;
            }
            assert!(
                !screen.contains("failed: ") && start.elapsed() < Duration::from_secs(60),
                "{what:?} never showed; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The list's line of bottle `id` once `ok` holds for its columns.
    fn row_until(&self, id: &str, what: &str, ok: impl Fn(&[&str]) -> bool) -> String {
        self.wait_until(what, |s| {
            s.lines()
                .find(|l| l.starts_with(id))
                .is_some_and(|l| ok(&l.split_whitespace().collect::<Vec<_>>()))
        })
    }
}

impl Tmux {
    /// `bottle --manifest M dashboard` in session `dash`, 80x24, `NO_COLOR`,
    /// in the sandbox's cwd; `outside`: without `$TMUX`, as in a terminal of
    /// its own.
    fn start(&self, sb: &Sandbox, manifest: &std::path::Path, outside: bool) {
        let mut cmd = self.cmd();
        cmd.args(["new-session", "-d", "-s", "dash", "-x", "80", "-y", "24"])
            .arg("-c")
            .arg(sb.cwd())
            .arg("-e")
            .arg(format!("BOTTLE_STATE_DIR={}", sb.state_dir().display()))
            .arg("-e")
            .arg(format!(
                "XDG_CONFIG_HOME={}",
                sb.dir.path().join("config").display()
            ))
            .arg("-e")
            .arg("NO_COLOR=1");
        if outside {
            cmd.args(["env", "-u", "TMUX"]);
        }
        let ok = cmd
            .arg(env!("CARGO_BIN_EXE_bottle"))
            .arg("--manifest")
            .arg(manifest)
            .arg("dashboard")
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// `q`, and the session ends.
    fn quit(&self) {
        self.keys(&["q"]);
        let start = Instant::now();
        while self
            .cmd()
            .args(["has-session", "-t", "dash"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(start.elapsed() < Duration::from_secs(5), "q did not quit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn without_a_terminal_it_refuses_and_names_the_commands_for_scripts() {
    let sb = Sandbox::new();
    let out = sb.run(&["dashboard"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs a terminal"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("bottle ls --json"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "no escape codes on a pipe");
}

/// Stops every bottle of the sandbox when dropped.
struct StopAll<'a>(&'a Sandbox);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        for id in self.0.state_entries() {
            let _ = self.0.run(&["stop", &id]);
        }
    }
}

/// Print a screen for docs/dashboard.md.
fn show(what: &str, screen: &str) {
    println!("--- {what}\n{screen}");
}

#[test]
fn the_dashboard_launches_lists_approves_edits_attaches_stops_and_resumes() {
    let has_tmux = Command::new("tmux").arg("-V").output().is_ok();
    if !skip::require(has_tmux, "tmux is not installed (apt-get install tmux)") {
        return;
    }
    if !require_docker("runc") || !require_vm() {
        return;
    }
    let started = Instant::now();
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let text = manifest(port);
    let path = sb.manifest(&text);
    // Whatever the test started is stopped at its end, passing or not
    // (after the VM's thread is joined).
    let _all = StopAll(&sb);
    // The VM bottle boots (qemu) while the dashboard launches the other.
    let vm = std::thread::scope(|scope| {
        let vm = scope.spawn(|| sb.run_detached("--vm", &text));
        let tmux = Tmux(sb.dir.path().join("tmux1"));
        tmux.start(&sb, &path, true);
        let docker = launch_docker(&tmux);
        let vm = vm.join().unwrap();
        println!("launched and booted in {:?}", started.elapsed());
        the_rest(&sb, &tmux, port, &vm, &docker, &path);
        vm
    });
    assert!(!vm.is_empty());
    println!("wall time {:?}", started.elapsed());
}

/// `n`, the agent, `j` to docker (the VM is ready too, and first), the
/// plan, `y`: the identity it launched.
fn launch_docker(tmux: &Tmux) -> String {
    tmux.wait_for("↑↓ select");
    tmux.keys(&["n"]);
    let agents = tmux.wait_for("New agent (manifest:");
    show("new agent: the agents", &agents);
    assert!(agents.contains("> a"), "{agents}");
    tmux.keys(&["Enter"]);
    let backends = tmux.wait_for("> vm");
    show("new agent: the backends", &backends);
    assert!(backends.contains("  docker  ready"), "{backends}");
    tmux.keys(&["j", "Enter"]);
    let plan = tmux.wait_for("launch a on docker? [y/n]");
    show("new agent: the plan", &plan);
    assert!(plan.contains("agent a  backend docker"), "{plan}");
    assert!(
        plan.contains("bottle plan for agent `a` (identity picked at launch)"),
        "{plan}"
    );
    assert!(plan.contains("engine         : runc"), "{plan}");
    tmux.keys(&["y"]);
    let done = tmux.wait_for("ok: launched: ");
    show("launched", &done);
    let id = done
        .split("ok: launched: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let line = done.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        line.contains("docker/runc") && line.contains("running"),
        "{done}"
    );
    id
}

fn the_rest(
    sb: &Sandbox,
    tmux: &Tmux,
    port: u16,
    vm: &str,
    docker: &str,
    manifest: &std::path::Path,
) {
    // Both, running, with CPU and memory figures.
    let cols = |l: &[&str]| {
        l.get(3) == Some(&"running")
            && l.get(5).is_some_and(|c| c.ends_with('%'))
            && l.get(6).is_some_and(|m| m != &"-")
    };
    tmux.row_until(vm, "the VM's CPU and memory", cols);
    let list = tmux.row_until(docker, "the container's CPU and memory", cols);
    show("list", &list);
    assert!(list.contains("2 running, 2 in all"), "{list}");
    let vm_line = list.lines().find(|l| l.starts_with(vm)).unwrap();
    assert!(vm_line.contains("vm/qemu-"), "{list}");

    // The VM's agent is refused a host and asks for it.
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_egress","arguments":{"host":"blocked.localhost","reason":"the dashboard test needs it"}}}"#;
    let text = guest(
        sb,
        vm,
        port,
        &format!("get blocked.localhost\nmcp '{call}'\n"),
    );
    assert!(text.contains("403") && text.contains("pending"), "{text}");
    tmux.row_until(vm, "one pending request in REQ", |c| c.get(7) == Some(&"1"));

    // Select the VM (rows are by identity), open its detail view.
    let mut ids = [vm, docker];
    ids.sort();
    tmux.keys(&["k", "k"]);
    if ids[1] == vm {
        tmux.keys(&["j"]);
    }
    tmux.keys(&["Enter"]);
    let detail = tmux.wait_until("the VM's detail view with its policy", |s| {
        s.starts_with(vm) && s.contains("Pending requests (1)") && s.contains("  allow: localhost")
    });
    show("detail", &detail);
    assert!(detail.contains("egress blocked.localhost"), "{detail}");
    assert!(
        detail.contains("deny   GET blocked.localhost/hello"),
        "{detail}"
    );

    tmux.keys(&["a"]);
    let prompt = tmux.wait_for("for how long?");
    show("approve prompt", &prompt);
    tmux.keys(&["1", "0", "m", "Enter"]);
    let done = tmux.wait_until("approved, and the grant in the policy", |s| {
        s.contains("ok: approved")
            && s.contains("Pending requests (0)")
            && s.contains("grant: blocked.localhost")
    });
    show("approved", &done);
    assert!(done.contains("the proxy allows it now"), "{done}");
    let after = guest(sb, vm, port, "get blocked.localhost\n");
    assert!(after.contains("200 OK"), "{after}");

    // Policy edits: allow a host for an hour, then deny it.
    tmux.keys(&["A"]);
    tmux.wait_for("allow HOST[:PORT]: _");
    tmux.keys(&["other.localhost:8443", "Enter"]);
    let asked = tmux.wait_for("allow other.localhost:8443 for how long?");
    show("allow prompt", &asked);
    tmux.keys(&["1h", "Enter"]);
    let allowed = tmux.wait_until("the allowed host in the policy", |s| {
        s.contains("ok: ") && s.contains("grant: other.localhost:8443")
    });
    show("allowed", &allowed);
    tmux.keys(&["D"]);
    tmux.wait_for("deny HOST: _");
    tmux.keys(&["other.localhost", "Enter"]);
    let denied = tmux.wait_until("the denied host in the policy", |s| {
        s.contains("denied: other.localhost") && !s.contains("grant: other.localhost")
    });
    show("denied", &denied);
    // The CLI sees the same policy: one source of truth.
    let out = sb.run(&["policy", vm]);
    assert!(stdout(&out).contains("other.localhost"), "{}", stdout(&out));

    // Outside tmux: the session has the terminal; Ctrl-P Ctrl-Q comes back.
    tmux.keys(&["t"]);
    // Typed once the shell's prompt is up (it may flush earlier input).
    tmux.wait_until("the session's prompt", |s| {
        s.contains("Ctrl-P Ctrl-Q detaches") && s.lines().any(|l| l.trim_end().ends_with(" $"))
    });
    tmux.keys(&["echo dash-$((6*7))", "Enter"]);
    let session = tmux.wait_for("dash-42");
    show("attached", &session);
    tmux.keys(&["C-p", "C-q"]);
    // The dashboard's own line, above the keys (not `bottle attach`'s).
    let back = tmux.wait_for(&format!("detached from {vm}\n↑↓"));
    show("detached", &back);
    assert!(back.starts_with(vm), "the detail view is back: {back}");
    tmux.quit();

    // Inside tmux, `t` opens the session in a new window; detaching closes
    // it and the dashboard's window is back. A tmux server of its own
    // again: no race with the last one's exit.
    let tmux = Tmux(sb.dir.path().join("tmux2"));
    tmux.start(sb, manifest, false);
    tmux.wait_for(docker);
    tmux.keys(&["k", "k"]);
    if ids[1] == docker {
        tmux.keys(&["j"]);
    }
    tmux.keys(&["t"]);
    tmux.wait_for("Ctrl-P Ctrl-Q detaches");
    tmux.keys(&["C-p", "C-q"]);
    let back = tmux.wait_for(&format!("{docker} opened in a new tmux window"));
    show("after a tmux window", &back);

    // Stop, then resume, each after y; the row changes with the result.
    tmux.keys(&["s"]);
    let ask = tmux.wait_for("[y/n]");
    show("stop?", &ask);
    assert!(ask.contains(&format!("stop {docker}?")), "{ask}");
    tmux.keys(&["y"]);
    let stopped = tmux.wait_for(&format!("ok: stopped {docker}"));
    show("stopped", &stopped);
    let line = stopped.lines().find(|l| l.starts_with(docker)).unwrap();
    assert!(
        line.contains("resumable"),
        "the result comes with its row: {stopped}"
    );
    tmux.keys(&["R"]);
    tmux.wait_for("[y/n]");
    tmux.keys(&["y"]);
    let resumed = tmux.wait_until("resumed", |s| {
        s.contains("ok: ")
            && s.lines()
                .any(|l| l.starts_with(docker) && l.contains(" running "))
    });
    show("resumed", &resumed);
    tmux.quit();
}
