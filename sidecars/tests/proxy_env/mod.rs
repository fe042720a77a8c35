//! What the proxy tests share: a proxy on loopback in front of local
//! upstreams. Names are resolved by a test resolver and every dial goes
//! through a dialer that refuses anything but loopback, so no packet can
//! leave the machine even if the proxy is wrong.
#![allow(clippy::unwrap_used, dead_code)] // test support: not every test crate uses every helper

use bottle_sidecars::policy::{DlpPolicy, HostPattern, Policy, RequestRule, Route, TokenSource};
use bottle_sidecars::proxy::audit::{read_verified, AuditRecord};
use bottle_sidecars::proxy::net::BoxFuture;
use bottle_sidecars::proxy::{serve_tcp, BottleCa, Dialer, Proxy, ProxyConfig, Resolver};
use bottle_sidecars::scanner::Scanner;
use bottle_test_harness::skip::require_programs;
use bottle_test_harness::tls::{TestCa, Upstream};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;

pub const AWS_KEY: &str = "AKIAFAKEAU4PCZL6HT4D";
pub const GH_TOKEN: &str = "ghp_FAKEq4LghH8rOvhUGZSBEIMiJI51WbVrk7gN";
pub const REAL_TOKEN: &str = "real-upstream-credential-0123456789";
pub const NAMES: [&str; 6] = [
    "allowed.test",
    "other.test",
    "routed.test",
    "rules.test",
    "passthrough.test",
    "h2.test",
];

/// Maps names to fixed addresses and records every lookup.
#[derive(Debug, Default)]
pub struct MapResolver {
    pub map: HashMap<String, Vec<IpAddr>>,
    pub asked: Mutex<Vec<String>>,
}

impl Resolver for MapResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.asked.lock().unwrap().push(host.to_string());
        let found = self
            .map
            .get(host)
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such test name"))
        })
    }
}

/// Dials loopback only; records every attempt (refused ones too).
#[derive(Debug, Default)]
pub struct LoopbackDialer {
    pub attempts: Mutex<Vec<SocketAddr>>,
}

impl Dialer for LoopbackDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        self.attempts.lock().unwrap().push(addr);
        Box::pin(async move {
            if !addr.ip().is_loopback() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "test dialer: loopback only",
                ));
            }
            TcpStream::connect(addr).await
        })
    }
}

pub struct Env {
    pub rt: tokio::runtime::Runtime,
    pub proxy: Arc<Proxy>,
    pub proxy_url: String,
    pub upstream: Upstream,
    pub plain: Upstream,
    pub dir: tempfile::TempDir,
    pub bottle_ca: PathBuf,
    pub upstream_ca: PathBuf,
    pub audit: PathBuf,
    pub resolver: Arc<MapResolver>,
    pub dialer: Arc<LoopbackDialer>,
}

pub fn pat(s: &str) -> HostPattern {
    HostPattern::parse(s).unwrap()
}

pub fn base_policy(port: u16, plain_port: u16, token_file: PathBuf) -> Policy {
    Policy {
        allow: [
            "allowed.test",
            "other.test",
            "routed.test",
            "rules.test",
            "passthrough.test",
            "h2.test",
            "loop.test",
            "meta.test",
        ]
        .iter()
        .map(|h| pat(h))
        .collect(),
        allow_ports: vec![port, plain_port],
        deny: Vec::new(),
        passthrough: vec![pat("passthrough.test")],
        allow_ips: vec!["127.0.0.1".into()],
        rules: vec![RequestRule {
            host: pat("rules.test"),
            methods: vec!["GET".into(), "HEAD".into()],
            paths: vec!["/".into()],
        }],
        routes: vec![Route {
            name: "api".into(),
            host: pat("routed.test"),
            header: "authorization".into(),
            prefix: "Bearer ".into(),
            token: TokenSource::File(token_file),
        }],
        dlp: DlpPolicy::default(),
        supervise: false,
    }
}

impl Env {
    pub fn new(tweak: impl FnOnce(&mut Policy)) -> Self {
        Self::with_config(tweak, |_| {})
    }

    /// Like [`Env::new`], with a last say over the proxy's config.
    pub fn with_config(
        tweak: impl FnOnce(&mut Policy),
        configure: impl FnOnce(&mut ProxyConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let upstream = Upstream::https(&ca, &NAMES);
        let plain = Upstream::http();
        let upstream_ca = ca.write_pem(dir.path());
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{REAL_TOKEN}\n")).unwrap();
        let mut policy = base_policy(upstream.port(), plain.port(), token_file);
        tweak(&mut policy);
        let mut map: HashMap<String, Vec<IpAddr>> = NAMES
            .iter()
            .map(|n| (n.to_string(), vec!["127.0.0.1".parse().unwrap()]))
            .collect();
        map.insert("loop.test".into(), vec!["127.0.0.2".parse().unwrap()]);
        map.insert("meta.test".into(), vec!["169.254.169.254".parse().unwrap()]);
        // Special-purpose ranges the SSRF guard must refuse (never dialed: the
        // dialer below is loopback-only and records every attempt).
        for (name, ip) in [
            ("doc4.test", "203.0.113.7"),
            ("doc6.test", "2001:db8::7"),
            ("doc3fff.test", "3fff::7"),
            ("teredo.test", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            ("nat64local.test", "64:ff9b:1::808:808"),
        ] {
            map.insert(name.into(), vec![ip.parse().unwrap()]);
        }
        // Nothing listens on 127.0.0.3: the dial fails and the next address is tried.
        map.insert(
            "fallback.test".into(),
            vec!["127.0.0.3".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        );
        let resolver = Arc::new(MapResolver {
            map,
            ..Default::default()
        });
        let dialer = Arc::new(LoopbackDialer::default());
        let audit = dir.path().join("audit.jsonl");
        let mut config = ProxyConfig::new("agent-test1", policy);
        config.extra_root_pems = vec![ca.cert_pem()];
        config.system_roots = false;
        config.audit_path = Some(audit.clone());
        config.resolver = resolver.clone();
        config.dialer = dialer.clone();
        configure(&mut config);
        let bottle = BottleCa::generate("agent-test1").unwrap();
        let bottle_ca = dir.path().join("bottle-ca.pem");
        std::fs::write(&bottle_ca, bottle.cert_pem()).unwrap();
        let proxy = Proxy::new(config, bottle, Scanner::builtin().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(serve_tcp(proxy.clone(), listener));
        Env {
            rt,
            proxy,
            proxy_url,
            upstream,
            plain,
            dir,
            bottle_ca,
            upstream_ca,
            audit,
            resolver,
            dialer,
        }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.upstream.port())
    }

    /// curl through the proxy trusting the bottle CA.
    pub fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--proxy",
                &self.proxy_url,
                "--cacert",
            ])
            .arg(&self.bottle_ca)
            .args(args)
            .output()
            .unwrap()
    }

    /// HTTP status of a curl run that used `-w %{http_code}` last.
    pub fn curl_status(&self, args: &[&str]) -> (String, String) {
        let mut all = args.to_vec();
        all.extend(["-o", "-", "-w", "\n%{http_code}"]);
        let out = self.curl(&all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    pub fn audit(&self) -> Vec<AuditRecord> {
        read_verified(&self.audit).unwrap()
    }

    pub fn audited_rule(&self, rule: &str) -> bool {
        self.audit().iter().any(|r| r.rule == rule)
    }
}

pub fn have_clients() -> bool {
    require_programs(&[
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("git", "git"),
        ("python3", "python3"),
    ])
}

/// Send one raw request line to the proxy and return the status code and body.
pub fn raw_request(proxy_url: &str, request_line: &str) -> (String, String) {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(proxy_url.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    let code = text.split(' ').nth(1).unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
