//! Route-host responses stream through the proxy (issue 15): server-sent
//! events reach the client one by one as the upstream sends them, with the
//! injected token redacted, and a response larger than the scanning cap
//! passes whole. Real curl through the real proxy to a local TLS upstream.
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

mod proxy_env;

use bottle_test_harness::streaming::{Sender, StreamingUpstream};
use bottle_test_harness::tls::TestCa;
use bytes::Bytes;
use http::HeaderMap;
use proxy_env::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EVENTS: usize = 6;

/// The token the upstream received, from `authorization: Bearer …`.
fn injected(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

/// An env whose route host `routed.test` is `upstream` (made by `make`,
/// given the CA it must use).
fn env_with(make: impl FnOnce(&TestCa) -> StreamingUpstream) -> (Env, StreamingUpstream) {
    let ca = TestCa::new();
    let upstream = make(&ca);
    let port = upstream.port();
    let env = Env::with_config(
        |p| p.allow_ports.push(port),
        |c| {
            c.extra_root_pems.push(ca.cert_pem());
            // A small scanning cap: the large response below is over it.
            c.body_cap = 1 << 20;
        },
    );
    (env, upstream)
}

/// Start curl (`-N`: no output buffering) through the proxy.
fn curl_stream(env: &Env, extra: &[&str], url: &str) -> std::process::Child {
    Command::new("curl")
        .args(["-sS", "-N", "--max-time", "30", "--proxy", &env.proxy_url])
        .arg("--cacert")
        .arg(&env.bottle_ca)
        .args(["-H", "Authorization: Bearer bottle-placeholder-api"])
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sse_events_from_a_route_host_arrive_one_by_one_with_the_token_redacted() {
    if !have_clients() {
        return;
    }
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let first_seen = Arc::new(AtomicBool::new(false));
    let (feed_sent, feed_seen) = (sent.clone(), first_seen.clone());
    let (env, upstream) = env_with(move |ca| {
        StreamingUpstream::https(ca, &["routed.test"], move |headers, tx: Sender<Bytes>| {
            let (sent, seen) = (feed_sent.clone(), feed_seen.clone());
            async move {
                let token = injected(&headers);
                for i in 0..EVENTS {
                    if i == 1 {
                        // Hold the second event until the client has the
                        // first (10 s at most): a proxy that buffers the
                        // response never delivers it while we wait.
                        let start = Instant::now();
                        while !seen.load(Ordering::Acquire)
                            && start.elapsed() < Duration::from_secs(10)
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    } else if i > 1 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let text = if i == 2 {
                        format!("the key is {token}")
                    } else {
                        format!("part {i}")
                    };
                    let event = format!(
                        "event: content_block_delta\ndata: {}\n\n",
                        serde_json::json!({ "index": i, "delta": { "text": text } })
                    );
                    sent.lock().unwrap().push(Instant::now());
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                }
            }
        })
    });
    let url = format!("https://routed.test:{}/v1/messages", upstream.port());
    for version in ["--http1.1", "--http2"] {
        sent.lock().unwrap().clear();
        first_seen.store(false, Ordering::Release);
        let mut child = curl_stream(&env, &[version], &url);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut events: Vec<(Instant, String)> = Vec::new();
        let mut event = String::new();
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 {
            if line == "\n" {
                events.push((Instant::now(), std::mem::take(&mut event)));
                first_seen.store(true, Ordering::Release);
            } else {
                event.push_str(&line);
            }
            line.clear();
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(child.wait().unwrap().success(), "{version}: {err}");
        let sent = sent.lock().unwrap().clone();
        assert_eq!(events.len(), EVENTS, "{version}: {events:?}");
        assert_eq!(sent.len(), EVENTS);
        for i in 0..EVENTS - 1 {
            assert!(
                events[i].0 < sent[i + 1],
                "{version}: event {i} reached the client only after the upstream sent event {}",
                i + 1
            );
        }
        let all: String = events.iter().map(|(_, e)| e.as_str()).collect();
        assert!(!all.contains(REAL_TOKEN), "{version}: {all}");
        assert!(
            events[2].1.contains("the key is bottle-placeholder-api"),
            "{version}: {all}"
        );
        assert!(events[5].1.contains("part 5"), "{version}: {all}");
    }
    let log = std::fs::read_to_string(&env.audit).unwrap();
    assert!(!log.contains(REAL_TOKEN));
    assert!(env.audited_rule("route"));
}

#[test]
fn a_route_response_larger_than_the_scanning_cap_streams_whole_and_redacted() {
    if !have_clients() {
        return;
    }
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 128; // 8 MiB, eight times the cap
    let (env, upstream) = env_with(|ca| {
        StreamingUpstream::https(
            ca,
            &["routed.test"],
            |headers, tx: Sender<Bytes>| async move {
                let token = injected(&headers);
                for i in 0..CHUNKS {
                    // Every chunk ends with the first half of the token and the
                    // next begins with the rest.
                    let mut chunk = vec![b'.'; CHUNK];
                    let (head, tail) = token.as_bytes().split_at(token.len() / 2);
                    if i > 0 {
                        chunk[..tail.len()].copy_from_slice(tail);
                    }
                    if i + 1 < CHUNKS {
                        chunk[CHUNK - head.len()..].copy_from_slice(head);
                    }
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
            },
        )
    });
    let url = format!("https://routed.test:{}/download", upstream.port());
    let mut child = curl_stream(&env, &["-w", "\n%{http_code}"], &url);
    let mut body = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut body).unwrap();
    assert!(child.wait().unwrap().success());
    let text = String::from_utf8(body).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{}", &body[..body.len().min(300)]);
    assert!(!body.contains(REAL_TOKEN));
    let placeholder = "bottle-placeholder-api";
    assert_eq!(body.matches(placeholder).count(), CHUNKS - 1);
    assert_eq!(
        body.len(),
        CHUNK * CHUNKS + (CHUNKS - 1) * placeholder.len() - (CHUNKS - 1) * REAL_TOKEN.len()
    );
}

/// gzip of `data`.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn compressed_route_responses_are_still_decoded_and_redacted_or_refused() {
    if !have_clients() {
        return;
    }
    for (encoding, expect) in [("gzip", "200"), ("x-unknown", "502")] {
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", encoding.parse().unwrap());
        let (env, upstream) = env_with(|ca| {
            StreamingUpstream::https_with_headers(
                ca,
                &["routed.test"],
                headers,
                |headers, tx: Sender<Bytes>| async move {
                    let body = format!("token: {}\n", injected(&headers));
                    let _ = tx.send(Bytes::from(gzip(body.as_bytes()))).await;
                },
            )
        });
        let url = format!("https://routed.test:{}/z", upstream.port());
        let (code, body) =
            env.curl_status(&["-H", "Authorization: Bearer bottle-placeholder-api", &url]);
        assert_eq!(code, expect, "{encoding}: {body}");
        assert!(!body.contains(REAL_TOKEN), "{encoding}: {body}");
        if expect == "200" {
            assert_eq!(body, "token: bottle-placeholder-api\n", "{encoding}");
        } else {
            assert!(body.contains("response-unscannable"), "{encoding}: {body}");
        }
    }
}
