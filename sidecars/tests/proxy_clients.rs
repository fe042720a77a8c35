//! The guard proxy driven by real clients (curl, openssl s_client, git,
//! python3 urllib) against local upstreams on loopback (see `proxy_env`).
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

mod proxy_env;

use bottle_sidecars::audit::Event;
use bottle_sidecars::policy::{DlpAction, DlpPolicy};
use bottle_test_harness::tls::{TestCa, Upstream};
use proxy_env::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

#[test]
fn allowed_host_passes_with_the_bottle_ca_trusted() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let (code, body) = env.curl_status(&[&env.url("allowed.test", "/hello?x=1")]);
    assert_eq!(code, "200", "{body}");
    assert!(body.starts_with("GET /hello?x=1\n"), "{body}");
    assert!(body.contains("host: allowed.test:"), "{body}");
    let records = env.audit();
    assert!(records
        .iter()
        .any(|r| r.host == "allowed.test" && r.decision == "allow" && r.path == "/hello"));
    // Without the bottle CA the client refuses the minted leaf.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--proxy",
            &env.proxy_url,
            &env.url("allowed.test", "/"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn keep_alive_and_http2_inside_the_tunnel() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let out = env.curl(&[
        "--http2",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{num_connects}\n",
        &env.url("h2.test", "/a"),
        &env.url("h2.test", "/b"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("2 "), "{text}");
    assert_eq!(lines[1], "2 0", "second request reuses the tunnel: {text}");
    let seen = env.upstream.seen();
    assert_eq!(
        seen.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
        ["/a", "/b"]
    );
}

#[test]
fn plain_http_absolute_form_is_forwarded() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let url = format!("http://allowed.test:{}/plain", env.plain.port());
    let (code, body) = env.curl_status(&[&url]);
    assert_eq!(code, "200", "{body}");
    assert!(body.starts_with("GET /plain\n"), "{body}");
    // A different Host header cannot steer the request to another virtual host.
    let (code, _) = env.curl_status(&["-H", "Host: evil.test", &url]);
    assert_eq!(code, "200");
    let seen = env.plain.seen();
    assert_eq!(
        seen[1].header("host"),
        Some(format!("allowed.test:{}", env.plain.port()).as_str())
    );
}

#[test]
fn unlisted_host_gets_403_naming_the_host_and_how_to_allow() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let out = env.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        &env.url("evil.test", "/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let url = format!("http://evil.test:{}/", env.plain.port());
    let (code, body) = env.curl_status(&[&url]);
    assert_eq!(code, "403");
    assert!(
        body.contains("evil.test")
            && body.contains("host-not-allowed")
            && body.contains("run the bottle again")
            && !body.contains("request_egress"),
        "{body}"
    );
    assert!(env.audited_rule("host-not-allowed"));
    assert!(env
        .resolver
        .asked
        .lock()
        .unwrap()
        .iter()
        .all(|n| n != "evil.test"));
}

#[test]
fn sni_different_from_connect_host_is_refused() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let s_client = |servername: &str| {
        let proxy = env.proxy_url.trim_start_matches("http://").to_string();
        let connect = format!("allowed.test:{}", env.upstream.port());
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-proxy",
                &proxy,
                "-connect",
                &connect,
                "-servername",
                servername,
                "-CAfile",
            ])
            .arg(&env.bottle_ca)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let good = s_client("allowed.test");
    assert!(
        good.contains("BEGIN CERTIFICATE") && good.contains("Verify return code: 0 (ok)"),
        "{good}"
    );
    let bad = s_client("other.test");
    assert!(!bad.contains("BEGIN CERTIFICATE"), "{bad}");
    assert!(env.audited_rule("sni-mismatch"));
}

#[test]
fn host_header_different_from_sni_inside_the_tunnel_is_refused() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let (code, body) = env.curl_status(&["-H", "Host: other.test", &env.url("allowed.test", "/")]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("host-mismatch"), "{body}");
    assert!(env.upstream.seen().is_empty());
}

#[test]
fn passthrough_host_works_without_the_bottle_ca() {
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
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("GET /spliced\n"));
    assert!(env.audited_rule("passthrough"));
    // A passthrough tunnel whose SNI names another host is cut.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            &env.proxy_url,
            "-k",
            "--connect-to",
        ])
        .arg(format!(
            "other.test:{0}:passthrough.test:{0}",
            env.upstream.port()
        ))
        .arg(env.url("other.test", "/"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn secrets_in_query_header_json_form_multipart_and_gzip_body_are_blocked() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let gz = env.dir.path().join("body.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(format!("{{\"token\":\"{GH_TOKEN}\"}}").as_bytes())
        .unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let url = env.url("allowed.test", "/upload");
    let plain_url = format!("http://allowed.test:{}/upload", env.plain.port());
    let query = env.url("allowed.test", &format!("/q?key={AWS_KEY}"));
    let header = format!("X-Key: {GH_TOKEN}");
    let json = format!("{{\"aws\":\"{AWS_KEY}\"}}");
    let form = format!("key={AWS_KEY}&x=1");
    let multipart = "file=@-;filename=x.txt";
    let gz_body = format!("@{}", gz.display());
    let mut big = "x".repeat(300 << 10);
    big.push_str(&format!(" token={GH_TOKEN}\n"));
    let big_file = env.dir.path().join("big.txt");
    std::fs::write(&big_file, &big).unwrap();
    let big_body = format!("@{}", big_file.display());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(big.repeat(4).as_bytes()).unwrap();
    let big_gz = enc.finish().unwrap();
    assert!(
        big_gz.len() < 64 << 10,
        "the gzip is small, decoded it is big"
    );
    let big_gz_file = env.dir.path().join("big.gz");
    std::fs::write(&big_gz_file, big_gz).unwrap();
    let big_gz_body = format!("@{}", big_gz_file.display());
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("query", vec![&query]),
        ("header", vec!["-H", &header, &url]),
        (
            "json",
            vec![
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &json,
                &url,
            ],
        ),
        ("form", vec!["--data", &form, &url]),
        (
            "gzip",
            vec![
                "-H",
                "Content-Encoding: gzip",
                "--data-binary",
                &gz_body,
                &url,
            ],
        ),
        // `Connection` makes `Content-Encoding` hop-by-hop, so the proxy
        // drops that header; the body is still gzip, and is scanned as such.
        // (Plain HTTP: inside a tunnel curl does not pass a `Connection`
        // header of its own.)
        (
            "gzip, its encoding named in Connection",
            vec![
                "-H",
                "Content-Encoding: gzip",
                "-H",
                "Connection: Content-Encoding",
                "--data-binary",
                &big_gz_body,
                &plain_url,
            ],
        ),
        // Bodies above 64 KiB, and encoded ones, are inspected off the
        // proxy's thread.
        ("big body", vec!["--data-binary", &big_body, &url]),
        (
            "big gzip body",
            vec![
                "-H",
                "Content-Encoding: gzip",
                "--data-binary",
                &big_gz_body,
                &url,
            ],
        ),
    ];
    for (what, args) in cases {
        let (code, body) = env.curl_status(&args);
        assert_eq!(code, "403", "{what}: {body}");
        assert!(body.contains("rule: dlp:"), "{what}: {body}");
    }
    // multipart: the file content comes from stdin.
    let mut child = Command::new("curl")
        .args(["-sS", "--proxy", &env.proxy_url, "--cacert"])
        .arg(&env.bottle_ca)
        .args(["-F", multipart, "-o", "-", "-w", "\n%{http_code}", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("aws_key = {AWS_KEY}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("\n403"),
        "multipart"
    );
    // Undecodable bodies are refused, not waved through.
    let (code, body) = env.curl_status(&[
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        "not gzip",
        &url,
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("body-unscannable"), "{body}");
    assert!(
        env.upstream.seen().is_empty(),
        "nothing reached the upstream"
    );
}

#[test]
fn clean_bodies_above_the_inline_limit_are_scanned_off_thread_and_sent_whole() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let plain = "abcdefgh".repeat(40 << 10); // 320 KiB
    let file = env.dir.path().join("big.txt");
    std::fs::write(&file, &plain).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(plain.as_bytes()).unwrap();
    let gz = env.dir.path().join("big.gz");
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let url = env.url("allowed.test", "/upload");
    let (code, body) = env.curl_status(&["--data-binary", &format!("@{}", file.display()), &url]);
    assert_eq!(code, "200", "{body}");
    let (code, body) = env.curl_status(&[
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", gz.display()),
        &url,
    ]);
    assert_eq!(code, "200", "{body}");
    let seen = env.upstream.seen();
    assert_eq!(seen.len(), 2, "both reached the upstream");
    assert_eq!(seen[0].body, plain.as_bytes(), "the plain body, whole");
    assert_eq!(
        seen[1].body,
        std::fs::read(&gz).unwrap(),
        "the gzip body as sent"
    );
    assert_eq!(seen[1].header("content-encoding"), Some("gzip"));
    // More at once than the proxy inspects at once: they wait their turn.
    let env = std::sync::Arc::new(env);
    let arg = format!("@{}", file.display());
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (env, arg, url) = (env.clone(), arg.clone(), url.clone());
            std::thread::spawn(move || env.curl_status(&["--data-binary", &arg, &url]).0)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), "200");
    }
    assert_eq!(env.upstream.seen().len(), 14);
}

#[test]
fn warn_mode_passes_and_logs() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|p| {
        p.dlp = DlpPolicy {
            action: DlpAction::Warn,
            disable_rules: vec![],
            ..Default::default()
        }
    });
    let (code, body) = env.curl_status(&[
        "--data",
        &format!("k={AWS_KEY}"),
        &env.url("allowed.test", "/w"),
    ]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(env.upstream.seen().len(), 1);
    assert!(env
        .audit()
        .iter()
        .any(|r| r.decision == "warn" && r.rule.starts_with("dlp:")));
}

#[test]
fn route_injects_the_real_token_and_the_client_only_sees_the_placeholder() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let (code, body) = env.curl_status(&[
        "-D",
        "-",
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        &env.url("routed.test", "/v1"),
    ]);
    assert_eq!(code, "200", "{body}");
    let seen = env.upstream.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    // The upstream echoed the header in its body and as x-echo-authorization.
    assert!(!body.contains(REAL_TOKEN), "{body}");
    assert!(
        body.contains("authorization: Bearer bottle-placeholder-api"),
        "{body}"
    );
    assert!(
        body.to_ascii_lowercase()
            .contains("x-echo-authorization: bearer bottle-placeholder-api"),
        "{body}"
    );
    assert!(env.audited_rule("route"));
    let log = std::fs::read_to_string(&env.audit).unwrap();
    assert!(!log.contains(REAL_TOKEN));
}

#[test]
fn placeholder_to_another_host_or_in_the_body_is_refused() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let (code, body) = env.curl_status(&[
        "-H",
        "Authorization: Bearer bottle-placeholder-api",
        &env.url("allowed.test", "/"),
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("placeholder-misuse"), "{body}");
    let (code, body) = env.curl_status(&[
        "--data",
        "x=bottle-placeholder-api",
        &env.url("routed.test", "/"),
    ]);
    assert_eq!(code, "403", "{body}");
    let (code, _) = env.curl_status(&[&env.url("routed.test", "/?t=bottle-placeholder-api")]);
    assert_eq!(code, "403");
    let (code, _) = env.curl_status(&[
        "-H",
        "X-Other: bottle-placeholder-api",
        &env.url("routed.test", "/"),
    ]);
    assert_eq!(code, "403");
    let (code, body) = env.curl_status(&[
        "--data",
        &format!("t={REAL_TOKEN}"),
        &env.url("allowed.test", "/"),
    ]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("route-token:api"), "{body}");
    assert!(env.upstream.seen().is_empty());
}

#[test]
fn method_path_rule_allows_get_and_refuses_post_on_the_same_host() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    assert_eq!(env.curl_status(&[&env.url("rules.test", "/repo")]).0, "200");
    let (code, body) = env.curl_status(&[
        "-X",
        "POST",
        "--data",
        "a=b",
        &env.url("rules.test", "/repo"),
    ]);
    assert_eq!(code, "403");
    assert!(
        body.contains("method-path-rule") && body.contains("rules"),
        "{body}"
    );
}

#[test]
fn git_push_over_https_is_refused_pointing_at_git_gate() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let repo = env.dir.path().join("repo");
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", env.dir.path())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_SSL_CAINFO", &env.bottle_ca)
            .args(["-c", &format!("http.proxy={}", env.proxy_url)])
            .args(["-c", &format!("http.sslCAInfo={}", env.bottle_ca.display())])
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap()
    };
    std::fs::create_dir(&repo).unwrap();
    assert!(git(&["init", "-q", "-b", "main"]).status.success());
    std::fs::write(repo.join("f"), "x").unwrap();
    assert!(git(&["add", "f"]).status.success());
    assert!(git(&["commit", "-qm", "c"]).status.success());
    let out = git(&["push", &env.url("allowed.test", "/o/r.git"), "main"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.audited_rule("git-push"));
    assert!(env.upstream.seen().is_empty());
}

const PY_CLIENT: &str = r#"
import ssl, sys, urllib.request, urllib.error
proxy, cafile = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy, "http": proxy}), urllib.request.HTTPSHandler(context=ctx))
for url in sys.argv[3:]:
    try:
        with opener.open(url, timeout=20) as r:
            print(r.status, r.read().decode().splitlines()[0])
    except urllib.error.HTTPError as e:
        print(e.code, "http-error")
    except urllib.error.URLError as e:
        print("refused", e.reason)
"#;

#[test]
fn python_urllib_client_goes_through_the_proxy() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let out = Command::new("python3")
        .args(["-c", PY_CLIENT, &env.proxy_url])
        .arg(&env.bottle_ca)
        .args([env.url("allowed.test", "/py"), env.url("evil.test", "/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"200 GET /py"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("refused") && l.contains("403")),
        "{text}"
    );
}

const PY_KEEPALIVE: &str = r#"
import http.client, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
target, tport = sys.argv[4], int(sys.argv[5])
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=cafile), timeout=20)
conn.set_tunnel(target, tport)
for line in sys.stdin:
    conn.request("GET", "/" + line.strip())
    r = conn.getresponse()
    r.read()
    print(r.status, r.getheader("x-bottle-rule", "-"), flush=True)
"#;

#[test]
fn reload_changes_decisions_without_dropping_open_connections() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    let proxy_addr: SocketAddr = env.proxy_url.trim_start_matches("http://").parse().unwrap();
    let mut child = Command::new("python3")
        .args([
            "-c",
            PY_KEEPALIVE,
            "127.0.0.1",
            &proxy_addr.port().to_string(),
        ])
        .arg(&env.bottle_ca)
        .args(["allowed.test", &env.upstream.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |path: &str| {
        writeln!(stdin, "{path}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(ask("one"), "200 -");
    let mut policy = env.proxy.policy();
    policy.allow.retain(|p| p.name() != "allowed.test");
    env.proxy.reload(policy).unwrap();
    // Same tunnel, new decision.
    assert_eq!(ask("two"), "403 host-not-allowed");
    let mut policy = env.proxy.policy();
    policy.allow.push(pat("allowed.test"));
    env.proxy.reload(policy).unwrap();
    assert_eq!(ask("three"), "200 -");
    drop(stdin);
    child.wait().unwrap();
    // New tunnels are refused at CONNECT after a reload that removes the host.
    let mut policy = env.proxy.policy();
    policy.allow.retain(|p| p.name() != "allowed.test");
    env.proxy.reload(policy).unwrap();
    let out = env.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        &env.url("allowed.test", "/"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    assert_eq!(env.upstream.seen().len(), 2);
}

#[test]
fn ssrf_targets_are_refused_without_dialing() {
    if !have_clients() {
        return;
    }
    // No allow_ips: loopback is as forbidden as any internal address.
    let env = Env::new(|p| p.allow_ips.clear());
    let port = env.upstream.port();
    let cases = [
        ("127.0.0.1", "ip-literal"),
        ("10.0.0.1", "ip-literal"),
        ("[::1]", "ip-literal"),
        ("[::ffff:127.0.0.1]", "ip-literal"),
        ("0x7f000001", "bad-target"),
        ("127.1", "bad-target"),
        ("2130706433", "bad-target"),
    ];
    for (host, rule) in cases {
        for line in [
            format!("GET http://{host}:{port}/ "),
            format!("CONNECT {host}:{port}"),
        ] {
            let (code, body) = raw_request(&env.proxy_url, line.trim_end());
            assert!(code == "403" || code == "400", "{line}: {code} {body}");
            assert!(body.contains(&format!("rule: {rule}")), "{line}: {body}");
        }
    }
    // Allowed names that resolve to internal addresses: refused after resolution, before any dial.
    for host in ["allowed.test", "loop.test", "meta.test"] {
        let (code, body) = raw_request(
            &env.proxy_url,
            &format!("GET http://{host}:{}/", env.plain.port()),
        );
        assert_eq!(code, "403", "{host}: {body}");
        assert!(body.contains("rule: ssrf"), "{host}: {body}");
        let (code, body) = env.curl_status(&[&format!("https://{host}:{port}/")]);
        assert_eq!(code, "403", "{host}: {body}");
        assert!(body.contains("rule: ssrf"), "{body}");
    }
    assert!(
        env.dialer.attempts.lock().unwrap().is_empty(),
        "a refused address was dialed"
    );
    let asked = env.resolver.asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .all(|n| ["allowed.test", "loop.test", "meta.test"].contains(&n.as_str())),
        "{asked:?}"
    );
    assert!(env.upstream.seen().is_empty() && env.plain.seen().is_empty());
    assert!(env.audited_rule("ssrf"));
}

#[test]
fn a_failed_dial_falls_through_to_the_next_checked_address() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|p| {
        p.allow.push(pat("fallback.test"));
        p.allow_ips.push("127.0.0.3".into());
    });
    let url = format!("http://fallback.test:{}/f", env.plain.port());
    let (code, body) = env.curl_status(&[&url]);
    assert_eq!(code, "200", "{body}");
    let port = env.plain.port();
    let attempts = env.dialer.attempts.lock().unwrap().clone();
    let expected: Vec<SocketAddr> = vec![
        format!("127.0.0.3:{port}").parse().unwrap(),
        format!("127.0.0.1:{port}").parse().unwrap(),
    ];
    assert_eq!(attempts, expected);
}

#[test]
fn upstream_with_a_certificate_from_an_untrusted_ca_gets_502() {
    if !have_clients() {
        return;
    }
    let stranger = Upstream::https(&TestCa::new(), &["allowed.test"]);
    let port = stranger.port();
    let env = Env::new(|p| p.allow_ports.push(port));
    let (code, body) = env.curl_status(&[&format!("https://allowed.test:{port}/")]);
    assert_eq!(code, "502", "{body}");
    assert!(
        body.contains("rule: upstream-error") && body.contains("TLS"),
        "{body}"
    );
    assert!(stranger.seen().is_empty());
}

#[test]
fn audit_log_chain_verifies_after_a_mixed_session() {
    if !have_clients() {
        return;
    }
    let env = Env::new(|_| {});
    env.curl_status(&[&env.url("allowed.test", "/a")]);
    env.curl_status(&[&env.url("evil.test", "/b")]);
    env.curl_status(&["-X", "POST", &env.url("rules.test", "/c")]);
    let records = env.audit();
    let lines: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.rule.as_str(), r.decision.as_str()))
        .collect();
    // An allowed request is decided, then completed; a refusal is one line.
    assert_eq!(
        lines,
        [
            ("allow", "allow"),
            ("allow", "allow"),
            ("host-not-allowed", "deny"),
            ("method-path-rule", "deny")
        ]
    );
    assert_eq!(records[1].event, Event::Completed);
    assert_eq!(records[1].of, records[0].seq);
    assert_eq!(records[1].status, Some(200));
    assert!(records.iter().all(|r| r.identity == "agent-test1"));
}
