//! Ways out of the proxy found by attacking it as a hostile agent would
//! (issue 13), each against listeners of the test's own on loopback.
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

mod proxy_env;

use base64::Engine as _;
use bottle_sidecars::policy::TokenSource;
use bottle_test_harness::tls::TestCa;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proxy_env::*;
use std::future::Future;
use std::sync::Arc;

/// Serve HTTP/1.1 on `listener` (TLS with a leaf for `names` when `ca` is
/// given) on the env's runtime, answering each request with `handler`.
fn serve_local<F, Fut>(
    env: &Env,
    listener: std::net::TcpListener,
    tls: Option<(&TestCa, &[&str])>,
    handler: F,
) where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let acceptor = tls.map(|(ca, names)| {
        let (chain, key) = ca.leaf(names);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    listener.set_nonblocking(true).unwrap();
    env.rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let h1 = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = h1.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = h1.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
}

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

/// A token whose escaped and encoded forms all differ from it.
const ODD_TOKEN: &str = "sk/live+Tok=\"QX9z/abc123DEF456&<x>~end";

fn percent(data: &str, keep: &[u8], lower: bool) -> String {
    data.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || keep.contains(&b) {
                char::from(b).to_string()
            } else if lower {
                format!("%{b:02x}")
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The forms of `token` an upstream might echo it in.
fn encoded_forms(token: &str) -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = serde_json::to_string(token).unwrap();
    let json = json.trim_matches('"').to_string();
    vec![
        ("json", json.clone()),
        ("json-slash", json.replace('/', "\\/")),
        (
            "json-html",
            json.replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026"),
        ),
        ("percent", percent(token, b"-._~", false)),
        ("percent-lower", percent(token, b"-._~", true)),
        ("percent-js", percent(token, b"-._~!'()*", false)),
        ("base64", b64.encode(token)),
        ("base64url", b64url.encode(token)),
        ("basic", b64.encode(format!("user:{token}"))),
        ("basic-2", b64.encode(format!("u:{token}"))),
    ]
}

/// Whether some run of base64 text in `text`, read at any alignment, decodes
/// to bytes that hold `token`.
fn leaks_in_base64(text: &str, token: &str) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let normal: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    normal
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
        .filter(|run| run.len() >= 8)
        .any(|run| {
            (0..4).any(|skip| {
                let part = &run[skip.min(run.len())..];
                // A trailing group of 2 or 3 characters still decodes (1 or 2 bytes).
                let part = &part[..part.len() - usize::from(part.len() % 4 == 1)];
                lenient
                    .decode(part)
                    .is_ok_and(|d| d.windows(token.len()).any(|w| w == token.as_bytes()))
            })
        })
}

#[test]
fn route_responses_are_redacted_in_json_escaped_percent_encoded_and_base64_forms() {
    if !have_clients() {
        return;
    }
    let ca = TestCa::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let env = Env::with_config(
        |p| {
            p.allow_ports.push(port);
            p.routes[0].token = TokenSource::Command(vec!["echo".into(), ODD_TOKEN.into()]);
        },
        |c| c.extra_root_pems.push(ca.cert_pem()),
    );
    // The route host echoes the credential it received in every form.
    serve_local(
        &env,
        listener,
        Some((&ca, &["routed.test"])),
        |req| async move {
            let token = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_string();
            let forms = encoded_forms(&token);
            let body: String = forms.iter().map(|(n, f)| format!("{n}={f}\n")).collect();
            let json = serde_json::json!({ "echo": token }).to_string();
            http::Response::builder()
                .header("x-b64", &forms[6].1)
                .header("location", format!("https://cb.test/?t={}", forms[3].1))
                .body(Full::new(Bytes::from(format!("{body}{json}\n"))))
                .unwrap()
        },
    );
    let out = env.curl(&[
        "-D",
        "-",
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        "-w",
        "\n%{http_code}",
        &format!("https://routed.test:{port}/echo"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains("bottle-placeholder-api"), "{text}");
    assert!(!text.contains(ODD_TOKEN), "raw token: {text}");
    for (name, form) in encoded_forms(ODD_TOKEN) {
        assert!(!text.contains(&form), "{name} form {form:?} leaked: {text}");
    }
    assert!(!leaks_in_base64(&text, ODD_TOKEN), "{text}");
    // The control: the helpers see the forms when nothing redacts them.
    let raw: String = encoded_forms(ODD_TOKEN)
        .iter()
        .map(|(_, f)| format!("{f}\n"))
        .collect();
    assert!(leaks_in_base64(&raw, ODD_TOKEN));
}

#[test]
fn names_resolving_to_documentation_teredo_or_local_nat64_addresses_are_refused_undialed() {
    if !have_clients() {
        return;
    }
    let names = [
        "doc4.test",
        "doc6.test",
        "doc3fff.test",
        "teredo.test",
        "nat64local.test",
    ];
    let env = Env::new(|p| {
        p.allow.extend(names.iter().map(|n| pat(n)));
        p.allow_ips.clear();
    });
    for name in names {
        let (code, body) = env.curl_status(&[&format!("http://{name}:{}/", env.plain.port())]);
        assert_eq!(code, "403", "{name}: {body}");
        assert!(body.contains("rule: ssrf"), "{name}: {body}");
    }
    assert!(
        env.dialer.attempts.lock().unwrap().is_empty(),
        "dialed: {:?}",
        env.dialer.attempts.lock().unwrap()
    );
}

const MIB: usize = 1 << 20;

/// An upstream that reads each request body, waits `delay`, then answers
/// `200 got N`: requests overlap in the proxy while it waits.
fn slow_upstream(env: &Env, listener: std::net::TcpListener, tls: Option<(&TestCa, &[&str])>) {
    serve_local(env, listener, tls, |req| async move {
        use http_body_util::BodyExt;
        let n = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().len())
            .unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        http::Response::new(Full::new(Bytes::from(format!("got {n}"))))
    });
}

/// One raw HTTP/1.1 upload through the proxy; (status, body).
fn upload(proxy_url: &str, url: &str, len: usize) -> (String, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(proxy_url.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    write!(
        conn,
        "POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let body = vec![b'a'; len];
    let _ = conn.write_all(&body);
    let mut text = Vec::new();
    let _ = conn.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let code = text.split(' ').nth(1).unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn parallel_large_uploads_over_the_body_budget_get_503_and_the_proxy_keeps_serving() {
    if !have_clients() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let env = Env::with_config(
        |p| p.allow_ports.push(port),
        |c| {
            c.body_cap = 4 * MIB;
            c.body_budget = 8 * MIB;
        },
    );
    slow_upstream(&env, listener, None);
    let url = format!("http://allowed.test:{port}/upload");
    let uploads: Vec<_> = (0..12)
        .map(|_| {
            let proxy = env.proxy_url.clone();
            let url = url.clone();
            std::thread::spawn(move || upload(&proxy, &url, 3 * MIB))
        })
        .collect();
    let results: Vec<(String, String)> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|(c, _)| c == "200").count();
    let refused: Vec<_> = results.iter().filter(|(c, _)| c == "503").collect();
    assert_eq!(ok + refused.len(), results.len(), "{results:?}");
    assert!(ok >= 1, "{results:?}");
    assert!(!refused.is_empty(), "no upload was refused: {results:?}");
    for (_, body) in &refused {
        assert!(
            body.contains("rule: over-budget") && body.contains("budget"),
            "{body}"
        );
    }
    for (code, body) in &results {
        if code == "200" {
            assert_eq!(body, &format!("got {}", 3 * MIB));
        }
    }
    // Still serving: a small request afterwards.
    let (code, body) = env.curl_status(&[&env.url("allowed.test", "/after")]);
    assert_eq!(code, "200", "{body}");
    assert!(env.audited_rule("over-budget"));
}

#[test]
fn http2_streams_share_the_body_budget() {
    if !have_clients() {
        return;
    }
    let ca = TestCa::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let env = Env::with_config(
        |p| p.allow_ports.push(port),
        |c| {
            c.extra_root_pems.push(ca.cert_pem());
            c.body_cap = 4 * MIB;
            c.body_budget = 8 * MIB;
        },
    );
    slow_upstream(&env, listener, Some((&ca, &["allowed.test"])));
    let bottle_ca = std::fs::read_to_string(&env.bottle_ca).unwrap();
    let proxy_addr = env.proxy_url.trim_start_matches("http://").to_string();
    let codes: Vec<u16> = env.rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&proxy_addr).await.unwrap();
        let target = format!("allowed.test:{port}");
        tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut bottle_ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("allowed.test".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let streams: Vec<_> = (0..10)
            .map(|_| {
                let mut sender = sender.clone();
                let uri = format!("https://allowed.test:{port}/up");
                tokio::spawn(async move {
                    let req = http::Request::post(uri)
                        .body(Full::new(Bytes::from(vec![b'b'; 3 * MIB])))
                        .unwrap();
                    sender.send_request(req).await.unwrap().status().as_u16()
                })
            })
            .collect();
        let mut codes = Vec::new();
        for s in streams {
            codes.push(s.await.unwrap());
        }
        codes
    });
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
    assert!(
        codes.contains(&503),
        "one connection's streams were not bounded: {codes:?}"
    );
}

#[test]
fn connections_over_the_cap_get_503_until_one_closes() {
    if !have_clients() {
        return;
    }
    use std::io::{Read, Write};
    let env = Env::with_config(|_| {}, |c| c.max_connections = 4);
    let addr = env.proxy_url.trim_start_matches("http://").to_string();
    let url = format!("http://allowed.test:{}/x", env.plain.port());
    // Four kept-alive connections, each proven to hold its slot by one answered request.
    let idle: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = std::net::TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            write!(conn, "GET {url} HTTP/1.1\r\nHost: allowed.test\r\n\r\n").unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body).unwrap();
            conn
        })
        .collect();
    let ask = || {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        write!(
            conn,
            "GET {url} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        text
    };
    let refused = ask();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("rule: too-many-connections") && refused.contains("4 connections"),
        "{refused}"
    );
    assert_eq!(env.plain.seen().len(), 4);
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = ask();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(env.plain.seen().len(), 5);
    assert!(env.audited_rule("too-many-connections"));
}
