//! Exec sessions end to end: client -> mux -> real agent binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bottle_guest::host::Event;
use bottle_guest::{ExecRequest, ExitStatus, User};
use common::{argv, sh, Rig};

#[tokio::test]
async fn exec_reports_stdout_stderr_and_exit_code() {
    let (_rig, client) = Rig::start().await;
    let out = client
        .run_capture(sh("echo out; echo err >&2; exit 3"), vec![], None, None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, ExitStatus::Code(3));
}

#[tokio::test]
async fn exit_by_signal_is_reported_as_the_signal() {
    let (_rig, client) = Rig::start().await;
    let out = client
        .run_capture(sh("kill -9 $$"), vec![], None, None)
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Signal(9));
}

#[tokio::test]
async fn missing_program_is_a_session_error() {
    let (_rig, client) = Rig::start().await;
    let err = client
        .run_capture(argv(&["/nonexistent/prog"]), vec![], None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/prog"), "{err}");
}

#[tokio::test]
async fn stdin_is_piped_to_the_program() {
    let (_rig, client) = Rig::start().await;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let req = ExecRequest {
        argv: argv(&["cat"]),
        ..Default::default()
    };
    let out = client.capture(req, &big).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout, big);
}

#[tokio::test]
async fn env_and_cwd_are_applied_on_top_of_defaults() {
    let (_rig, client) = Rig::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let out = client
        .run_capture(
            sh("echo $FOO; pwd; echo $PATH; test -n \"$HOME\" && echo home"),
            vec![("FOO".into(), "bar".into())],
            Some(cwd.path().display().to_string()),
            None,
        )
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "bar");
    assert_eq!(
        lines[1],
        cwd.path().canonicalize().unwrap().display().to_string()
    );
    assert!(lines[2].contains("/usr/bin"), "{text}");
    assert_eq!(lines[3], "home");
}

#[tokio::test]
async fn two_sessions_run_at_once() {
    let (_rig, client) = Rig::start().await;
    let mut waiting = client
        .exec(ExecRequest {
            argv: sh("read x; echo got $x"),
            ..Default::default()
        })
        .await
        .unwrap();
    // The second session finishes while the first still waits for input.
    let other = client
        .run_capture(sh("echo b"), vec![], None, None)
        .await
        .unwrap();
    assert_eq!(other.stdout, b"b\n");
    waiting.write_stdin(b"a\n").await.unwrap();
    let mut out = Vec::new();
    loop {
        match waiting.next_event().await.unwrap() {
            Event::Stdout(b) => out.extend_from_slice(&b),
            Event::Stderr(_) => {}
            Event::Exit(s) => {
                assert!(s.success());
                break;
            }
        }
    }
    assert_eq!(out, b"got a\n");
}

async fn read_until(session: &mut bottle_guest::host::Session, needle: &str, seen: &mut String) {
    while !seen.contains(needle) {
        match session.next_event().await.unwrap() {
            Event::Stdout(b) | Event::Stderr(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            Event::Exit(s) => panic!("exited {s:?} before {needle:?}; output {seen:?}"),
        }
    }
}

#[tokio::test]
async fn pty_session_starts_at_its_size_and_follows_resizes() {
    let (_rig, client) = Rig::start().await;
    let req = ExecRequest {
        argv: sh("test -t 0 && echo is-a-tty; stty size; read x; stty size; exit 4"),
        tty: Some((24, 80)),
        ..Default::default()
    };
    let mut s = client.exec(req).await.unwrap();
    let mut seen = String::new();
    read_until(&mut s, "24 80", &mut seen).await;
    assert!(seen.contains("is-a-tty"), "{seen:?}");
    s.resize(40, 120).await.unwrap();
    s.write_stdin(b"\n").await.unwrap();
    read_until(&mut s, "40 120", &mut seen).await;
    assert_eq!(s.wait().await.unwrap(), ExitStatus::Code(4));
}

#[tokio::test]
async fn signals_reach_the_program() {
    let (_rig, client) = Rig::start().await;
    let s = client
        .exec(ExecRequest {
            argv: argv(&["sleep", "60"]),
            ..Default::default()
        })
        .await
        .unwrap();
    s.signal(15).await.unwrap();
    assert_eq!(s.wait().await.unwrap(), ExitStatus::Signal(15));
}

#[tokio::test]
async fn dropping_a_session_kills_its_program() {
    let (_rig, client) = Rig::start().await;
    let s = client
        .exec(ExecRequest {
            argv: argv(&["sleep", "60"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = s.pid();
    drop(s);
    // The agent reaps the killed child; poll until the pid is gone.
    for _ in 0..500 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("pid {pid} still alive after the session was dropped");
}

#[tokio::test]
async fn programs_run_as_the_requested_user() {
    if !bottle_test_harness::skip::require_root("switching to uid 1000") {
        return;
    }
    let (_rig, client) = Rig::start().await;
    let out = client
        .run_capture(
            argv(&["id", "-u"]),
            vec![],
            Some("/".into()),
            Some(User::Uid(1000)),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
    let err = client
        .run_capture(
            argv(&["id"]),
            vec![],
            None,
            Some(User::Name("no-such-user-xyz".into())),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-user-xyz"), "{err}");
}

#[tokio::test]
async fn poweroff_is_refused_outside_init() {
    let (_rig, client) = Rig::start().await;
    let err = client.poweroff(false).await.unwrap_err();
    assert!(err.to_string().contains("init"), "{err}");
    assert!(client.probe().await.is_ok());
}

fn zombie_children(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: the fields after the last ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.first() == Some(&"Z") && f.get(1) == Some(&pid.to_string().as_str())
        })
        .collect()
}

#[tokio::test]
async fn orphaned_grandchildren_are_reaped_by_the_agent() {
    let (rig, client) = Rig::start().await;
    let agent_pid = rig.agent.as_ref().unwrap().id().unwrap();
    // The background child outlives its parent and is re-parented to the
    // agent (a child subreaper); when it exits the agent must reap it.
    let out = client
        .run_capture(
            sh("sleep 0.2 >/dev/null 2>&1 & echo $!"),
            vec![],
            None,
            None,
        )
        .await
        .unwrap();
    let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    for _ in 0..500 {
        if !std::path::Path::new(&format!("/proc/{orphan}")).exists() {
            assert!(zombie_children(agent_pid).is_empty());
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "orphan {orphan} was not reaped: {:?}",
        zombie_children(agent_pid)
    );
}
