//! The escape suite, shared by both backends: every way out we could think
//! of, run inside the bottle by the agent's own shell. Each probe prints one
//! `name: result` line; [`check`] asserts every line.

/// Probes for busybox `sh` (the tiny image) and bash alike. `HOST_PORT` is
/// replaced by a port the test listens on at the host's 127.0.0.1.
///
/// `other-resolver`, `direct-ip` and `metadata` aim at [`DECOY_PRIVATE`] and
/// [`DECOY_LINK_LOCAL`]: addresses of a namespace the test made, with
/// listeners that record any packet, so a guard that wrongly lets them
/// through reaches the test's own decoy and nothing else.
///
/// `agent-channel`: the agent user tries to become the guest agent, dialing
/// the host channel (Docker's socket; a VM's vsock port and virtio port) with
/// the guest agent's own binary; "open" means the host accepted it.
pub const SCRIPT: &str = r#"
probe() { name=$1; shift; if "$@" </dev/null >/dev/null 2>&1; then echo "$name: open"; else echo "$name: fails"; fi; }
probe other-name nslookup -type=a example.com
probe other-resolver nslookup -type=a example.com DECOY_PRIVATE
probe direct-ip timeout 5 nc -w 3 DECOY_PRIVATE 80
probe metadata timeout 5 nc -w 3 DECOY_LINK_LOCAL 80
probe host-loopback timeout 5 nc -w 3 127.0.0.1 HOST_PORT
probe proxy-other-port timeout 5 nc -w 3 proxy.internal 22
probe proxy-port timeout 5 nc -w 3 proxy.internal 8888
probe docker-socket test -e /var/run/docker.sock
probe agent-channel sh -c 'if [ -e /run/bottle/agent.sock ]; then set -- unix:/run/bottle/agent.sock; else set -- vsock:1024 virtio-port:agent; fi; for t; do timeout 2 /sbin/bottle-guest serve --connect "$t" 2>/dev/null | grep -q BOTTLE-GUEST-READY && exit 0; done; exit 1'
if [ -e /proc/net/if_inet6 ] && grep -qv ' lo$' /proc/net/if_inet6; then echo "ipv6: present"; else echo "ipv6: none"; fi
echo "unlisted: $(wget -q -O - http://unlisted.example/ 2>&1 | head -n1)"
echo "traversal: $(wget -q -O - 'http://allowed.localhost/a/..;/b' 2>&1 | head -n1)"
echo "double-encoded: $(wget -q -O - 'http://allowed.localhost/a/%252e%252e/b' 2>&1 | head -n1)"
"#;

/// A private address (RFC 1918) held by the decoy namespace.
pub const DECOY_PRIVATE: &str = "10.200.0.1";
/// A link-local address (the cloud-metadata range) held by the decoy.
pub const DECOY_LINK_LOCAL: &str = "169.254.200.1";

/// The script with the tripwire's port and the decoy addresses filled in.
pub fn script(tripwire: &Tripwire) -> String {
    SCRIPT
        .replace("HOST_PORT", &tripwire.port().to_string())
        .replace("DECOY_PRIVATE", DECOY_PRIVATE)
        .replace("DECOY_LINK_LOCAL", DECOY_LINK_LOCAL)
}

/// Assert every probe's result.
pub fn check(stdout: &str) {
    for expected in [
        "other-name: fails",
        "other-resolver: fails",
        "direct-ip: fails",
        "metadata: fails",
        "host-loopback: fails",
        "proxy-other-port: fails",
        "proxy-port: open",
        "docker-socket: fails",
        "agent-channel: fails",
        "ipv6: none",
    ] {
        assert!(
            stdout.contains(expected),
            "expected `{expected}` in:\n{stdout}"
        );
    }
    for probe in ["unlisted", "traversal", "double-encoded"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{probe}: ")))
            .unwrap_or_else(|| panic!("no `{probe}` line in:\n{stdout}"));
        assert!(
            line.contains("403"),
            "the proxy refuses `{probe}` with 403 before dialling:\n{stdout}"
        );
    }
}

/// What must never be reached from a bottle: a listener on the host's
/// loopback, and a decoy network namespace behind a veth pair holding
/// [`DECOY_PRIVATE`] and [`DECOY_LINK_LOCAL`] (host routes to both go
/// through the veth), answering TCP 80 and UDP 53 and recording every hit.
pub struct Tripwire {
    listener: std::net::TcpListener,
    _decoy: bottle_test_harness::netns::ChildGuard,
    hits: std::path::PathBuf,
    _dir: tempfile::TempDir,
    host_link: String,
    _ns: bottle_test_harness::netns::Netns,
}

/// Records every TCP connection to :80 and UDP datagram to :53, one line
/// each, in the file named by argv[1]; prints `ready` once listening.
const DECOY: &str = r#"
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 80)); tcp.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 53))
def tcp_loop():
    while True:
        c, peer = tcp.accept(); log.write("tcp %s\n" % (peer,)); c.close()
def udp_loop():
    while True:
        _, peer = udp.recvfrom(4096); log.write("udp %s\n" % (peer,))
threading.Thread(target=tcp_loop, daemon=True).start()
print("ready", flush=True)
udp_loop()
"#;

impl Tripwire {
    /// `None` (after a skip report) when namespaces cannot be made here.
    pub fn new() -> Option<Self> {
        use bottle_test_harness::netns::{ChildGuard, Netns};
        use std::io::BufRead;
        if !super::skip::require(
            super::skip::is_root(),
            "the escape suite's decoy namespace needs root (ip netns, veth)",
        ) || !super::skip::require_programs(&[("ip", "iproute2"), ("python3", "python3")])
        {
            return None;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tripwire");
        listener.set_nonblocking(true).expect("nonblocking");
        let ns = Netns::new("decoy").expect("make the decoy namespace");
        let n = std::process::id() % 100_000;
        let (host_link, ns_link) = (format!("btdh{n}"), format!("btdn{n}"));
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_link])
            .output();
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ]);
        ip(&["link", "set", &ns_link, "netns", ns.name()]);
        ip(&["addr", "add", "10.200.0.2/24", "dev", &host_link]);
        ip(&["addr", "add", "169.254.200.2/24", "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        for cmd in [
            vec!["ip", "addr", "add", "10.200.0.1/24", "dev", &ns_link],
            vec!["ip", "addr", "add", "169.254.200.1/24", "dev", &ns_link],
            vec!["ip", "link", "set", &ns_link, "up"],
        ] {
            ns.run(&cmd).expect("configure the decoy namespace");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let hits = dir.path().join("hits");
        std::fs::write(&hits, "").expect("hits file");
        let mut child = ns
            .command("python3")
            .args(["-c", DECOY])
            .arg(&hits)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the decoy listeners");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("decoy stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("decoy ready");
        assert_eq!(line.trim(), "ready", "the decoy did not start");
        let tripwire = Self {
            listener,
            _decoy: ChildGuard(child),
            hits,
            _dir: dir,
            host_link,
            _ns: ns,
        };
        tripwire.self_test();
        Some(tripwire)
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    /// The decoy must record what reaches it, or its silence proves nothing:
    /// reach it once from the host, then forget that hit.
    fn self_test(&self) {
        let addr = format!("{DECOY_PRIVATE}:80");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = false;
        while !seen && std::time::Instant::now() < deadline {
            let _ = std::net::TcpStream::connect_timeout(
                &addr.parse().expect("decoy address"),
                std::time::Duration::from_secs(1),
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
            seen = !std::fs::read_to_string(&self.hits)
                .unwrap_or_default()
                .is_empty();
        }
        assert!(
            seen,
            "the decoy namespace records no connection from the host"
        );
        std::fs::write(&self.hits, "").expect("reset hits");
    }

    /// Panics if anything reached the loopback listener or the decoy.
    pub fn assert_untouched(&self) {
        match self.listener.accept() {
            Ok((_, peer)) => panic!("the host's loopback listener got a connection from {peer}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
        let hits = std::fs::read_to_string(&self.hits).unwrap_or_default();
        assert!(
            hits.is_empty(),
            "the decoy namespace ({DECOY_PRIVATE}, {DECOY_LINK_LOCAL}) was reached from the bottle:\n{hits}"
        );
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}
