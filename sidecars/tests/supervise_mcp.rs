//! supervise driven by the official MCP Python SDK (PyPI `mcp`) over
//! streamable HTTP on loopback: initialize, list the tools, call each,
//! decide through the control socket, and abuse (a path as an id, a
//! self-approval, oversized reasons, a flood of 10,000 requests).
//!
//! Needs the SDK in `~/.cache/bottle/mcp-venv` (scripts/install-deps.sh
//! makes it); skips without it (BOTTLE_TEST_STRICT=1 fails instead).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bottle_sidecars::audit::{AuditLog, AuditOptions};
use bottle_sidecars::policy::{HostPattern, Policy};
use bottle_sidecars::supervise::control::{self, ControlRequest, ControlResponse};
use bottle_sidecars::supervise::{http, Supervisor, SupervisorConfig};
use bottle_test_harness::skip;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn python() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let py = PathBuf::from(home).join(".cache/bottle/mcp-venv/bin/python");
    py.is_file().then_some(py)
}

fn client(py: &PathBuf, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/supervise/client.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("run the MCP client");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_files_requests_and_a_decision_reaches_it() {
    let Some(py) = python() else {
        skip::require(
            false,
            "the MCP Python SDK is not in ~/.cache/bottle/mcp-venv (run scripts/install-deps.sh)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Arc::new(AuditLog::open(&audit_path, AuditOptions::new("b-test")).unwrap());
    let applied: Arc<Mutex<Vec<Policy>>> = Arc::default();
    let a = applied.clone();
    let base = Policy {
        allow: vec![HostPattern::parse("a.test").unwrap()],
        allow_ports: vec![443],
        ..Policy::default()
    };
    let mut config = SupervisorConfig::new(
        dir.path().to_path_buf(),
        base,
        audit,
        Arc::new(move |p, _| {
            a.lock().unwrap().push(p);
            Ok(())
        }),
    );
    config.git_remotes = vec!["origin".into()];
    let sup = Supervisor::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(http::serve_tcp(listener, sup.clone()));
    let sock = dir.path().join("supervise.ctl");
    tokio::spawn(control::serve(control::bind(&sock).unwrap(), sup.clone()));

    let (py2, url2) = (py.clone(), url.clone());
    let report = tokio::task::spawn_blocking(move || client(&py2, &[&url2, "all"]))
        .await
        .unwrap();
    assert_eq!(report["server"], "bottle");
    assert_eq!(
        report["tools"],
        serde_json::json!([
            "list_policy",
            "request_capability",
            "request_egress",
            "request_route",
            "request_status"
        ])
    );
    let desc = report["descriptions"]["request_egress"].as_str().unwrap();
    assert!(desc.contains("human operator decides") && desc.contains("request_status"));
    for tool in ["egress", "route", "capability"] {
        assert_eq!(report[tool]["error"], false, "{tool}: {}", report[tool]);
        assert_eq!(report[tool]["data"]["status"], "pending");
    }
    let policy = &report["policy"]["data"];
    assert_eq!(policy["allow"], serde_json::json!(["a.test"]));
    assert_eq!(policy["git_remotes"], serde_json::json!(["origin"]));
    assert_eq!(report["status"]["data"]["status"], "pending");
    assert_eq!(report["traversal"]["error"], true);
    assert!(report["traversal"]["text"]
        .as_str()
        .unwrap()
        .contains("not a request id"));
    assert_eq!(report["approve_tool"]["error"], true, "no tool approves");
    assert!(report["long_reason"]["text"]
        .as_str()
        .unwrap()
        .contains("at most 2048"));
    assert_eq!(report["huge_reason"]["error"], true);
    // The flood: 3 filed in the first session + 10,000 here, 10 a minute.
    let flood = &report["flood"];
    assert_eq!(flood["filed"], 7, "{flood}");
    assert_eq!(flood["refused"], 9_993);
    assert!(flood["last"]
        .as_str()
        .unwrap()
        .contains("at most 10 per minute"));
    assert_eq!(report["after_flood"]["error"], false);

    // The operator approves the egress request; the agent sees it, and the
    // proxy got the widened policy.
    let id = report["egress"]["data"]["id"].as_str().unwrap().to_string();
    let (sock2, id2) = (sock.clone(), id.clone());
    let answer = tokio::task::spawn_blocking(move || {
        control::call(
            &sock2,
            &ControlRequest::Approve {
                id: id2,
                for_secs: Some(60),
            },
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert!(matches!(answer, ControlResponse::Ok(_)), "{answer:?}");
    let last = applied.lock().unwrap().last().cloned().unwrap();
    assert!(last
        .allow
        .contains(&HostPattern::parse("api.example.test").unwrap()));
    assert!(last.allow_ports.contains(&8443));
    let status = tokio::task::spawn_blocking(move || client(&py, &[&url, "status", &id]))
        .await
        .unwrap();
    assert_eq!(status["status"]["data"]["status"], "approved");

    // Every filing and the decision are chained audit lines.
    let verified = bottle_sidecars::audit::read_verified(&audit_path).unwrap();
    let lines = std::fs::read_to_string(&audit_path).unwrap();
    assert_eq!(lines.matches(r#""decision":"request""#).count(), 10);
    assert_eq!(lines.matches(r#""decision":"allow""#).count(), 1);
    drop(verified);
}
