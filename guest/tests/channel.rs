//! The guest channel belongs to the guest agent alone: only a hello with this
//! launch's key is accepted, only once per boot, and never as a replacement.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bottle_guest::auth::ChannelKey;
use bottle_guest::host::mux::{ALREADY_CONNECTED, BAD_KEY, CHANNEL_CLOSED};
use bottle_guest::host::Client;
use bottle_guest::proto::{ExecRequest, Frame, Msg, Role, PROTOCOL_VERSION};
use common::{argv, sh, Raw, Rig};

fn refusal(msg: Msg) -> String {
    match msg {
        Msg::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_guest_without_this_launchs_key_is_refused_and_the_agent_still_gets_in() {
    let mut rig = Rig::mux_only();
    let mut none = Raw::connect(&rig.guest_sock).await;
    let reason = refusal(none.hello(PROTOCOL_VERSION, Role::Guest).await);
    assert_eq!(reason, BAD_KEY);
    assert!(none.next().await.is_none(), "closed after the refusal");

    let other = ChannelKey::generate().unwrap().to_hex();
    let mut wrong = Raw::connect(&rig.guest_sock).await;
    let reason = refusal(
        wrong
            .hello_with_key(PROTOCOL_VERSION, Role::Guest, Some(&other))
            .await,
    );
    assert_eq!(reason, BAD_KEY);

    // Clients are told why no guest is there.
    let client = Client::connect(&rig.control).await.unwrap();
    let err = client
        .run_capture(sh("true"), vec![], None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(BAD_KEY), "{err}");

    // The real agent, with the key, is accepted after the forgeries.
    rig.agent = Some(rig.spawn_agent());
    client.wait_ready(Duration::from_secs(20)).await.unwrap();
    let out = client
        .run_capture(sh("echo real"), vec![], None, None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"real\n");
}

#[tokio::test]
async fn a_second_guest_is_refused_even_with_the_key_and_replaces_nothing() {
    let (rig, client) = Rig::start().await;
    // A session running on the real agent across the attempts.
    let mut cat = client
        .exec(ExecRequest {
            argv: argv(&["cat"]),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut forged = Raw::connect(&rig.guest_sock).await;
    let reason = refusal(forged.hello(PROTOCOL_VERSION, Role::Guest).await);
    assert_eq!(reason, ALREADY_CONNECTED);
    let mut keyed = Raw::connect(&rig.guest_sock).await;
    let reason = refusal(
        keyed
            .hello_with_key(PROTOCOL_VERSION, Role::Guest, Some(&rig.key.to_hex()))
            .await,
    );
    assert_eq!(reason, ALREADY_CONNECTED);
    // Many more, as a hostile loop would: all refused, nothing replaced.
    for _ in 0..20 {
        let mut again = Raw::connect(&rig.guest_sock).await;
        assert!(matches!(
            again.hello(PROTOCOL_VERSION, Role::Guest).await,
            Msg::Refused { .. }
        ));
    }

    cat.write_stdin(b"still the agent").await.unwrap();
    cat.close_stdin().await.unwrap();
    let mut got = Vec::new();
    loop {
        match cat.next_event().await.unwrap() {
            bottle_guest::host::Event::Stdout(b) => got.extend_from_slice(&b),
            bottle_guest::host::Event::Stderr(_) => {}
            bottle_guest::host::Event::Exit(status) => {
                assert!(status.success());
                break;
            }
        }
    }
    assert_eq!(got, b"still the agent");
    let out = client
        .run_capture(sh("echo $((6 * 7))"), vec![], None, None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"42\n");
}

#[tokio::test]
async fn a_guest_that_went_away_is_never_replaced() {
    let (mut rig, client) = Rig::start().await;
    let mut s = client
        .exec(ExecRequest {
            argv: argv(&["sleep", "60"]),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut agent = rig.agent.take().unwrap();
    agent.kill().await.unwrap();
    let err = s.next_event().await.unwrap_err();
    assert!(err.to_string().contains(CHANNEL_CLOSED), "{err}");

    // Even the real agent with the key cannot open a second connection.
    let mut keyed = Raw::connect(&rig.guest_sock).await;
    let reason = refusal(
        keyed
            .hello_with_key(PROTOCOL_VERSION, Role::Guest, Some(&rig.key.to_hex()))
            .await,
    );
    assert_eq!(reason, ALREADY_CONNECTED);
    rig.agent = Some(rig.spawn_agent());
    let err = client.wait_ready(Duration::from_secs(2)).await.unwrap_err();
    assert!(err.to_string().contains(CHANNEL_CLOSED), "{err}");
}

#[tokio::test]
async fn a_second_hello_on_the_accepted_stream_is_refused_and_sessions_go_on() {
    let rig = Rig::mux_only();
    // This raw connection plays the real guest (it has the key).
    let mut guest = Raw::connect(&rig.guest_sock).await;
    assert!(matches!(
        guest
            .hello_with_key(PROTOCOL_VERSION, Role::Guest, Some(&rig.key.to_hex()))
            .await,
        Msg::Welcome { .. }
    ));
    let mut client = Raw::client(&rig.control).await;
    client
        .send(Frame::control(
            7,
            Msg::Exec(ExecRequest {
                argv: argv(&["true"]),
                ..Default::default()
            }),
        ))
        .await;
    let gsid = match guest.next().await {
        Some(Frame::Control {
            session,
            msg: Msg::Exec(_),
        }) => session,
        other => panic!("no exec reached the guest: {other:?}"),
    };
    // A new hello mid-stream (a reopened virtio port) is refused...
    let reason = refusal(
        guest
            .hello_with_key(PROTOCOL_VERSION, Role::Guest, Some(&rig.key.to_hex()))
            .await,
    );
    assert!(reason.contains("never a replacement"), "{reason}");
    // ...and the open session still reaches its client.
    guest
        .send(Frame::control(gsid, Msg::Started { pid: 9 }))
        .await;
    assert_eq!(
        client.next_on(7).await,
        Frame::control(7, Msg::Started { pid: 9 })
    );
}

/// `bottle-guest dial`, the probe the escape suite runs inside a bottle.
async fn dial(rig: &Rig, key_file: bool) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bottle-guest"));
    cmd.arg("dial")
        .arg(format!("unix:{}", rig.guest_sock.display()));
    if key_file {
        cmd.arg("--key-file").arg(&rig.key_file);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn dial_reports_whether_the_host_accepted_it() {
    let (rig, client) = Rig::start().await;
    let (code, out) = dial(&rig, false).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refused"), "{out}");
    let (code, out) = dial(&rig, true).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(ALREADY_CONNECTED), "{out}");
    client.wait_ready(Duration::from_secs(5)).await.unwrap();

    // Before any guest, the key holder is welcomed (and exit 0 says so).
    let fresh = Rig::mux_only();
    let (code, out) = dial(&fresh, true).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("welcome"), "{out}");
}

/// A root agent started with `--user` (the container's guest agent) runs
/// requests that name no user as that user and gives it the files it writes,
/// parents included.
#[tokio::test]
async fn a_root_agent_serves_as_its_default_user() {
    use std::os::unix::fs::MetadataExt;
    if !bottle_test_harness::skip::require_root("switching to the agent's uid") {
        return;
    }
    let mut rig = Rig::mux_only();
    rig.agent = Some(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bottle-guest"))
            .arg("serve")
            .arg("--connect")
            .arg(format!("unix:{}", rig.guest_sock.display()))
            .arg("--key-file")
            .arg(&rig.key_file)
            .args(["--user", "1000"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    );
    let client = Client::connect(&rig.control).await.unwrap();
    client.wait_ready(Duration::from_secs(20)).await.unwrap();
    let out = client
        .run_capture(sh("id -u"), vec![], Some("/".into()), None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"1000\n");
    let base = rig.dir.path().join("home");
    std::fs::create_dir(&base).unwrap();
    let file = base.join("new/dir/f");
    client
        .write_file(file.to_str().unwrap(), b"x", 0o640, None)
        .await
        .unwrap();
    for p in [base.join("new"), base.join("new/dir"), file.clone()] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().uid(),
            1000,
            "{}",
            p.display()
        );
    }
    assert_eq!(
        std::fs::metadata(&base).unwrap().uid(),
        0,
        "existing dirs keep their owner"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o640);
}

#[tokio::test]
async fn silent_guest_connections_are_capped_and_do_not_block_the_agent_for_good() {
    let mut rig = Rig::mux_only();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(Raw::connect(&rig.guest_sock).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = Raw::connect(&rig.guest_sock).await;
    let reason = refusal(
        fifth
            .hello_with_key(PROTOCOL_VERSION, Role::Guest, Some(&rig.key.to_hex()))
            .await,
    );
    assert!(reason.contains("too many"), "{reason}");
    drop(silent);
    rig.agent = Some(rig.spawn_agent());
    let client = Client::connect(&rig.control).await.unwrap();
    client.wait_ready(Duration::from_secs(20)).await.unwrap();
}
