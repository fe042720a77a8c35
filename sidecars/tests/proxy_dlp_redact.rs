//! The `redact` DLP action through the real proxy (issue 15): a JSON body
//! with a planted key sent to a host whose action is `redact` reaches the
//! upstream (a TLS listener of the test's own on loopback) with the marker in
//! place of the key and still valid JSON; the same body to a `block` host is
//! refused with 403, and so is a body that is not JSON to a `redact` host.
#![allow(clippy::unwrap_used)]

mod proxy_env;

use bottle_sidecars::policy::{DlpAction, DlpHost, DlpPolicy};
use proxy_env::*;
use std::io::Write;

fn redact_env() -> Env {
    Env::new(|p| {
        p.dlp = DlpPolicy {
            action: DlpAction::Block,
            disable_rules: vec![],
            hosts: vec![DlpHost {
                host: pat("allowed.test"),
                action: DlpAction::Redact,
            }],
        }
    })
}

fn messages_body() -> String {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Why does the deploy fail?"},
            {"type": "tool_result", "tool_use_id": "toolu_01", "content":
                format!("     1\u{2192}AWS_ACCESS_KEY_ID={AWS_KEY}\n     2\u{2192}GITHUB_TOKEN=\"{GH_TOKEN}\"\n")}
        ]}]
    })
    .to_string()
}

#[test]
fn a_redact_host_gets_the_json_body_with_markers_and_a_block_host_gets_403() {
    if !have_clients() {
        return;
    }
    let env = redact_env();
    let body = messages_body();
    let post = |host: &str, content_type: &str, data: &str, extra: &[&str]| {
        let url = env.url(host, "/v1/messages");
        let header = format!("Content-Type: {content_type}");
        let mut args = vec!["-H", header.as_str(), "--data-binary", data];
        args.extend_from_slice(extra);
        args.push(&url);
        env.curl_status(&args)
    };

    let (code, answer) = post("allowed.test", "application/json", &body, &[]);
    assert_eq!(code, "200", "{answer}");
    let seen = env.upstream.seen();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    let text = String::from_utf8(sent.body.clone()).unwrap();
    assert!(
        !text.contains(AWS_KEY) && !text.contains(GH_TOKEN),
        "{text}"
    );
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let content = value["messages"][0]["content"][1]["content"]
        .as_str()
        .unwrap();
    assert_eq!(
        content,
        "     1\u{2192}AWS_ACCESS_KEY_ID=[secret redacted by bottle: aws-access-key-id]\n     \
         2\u{2192}GITHUB_TOKEN=\"[secret redacted by bottle: github-pat]\"\n"
    );
    assert_eq!(
        value["messages"][0]["content"][0]["text"],
        "Why does the deploy fail?"
    );
    assert_eq!(
        sent.header("content-length"),
        Some(sent.body.len().to_string().as_str())
    );
    let decided = env
        .audit()
        .into_iter()
        .find(|r| r.decision == "redact")
        .expect("a redact line in the audit log");
    let counts = decided.redacted.clone().unwrap();
    assert_eq!(counts["aws-access-key-id"], 1);
    assert_eq!(counts["github-pat"], 1);
    let line = serde_json::to_string(&decided).unwrap();
    assert!(
        !line.contains(AWS_KEY) && !line.contains(GH_TOKEN),
        "{line}"
    );

    // The same body to a host without an override: the bottle's `block`.
    let (code, answer) = post("other.test", "application/json", &body, &[]);
    assert_eq!(code, "403", "{answer}");
    assert!(answer.contains("rule: dlp:"), "{answer}");

    // Not JSON, to the redact host: refused, saying why.
    let form = format!("key={AWS_KEY}");
    let (code, answer) = post(
        "allowed.test",
        "application/x-www-form-urlencoded",
        &form,
        &[],
    );
    assert_eq!(code, "403", "{answer}");
    assert!(answer.contains("only rewrites JSON"), "{answer}");
    // A JSON content type on a body that does not parse is no better.
    let broken = format!("{{\"key\": \"{AWS_KEY}\"");
    let (code, answer) = post("allowed.test", "application/json", &broken, &[]);
    assert_eq!(code, "403", "{answer}");
    assert_eq!(
        env.upstream.seen().len(),
        1,
        "only the redacted body got through"
    );
}

#[test]
fn a_compressed_json_body_is_sent_decoded_and_redacted() {
    if !have_clients() {
        return;
    }
    let env = redact_env();
    let body = messages_body();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let file = env.dir.path().join("body.gz");
    std::fs::write(&file, gz.finish().unwrap()).unwrap();
    let data = format!("@{}", file.display());
    let url = env.url("allowed.test", "/v1/messages");
    let (code, answer) = env.curl_status(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(code, "200", "{answer}");
    let seen = env.upstream.seen();
    let sent = &seen[0];
    assert_eq!(sent.header("content-encoding"), None);
    let value: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert!(value
        .to_string()
        .contains("[secret redacted by bottle: aws-access-key-id]"));
    assert!(!value.to_string().contains(AWS_KEY));

    // A body that claims gzip and is not: refused (fail closed).
    let (code, answer) = env.curl_status(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!(code, "403", "{answer}");
    assert!(answer.contains("body-unscannable"), "{answer}");
    assert_eq!(env.upstream.seen().len(), 1);
}

#[test]
fn a_secret_in_a_header_is_refused_even_on_a_redact_host() {
    if !have_clients() {
        return;
    }
    let env = redact_env();
    let header = format!("x-debug: {GH_TOKEN}");
    let url = env.url("allowed.test", "/v1/messages");
    let (code, answer) = env.curl_status(&[
        "-H",
        &header,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "{}",
        &url,
    ]);
    assert_eq!(code, "403", "{answer}");
    assert!(answer.contains("header x-debug"), "{answer}");
    assert!(env.upstream.seen().is_empty());
}
