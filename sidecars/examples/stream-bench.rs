//! Processes for `bench/stream.sh`.
//!
//! `stream-bench upstream DIR`: an HTTPS upstream on 127.0.0.1 for
//! `localhost` that answers every request with server-sent events shaped
//! like the Messages API's (`message_start`, `content_block_delta`…,
//! `message_stop`). Request headers `x-events: N` (default 100) and
//! `x-interval-ms: M` (default 10) set how many deltas and how far apart.
//! Every event carries `"sent_ns"`, the wall clock (ns since the epoch) just
//! before it was handed to the connection; `message_start` echoes the
//! `authorization` it received. Its CA in `DIR/upstream-ca.pem`, its port in
//! `DIR/upstream.port`.
//!
//! `stream-bench proxy DIR`: the guard proxy on 127.0.0.1 allowing
//! `localhost` with an egress route for it (`authorization: Bearer <token>`,
//! placeholder `bottle-placeholder-bench`), so responses go through the
//! streaming redactor; trusts `DIR/upstream-ca.pem`, audits to
//! `DIR/audit.jsonl`; the bottle CA in `DIR/bottle-ca.pem`, the port in
//! `DIR/proxy.port`.
#![allow(clippy::expect_used)] // a benchmark driver: setup failures end it

use bottle_sidecars::policy::{HostPattern, Policy, Route, TokenSource};
use bottle_sidecars::proxy::{serve_tcp, BottleCa, Proxy, ProxyConfig};
use bottle_sidecars::scanner::Scanner;
use bottle_test_harness::streaming::{Sender, StreamingUpstream};
use bottle_test_harness::tls::TestCa;
use bytes::Bytes;
use http::HeaderMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The real token the proxy injects (and must redact from responses).
const TOKEN: &str = "sk-bench-real-credential-0123456789abcdef";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = match args.as_slice() {
        [_, mode, dir] => (mode.as_str(), PathBuf::from(dir)),
        _ => {
            eprintln!("usage: stream-bench upstream|proxy DIR");
            std::process::exit(2);
        }
    };
    match mode {
        "upstream" => upstream(dir),
        "proxy" => proxy(dir),
        _ => {
            eprintln!("unknown mode `{mode}`");
            std::process::exit(2);
        }
    }
}

fn header_num(headers: &HeaderMap, name: &str, default: u64) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn send(tx: &Sender<Bytes>, kind: &str, data: serde_json::Value) -> bool {
    let mut data = data;
    data["sent_ns"] = serde_json::Value::from(now_ns().to_string());
    let event = format!("event: {kind}\ndata: {data}\n\n");
    tx.send(Bytes::from(event)).await.is_ok()
}

async fn feed(headers: HeaderMap, tx: Sender<Bytes>) {
    let events = header_num(&headers, "x-events", 100);
    let interval = Duration::from_millis(header_num(&headers, "x-interval-ms", 10));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let start = serde_json::json!({
        "type": "message_start",
        "message": { "id": "msg_bench", "role": "assistant", "model": "bench", "echo": auth },
    });
    if !send(&tx, "message_start", start).await {
        return;
    }
    for i in 0..events {
        tokio::time::sleep(interval).await;
        let delta = serde_json::json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": { "type": "text_delta", "text": format!("word {i} of a streamed answer ") },
        });
        if !send(&tx, "content_block_delta", delta).await {
            return;
        }
    }
    tokio::time::sleep(interval).await;
    let _ = send(
        &tx,
        "message_stop",
        serde_json::json!({ "type": "message_stop" }),
    )
    .await;
}

fn upstream(dir: PathBuf) {
    let ca = TestCa::new();
    ca.write_pem(&dir);
    let up = StreamingUpstream::https(&ca, &["localhost", "127.0.0.1"], feed);
    std::fs::write(dir.join("upstream.port"), up.port().to_string()).expect("write port");
    up.wait();
}

fn proxy(dir: PathBuf) {
    let upstream_ca = std::fs::read_to_string(dir.join("upstream-ca.pem")).expect("upstream CA");
    let port: u16 = std::fs::read_to_string(dir.join("upstream.port"))
        .expect("upstream port")
        .trim()
        .parse()
        .expect("port number");
    let localhost = HostPattern::parse("localhost").expect("pattern");
    let policy = Policy {
        allow: vec![localhost.clone()],
        allow_ports: vec![port],
        allow_ips: vec!["127.0.0.1".into(), "::1".into()],
        routes: vec![Route {
            name: "bench".into(),
            host: localhost,
            header: "authorization".into(),
            prefix: "Bearer ".into(),
            token: TokenSource::Command(vec!["echo".into(), TOKEN.into()]),
        }],
        ..Policy::default()
    };
    let mut config = ProxyConfig::new("bench-00000", policy);
    config.extra_root_pems = vec![upstream_ca];
    config.audit_path = Some(dir.join("audit.jsonl"));
    let ca = BottleCa::generate("bench-00000").expect("CA");
    std::fs::write(dir.join("bottle-ca.pem"), ca.cert_pem()).expect("write CA");
    let proxy = Proxy::new(config, ca, Scanner::builtin().expect("scanner")).expect("proxy");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::fs::write(dir.join("proxy.port"), port.to_string()).expect("write port");
        serve_tcp(proxy, listener).await;
    });
}
