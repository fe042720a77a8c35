//! `bottle dashboard` driven for real: the binary in a tmux pane of 80x24
//! (`send-keys`, `capture-pane`) against a running Docker (runc) bottle
//! whose agent filed a supervise request. The list shows the bottle with
//! one pending request; the detail view shows it; `a` Enter approves it and
//! the agent's next request to that host passes. `t` hands the terminal to
//! the agent's session and Ctrl-P Ctrl-Q brings the dashboard back (outside
//! tmux); inside tmux it opens a window. `s` y stops it (the row says
//! `resumable`) and `R` y resumes it. The upstream is on the host's loopback
//! only.

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

fn guest(sb: &Sandbox, id: &str, port: u16, script: &str) -> String {
    let full = format!(
        r#"get() {{
  ( printf 'GET http://%s:{port}/hello HTTP/1.1\r\nHost: %s:{port}\r\nConnection: close\r\n\r\n' "$1" "$1"; sleep 2 ) | nc proxy.internal 8888 | tr -d '\r'
}}
mcp() {{
  ( printf 'POST /mcp HTTP/1.1\r\nHost: proxy.internal:9100\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${{#1}}" "$1"; sleep 2 ) | nc proxy.internal 9100 | tr -d '\r'
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

    /// The screen once it shows `want` (within 20 s).
    fn wait_for(&self, want: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if screen.contains(want) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{want:?} never showed; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Tmux {
    /// `bottle dashboard` in session `dash`, 80x24, `NO_COLOR`; `outside`:
    /// without `$TMUX`, as in a terminal of its own.
    fn start(&self, sb: &Sandbox, outside: bool) {
        let mut cmd = self.cmd();
        cmd.args(["new-session", "-d", "-s", "dash", "-x", "80", "-y", "24"])
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

#[test]
fn docker_the_dashboard_approves_attaches_stops_and_resumes_a_bottle() {
    let has_tmux = Command::new("tmux").arg("-V").output().is_ok();
    if !skip::require(has_tmux, "tmux is not installed (apt-get install tmux)") {
        return;
    }
    if !require_docker("runc") {
        return;
    }
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let id = sb.run_detached("--docker", &manifest(port));
    let _stop = StopOnDrop(&sb, id.clone());
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_egress","arguments":{"host":"blocked.localhost","reason":"the dashboard test needs it"}}}"#;
    let text = guest(
        &sb,
        &id,
        port,
        &format!("get blocked.localhost\nmcp '{call}'\n"),
    );
    assert!(text.contains("403") && text.contains("pending"), "{text}");

    let tmux = Tmux(sb.dir.path().join("tmux1"));
    tmux.start(&sb, true);

    let list = tmux.wait_for(&id);
    println!("--- list\n{list}");
    let line = list.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        line.contains("docker/runc") && line.contains("running"),
        "{list}"
    );
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[5], "1", "one pending request in REQ: {list}");

    tmux.keys(&["Enter"]);
    let detail = tmux.wait_for("Pending requests (1)");
    println!("--- detail\n{detail}");
    assert!(detail.contains("egress blocked.localhost"), "{detail}");
    assert!(
        detail.contains("deny"),
        "the refusal is in the recent decisions: {detail}"
    );

    tmux.keys(&["a"]);
    let prompt = tmux.wait_for("for how long?");
    println!("--- approve prompt\n{prompt}");
    tmux.keys(&["1", "0", "m", "Enter"]);
    let done = tmux.wait_for("ok: approved");
    println!("--- approved\n{done}");
    assert!(done.contains("the proxy allows it now"), "{done}");
    tmux.wait_for("Pending requests (0)");

    let after = guest(&sb, &id, port, "get blocked.localhost\n");
    assert!(after.contains("200 OK"), "{after}");

    // Outside tmux: the session has the terminal; Ctrl-P Ctrl-Q comes back
    // to the dashboard.
    tmux.keys(&["Escape"]);
    tmux.wait_for("Enter detail");
    tmux.keys(&["t"]);
    tmux.wait_for("Ctrl-P Ctrl-Q detaches");
    tmux.keys(&["echo dash-$((6*7))", "Enter"]);
    let session = tmux.wait_for("dash-42");
    println!("--- attached\n{session}");
    tmux.keys(&["C-p", "C-q"]);
    // The dashboard's own line, above the keys (not `bottle attach`'s).
    let back = tmux.wait_for(&format!("detached from {id}\n↑↓"));
    println!("--- detached\n{back}");
    assert_eq!(
        back.lines().nth(22),
        Some(format!("detached from {id}").as_str()),
        "the list is back with the result: {back}"
    );
    tmux.quit();

    // Inside tmux, `t` opens the session in a new window; detaching closes
    // it and the dashboard's window is back.
    // A tmux server of its own again: no race with the last one's exit.
    let tmux = Tmux(sb.dir.path().join("tmux2"));
    tmux.start(&sb, false);
    tmux.wait_for(&id);
    tmux.keys(&["t"]);
    tmux.wait_for("Ctrl-P Ctrl-Q detaches");
    tmux.keys(&["C-p", "C-q"]);
    let back = tmux.wait_for(&format!("{id} opened in a new tmux window"));
    println!("--- after a tmux window\n{back}");

    // Stop, then resume, each after y.
    tmux.keys(&["s"]);
    tmux.wait_for("[y/n]");
    tmux.keys(&["y"]);
    let stopped = tmux.wait_for(&format!("ok: stopped {id}"));
    println!("--- stopped\n{stopped}");
    let line = stopped.lines().find(|l| l.contains(&id)).unwrap();
    assert!(line.contains("resumable"), "{stopped}");
    tmux.keys(&["R"]);
    tmux.wait_for("[y/n]");
    tmux.keys(&["y"]);
    let start = Instant::now();
    let resumed = loop {
        let screen = tmux.capture();
        if screen.contains("ok: ") && screen.contains(" running ") {
            break screen;
        }
        assert!(
            !screen.contains("failed: ") && start.elapsed() < Duration::from_secs(60),
            "no resume: {screen}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    println!("--- resumed\n{resumed}");
    tmux.quit();
}
