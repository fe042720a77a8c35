//! Malformed git:// request streams are refused without a panic, and the
//! refusal is a well-formed `ERR` pkt-line (or nothing, on an empty stream).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bottle_sidecars::gitgate::{GitGate, GitGateConfig};
use bottle_sidecars::policy::GitRemote;
use bottle_sidecars::scanner::Scanner;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One gate for every case: building it runs `git init` and friends.
fn shared_gate() -> Arc<GitGate> {
    static GATE: std::sync::OnceLock<Arc<GitGate>> = std::sync::OnceLock::new();
    GATE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("gitgate-pktline-{}", std::process::id()));
        gate(&dir)
    })
    .clone()
}

fn gate(dir: &std::path::Path) -> Arc<GitGate> {
    let remote = GitRemote {
        name: "app".into(),
        upstream: "ssh://git@127.0.0.1:1/app.git".into(),
        identity_file: None,
        known_host_key:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                .into(),
        extra_hosts: BTreeMap::new(),
        allow_force_push: false,
        allow_non_commit_refs: false,
    };
    let config = GitGateConfig {
        mirrors_dir: dir.into(),
        remotes: vec![remote],
        hook_command: vec!["/bin/false".into()],
        audit: None,
    };
    GitGate::new(config, Scanner::default()).unwrap()
}

/// Feed `input` to the gate, close the write side, and collect the answer.
fn exchange(rt: &tokio::runtime::Runtime, gate: &Arc<GitGate>, input: Vec<u8>) -> Vec<u8> {
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 17);
        let task = tokio::spawn({
            let gate = gate.clone();
            async move { gate.serve(server, "proptest".into()).await }
        });
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        out
    })
}

fn is_err_packet(out: &[u8]) -> bool {
    let Some(len) = out
        .get(..4)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| usize::from_str_radix(h, 16).ok())
    else {
        return false;
    };
    len == out.len() && out[4..].starts_with(b"ERR ")
}

/// Requests that could reach a real service: those are not for this test.
fn names_a_service_for_app(input: &[u8]) -> bool {
    input.windows(9).any(|w| w == b"-pack /ap")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_with_an_err_packet(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assume!(!names_a_service_for_app(&input));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let out = exchange(&rt, &shared_gate(), input);
        prop_assert!(is_err_packet(&out), "not an ERR packet: {:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn well_framed_garbage_requests_are_refused(
        service in "(git-upload-pack|git-receive-pack|git-upload-archive|[a-z-]{0,20})",
        path in "[ -~]{0,40}",
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut payload = format!("{service} {path}").into_bytes();
        payload.extend_from_slice(&tail);
        prop_assume!(!names_a_service_for_app(&payload));
        let mut input = format!("{:04x}", payload.len() + 4).into_bytes();
        input.extend_from_slice(&payload);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let out = exchange(&rt, &shared_gate(), input);
        prop_assert!(is_err_packet(&out), "not an ERR packet: {:?}", String::from_utf8_lossy(&out));
    }
}

#[test]
fn truncated_length_prefix_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = exchange(&rt, &gate(dir.path()), b"00".to_vec());
    assert!(is_err_packet(&out));
    let out = exchange(
        &rt,
        &gate(dir.path()),
        b"0040git-upload-pack /app.git".to_vec(),
    );
    assert!(is_err_packet(&out), "{:?}", String::from_utf8_lossy(&out));
}
