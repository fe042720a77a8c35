//! Processes for `bench/proxy.sh`.
//!
//! `proxy-bench upstream DIR`: an HTTPS echo upstream on 127.0.0.1 for
//! `localhost`, its CA in `DIR/upstream-ca.pem`, its port in `DIR/upstream.port`.
//!
//! `proxy-bench proxy DIR`: the guard proxy on 127.0.0.1 allowing `localhost`
//! (and 127.0.0.1 / ::1 through `allow_ips`), trusting `DIR/upstream-ca.pem`,
//! auditing to `DIR/audit.jsonl` (`PROXY_AUDIT=off`: no audit log, to
//! measure what it costs; `PROXY_PASSTHROUGH=1`: `localhost` spliced, not
//! intercepted, to measure the extra hop alone); the bottle CA in `DIR/bottle-ca.pem`, the
//! port in `DIR/proxy.port`. It serves on the proxy's own thread, as in a
//! bundle (`PROXY_WORKERS=N`: on a runtime of N worker threads instead).
#![allow(clippy::expect_used)] // a benchmark driver: setup failures end it

use bottle_sidecars::policy::{HostPattern, Policy};
use bottle_sidecars::proxy::{serve_tcp, BottleCa, Proxy, ProxyConfig, ProxyRuntime};
use bottle_sidecars::scanner::Scanner;
use bottle_test_harness::tls::{TestCa, Upstream};
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = match args.as_slice() {
        [_, mode, dir] => (mode.as_str(), PathBuf::from(dir)),
        _ => {
            eprintln!("usage: proxy-bench upstream|proxy DIR");
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

fn upstream(dir: PathBuf) {
    let ca = TestCa::new();
    ca.write_pem(&dir);
    let up = Upstream::https_with(&ca, &["localhost", "127.0.0.1"], false);
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
    let policy = Policy {
        allow: vec![HostPattern::parse("localhost").expect("pattern")],
        allow_ports: vec![port],
        allow_ips: vec!["127.0.0.1".into(), "::1".into()],
        ..Policy::default()
    };
    // PROXY_PASSTHROUGH=1 splices the upstream's TLS instead of
    // intercepting it: the cost of the extra hop alone.
    let policy = if std::env::var("PROXY_PASSTHROUGH").as_deref() == Ok("1") {
        Policy {
            passthrough: vec![HostPattern::parse("localhost").expect("pattern")],
            ..policy
        }
    } else {
        policy
    };
    let mut config = ProxyConfig::new("bench-00000", policy);
    config.extra_root_pems = vec![upstream_ca];
    // PROXY_AUDIT=off measures the proxy without its audit log.
    if std::env::var("PROXY_AUDIT").as_deref() != Ok("off") {
        config.audit_path = Some(dir.join("audit.jsonl"));
    }
    let ca = BottleCa::generate("bench-00000").expect("CA");
    std::fs::write(dir.join("bottle-ca.pem"), ca.cert_pem()).expect("write CA");
    let proxy = Proxy::new(config, ca, Scanner::builtin().expect("scanner")).expect("proxy");
    // The proxy runs as a bundle runs it: on a thread of its own
    // (`ProxyRuntime`). PROXY_WORKERS=N runs it on a runtime of N worker
    // threads instead, to compare.
    let serve = async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::fs::write(dir.join("proxy.port"), port.to_string()).expect("write port");
        serve_tcp(proxy, listener).await;
    };
    match std::env::var("PROXY_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(serve),
        None => {
            let rt = ProxyRuntime::start().expect("proxy thread");
            let served = rt.spawn(serve);
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(served)
                .expect("proxy task");
        }
    }
}
