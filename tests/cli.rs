//! The CLI's contract, through the real binary: plans, dry runs, preflight,
//! manifest errors and exit codes. No VM or Docker needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn plan_json_works_on_the_embedded_default() {
    let sb = Sandbox::new();
    let out = sb.run(&["plan", "demo", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    assert_eq!(plan["agent"], "demo");
    assert_eq!(plan["bottle"], "demo");
    assert_eq!(plan["manifest"], "<embedded default manifest>");
    assert!(plan["identity"].as_str().unwrap().starts_with("demo-"));
    assert_eq!(plan["network"]["dns_name"], "proxy.internal");
    assert_eq!(plan["tls_interception"]["enabled"], true);
    assert!(plan["backend_reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
}

#[test]
fn dry_run_touches_nothing() {
    let sb = Sandbox::new();
    let before: Vec<_> = walk(sb.dir.path());
    let out = sb.run(&["run", "--dry-run", "demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("dry run: nothing was started or written"));
    assert!(stdout(&out).contains("bottle plan for agent `demo`"));
    assert_eq!(walk(sb.dir.path()), before, "a dry run wrote files");
    assert!(
        sb.state_entries().is_empty(),
        "state dir created by a dry run"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn run_without_a_terminal_or_yes_refuses_with_usage_error() {
    let sb = Sandbox::new();
    let out = sb
        .bottle()
        .args(["run", "demo"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
    assert!(sb.state_entries().is_empty());
}

#[test]
fn manifest_problems_exit_2_with_file_line_and_fix() {
    let sb = Sandbox::new();
    let m = sb.manifest("[bottles.b]\nalow = []\n[agents.a]\nbottle = \"b\"\n");
    let out = sb
        .bottle()
        .arg("--manifest")
        .arg(&m)
        .args(["plan", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:2:1: bottles.b.alow: unknown key", m.display())),
        "{err}"
    );
    assert!(err.contains("did you mean `allow`"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "no debug print: {err}"
    );
}

#[test]
fn unknown_agent_is_a_usage_error_with_suggestion() {
    let sb = Sandbox::new();
    let out = sb.run(&["plan", "dmeo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no agent `dmeo`"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did you mean `demo`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_manifest_flag_file_is_a_usage_error() {
    let sb = Sandbox::new();
    let out = sb.run(&["--manifest", "/nonexistent/bottle.toml", "plan", "demo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"));
}

#[test]
fn bad_backend_env_is_a_usage_error() {
    let sb = Sandbox::new();
    let out = sb
        .bottle()
        .env("BOTTLE_BACKEND", "lxc")
        .args(["plan", "demo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("use `vm` or `docker`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn manifest_in_working_directory_is_used() {
    let sb = Sandbox::new();
    std::fs::write(
        sb.cwd().join("bottle.toml"),
        "[bottles.x]\n[agents.here]\nbottle = \"x\"\n",
    )
    .unwrap();
    let out = sb.run(&["plan", "here", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan["manifest"].as_str().unwrap().ends_with("bottle.toml"));
    // Found without asking, so only planned until the user trusts it.
    assert_eq!(plan["trust"]["status"], "untrusted", "{plan:#}");
}

#[test]
fn trust_refuses_a_manifest_that_does_not_load_and_records_nothing() {
    let sb = Sandbox::new();
    let m = sb.manifest_untrusted("[bottles.b]\nalow = []\n");
    let out = sb.trust(&m);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown key"), "{}", stderr(&out));
    let list = sb.run(&["trust", "--list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(stdout(&list), "");
}

#[test]
fn ls_reports_broken_state_and_cleanup_removes_it() {
    let sb = Sandbox::new();
    let broken = sb.state_dir().join("a-zzzzz");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("metadata.json"), "{ not json").unwrap();
    let ls = sb.run(&["ls"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    assert!(
        stdout(&ls).contains("a-zzzzz\t?\tbroken"),
        "{}",
        stdout(&ls)
    );
    assert!(stderr(&ls).contains("corrupt"), "{}", stderr(&ls));
    let dry = sb.run(&["cleanup", "--dry-run"]);
    assert!(stdout(&dry).contains("would remove"));
    assert!(broken.exists());
    let clean = sb.run(&["cleanup"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(!broken.exists());
}

#[test]
fn completions_are_printed_for_bash() {
    let sb = Sandbox::new();
    let out = sb.run(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("_bottle"));
}

#[test]
fn exec_on_unknown_bottle_says_how_to_list() {
    let sb = Sandbox::new();
    let out = sb.run(&["exec", "nope-abcde", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bottle ls"), "{}", stderr(&out));
}

/// `bottle` copied on its own into a directory: no `bottle-bundle` beside it.
fn bottle_alone(sb: &Sandbox) -> std::path::PathBuf {
    let bin = sb.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let alone = bin.join("bottle");
    std::fs::copy(env!("CARGO_BIN_EXE_bottle"), &alone).unwrap();
    alone
}

#[test]
fn doctor_finds_the_bundle_binary_or_says_how_to_build_it() {
    let sb = Sandbox::new();
    let out = sb.run(&["doctor"]);
    let text = stdout(&out);
    assert!(text.contains("ok   bottle-bundle: "), "{text}");

    let alone = bottle_alone(&sb);
    let out = sb.command(&alone).arg("doctor").output().unwrap();
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("bottle-bundle"))
        .unwrap_or_else(|| panic!("no bottle-bundle line:\n{text}"));
    assert!(!line.starts_with("ok"), "{line}");
    assert!(line.contains("no `bottle-bundle` next to"), "{line}");
    assert!(
        text.contains("cargo build --release --bin bottle-bundle"),
        "{text}"
    );
}

#[test]
fn a_run_without_the_bundle_binary_is_refused_and_leaves_nothing() {
    let sb = Sandbox::new();
    let doctor = stdout(&sb.run(&["doctor"]));
    if !skip::require(
        doctor.contains("backend docker: ready"),
        &format!("Docker is not ready here (run scripts/setup):\n{doctor}"),
    ) {
        return;
    }
    let manifest = sb.manifest(
        "[bottles.b]\nimage = \"tiny\"\n[agents.a]\nbottle = \"b\"\ncopy_cwd = false\ncommand = [\"true\"]\n",
    );
    // The guest agent where `bottle` itself finds it (target/<triple>/guest).
    let guest = std::path::Path::new(env!("CARGO_BIN_EXE_bottle"))
        .parent()
        .and_then(|d| d.parent())
        .map(|t| t.join("x86_64-unknown-linux-gnu/guest/bottle-guest"))
        .unwrap();
    let out = sb
        .command(bottle_alone(&sb))
        .env("BOTTLE_GUEST_BIN", guest)
        .args(["run", "--docker", "--yes", "--manifest"])
        .arg(&manifest)
        .arg("a")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no `bottle-bundle` next to"), "{err}");
    assert!(sb.state_entries().is_empty(), "{:?}", sb.state_entries());
}
