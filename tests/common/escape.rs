//! The escape suite, shared by both backends: every way out we could think
//! of, run inside the bottle by the agent's own shell. Each probe prints one
//! `name: result` line; [`check`] asserts every line.

/// Probes for busybox `sh` (the tiny image) and bash alike. `HOST_PORT` is
/// replaced by a port the test listens on at the host's 127.0.0.1.
///
/// `agent-channel`: the agent user tries to become the guest agent, dialing
/// the host channel (Docker's socket; a VM's vsock port and virtio port) with
/// the guest agent's own binary; "open" means the host accepted it.
pub const SCRIPT: &str = r#"
probe() { name=$1; shift; if "$@" </dev/null >/dev/null 2>&1; then echo "$name: open"; else echo "$name: fails"; fi; }
probe other-name nslookup -type=a example.com
probe other-resolver nslookup -type=a example.com 10.200.0.1
probe direct-ip timeout 5 nc -w 3 10.200.0.1 80
probe metadata timeout 5 nc -w 3 169.254.169.254 80
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

/// The script with the host port filled in.
pub fn script(host_port: u16) -> String {
    SCRIPT.replace("HOST_PORT", &host_port.to_string())
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

/// A listener on the host's loopback that must never see a connection.
pub struct Tripwire {
    listener: std::net::TcpListener,
}

impl Tripwire {
    pub fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tripwire");
        listener.set_nonblocking(true).expect("nonblocking");
        Self { listener }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    /// Panics if anything connected.
    pub fn assert_untouched(&self) {
        match self.listener.accept() {
            Ok((_, peer)) => panic!("the host's loopback listener got a connection from {peer}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
    }
}
