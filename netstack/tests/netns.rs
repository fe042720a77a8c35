//! Real tools in a network namespace whose only link is a TAP to our stack.
//!
//! Needs root, `/dev/net/tun`, iproute2, dnsutils (dig), curl, udhcpc,
//! netcat-openbsd and a `ping` (iputils-ping or busybox). Skips otherwise
//! (fails in CI, where `BOTTLE_TEST_STRICT=1`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bottle_netstack::sys::TapMode;
use bottle_netstack::{spawn, Forward, GuestStream, NetConfig, NetstackHandle, TapTransport};
use bottle_test_harness::netns::{have_tun, Netns};
use bottle_test_harness::skip::{require, require_programs, require_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GW: &str = "10.0.2.2";

fn ready() -> bool {
    require_root("netstack namespace tests")
        && require(have_tun(), "/dev/net/tun is missing (modprobe tun)")
        && require_programs(&[
            ("ip", "iproute2"),
            ("dig", "dnsutils"),
            ("curl", "curl"),
            ("udhcpc", "udhcpc"),
            ("nc", "netcat-openbsd"),
        ])
        && require(
            ping().is_some(),
            "no ping (apt-get install iputils-ping or busybox-static)",
        )
}

/// `ping` or `busybox ping`.
fn ping() -> Option<Vec<&'static str>> {
    if bottle_test_harness::skip::have_program("ping") {
        Some(vec!["ping"])
    } else if bottle_test_harness::skip::have_program("busybox") {
        Some(vec!["busybox", "ping"])
    } else {
        None
    }
}

struct Lab {
    // Field order matters: the stack stops before the namespace goes away.
    stack: NetstackHandle,
    ns: Netns,
}

impl Lab {
    fn start(prefix: &str, forwards: BTreeMap<u16, Forward>, configure: bool) -> Lab {
        Lab::start_as(prefix, forwards, configure, TapMode::Plain)
    }

    fn start_as(
        prefix: &str,
        forwards: BTreeMap<u16, Forward>,
        configure: bool,
        mode: TapMode,
    ) -> Lab {
        let ns = Netns::new(prefix).expect("create namespace");
        let tap = TapTransport::open_in_netns_as(&ns.path(), "tap0", mode)
            .expect("open TAP in namespace");
        let stack = spawn(NetConfig::default(), tap, forwards).expect("start netstack");
        if configure {
            ns.configure("tap0", "10.0.2.15/24", GW, 1500)
                .expect("configure tap0");
        } else {
            ns.run(&["ip", "link", "set", "tap0", "up"])
                .expect("tap0 up");
        }
        Lab { stack, ns }
    }

    /// Runs `argv` in the namespace without blocking the runtime.
    async fn run(&self, argv: &[&str]) -> std::process::Output {
        let mut cmd = tokio::process::Command::from(self.ns.command(argv[0]));
        cmd.args(&argv[1..]).kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("command hung")
            .expect("command runs")
    }

    async fn stdout(&self, argv: &[&str]) -> String {
        String::from_utf8_lossy(&self.run(argv).await.stdout).into_owned()
    }

    /// What `curl` in the namespace prints for `url`.
    async fn curl(&self, url: &str) -> String {
        self.stdout(&["curl", "-sS", "--max-time", "10", url]).await
    }
}

/// Answers one HTTP request with the path it asked for.
fn http_handler() -> Forward {
    Forward::Handler(Arc::new(|mut s: GuestStream, _info| {
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("?").to_owned();
            let body = format!("hello from handler {path}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }))
}

fn echo_handler() -> Forward {
    Forward::Handler(Arc::new(|mut s: GuestStream, _info| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        });
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_client_gets_the_one_lease() {
    if !ready() {
        return;
    }
    let lab = Lab::start("dhcp", BTreeMap::new(), false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lease");
    let script = dir.path().join("script.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip router=$router dns=$dns subnet=$subnet mtu=$mtu\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let res = lab
        .run(&[
            "udhcpc",
            "-i",
            "tap0",
            "-n",
            "-q",
            "-f",
            "-t",
            "4",
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
        ])
        .await;
    let lease = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        res.status.success(),
        "udhcpc failed: {}\n{lease}",
        String::from_utf8_lossy(&res.stderr)
    );
    let bound = lease
        .lines()
        .find(|l| l.starts_with("bound"))
        .expect("a bound event");
    assert_eq!(
        bound,
        "bound ip=10.0.2.15 router=10.0.2.2 dns=10.0.2.2 subnet=255.255.255.0 mtu=1500"
    );
    assert!(lab.stack.counters().dhcp_replies >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_proxy_internal_and_nothing_else() {
    if !ready() {
        return;
    }
    let lab = Lab::start("dns", BTreeMap::new(), true);
    let dig = |args: &'static [&'static str]| {
        let mut v = vec!["dig", "@10.0.2.2", "+time=2", "+tries=2"];
        v.extend_from_slice(args);
        v
    };
    assert_eq!(
        lab.stdout(&dig(&["+short", "proxy.internal"])).await.trim(),
        GW
    );
    assert_eq!(
        lab.stdout(&dig(&["+short", "+tcp", "PROXY.internal"]))
            .await
            .trim(),
        GW
    );
    assert!(lab
        .stdout(&dig(&["example.com"]))
        .await
        .contains("status: NXDOMAIN"));
    assert!(lab
        .stdout(&dig(&["proxy.internal.example.com"]))
        .await
        .contains("status: NXDOMAIN"));
    let aaaa = lab.stdout(&dig(&["AAAA", "proxy.internal"])).await;
    assert!(
        aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"),
        "{aaaa}"
    );
    assert!(lab
        .stdout(&dig(&["MX", "proxy.internal"]))
        .await
        .contains("status: NOTIMP"));
    // Nothing is forwarded: another resolver is simply unreachable.
    let other = lab
        .run(&["dig", "@1.1.1.1", "+time=1", "+tries=1", "x"])
        .await;
    assert!(!other.status.success());
    assert!(!String::from_utf8_lossy(&other.stdout).contains("status:"));
    let c = lab.stack.counters();
    assert!(c.dns_answered >= 6 && c.drop_other_address >= 1, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_in_process_handler_by_name() {
    if !ready() {
        return;
    }
    let forwards = BTreeMap::from([(8080, http_handler()), (7, echo_handler())]);
    let lab = Lab::start("curl", forwards, true);
    lab.ns.set_resolv_conf("nameserver 10.0.2.2\n").unwrap();
    let body = lab.curl("http://proxy.internal:8080/hello").await;
    assert_eq!(body, "hello from handler /hello\n");
    // Raw bytes and half-close through the echo handler.
    let mut cmd = tokio::process::Command::from(lab.ns.command("nc"));
    cmd.args(["-N", "-w", "5", GW, "7"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.kill_on_drop(true).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ping through the stack\n")
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ping through the stack\n"
    );
    let c = lab.stack.counters();
    assert!(c.flows_accepted >= 2, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ports_and_addresses_are_refused() {
    if !ready() {
        return;
    }
    // A listener of our own on the host's loopback: the guest must never reach it.
    let bait = TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let port = bait.local_addr().unwrap().port().to_string();
    let lab = Lab::start("refuse", BTreeMap::from([(8080, http_handler())]), true);
    let refused = lab
        .run(&["curl", "-sS", "--max-time", "5", "http://10.0.2.2:81/"])
        .await;
    assert_eq!(
        refused.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for host in [
        "127.0.0.1",
        "10.0.2.2",
        "10.0.2.3",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
    ] {
        let url = format!("http://{host}:{port}/");
        let res = lab.run(&["curl", "-sS", "--max-time", "3", &url]).await;
        assert!(!res.status.success(), "{url} answered");
    }
    let metadata = lab
        .run(&["curl", "-sS", "--max-time", "3", "http://169.254.169.254/"])
        .await;
    assert!(!metadata.status.success());
    assert!(bait.accept().is_err(), "the host listener got a connection");
    let c = lab.stack.counters();
    assert!(c.rst_other_address >= 5, "{c:?}");
    assert!(c.rst_closed_port >= 1, "{c:?}");
    assert_eq!(c.refusals()["tcp-other-address"], c.rst_other_address);
    assert_eq!(c.flows_accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_gets_nothing() {
    if !ready() {
        return;
    }
    let lab = Lab::start("ipv6", BTreeMap::from([(8080, http_handler())]), true);
    let res = lab
        .run(&[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://[fe80::2%tap0]:8080/",
        ])
        .await;
    assert!(!res.status.success());
    let res = lab
        .run(&["curl", "-sS", "--max-time", "3", "http://[fd00::2]:8080/"])
        .await;
    assert!(!res.status.success());
    assert!(lab.stack.counters().drop_ipv6 > 0, "no IPv6 frame was seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reaches_the_gateway_and_nothing_else() {
    if !ready() {
        return;
    }
    let lab = Lab::start("ping", BTreeMap::new(), true);
    let ping = ping().unwrap();
    let with = |target: &'static str, wait: &'static str| {
        let mut v = ping.clone();
        v.extend_from_slice(&["-c", "2", "-W", wait, target]);
        v
    };
    let ok = lab.run(&with(GW, "3")).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    for target in ["10.0.2.3", "1.1.1.1", "169.254.169.254"] {
        assert!(
            !lab.run(&with(target, "1")).await.status.success(),
            "{target} answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_flows_all_echo() {
    if !ready() {
        return;
    }
    const FLOWS: usize = 500;
    const THREADS: usize = 5;
    let lab = Lab::start("flows", BTreeMap::from([(7, echo_handler())]), true);
    let path = lab.ns.path();
    let gw: SocketAddr = "10.0.2.2:7".parse().unwrap();
    let streams = tokio::task::spawn_blocking(move || {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    bottle_netstack::sys::in_netns(&path, || {
                        (0..FLOWS / THREADS)
                            .map(|_| TcpStream::connect_timeout(&gw, Duration::from_secs(20)))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(
                w.join()
                    .unwrap()
                    .unwrap()
                    .expect("connect through the stack"),
            );
        }
        all
    })
    .await
    .unwrap();
    assert_eq!(streams.len(), FLOWS);
    let echoed = tokio::task::spawn_blocking(move || {
        let mut streams = streams;
        for (i, s) in streams.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(format!("flow {i:04}\n").as_bytes()).unwrap();
        }
        // Every flow is still open here: read each answer back.
        for (i, s) in streams.iter_mut().enumerate() {
            let mut got = [0u8; 10];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, format!("flow {i:04}\n").as_bytes());
        }
        streams
    })
    .await
    .unwrap();
    assert_eq!(echoed.len(), FLOWS);
    let c = lab.stack.counters();
    assert_eq!(c.flows_accepted, FLOWS as u64, "{c:?}");
    assert_eq!(c.flows_rejected, 0);
    // All of them are still open here.
    assert_eq!(c.flows_active, FLOWS as u64);
    drop(echoed);
    wait_flows_closed(&lab).await;
}

/// Runs `f` on a thread inside the lab's namespace.
async fn in_guest<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = lab.ns.path();
    tokio::task::spawn_blocking(move || bottle_netstack::sys::in_netns(&path, f).unwrap())
        .await
        .unwrap()
}

async fn wait_flows_closed(lab: &Lab) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lab.stack.counters().flows_active != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "flows never closed: {:?}",
            lab.stack.counters()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_forward_moves_megabytes_both_ways_with_half_close() {
    if !ready() {
        return;
    }
    for mode in [TapMode::Plain, TapMode::ChecksumOffload] {
        dial_megabytes(mode).await;
    }
}

async fn dial_megabytes(mode: TapMode) {
    // The host end is a listener of our own on loopback: it reads all the
    // guest sends until the guest's FIN, then answers with its own bytes.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = host.local_addr().unwrap();
    let up = pattern(8 << 20, 1);
    let down = pattern(6 << 20, 7);
    let server = {
        let (up, down) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            let (mut s, _) = host.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(got == up, "host got {} bytes, not the guest's", got.len());
            s.write_all(&down).unwrap();
        })
    };
    let lab = Lab::start_as(
        "dial",
        BTreeMap::from([(9000, Forward::Dial(addr))]),
        true,
        mode,
    );
    let got = in_guest(&lab, move || {
        let mut s =
            TcpStream::connect_timeout(&"10.0.2.2:9000".parse().unwrap(), Duration::from_secs(10))
                .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&up).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    })
    .await;
    server.join().unwrap();
    assert!(
        got == down,
        "guest got {} bytes, not the host's ({mode:?})",
        got.len()
    );
    wait_flows_closed(&lab).await;
    assert_eq!(lab.stack.counters().flows_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_forward_resets_the_guest_when_the_host_refuses() {
    if !ready() {
        return;
    }
    // A port of our own that nobody listens on any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lab = Lab::start(
        "dialrst",
        BTreeMap::from([(9000, Forward::Dial(closed))]),
        true,
    );
    // The stack accepts before it dials, so the reset can reach the guest
    // while its connect is still returning, or at its first read.
    let read = in_guest(&lab, || {
        let mut s =
            TcpStream::connect_timeout(&"10.0.2.2:9000".parse().unwrap(), Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.read(&mut [0u8; 16])
    })
    .await;
    let err = read.expect_err("the guest must see the refused dial, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    wait_flows_closed(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_offload_tap_still_answers_dns_and_http() {
    if !ready() {
        return;
    }
    // With offload on, the namespace's kernel sends UDP and TCP with partial
    // checksums: DNS (UDP and TCP) and a handler must work all the same.
    let lab = Lab::start_as(
        "offload",
        BTreeMap::from([(8080, http_handler())]),
        true,
        TapMode::ChecksumOffload,
    );
    lab.ns.set_resolv_conf("nameserver 10.0.2.2\n").unwrap();
    for transport in ["+notcp", "+tcp"] {
        let dig = lab
            .stdout(&[
                "dig",
                "@10.0.2.2",
                "+time=2",
                "+tries=2",
                "+short",
                transport,
                "proxy.internal",
            ])
            .await;
        assert_eq!(dig.trim(), GW, "dig {transport}");
    }
    let body = lab.curl("http://proxy.internal:8080/offload").await;
    assert_eq!(body, "hello from handler /offload\n");
    let c = lab.stack.counters();
    assert_eq!(c.drop_malformed, 0, "{c:?}");
}
