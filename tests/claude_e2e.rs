//! A real Claude Code session in a bottle, end to end: the `claude` image's
//! Claude Code CLI (npm `@anthropic-ai/claude-code`, the version pinned in
//! `vmm/src/image/debian.rs`) runs `claude -p` against a stand-in for the
//! Messages API on the host's loopback, reached under its real name
//! `api.anthropic.com` through the manifest's `resolve` pin and
//! `upstream_ca`. Nothing leaves the machine.
//!
//! The first model turn asks for `Bash` (`git status` and the workspace's
//! `.env`); Claude Code runs it inside the bottle and sends the result; the
//! upstream checks it holds the real `git status` and the planted key
//! redacted; the final answer streams to the terminal (the test sees its
//! first part before the upstream sends the rest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bottle_test_harness::anthropic::{FakeAnthropic, FIRST_PART, SECOND_PART};
use bottle_test_harness::tls::TestCa;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

/// The real key the host holds; the guest only ever sees a placeholder.
const REAL_KEY: &str = "sk-ant-api03-bottle-e2e-REAL-KEY-0123456789abcdef";
/// A key planted in the workspace's `.env`, redacted on its way to the model.
const PLANTED: &str = "AKIAZ7VRSQ5TJ2NXKQ4P";
const TOOL_COMMAND: &str = "git status; cat .env";

fn require_claude_image() -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["image", "ls"])
        .output()
        .expect("bottle image ls");
    let list = stdout(&out);
    skip::require(
        list.lines()
            .any(|l| l.starts_with("claude\t") && l.contains("\tyes")),
        &format!("the claude image is not built for this guest agent (scripts/setup builds it; bottle image build claude):\n{list}"),
    )
}

fn workspace(sb: &Sandbox) {
    let cwd = sb.cwd();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&cwd)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    std::fs::write(cwd.join("README.md"), "hello\n").unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "README.md"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "first",
    ]);
    std::fs::write(cwd.join("untracked-by-bottle.txt"), "new\n").unwrap();
    std::fs::write(cwd.join(".env"), format!("AWS_ACCESS_KEY_ID={PLANTED}\n")).unwrap();
}

/// A Claude Code skill directory named `bottle-e2e-skill`.
fn skill(dir: &std::path::Path) -> std::path::PathBuf {
    let skill = dir.join("bottle-e2e-skill");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "---\nname: bottle-e2e-skill\ndescription: A skill bottle copies in for its end-to-end test.\n---\nSay hello.\n",
    )
    .unwrap();
    skill
}

fn manifest(upstream: &FakeAnthropic, ca: &std::path::Path) -> String {
    format!(
        r#"
[bottles.c]
image = "claude"
memory_mib = 2048
allow = ["api.anthropic.com"]
allow_ips = ["127.0.0.1"]
resolve = {{ "api.anthropic.com" = "{addr}" }}
upstream_ca = ["{ca}"]
dlp = {{ action = "block", hosts = {{ "api.anthropic.com" = "redact" }} }}

[bottles.c.docker]
runtime = "runc"

[[bottles.c.routes]]
host = "api.anthropic.com"
header = "x-api-key"
token = {{ env = "BOTTLE_E2E_ANTHROPIC_KEY" }}

[agents.claude]
bottle = "c"
copy_cwd = true
prompt = "BOTTLE-PROMPT-MARKER: you work inside a bottle."
skills = ["{skill}"]
command = ["claude", "-p", "Show me the git status of this repository.", "--allowedTools", "Bash", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
"#,
        addr = upstream.addr(),
        ca = ca.display(),
        skill = skill(ca.parent().unwrap()).display(),
    )
}

fn session(backend: &str) {
    let sb = Sandbox::new();
    workspace(&sb);
    let ca = TestCa::new();
    let ca_path = ca.write_pem(sb.dir.path());
    let upstream = FakeAnthropic::start(&ca, TOOL_COMMAND);
    let m = sb.manifest(&manifest(&upstream, &ca_path));

    let mut child = sb
        .bottle()
        .env("BOTTLE_E2E_ANTHROPIC_KEY", REAL_KEY)
        .args(["run", backend, "--yes", "--manifest"])
        .arg(&m)
        .arg("claude")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bottle run");
    let err_reader = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err_reader), &mut s);
        s
    });
    // Read the terminal as it arrives: the first part must show before the
    // upstream sends the second.
    let mut out = String::new();
    let mut saw_first_at = None;
    let started = Instant::now();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if saw_first_at.is_none() && line.contains(FIRST_PART) {
            saw_first_at = Some(started.elapsed());
            assert!(
                !line.contains(SECOND_PART) && !out.contains(SECOND_PART),
                "the second part arrived with the first: nothing was streamed"
            );
            upstream.release();
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait().unwrap();
    let err = errors.join().unwrap();
    let seen = upstream.seen();
    let summary: Vec<String> = seen
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(
        status.success(),
        "claude failed ({status}):\n--- stdout\n{out}\n--- stderr\n{err}\n--- upstream saw\n{summary:#?}"
    );
    assert!(saw_first_at.is_some(), "no streamed first part:\n{out}");
    assert_eq!(
        upstream.released_by_test(),
        Some(true),
        "the test saw the first part only after the upstream timed out:\n{out}"
    );
    assert!(out.contains(SECOND_PART), "{out}");

    // The key: the real one upstream, never the placeholder; never the
    // planted secret, which arrived redacted.
    let messages: Vec<_> = seen
        .iter()
        .filter(|r| r.target.starts_with("/v1/messages"))
        .collect();
    assert!(!messages.is_empty(), "{summary:#?}");
    for r in &messages {
        assert_eq!(r.header("x-api-key"), Some(REAL_KEY), "{}", r.target);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(PLANTED), "the planted key reached the model");
    }
    let result = messages
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .find(|b| b.contains("tool_result"))
        .unwrap_or_else(|| panic!("no request carried the tool result: {summary:#?}"));
    assert!(
        result.contains("untracked-by-bottle.txt"),
        "the tool result is not the workspace's real git status:\n{result}"
    );
    assert!(
        result.contains("[secret redacted by bottle: aws-access-token]")
            || result.contains("[secret redacted by bottle: aws-access-key-id]"),
        "the planted key was not redacted in the tool result:\n{result}"
    );

    // The prompt is where Claude Code reads the user's memory, the skill
    // where it finds skills.
    assert!(
        messages
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("BOTTLE-PROMPT-MARKER")),
        "the prompt (~/.claude/CLAUDE.md) did not reach the model"
    );
    let init = out
        .lines()
        .find(|l| l.contains("\"subtype\":\"init\""))
        .unwrap_or_else(|| panic!("no init line:\n{out}"));
    assert!(
        init.contains("bottle-e2e-skill"),
        "the skill is not listed: {init}"
    );

    // Only api.anthropic.com was contacted (telemetry, error reporting and
    // auto-update are off): the audit log names no other host.
    let identity = err
        .split("(identity ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(str::to_string)
        .or_else(|| {
            err.lines()
                .find_map(|l| l.strip_prefix("bottle: "))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let logs = sb.run(&["logs", &identity]);
    let log = stdout(&logs);
    assert!(logs.status.success(), "logs {identity}: {}", stderr(&logs));
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(host) = v["host"].as_str().filter(|h| !h.is_empty()) {
            assert_eq!(
                host, "api.anthropic.com",
                "another host was contacted: {line}"
            );
        }
    }
    assert!(log.contains("\"decision\":\"redact\""), "{log}");
    eprintln!(
        "claude e2e on {backend}: first part after {:?}; {} requests: {summary:?}",
        saw_first_at.unwrap(),
        seen.len()
    );
}

#[test]
fn claude_code_session_in_a_docker_bottle() {
    if !require_docker("runc") || !require_claude_image() {
        return;
    }
    session("--docker");
}

#[test]
fn claude_code_session_in_a_vm_bottle() {
    if !require_vm() || !require_claude_image() {
        return;
    }
    session("--vm");
}

#[test]
fn the_guest_never_holds_the_real_key() {
    if !require_docker("runc") || !require_claude_image() {
        return;
    }
    let sb = Sandbox::new();
    let ca = TestCa::new();
    let ca_path = ca.write_pem(sb.dir.path());
    let upstream = FakeAnthropic::start(&ca, TOOL_COMMAND);
    let text = manifest(&upstream, &ca_path).replace(
        "command = [\"claude\"",
        "command = [\"/bin/sleep\", \"600\"]\nunused = [\"claude\"",
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("unused"))
        .collect::<Vec<_>>()
        .join("\n");
    let m = sb.manifest(&text);
    let out = sb
        .bottle()
        .env("BOTTLE_E2E_ANTHROPIC_KEY", REAL_KEY)
        .args(["run", "--docker", "--yes", "--detach", "--manifest"])
        .arg(&m)
        .arg("claude")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let _stop = StopOnDrop(&sb, id.clone());
    let probe = sb.run(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "echo key=$ANTHROPIC_API_KEY; grep -rl '{}[{}]' /proc/*/environ /proc/*/cmdline /home /etc /workspace /tmp 2>/dev/null | head -n 5; echo done",
            // A pattern that matches the key without being it, so grep's
            // own command line does not match.
            &REAL_KEY[..REAL_KEY.len() - 1],
            &REAL_KEY[REAL_KEY.len() - 1..]
        ),
    ]);
    let text = stdout(&probe);
    assert!(text.contains("key=bottle-placeholder-"), "{text}");
    assert!(text.trim_end().ends_with("done"), "{text}");
    assert!(!text.contains('/'), "the real key is in the guest: {text}");
    // Claude Code itself: the CLI is there, at the pinned version.
    let version = sb.run(&["exec", &id, "--", "claude", "--version"]);
    assert!(
        stdout(&version).contains(bottle_vmm::image::CLAUDE_CODE_VERSION),
        "{}{}",
        stdout(&version),
        stderr(&version)
    );
}
