//! supervise end to end through the real binary in a Docker (runc) bottle
//! and in a VM:
//! from inside, a host the proxy refuses (the refusal names
//! `request_egress`), the agent files `request_egress` over MCP (JSON-RPC
//! over streamable HTTP at proxy.internal:9100), the operator runs `bottle
//! requests` and `bottle approve --for 3s`, the next request passes, and
//! after the grant expires it is refused again. A foreign `Host` is refused
//! with 403. Upstreams are on the host's loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bottle_test_harness::tls::{TestCa, Upstream};
use common::*;

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
command = ["/bin/true"]
"#
    )
}

/// Shell functions for the guest: `get URL_HOST PORT` through the proxy
/// (prints the status line and the body), `mcp HOST_HEADER JSON` one
/// JSON-RPC POST to supervise (prints the response).
fn functions(port: u16) -> String {
    format!(
        r#"get() {{
  ( printf 'GET http://%s:{port}/hello HTTP/1.1\r\nHost: %s:{port}\r\nConnection: close\r\n\r\n' "$1" "$1"; sleep 2 ) | nc proxy.internal 8888 | tr -d '\r'
}}
mcp() {{
  ( printf 'POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "$1" "${{#2}}" "$2"; sleep 2 ) | nc proxy.internal 9100 | tr -d '\r'
}}
"#
    )
}

fn exec(sb: &Sandbox, id: &str, port: u16, script: &str) -> String {
    let full = format!("{}{script}", functions(port));
    let out = sb.run(&["exec", id, "--", "/bin/sh", "-c", &full]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    text
}

/// The 12-character request id in an MCP answer (`"id":"…"`).
fn request_id(answer: &str) -> String {
    answer
        .match_indices("\"id\":\"")
        .map(|(i, m)| &answer[i + m.len()..])
        .find_map(|rest| {
            let id: String = rest.chars().take(12).collect();
            (id.len() == 12 && rest[12..].starts_with('"')).then_some(id)
        })
        .unwrap_or_else(|| panic!("no request id in:\n{answer}"))
}

#[test]
fn docker_an_approved_request_opens_a_host_until_it_expires() {
    if !require_docker("runc") {
        return;
    }
    scenario("--docker");
}

#[test]
fn vm_an_approved_request_opens_a_host_until_it_expires() {
    if !require_vm() {
        return;
    }
    scenario("--vm");
}

fn scenario(backend: &str) {
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let id = sb.run_detached(backend, &manifest(port));
    let _stop = StopOnDrop(&sb, id.clone());

    // Refused, and the refusal names the tool.
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_egress","arguments":{"host":"blocked.localhost","reason":"the e2e test needs it"}}}"#;
    let text = exec(
        &sb,
        &id,
        port,
        &format!(
            "echo '--- before'; get blocked.localhost\necho '--- call'; mcp proxy.internal:9100 '{call}'\necho '--- evil'; mcp evil.test:9100 '{call}'\n"
        ),
    );
    let before = text.split("--- call").next().unwrap();
    assert!(before.contains("403"), "{text}");
    assert!(
        before.contains("request_egress") && before.contains("http://proxy.internal:9100/mcp"),
        "{text}"
    );
    let answer = text
        .split("--- call")
        .nth(1)
        .unwrap()
        .split("--- evil")
        .next()
        .unwrap();
    assert!(
        answer.contains("200 OK") && answer.contains("pending"),
        "{text}"
    );
    let req = request_id(answer);
    let evil = text.split("--- evil").nth(1).unwrap();
    assert!(evil.contains("403"), "a foreign Host is refused: {text}");
    assert!(!evil.contains("pending"));

    // The operator sees it and approves it for 3 s.
    let out = sb.run(&["requests", &id]);
    assert!(
        stdout(&out).contains(&req) && stdout(&out).contains("pending"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = sb.run(&["approve", &id, &req, "--for", "3s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the proxy allows it now"),
        "{}",
        stdout(&out)
    );
    let status = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"request_status","arguments":{{"id":"{req}"}}}}}}"#
    );
    let text = exec(
        &sb,
        &id,
        port,
        &format!("echo '--- after'; get blocked.localhost\necho '--- status'; mcp proxy.internal:9100 '{status}'\n"),
    );
    let after = text.split("--- status").next().unwrap();
    assert!(after.contains("200 OK") && after.contains("GET"), "{text}");
    assert!(
        text.split("--- status")
            .nth(1)
            .unwrap()
            .contains("approved"),
        "{text}"
    );

    // Approving twice is refused; after expiry the host is refused again.
    let out = sb.run(&["approve", &id, &req]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already decided"), "{}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_secs(4));
    let text = exec(&sb, &id, port, "get blocked.localhost\n");
    assert!(
        text.contains("403") && text.contains("request_egress"),
        "{text}"
    );

    // The request and the decisions are in the verified audit log.
    let out = sb.run(&["logs", &id]);
    let log = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for decision in ["\"request\"", "\"allow\"", "\"expire\""] {
        assert!(
            log.lines()
                .any(|l| l.contains("\"kind\":\"supervise\"") && l.contains(decision)),
            "{decision} in\n{log}"
        );
    }
}

/// Claude Code (the `claude` image) as the client: provisioning registered
/// the server in `~/.claude.json` and `claude mcp list` connects to it.
#[test]
fn claude_code_lists_the_supervise_server_as_connected() {
    if !require_docker("runc") {
        return;
    }
    let list = stdout(&image_list());
    if !skip::require(
        list.lines()
            .any(|l| l.starts_with("claude\t") && l.contains("\tyes")),
        "the claude image is not built for this guest agent (bottle image build claude)",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let id = sb.run_detached(
        "--docker",
        r#"
[bottles.c]
image = "claude"
memory_mib = 2048
supervise = true

[bottles.c.docker]
runtime = "runc"

[agents.a]
bottle = "c"
copy_cwd = false
command = ["/bin/true"]
"#,
    );
    let _stop = StopOnDrop(&sb, id.clone());
    let out = sb.run(&["exec", &id, "--", "sh", "-c", "timeout 90 claude mcp list"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.lines().any(
            |l| l.contains("bottle: http://proxy.internal:9100/mcp") && l.contains("Connected")
        ),
        "{text}"
    );
}

/// An approval without an end survives `bottle stop` and `bottle resume`:
/// the resumed bottle's proxy allows the host again. Then `bottle policy`
/// denies and allows it directly.
#[test]
fn docker_a_grant_survives_stop_and_resume() {
    if !require_docker("runc") {
        return;
    }
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let id = sb.run_detached("--docker", &manifest(port));
    let _stop = StopOnDrop(&sb, id.clone());
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_egress","arguments":{"host":"blocked.localhost","reason":"resume test"}}}"#;
    let answer = exec(
        &sb,
        &id,
        port,
        &format!("mcp proxy.internal:9100 '{call}'\n"),
    );
    let req = request_id(&answer);
    let out = sb.run(&["approve", &id, &req]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(exec(&sb, &id, port, "get blocked.localhost\n").contains("200 OK"));

    let out = sb.run(&["stop", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.run(&["resume", &id, "--detach", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = exec(&sb, &id, port, "get blocked.localhost\n");
    assert!(
        text.contains("200 OK"),
        "the grant is applied again: {text}"
    );
}

/// The official MCP Python SDK (PyPI `mcp`, from `~/.cache/bottle/mcp-venv`,
/// copied in) as the client from inside a bottle of the `debian` image (on
/// Docker and on the VM): initialize, list tools, call each; `bottle approve` reaches its
/// `request_status`.
#[test]
fn docker_the_python_sdk_inside_the_bottle_files_and_sees_a_decision() {
    if !require_docker("runc") {
        return;
    }
    python_sdk_inside("--docker");
}

#[test]
fn vm_the_python_sdk_inside_the_bottle_files_and_sees_a_decision() {
    if !require_vm() {
        return;
    }
    python_sdk_inside("--vm");
}

fn python_sdk_inside(backend: &str) {
    let home = std::env::var("HOME").unwrap_or_default();
    let sdk =
        std::path::PathBuf::from(home).join(".cache/bottle/mcp-venv/lib/python3.11/site-packages");
    if !skip::require(
        sdk.join("mcp").is_dir(),
        "the MCP Python SDK is not in ~/.cache/bottle/mcp-venv (run scripts/install-deps.sh)",
    ) {
        return;
    }
    let list = stdout(&image_list());
    if !skip::require(
        list.lines()
            .any(|l| l.starts_with("debian\t") && l.contains("\tyes")),
        "the debian image is not built for this guest agent (bottle image build debian)",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let id = sb.run_detached(
        backend,
        r#"
[bottles.c]
image = "debian"
memory_mib = 2048
supervise = true

[bottles.c.docker]
runtime = "runc"

[agents.a]
bottle = "c"
copy_cwd = false
command = ["/bin/true"]
"#,
    );
    let _stop = StopOnDrop(&sb, id.clone());
    let client = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sidecars/tests/supervise/client.py"
    );
    for (from, to) in [
        (sdk.display().to_string(), "/home/agent/sdk"),
        (client.to_string(), "/home/agent/client.py"),
    ] {
        let out = sb.run(&["cp", &from, &format!("{id}:{to}")]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let run = |args: &str| -> serde_json::Value {
        let out = sb.run(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            &format!("PYTHONPATH=/home/agent/sdk python3 /home/agent/client.py http://proxy.internal:9100/mcp {args}"),
        ]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        serde_json::from_str(stdout(&out).trim()).expect("the client prints JSON")
    };
    let report = run("basic");
    assert_eq!(report["server"], "bottle");
    assert_eq!(report["tools"].as_array().map(Vec::len), Some(5));
    for tool in ["egress", "route", "capability"] {
        assert_eq!(report[tool]["data"]["status"], "pending", "{report}");
    }
    assert_eq!(report["policy"]["error"], false);
    let req = report["egress"]["data"]["id"].as_str().unwrap().to_string();
    let out = sb.run(&["approve", &id, &req, "--for", "10m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = run(&format!("status {req}"));
    assert_eq!(status["status"]["data"]["status"], "approved", "{status}");
}

/// `bottle image ls` (images are not per sandbox).
fn image_list() -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["image", "ls"])
        .output()
        .expect("bottle image ls")
}

/// A capability request closes the loop: the agent asks for a Debian
/// package, the operator approves, and `bottle resume` brings the agent back
/// in an image rebuilt with it, with its workspace.
#[test]
fn docker_an_approved_capability_rebuilds_the_image_on_resume() {
    if !require_docker("runc") {
        return;
    }
    let has_debian = stdout(&image_list())
        .lines()
        .any(|l| l.starts_with("debian\t"));
    if !skip::require(
        has_debian,
        "the debian image is not built (scripts/setup builds it)",
    ) {
        return;
    }
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let text = manifest(port)
        .replace("image = \"tiny\"", "image = \"debian\"")
        .replace("copy_cwd = false", "copy_cwd = true");
    std::fs::write(sb.cwd().join("notes.txt"), "kept\n").unwrap();
    // Dropped last, after the bottle that uses it has stopped.
    let _rm = ImageRmOnDrop("custom-t");
    let id = sb.run_detached("--docker", &text);
    let _stop = StopOnDrop(&sb, id.clone());
    let missing = sb.run(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "command -v jq || echo no-jq",
    ]);
    assert_eq!(stdout(&missing).trim(), "no-jq");
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_capability","arguments":{"name":"jq","reason":"parse JSON"}}}"#;
    // The debian image has curl, not nc.
    let asked = sb.run(&[
        "exec",
        &id,
        "--",
        "curl",
        "-sS",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
        "-H",
        "MCP-Protocol-Version: 2025-06-18",
        "--data",
        call,
        "http://proxy.internal:9100/mcp",
    ]);
    let answer = stdout(&asked);
    assert!(asked.status.success(), "{answer}{}", stderr(&asked));
    let req = request_id(&answer);
    let approved = sb.run(&["approve", &id, &req]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert!(
        stdout(&approved).contains("package `jq` joins the image"),
        "{}",
        stdout(&approved)
    );
    let out = sb.run(&["stop", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.run(&["resume", &id, "--detach", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("with the approved package(s) jq"),
        "{}",
        stderr(&out)
    );
    let after = sb.run(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "echo '{\"a\":7}' | jq .a; cat /workspace/notes.txt",
    ]);
    assert_eq!(stdout(&after), "7\nkept\n", "{}", stderr(&after));
}

/// The request id of a `request_egress` for `blocked.localhost` filed from inside.
fn file_egress(sb: &Sandbox, id: &str, port: u16) -> String {
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_egress","arguments":{"host":"blocked.localhost","reason":"save test"}}}"#;
    request_id(&exec(
        sb,
        id,
        port,
        &format!("mcp proxy.internal:9100 '{call}'\n"),
    ))
}

/// `bottle ARGS` on a terminal (a pty made by `script`), typing `input`;
/// its exit code and everything it printed there.
fn on_terminal(sb: &Sandbox, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let base = sb.bottle();
    let quote = |w: &str| format!("'{}'", w.replace('\'', "'\\''"));
    let mut line = quote(&base.get_program().to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut cmd = std::process::Command::new("script");
    if let Some(dir) = base.get_current_dir() {
        cmd.current_dir(dir);
    }
    cmd.args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().expect("run script(1) (util-linux)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// `bottle approve --save`: without a terminal and without `--yes` nothing
/// changes (file, request, proxy); on a terminal, answering `n` changes
/// nothing either, and `y` gives the manifest file the host (its comments
/// kept); it stays trusted, and the next `bottle run` of it, without
/// `bottle trust`, allows the host from the start.
#[test]
fn docker_approve_save_writes_the_manifest_and_it_stays_trusted() {
    if !require_docker("runc") {
        return;
    }
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let text = format!(
        "# the operator's notes\n{}",
        manifest(port).replace(
            "allow = [\"localhost\"]",
            "allow = [\"localhost\"] # loopback only"
        )
    );
    let id = sb.run_detached("--docker", &text);
    let stop = StopOnDrop(&sb, id.clone());
    let path = sb.dir.path().join("bottle.toml");
    let req = file_egress(&sb, &id, port);

    let out = sb.run(&["approve", &id, &req, "--save"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no terminal") && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(stdout(&sb.run(&["requests", &id])).contains("pending"));
    assert!(exec(&sb, &id, port, "get blocked.localhost\n").contains("403"));

    // On a terminal the diff is shown and the answer asked for: `n`
    // changes nothing, `y` writes the file and approves.
    let (code, shown) = on_terminal(&sb, &["approve", &id, &req, "--save"], "n\n");
    assert_ne!(code, Some(0), "{shown}");
    assert!(
        shown.contains("? [y/N]") && shown.contains("was not changed"),
        "{shown}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(stdout(&sb.run(&["requests", &id])).contains("pending"));
    let (code, shown) = on_terminal(&sb, &["approve", &id, &req, "--save"], "y\n");
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("+allow = [\"localhost\", \"blocked.localhost\"] # loopback only"),
        "the diff: {shown}"
    );
    assert!(shown.contains("stays trusted"), "{shown}");
    let saved = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        saved,
        text.replace(
            "allow = [\"localhost\"]",
            "allow = [\"localhost\", \"blocked.localhost\"]"
        )
    );
    assert!(exec(&sb, &id, port, "get blocked.localhost\n").contains("200 OK"));
    drop(stop);

    // A new bottle of the saved manifest, with no `bottle trust` since.
    let out = sb
        .bottle()
        .args(["run", "--docker", "--yes", "--detach", "--manifest"])
        .arg(&path)
        .arg("a")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let again = stderr(&out)
        .split("(identity ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_string();
    let _stop = StopOnDrop(&sb, again.clone());
    let text = exec(&sb, &again, port, "get blocked.localhost\n");
    assert!(text.contains("200 OK"), "allowed from the start: {text}");
}

/// `--save` on a bottle of the built-in manifest is refused and writes nothing.
#[test]
fn docker_save_on_the_builtin_manifest_is_refused() {
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let out = sb
        .bottle()
        .args([
            "run",
            "--docker",
            "--runtime",
            "runc",
            "--yes",
            "--detach",
            "demo",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stderr(&out)
        .split("(identity ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_string();
    let _stop = StopOnDrop(&sb, id.clone());
    for args in [
        vec!["policy", &id, "allow", "a.test", "--save", "--yes"],
        vec!["policy", &id, "deny", "example.com", "--save", "--yes"],
    ] {
        let out = sb.run(&args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("built-in manifest") && err.contains("--manifest"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_dir(sb.cwd()).unwrap().count(), 0);
}

/// `bottle policy ID route add` injects a credential, read on the host from
/// the CLI's environment, into HTTPS requests to a loopback upstream at
/// once; the guest never sees it (not in its environment, not in the
/// response, which echoes the request) and the state directory keeps only
/// where it comes from; `route rm` stops it.
#[test]
fn docker_route_add_injects_a_credential_the_guest_never_sees() {
    if !require_docker("runc") {
        return;
    }
    const SECRET: &str = "route-add-s3cr3t-7f1c9a";
    // curl in the guest (busybox's TLS and the proxy share no cipher suite).
    let list = stdout(&image_list());
    if !skip::require(
        list.lines()
            .any(|l| l.starts_with("debian\t") && l.contains("\tyes")),
        "the debian image is not built for this guest agent (bottle image build debian)",
    ) {
        return;
    }
    let sb = Sandbox::new();
    let ca = TestCa::new();
    let ca_path = ca.write_pem(sb.dir.path());
    let upstream = Upstream::https(&ca, &["localhost"]);
    let port = upstream.port();
    let text = format!(
        r#"
[bottles.t]
image = "debian"
allow = ["localhost"]
allow_ports = [{port}]
allow_ips = ["127.0.0.1"]
upstream_ca = ["{ca}"]
supervise = true

[bottles.t.docker]
runtime = "runc"

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
"#,
        ca = ca_path.display()
    );
    let id = sb.run_detached("--docker", &text);
    let _stop = StopOnDrop(&sb, id.clone());
    let fetch = |path: &str| -> String {
        let out = sb.run(&[
            "exec",
            &id,
            "--",
            "/bin/sh",
            "-c",
            &format!("curl -sS https://localhost:{port}/{path} 2>&1; env"),
        ]);
        stdout(&out) + &stderr(&out)
    };
    let header = |path: &str, guest: &str| -> Option<String> {
        upstream
            .seen()
            .iter()
            .find(|r| r.target == format!("/{path}"))
            .unwrap_or_else(|| panic!("the upstream saw no /{path}; the guest saw:\n{guest}"))
            .header("x-test-key")
            .map(str::to_string)
    };

    let seen = fetch("before");
    assert!(!seen.contains(SECRET), "{seen}");
    assert_eq!(header("before", &seen), None, "{seen}");

    let out = sb
        .bottle()
        .env("BOTTLE_TEST_ROUTE_TOKEN", SECRET)
        .args([
            "policy",
            &id,
            "route",
            "add",
            "localhost",
            "--header",
            "x-test-key",
            "--from-env",
            "BOTTLE_TEST_ROUTE_TOKEN",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = fetch("with-route");
    assert_eq!(
        header("with-route", &seen).as_deref(),
        Some(SECRET),
        "{seen}"
    );
    assert!(!seen.contains(SECRET), "the guest saw the token: {seen}");
    let shown = stdout(&sb.run(&["policy", &id]));
    assert!(
        shown.contains("localhost") && shown.contains("x-test-key") && !shown.contains(SECRET),
        "{shown}"
    );
    // The state directory names the source, never the value.
    let grants =
        std::fs::read_to_string(sb.state_dir().join(&id).join("policy-grants.json")).unwrap();
    assert!(grants.contains("BOTTLE_TEST_ROUTE_TOKEN") && !grants.contains(SECRET));
    for entry in walk(&sb.state_dir().join(&id)) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "{} holds the token",
            entry.display()
        );
    }

    let out = sb.run(&["policy", &id, "route", "rm", "localhost"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = fetch("after-rm");
    assert_eq!(header("after-rm", &seen), None, "{seen}");
    let out = sb.run(&["policy", &id, "route", "rm", "localhost"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no route"), "{}", stderr(&out));
}

/// Every regular file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// A stopped bottle's requests and decisions are kept: `bottle requests ID`
/// lists them after `bottle stop`, and after `bottle resume` too.
#[test]
fn docker_requests_survive_stop_and_resume() {
    if !require_docker("runc") {
        return;
    }
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let id = sb.run_detached("--docker", &manifest(port));
    let _stop = StopOnDrop(&sb, id.clone());
    let approved = file_egress(&sb, &id, port);
    let pending = file_egress(&sb, &id, port);
    let out = sb.run(&["approve", &id, &approved]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.run(&["stop", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = |what: &str| {
        let out = sb.run(&["requests", &id]);
        let text = stdout(&out);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        for (req, state) in [(&approved, "approved"), (&pending, "pending")] {
            assert!(
                text.lines()
                    .any(|l| l.contains(req.as_str()) && l.contains(state)),
                "{what}: {req} {state} in\n{text}"
            );
        }
    };
    listed("stopped");
    let out = sb.run(&["resume", &id, "--detach", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    listed("resumed");
}

/// `bottle policy ID deny HOST` refuses a host a wildcard allows, at once,
/// while the wildcard's other hosts still pass; `allow HOST` lifts it.
#[test]
fn docker_deny_refuses_a_host_under_an_allowed_wildcard() {
    if !require_docker("runc") {
        return;
    }
    let upstream = Upstream::http();
    let port = upstream.port();
    let sb = Sandbox::new();
    let text = manifest(port)
        .replace("allow = [\"localhost\"]", "allow = [\"*.localhost\"]")
        .replace(
            "resolve = { \"blocked.localhost\" = ",
            &format!(
                "resolve = {{ \"b.localhost\" = \"127.0.0.1:{port}\", \"blocked.localhost\" = "
            ),
        );
    let id = sb.run_detached("--docker", &text);
    let _stop = StopOnDrop(&sb, id.clone());
    let both = "echo '--- a'; get blocked.localhost; echo '--- b'; get b.localhost\n";
    let split = |text: &str| -> (String, String) {
        let rest = text.split("--- a").nth(1).unwrap();
        let mut parts = rest.split("--- b");
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let (a, b) = split(&exec(&sb, &id, port, both));
    assert!(a.contains("200 OK") && b.contains("200 OK"), "{a}\n{b}");
    let out = sb.run(&["policy", &id, "deny", "blocked.localhost"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = split(&exec(&sb, &id, port, both));
    assert!(a.contains("403") && a.contains("host-denied"), "{a}");
    assert!(b.contains("200 OK"), "the wildcard's other hosts pass: {b}");
    let out = sb.run(&["policy", &id, "allow", "blocked.localhost"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, _) = split(&exec(&sb, &id, port, both));
    assert!(a.contains("200 OK"), "{a}");
}
