//! Attaching a session to a terminal: raw mode, resize on SIGWINCH, restore.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsFd;

use bottle_guest::host::attach_with;
use bottle_guest::{ExecRequest, ExitStatus};
use common::{sh, Rig};
use nix::sys::termios::{tcgetattr, LocalFlags};
use tokio::io::AsyncWriteExt;

fn set_size(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) {
    // Through `stty` on the terminal, to keep unsafe ioctls out of tests.
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .unwrap();
    let tty = std::fs::File::open(path).unwrap();
    let ok = std::process::Command::new("stty")
        .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
        .stdin(tty)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn attach_uses_raw_mode_follows_resizes_and_restores_the_terminal() {
    let (_rig, client) = Rig::start().await;
    // The pty slave plays the user's terminal.
    let pty = nix::pty::openpty(None, None).unwrap();
    set_size(pty.slave.as_fd(), 30, 100);
    assert!(tcgetattr(pty.slave.as_fd())
        .unwrap()
        .local_flags
        .contains(LocalFlags::ICANON));

    let req = ExecRequest {
        argv: sh("stty size; while read x; do [ \"$x\" = q ] && exit 7; stty size; done"),
        tty: Some((30, 100)),
        ..Default::default()
    };
    let session = client.exec(req).await.unwrap();
    let (input_r, mut input_w) = tokio::io::duplex(1024);
    let (out_w, mut out_r) = tokio::io::duplex(64 * 1024);
    let slave = pty.slave.try_clone().unwrap();
    let attached = tokio::spawn(async move {
        attach_with(
            session,
            input_r,
            out_w,
            tokio::io::sink(),
            Some(slave.as_fd()),
        )
        .await
    });

    let mut seen = Vec::new();
    let mut read_until = async |needle: &str, seen: &mut Vec<u8>| {
        use tokio::io::AsyncReadExt;
        while !String::from_utf8_lossy(seen).contains(needle) {
            let mut buf = [0u8; 256];
            let n = out_r.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "output ended before {needle:?}: {:?}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until("30 100", &mut seen).await;
    assert!(
        !tcgetattr(pty.slave.as_fd())
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON),
        "not raw while attached"
    );

    set_size(pty.slave.as_fd(), 50, 140);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGWINCH).unwrap();
    // Each line makes the program print its size again, until the resize
    // (handled asynchronously) has reached it.
    for _ in 0..200 {
        input_w.write_all(b"\n").await.unwrap();
        read_until("\n", &mut seen).await;
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("50 140") {
            break;
        }
        seen.clear();
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("50 140"),
        "resize never arrived"
    );
    input_w.write_all(b"q\n").await.unwrap();

    let status = attached.await.unwrap().unwrap();
    assert_eq!(status, ExitStatus::Code(7));
    assert!(
        tcgetattr(pty.slave.as_fd())
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON),
        "terminal not restored"
    );
}

#[tokio::test]
async fn attach_without_a_terminal_pipes_stdin_and_output() {
    let (_rig, client) = Rig::start().await;
    let session = client
        .exec(ExecRequest {
            argv: sh("cat; echo err >&2; exit 2"),
            ..Default::default()
        })
        .await
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = attach_with(session, &b"piped input"[..], &mut out, &mut err, None)
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(2));
    assert_eq!(out, b"piped input");
    assert_eq!(err, b"err\n");
}
