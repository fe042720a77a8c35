//! Ways out of the proxy found by attacking it as a hostile agent would
//! (issue 13), each against listeners of the test's own on loopback.
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

mod proxy_env;

use proxy_env::*;

#[test]
fn plain_http_to_a_route_host_is_refused_and_never_carries_the_real_token() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    // The test's own plain-HTTP listener stands in for the route host on port 80.
    let plain = format!("http://routed.test:{}/v1", env.plain.port());
    for args in [
        vec!["-H", "Authorization: Bearer bottle-placeholder-api", &plain],
        vec![plain.as_str()],
    ] {
        let (code, body) = env.curl_status(&args);
        assert_eq!(code, "403", "{body}");
        assert!(
            body.contains("route-needs-https") && body.contains("https://routed.test"),
            "{body}"
        );
    }
    assert!(
        env.plain.seen().is_empty(),
        "the plain listener was reached: {:?}",
        env.plain.seen()
    );
    // A placeholder in plain HTTP to another host: refused, and told to use https.
    let (code, body) = env.curl_status(&[
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        &format!("http://allowed.test:{}/", env.plain.port()),
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("placeholder-misuse") && body.contains("https"),
        "{body}"
    );
    assert!(env.plain.seen().is_empty());
    // The TLS route still injects.
    let (code, body) = env.curl_status(&[
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        &env.url("routed.test", "/v1"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        env.upstream.seen()[0].header("authorization"),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    assert!(env.audited_rule("route-needs-https") && env.audited_rule("route"));
}

/// A TLS 1.3-shaped ClientHello naming `sni`, with an Encrypted Client Hello
/// extension (0xfe0d, outer form) when `ech` is set.
fn client_hello(sni: &str, ech: bool) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut entry = vec![0u8];
    entry.extend(u16::try_from(sni.len()).unwrap().to_be_bytes());
    entry.extend(sni.as_bytes());
    let mut list = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
    list.extend(entry);
    exts.extend(0u16.to_be_bytes());
    exts.extend(u16::try_from(list.len()).unwrap().to_be_bytes());
    exts.extend(list);
    exts.extend(43u16.to_be_bytes()); // supported_versions: TLS 1.3
    exts.extend(3u16.to_be_bytes());
    exts.extend([2, 3, 4]);
    if ech {
        // type outer, HPKE suite, config id, enc, payload (all opaque to the proxy).
        let mut body = vec![0u8, 0, 1, 0, 1, 0x2a];
        body.extend(32u16.to_be_bytes());
        body.extend([0x11; 32]);
        body.extend(48u16.to_be_bytes());
        body.extend([0x22; 48]);
        exts.extend(0xfe0du16.to_be_bytes());
        exts.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        exts.extend(body);
    }
    let mut hello = vec![3, 3];
    hello.extend([7u8; 32]);
    hello.push(0);
    hello.extend([0, 2, 0x13, 0x01]);
    hello.extend([1, 0]);
    hello.extend(u16::try_from(exts.len()).unwrap().to_be_bytes());
    hello.extend(exts);
    let mut hs = vec![1];
    hs.extend(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    hs.extend(hello);
    let mut out = vec![22, 3, 1];
    out.extend(u16::try_from(hs.len()).unwrap().to_be_bytes());
    out.extend(hs);
    out
}

/// Open a CONNECT tunnel through the proxy and send `first` inside it;
/// returns the stream (the proxy's `200` already read).
fn tunnel(proxy_url: &str, target: &str, first: &[u8]) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(proxy_url.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(conn, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            conn.read(&mut byte).unwrap(),
            1,
            "proxy closed during CONNECT"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    conn.write_all(first).unwrap();
    conn
}

#[test]
fn passthrough_tunnels_refuse_encrypted_client_hello() {
    use std::io::Read;
    // The test's own listener stands in for the passthrough host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let env = Env::new(|p| p.allow_ports.push(port));
    let target = format!("passthrough.test:{port}");
    // Control: the same hello without ECH is spliced to the listener.
    let plain = client_hello("passthrough.test", false);
    let _client = tunnel(&env.proxy_url, &target, &plain);
    let (mut upstream, _) = listener.accept().unwrap();
    upstream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = vec![0u8; plain.len()];
    upstream.read_exact(&mut got).unwrap();
    assert_eq!(got, plain);
    drop(upstream);
    let dials = env.dialer.attempts.lock().unwrap().len();
    // With ECH the real destination would hide behind the outer SNI: cut.
    let mut client = tunnel(
        &env.proxy_url,
        &target,
        &client_hello("passthrough.test", true),
    );
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(
        env.dialer.attempts.lock().unwrap().len(),
        dials,
        "the passthrough host was dialed for an ECH hello"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the listener got a connection");
    assert!(env.audited_rule("encrypted-client-hello"));
}
