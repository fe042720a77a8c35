//! File copy both ways, handshake refusals, malformed frames, redialing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use bottle_guest::auth::ChannelKey;
use bottle_guest::host::{Client, ClientError};
use bottle_guest::proto::{Frame, Msg, Role, Secret, Stream, CONNECTION, PROTOCOL_VERSION};
use bottle_guest::{ExecRequest, ExitStatus, User};
use common::{argv, sh, spawn_agent, write_key, Raw, Rig};
use tokio::net::UnixListener;

#[tokio::test]
async fn write_file_then_read_file_keeps_bytes_and_mode() {
    let (rig, client) = Rig::start().await;
    let path = rig.dir.path().join("sub/dir/f.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    client
        .write_file(&path.display().to_string(), &data, 0o640, None)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    assert_eq!(
        client.read_file(&path.display().to_string()).await.unwrap(),
        data
    );
    let err = client
        .read_file(&rig.dir.path().display().to_string())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[tokio::test]
async fn write_files_writes_each_in_order_in_one_session_and_stops_at_the_first_failure() {
    use bottle_guest::host::GuestFile;
    let (rig, client) = Rig::start().await;
    let file = |rel: &str, bytes: &[u8], mode: u32| GuestFile {
        path: rig.dir.path().join(rel).display().to_string(),
        bytes: bytes.to_vec(),
        mode,
    };
    client
        .write_files(
            &[
                file("a/ca.pem", b"pem", 0o644),
                file("b/c/profile", b"export X=1\n", 0o600),
                file("a/ca.pem", b"pem again", 0o644),
            ],
            None,
        )
        .await
        .unwrap();
    let read = |rel: &str| std::fs::read(rig.dir.path().join(rel)).unwrap();
    assert_eq!(read("a/ca.pem"), b"pem again", "a later entry wins");
    assert_eq!(read("b/c/profile"), b"export X=1\n");
    let mode = std::fs::metadata(rig.dir.path().join("b/c/profile"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A relative path fails the session; what came before it is written,
    // what comes after it is not.
    let err = client
        .write_files(
            &[
                file("first", b"1", 0o644),
                GuestFile {
                    path: "relative".into(),
                    bytes: b"2".to_vec(),
                    mode: 0o644,
                },
                file("third", b"3", 0o644),
            ],
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("relative"), "{err}");
    assert_eq!(read("first"), b"1");
    assert!(!rig.dir.path().join("third").exists());
}

#[tokio::test]
async fn write_file_chowns_to_the_owner() {
    if !bottle_test_harness::skip::require_root("chown to uid 1000") {
        return;
    }
    let (rig, client) = Rig::start().await;
    let path = rig.dir.path().join("owned");
    client
        .write_file(
            &path.display().to_string(),
            b"x",
            0o600,
            Some(User::Uid(1000)),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), 1000);
}

fn make_tree(root: &std::path::Path) {
    std::fs::create_dir_all(root.join(".git/refs/heads")).unwrap();
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(root.join(".git/refs/heads/main"), "0123\n").unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(
        root.join("src/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::create_dir(root.join("ro")).unwrap();
    std::fs::write(root.join("ro/file"), "inside a read-only dir").unwrap();
    std::fs::set_permissions(root.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::symlink("src/run.sh", root.join("link")).unwrap();
}

fn describe(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if m.file_type().is_symlink() {
            out.push(format!(
                "{rel} -> {}",
                std::fs::read_link(&p).unwrap().display()
            ));
        } else if m.is_dir() {
            out.push(format!("{rel}/ {:o}", m.mode() & 0o777));
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            out.push(format!(
                "{rel} {:o} {:?}",
                m.mode() & 0o777,
                std::fs::read(&p).unwrap()
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn directory_trees_copy_in_and_out_with_modes_symlinks_and_git() {
    let (rig, client) = Rig::start().await;
    let src = rig.dir.path().join("src-tree");
    make_tree(&src);
    let guest_dir = rig.dir.path().join("in-guest");
    let n = client
        .copy_dir_in(&src, &guest_dir.display().to_string(), None)
        .await
        .unwrap();
    assert_eq!(n, 12);
    assert_eq!(describe(&guest_dir), describe(&src));
    let out = client
        .run_capture(
            argv(&["./src/run.sh"]),
            vec![],
            Some(guest_dir.display().to_string()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"run\n");

    let back = rig.dir.path().join("back");
    client
        .copy_dir_out(&guest_dir.display().to_string(), &back, 1 << 20)
        .await
        .unwrap();
    assert_eq!(describe(&back), describe(&src));
    // The destination must be new: the guest never writes into an existing host tree.
    let err = client
        .copy_dir_out(&guest_dir.display().to_string(), &back, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tree(_)), "{err}");
    for d in [&src, &guest_dir, &back] {
        std::fs::set_permissions(d.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test]
async fn read_tree_enforces_its_size_limit() {
    let (rig, client) = Rig::start().await;
    let path = rig.dir.path().join("big");
    std::fs::write(&path, vec![0u8; 100_000]).unwrap();
    let err = client
        .read_tree(&path.display().to_string(), 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(..)), "{err}");
}

#[tokio::test]
async fn client_with_another_protocol_version_is_refused_clearly() {
    let rig = Rig::mux_only();
    let mut raw = Raw::connect(&rig.control).await;
    match raw.hello(PROTOCOL_VERSION + 98, Role::Client).await {
        Msg::Refused { reason } => {
            assert!(
                reason.contains(&format!("protocol version {}", PROTOCOL_VERSION + 98)),
                "{reason}"
            );
            assert!(
                reason.contains(&format!("speaks version {PROTOCOL_VERSION}")),
                "{reason}"
            );
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(
        raw.next().await.is_none(),
        "connection stays open after a refusal"
    );
}

#[tokio::test]
async fn guest_with_another_protocol_version_is_refused() {
    let rig = Rig::mux_only();
    let mut raw = Raw::connect(&rig.guest_sock).await;
    assert!(matches!(
        raw.hello(0, Role::Guest).await,
        Msg::Refused { .. }
    ));
    let client = Client::connect(&rig.control).await.unwrap();
    let err = client
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotReady(..)), "{err}");
    assert!(err.to_string().contains("not connected"), "{err}");
}

#[tokio::test]
async fn a_client_on_the_guest_socket_is_refused() {
    let rig = Rig::mux_only();
    let mut raw = Raw::connect(&rig.guest_sock).await;
    assert!(matches!(
        raw.hello(PROTOCOL_VERSION, Role::Client).await,
        Msg::Refused { .. }
    ));
}

fn exec(argv: Vec<String>) -> Msg {
    Msg::Exec(ExecRequest {
        argv,
        ..Default::default()
    })
}

/// A control frame whose JSON does not parse, on `session`.
fn bad_json(session: u32) -> Vec<u8> {
    let payload = b"{\"type\":\"exec\",";
    let mut f = ((5 + payload.len()) as u32).to_be_bytes().to_vec();
    f.push(0);
    f.extend_from_slice(&session.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn expect_output_then_exit(raw: &mut Raw, session: u32, want: &[u8]) {
    let mut out = Vec::new();
    loop {
        match raw.next_on(session).await {
            Frame::Data {
                stream: Stream::Stdout,
                bytes,
                ..
            } => out.extend_from_slice(&bytes),
            Frame::Control {
                msg: Msg::Exit { status },
                ..
            } => {
                assert_eq!(status, ExitStatus::Code(0));
                break;
            }
            Frame::Control {
                msg: Msg::Started { .. },
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(out, want);
}

#[tokio::test]
async fn malformed_frames_through_the_mux_close_only_their_session() {
    let (rig, _client) = Rig::start().await;
    let mut raw = Raw::client(&rig.control).await;
    raw.send(Frame::control(1, exec(argv(&["cat"])))).await;
    raw.send(Frame::control(2, exec(argv(&["cat"])))).await;
    assert!(matches!(
        raw.next_on(1).await,
        Frame::Control {
            msg: Msg::Started { .. },
            ..
        }
    ));
    assert!(matches!(
        raw.next_on(2).await,
        Frame::Control {
            msg: Msg::Started { .. },
            ..
        }
    ));
    raw.writer.write_raw(&bad_json(1)).await.unwrap();
    match raw.next_on(1).await {
        Frame::Control {
            msg: Msg::Error { message },
            ..
        } => assert!(message.contains("bad control"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    // An unknown frame kind on session 2's neighbour id 3 only errors id 3.
    raw.writer
        .write_raw(&[0, 0, 0, 6, 77, 0, 0, 0, 3, 0])
        .await
        .unwrap();
    assert!(matches!(
        raw.next_on(3).await,
        Frame::Control {
            msg: Msg::Error { .. },
            ..
        }
    ));
    raw.send(Frame::Data {
        session: 2,
        stream: Stream::Stdin,
        bytes: "still here".into(),
    })
    .await;
    raw.send(Frame::control(2, Msg::StdinEof)).await;
    expect_output_then_exit(&mut raw, 2, b"still here").await;
}

#[tokio::test]
async fn broken_framing_closes_the_connection_but_not_the_mux() {
    let (rig, client) = Rig::start().await;
    let mut raw = Raw::client(&rig.control).await;
    raw.writer
        .write_raw(&[0xff, 0xff, 0xff, 0xff, 0])
        .await
        .unwrap();
    assert!(raw.next().await.is_none());
    let out = client
        .run_capture(sh("echo ok"), vec![], None, None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

#[tokio::test]
async fn agent_binary_fails_only_the_session_of_a_malformed_frame() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("host.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let key = ChannelKey::generate().unwrap();
    let _agent = spawn_agent(&sock, &write_key(dir.path(), &key));
    let (stream, _) = listener.accept().await.unwrap();
    let mut raw = Raw::new(stream);
    match raw.next().await {
        Some(Frame::Control {
            msg:
                Msg::Hello {
                    version,
                    role: Role::Guest,
                    key: offered,
                    ..
                },
            ..
        }) => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(
                offered,
                Some(Secret(key.to_hex())),
                "the hello carries the key"
            );
        }
        other => panic!("no hello: {other:?}"),
    }
    raw.send(Frame::control(
        CONNECTION,
        Msg::Welcome {
            version: PROTOCOL_VERSION,
            guest_connected: true,
        },
    ))
    .await;
    raw.send(Frame::control(CONNECTION, Msg::Ping { nonce: 42 }))
        .await;
    assert_eq!(
        raw.next_on(CONNECTION).await,
        Frame::control(CONNECTION, Msg::Pong { nonce: 42 })
    );
    raw.send(Frame::control(5, exec(argv(&["sleep", "60"]))))
        .await;
    raw.send(Frame::control(6, exec(argv(&["cat"])))).await;
    assert!(matches!(
        raw.next_on(5).await,
        Frame::Control {
            msg: Msg::Started { .. },
            ..
        }
    ));
    raw.writer.write_raw(&bad_json(5)).await.unwrap();
    assert!(matches!(
        raw.next_on(5).await,
        Frame::Control {
            msg: Msg::Error { .. },
            ..
        }
    ));
    raw.send(Frame::Data {
        session: 6,
        stream: Stream::Stdin,
        bytes: "alive".into(),
    })
    .await;
    raw.send(Frame::control(6, Msg::StdinEof)).await;
    expect_output_then_exit(&mut raw, 6, b"alive").await;
}

#[tokio::test]
async fn agent_redials_until_the_host_listens() {
    let dir = tempfile::tempdir().unwrap();
    let guest_sock = dir.path().join("guest.sock");
    let key = ChannelKey::generate().unwrap();
    let _agent = spawn_agent(&guest_sock, &write_key(dir.path(), &key));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let control = dir.path().join("control.sock");
    let guest = UnixListener::bind(&guest_sock).unwrap();
    tokio::spawn(bottle_guest::host::run_mux(
        guest,
        UnixListener::bind(&control).unwrap(),
        key,
    ));
    let client = Client::connect(&control).await.unwrap();
    let info = client.wait_ready(Duration::from_secs(20)).await.unwrap();
    assert_eq!(info.version, PROTOCOL_VERSION);
    assert!(!info.pid1);
}
