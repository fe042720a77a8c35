//! The audit log through the proxy (issue 13): the decision is on record
//! before anything is dialled and the exchange is completed however it ends;
//! a decision that cannot be recorded is not acted on; URLs are recorded
//! with secrets redacted; tunnels record their bytes. Every upstream is a
//! listener of the test's own on loopback.
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

mod proxy_env;

use bottle_sidecars::audit::{read_verified, AuditRecord, Event, Kind, Outcome};
use bottle_sidecars::policy::{DlpAction, DlpPolicy};
use proxy_env::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Poll the verified log until `found` picks a record (10 s at most).
fn wait_for(env: &Env, what: &str, found: impl Fn(&[AuditRecord]) -> bool) -> Vec<AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = env.audit();
        if found(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the audit log:\n{records:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain-HTTP upstream that accepts, reads the request head, sends
/// `answer` (possibly nothing) and then stalls; accepted streams are handed
/// to the test, which decides when they close.
fn stalling_upstream(answer: &'static [u8]) -> (u16, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(answer);
            if tx.send(stream).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

fn send_raw(env: &Env, request: &str) -> TcpStream {
    let mut conn = TcpStream::connect(env.proxy_url.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    conn
}

fn decided<'a>(records: &'a [AuditRecord], path: &str) -> Option<&'a AuditRecord> {
    records
        .iter()
        .find(|r| r.event == Event::Decided && r.path == path)
}

fn completion_of(records: &[AuditRecord], seq: Option<u64>) -> Option<&AuditRecord> {
    records
        .iter()
        .find(|r| r.event == Event::Completed && r.of == seq)
}

#[test]
fn a_stalled_upstream_still_leaves_the_decided_line() {
    let (port, accepted) = stalling_upstream(b"");
    let env = Env::new(|p| p.allow_ports.push(port));
    let _client = send_raw(
        &env,
        &format!("GET http://allowed.test:{port}/stall?x=1 HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"),
    );
    // The upstream has the request and will never answer…
    let _upstream = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    // …and the decision is on record all the same.
    let records = wait_for(&env, "decided line", |r| decided(r, "/stall").is_some());
    let line = decided(&records, "/stall").unwrap();
    assert_eq!(
        (line.kind, line.decision.as_str(), line.query.as_deref()),
        (Kind::Request, "allow", Some("x=1"))
    );
    assert!(line.seq.is_some());
    assert!(completion_of(&records, line.seq).is_none(), "{records:#?}");
}

#[test]
fn a_client_that_gives_up_leaves_decided_and_cancelled() {
    let (port, accepted) = stalling_upstream(b"");
    let env = Env::new(|p| p.allow_ports.push(port));
    let client = send_raw(
        &env,
        &format!(
            "GET http://allowed.test:{port}/gone HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
        ),
    );
    let _upstream = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(client);
    let records = wait_for(&env, "cancelled line", |r| {
        decided(r, "/gone").is_some_and(|d| completion_of(r, d.seq).is_some())
    });
    let seq = decided(&records, "/gone").unwrap().seq;
    let done = completion_of(&records, seq).unwrap();
    assert_eq!(done.outcome, Some(Outcome::Cancelled), "{done:?}");
    assert_eq!(done.status, None);
}

#[test]
fn a_client_that_leaves_mid_response_is_cancelled_with_the_bytes_it_got() {
    let (port, accepted) = stalling_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n0123456789",
    );
    let env = Env::new(|p| p.allow_ports.push(port));
    let mut client = send_raw(
        &env,
        &format!(
            "GET http://allowed.test:{port}/half HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
        ),
    );
    let _upstream = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"0123456789") {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    drop(client);
    let records = wait_for(&env, "cancelled line", |r| {
        decided(r, "/half").is_some_and(|d| completion_of(r, d.seq).is_some())
    });
    let done = completion_of(&records, decided(&records, "/half").unwrap().seq).unwrap();
    assert_eq!(
        (done.outcome, done.status, done.bytes_down),
        (Some(Outcome::Cancelled), Some(200), Some(10)),
        "{done:?}"
    );
}

#[test]
fn a_completed_request_records_status_bytes_and_duration() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let (code, body) = env.curl_status(&["--data", "hello", &env.url("allowed.test", "/done")]);
    assert_eq!(code, "200", "{body}");
    let records = wait_for(&env, "completed line", |r| {
        decided(r, "/done").is_some_and(|d| completion_of(r, d.seq).is_some())
    });
    let d = decided(&records, "/done").unwrap();
    assert_eq!((d.decision.as_str(), d.bytes), ("allow", 5));
    let done = completion_of(&records, d.seq).unwrap();
    assert_eq!(done.outcome, Some(Outcome::Ok));
    assert_eq!(done.status, Some(200));
    assert_eq!(done.bytes_up, Some(5));
    assert_eq!(done.bytes_down, Some(body.len() as u64));
    assert!(done.duration_ms.is_some());
}

#[test]
fn a_decision_that_cannot_be_recorded_is_refused_and_nothing_is_dialled() {
    if !have_clients() {
        return;
    }
    // Every write to the log fails with ENOSPC, as on a full disk.
    let full = tempfile::tempdir().unwrap();
    let audit = full.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &audit).unwrap();
    let env = Env::with_config(|_| {}, |c| c.audit_path = Some(audit.clone()));
    for url in [
        env.url("allowed.test", "/x"),
        format!("http://allowed.test:{}/x", env.plain.port()),
    ] {
        let (code, body) = env.curl_status(&[&url]);
        assert_eq!(code, "503", "{url}: {body}");
        assert!(
            body.contains("audit log could not be written") && body.contains("nothing was sent"),
            "{body}"
        );
        assert!(body.contains("rule: audit-unavailable"), "{body}");
    }
    // A passthrough tunnel is closed before its dial.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--proxy",
            &env.proxy_url,
            "--cacert",
        ])
        .arg(&env.upstream_ca)
        .arg(env.url("passthrough.test", "/p"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        env.dialer.attempts.lock().unwrap().is_empty(),
        "dialled although the decision was not recorded"
    );
    assert!(env.upstream.seen().is_empty() && env.plain.seen().is_empty());
    // Refusals are still refusals.
    let (code, _) = env.curl_status(&[&env.url("evil.test", "/")]);
    assert_ne!(code, "200");
}

#[test]
fn secrets_in_the_url_are_redacted_in_the_log() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    // Blocked by DLP: the refusal is recorded, the secret is not.
    let blocked = env.url("allowed.test", &format!("/q?key={AWS_KEY}&page=2"));
    let (code, body) = env.curl_status(&[&blocked]);
    assert_eq!(code, "403", "{body}");
    let encoded: String = GH_TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    let in_path = env.url("allowed.test", &format!("/repo/{GH_TOKEN}/x?t={encoded}"));
    let (code, body) = env.curl_status(&[&in_path]);
    assert_eq!(code, "403", "{body}");
    let records = env.audit();
    let q = decided(&records, "/q").unwrap();
    assert_eq!(q.decision, "deny");
    assert_eq!(
        q.query.as_deref(),
        Some("key=[redacted:aws-access-key-id]&page=2")
    );
    let p = records
        .iter()
        .find(|r| r.path.starts_with("/repo/"))
        .unwrap();
    assert_eq!(p.path, "/repo/[redacted:github-pat]/x");
    assert!(
        p.query
            .as_deref()
            .is_some_and(|q| q.starts_with("t=[redacted:")),
        "{p:?}"
    );
    // Warn mode lets it through; the log still does not hold it.
    let env2 = Env::new(|p| {
        p.dlp = DlpPolicy {
            action: DlpAction::Warn,
            disable_rules: vec![],
            ..Default::default()
        }
    });
    let (code, body) = env2.curl_status(&[&env2.url("allowed.test", &format!("/w?key={AWS_KEY}"))]);
    assert_eq!(code, "200", "{body}");
    let w = decided(&env2.audit(), "/w").cloned().unwrap();
    assert_eq!(w.decision, "warn");
    assert_eq!(w.query.as_deref(), Some("key=[redacted:aws-access-key-id]"));
    for e in [&env, &env2] {
        let text = std::fs::read_to_string(&e.audit).unwrap();
        assert!(!text.contains(AWS_KEY) && !text.contains(GH_TOKEN) && !text.contains(&encoded));
    }
}

#[test]
fn a_passthrough_tunnel_records_its_bytes_both_ways() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            &env.proxy_url,
            "--cacert",
        ])
        .arg(&env.upstream_ca)
        .arg(env.url("passthrough.test", "/spliced"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = wait_for(&env, "completed tunnel", |r| {
        r.iter()
            .any(|l| l.kind == Kind::Tunnel && l.event == Event::Completed)
    });
    let d = records
        .iter()
        .find(|r| r.kind == Kind::Tunnel && r.event == Event::Decided)
        .unwrap();
    assert_eq!(
        (d.decision.as_str(), d.rule.as_str()),
        ("allow", "passthrough")
    );
    assert!(d.host.starts_with("passthrough.test:"), "{d:?}");
    let done = completion_of(&records, d.seq).unwrap();
    assert_eq!(done.outcome, Some(Outcome::Ok), "{done:?}");
    // A ClientHello and an HTTP request up; a certificate chain and a
    // response down.
    assert!(done.bytes_up.unwrap() > 300, "{done:?}");
    assert!(done.bytes_down.unwrap() > 1000, "{done:?}");
}

#[test]
fn the_log_rotates_at_its_cap_and_the_chain_verifies_across_files() {
    if !have_clients() {
        return;
    }
    let env = Env::with_config(
        |_| {},
        |c| {
            c.audit_max_bytes = 2048;
            c.audit_keep = 100;
        },
    );
    for i in 0..12 {
        env.curl_status(&[&env.url("allowed.test", &format!("/r{i}"))]);
    }
    let rotated = env.dir.path().join("audit.1.jsonl");
    assert!(rotated.exists(), "no rotation at a 2 KiB cap");
    let records = read_verified(&env.audit).unwrap();
    for i in 0..12 {
        assert!(
            decided(&records, &format!("/r{i}")).is_some(),
            "/r{i} missing"
        );
    }
    assert!(records
        .iter()
        .any(|r| r.kind == Kind::Log && r.event == Event::Rotated));
}
