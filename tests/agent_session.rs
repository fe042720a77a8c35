//! The agent's session belongs to the bottle (Docker under runc, which runs
//! at native speed; the VM shares the code path): `bottle cp` both ways,
//! `bottle stop` keeping the workspace and transcripts, `bottle resume`
//! bringing a stopped bottle back with its identity and what it kept,
//! `bottle transcript`, one writer among attached clients, and an
//! interactive `bottle run` that survives its terminal going away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MANIFEST: &str = r#"
[bottles.t]
image = "tiny"

[bottles.t.docker]
runtime = "runc"

[agents.a]
bottle = "t"
copy_cwd = true
command = ["/bin/sleep", "600"]
"#;

fn exec(sb: &Sandbox, id: &str, script: &str) -> String {
    let out = sb.run(&["exec", id, "--", "/bin/sh", "-c", script]);
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn cp_both_ways_stop_keeps_and_resume_restores_with_the_same_identity() {
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    std::fs::write(sb.cwd().join("notes.txt"), "v1\n").unwrap();
    let id = sb.run_detached("--docker", MANIFEST);
    let _stop = StopOnDrop(&sb, id.clone());
    exec(
        &sb,
        &id,
        "echo v2 >> /workspace/notes.txt && mkdir -p /home/agent/.claude/projects/p && echo '{\"turn\":1}' > /home/agent/.claude/projects/p/s.jsonl",
    );

    // cp out: a file, into an existing directory; never over a file.
    let out_dir = sb.dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let cp = sb.run(&[
        "cp",
        &format!("{id}:/workspace/notes.txt"),
        out_dir.to_str().unwrap(),
    ]);
    assert!(cp.status.success(), "{}", stderr(&cp));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(),
        "v1\nv2\n"
    );
    let again = sb.run(&[
        "cp",
        &format!("{id}:/workspace/notes.txt"),
        out_dir.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("does not overwrite"),
        "{}",
        stderr(&again)
    );

    // cp in: a host file into a guest directory, owned by the agent.
    let hello = sb.dir.path().join("hello.txt");
    std::fs::write(&hello, "from the host\n").unwrap();
    let cp = sb.run(&["cp", hello.to_str().unwrap(), &format!("{id}:/workspace/")]);
    assert!(cp.status.success(), "{}", stderr(&cp));
    assert_eq!(
        exec(
            &sb,
            &id,
            "cat /workspace/hello.txt && echo >> /workspace/hello.txt && echo writable"
        ),
        "from the host\nwritable\n"
    );

    // A symlink out of the copied tree is refused, and nothing is left.
    exec(
        &sb,
        &id,
        "mkdir /workspace/sub && ln -s /etc/passwd /workspace/sub/evil",
    );
    let dest = sb.dir.path().join("sub-copy");
    let evil = sb.run(&[
        "cp",
        &format!("{id}:/workspace/sub"),
        dest.to_str().unwrap(),
    ]);
    assert!(!evil.status.success());
    assert!(stderr(&evil).contains("evil"), "{}", stderr(&evil));
    assert!(!dest.exists(), "a refused copy left {}", dest.display());
    exec(&sb, &id, "rm -r /workspace/sub");

    // Stop keeps the workspace and the transcripts.
    let stop = sb.run(&["stop", &id]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let said = stderr(&stop);
    assert!(said.contains("kept the workspace"), "{said}");
    assert!(said.contains("kept the agent transcripts"), "{said}");
    assert_eq!(
        std::fs::read_to_string(sb.cwd().join("notes.txt")).unwrap(),
        "v1\n",
        "the host's tree is never written"
    );
    let where_ = stdout(&sb.run(&["transcript", &id]));
    for what in [
        "workspace\t",
        "agent transcripts\t",
        "audit log\t",
        "session output\t",
    ] {
        assert!(where_.contains(what), "no `{what}` in:\n{where_}");
    }

    // Resume: same identity, the kept workspace and transcripts in place.
    let resumed = sb.run(&["resume", &id, "--yes", "--detach"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(stdout(&resumed).trim(), id);
    assert!(
        stderr(&resumed).contains("Resuming"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(
        exec(&sb, &id, "cat /workspace/notes.txt /home/agent/.claude/projects/p/s.jsonl; cat /workspace/hello.txt | head -n1"),
        "v1\nv2\n{\"turn\":1}\nfrom the host\n"
    );
    // A running bottle resumes by attaching; an unknown one is named.
    let unknown = sb.run(&["resume", "a-zzzzz", "--yes"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no bottle `a-zzzzz`"),
        "{}",
        stderr(&unknown)
    );
}

fn attach(sb: &Sandbox, id: &str) -> Child {
    sb.bottle()
        .args(["attach", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach")
}

#[test]
fn one_attached_client_types_the_others_watch() {
    if !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(MANIFEST);
    let out = sb
        .bottle()
        .args(["run", "--docker", "--yes", "--detach", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/cat"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let _stop = StopOnDrop(&sb, id.clone());

    let mut writer = attach(&sb, &id);
    std::thread::sleep(Duration::from_secs(1));
    let mut viewer = attach(&sb, &id);
    std::thread::sleep(Duration::from_secs(1));
    viewer
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"from-viewer\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    writer
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"from-writer\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = writer.kill();
    let _ = viewer.kill();
    let (w, v) = (
        writer.wait_with_output().unwrap(),
        viewer.wait_with_output().unwrap(),
    );
    let (seen_w, seen_v) = (stdout(&w), stdout(&v));
    assert!(seen_w.contains("from-writer"), "{seen_w}");
    assert!(
        seen_v.contains("from-writer"),
        "the viewer watches: {seen_v}"
    );
    assert!(
        !seen_w.contains("from-viewer"),
        "a viewer's keys reached the command: {seen_w}"
    );
    assert!(stderr(&v).contains("read-only"), "{}", stderr(&v));
}

#[test]
fn an_interactive_run_survives_its_terminal_and_ends_with_its_command() {
    if !require_docker("runc") || !skip::require_programs(&[("script", "bsdutils")]) {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(MANIFEST);
    let bottle = env!("CARGO_BIN_EXE_bottle");
    let run = |cmd: &str| -> String {
        format!(
            "{bottle} run --docker --yes --manifest {} a -- /bin/sh -c '{cmd}'",
            m.display()
        )
    };
    // On a terminal the command's status is the run's, and the bottle goes.
    let done = std::process::Command::new("script")
        .args(["-qfec", &run("echo on-a-tty; exit 4"), "/dev/null"])
        .env("BOTTLE_STATE_DIR", sb.state_dir())
        .env("XDG_CONFIG_HOME", sb.dir.path().join("config"))
        .current_dir(sb.cwd())
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        done.status.code(),
        Some(4),
        "{}{}",
        stdout(&done),
        stderr(&done)
    );
    assert!(stdout(&done).contains("on-a-tty"), "{}", stdout(&done));
    assert!(sb.state_entries().is_empty(), "{:?}", sb.state_entries());

    // The terminal goes away: the session runs on, and attach rejoins it.
    let mut term = std::process::Command::new("script")
        .args([
            "-qfec",
            &run("echo first; sleep 4; echo second; exit 5"),
            "/dev/null",
        ])
        .env("BOTTLE_STATE_DIR", sb.state_dir())
        .env("XDG_CONFIG_HOME", sb.dir.path().join("config"))
        .current_dir(sb.cwd())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let ls = stdout(&sb.run(&["ls"]));
        if let Some(id) = ls
            .lines()
            .find_map(|l| l.split('\t').nth(1).filter(|i| i.starts_with("a-")))
        {
            if sb.state_dir().join(id).join("session-started").exists() {
                break id.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no bottle started:\n{ls}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _stop = StopOnDrop(&sb, id.clone());
    // Hang up: `script` and the client on its terminal go.
    let _ = term.kill();
    let _ = term.wait();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        stdout(&sb.run(&["ls"])).contains(&id),
        "the bottle went with its terminal"
    );
    let rejoined = sb.run(&["attach", &id]);
    let text = stdout(&rejoined);
    assert!(text.contains("first") && text.contains("second"), "{text}");
    assert_eq!(rejoined.status.code(), Some(5), "{}", stderr(&rejoined));
}
