//! git-gate writes every decision to the bottle's hash-chained audit log:
//! fetches and forwarded pushes as decided + completed, refusals as one
//! `deny` line naming the rule and place, never the secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bottle_sidecars::audit::{AuditRecord, Event, Kind, Outcome};
use support::{Fixture, AWS_KEY};

fn git_lines(fx: &Fixture) -> Vec<AuditRecord> {
    fx.audit()
        .into_iter()
        .filter(|r| r.kind == Kind::Git)
        .collect()
}

#[test]
fn fetch_and_clean_push_are_decided_then_completed() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    fx.commit(&work, "a.rs", "fn a() {}\n", "clean");
    fx.git_ok(
        &work,
        &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
    );

    let lines = git_lines(&fx);
    let fetch = lines
        .iter()
        .find(|r| r.event == Event::Decided && r.method == "fetch")
        .expect("a decided fetch line");
    assert_eq!(fetch.decision, "allow");
    assert_eq!(fetch.host, "app");
    assert!(lines.iter().any(|r| r.event == Event::Completed
        && r.of == fetch.seq
        && r.outcome == Some(Outcome::Ok)));

    let push = lines
        .iter()
        .find(|r| r.event == Event::Decided && r.method == "push")
        .expect("a decided push line");
    assert_eq!(push.decision, "allow");
    assert_eq!(push.git.as_ref().unwrap().refs, vec!["refs/heads/main"]);
    let done = lines
        .iter()
        .find(|r| r.event == Event::Completed && r.of == push.seq)
        .expect("the push's completed line");
    assert_eq!(done.outcome, Some(Outcome::Ok));
}

#[test]
fn refused_push_is_one_deny_line_with_rule_and_place_but_no_secret() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let bad = fx.commit(&work, "config.env", &format!("KEY={AWS_KEY}\n"), "leak");
    fx.git_fails(&work, &["push", "origin", "HEAD:refs/heads/main"]);

    let lines = git_lines(&fx);
    let deny = lines
        .iter()
        .find(|r| r.method == "push" && r.decision == "deny")
        .expect("a deny line for the push");
    assert_eq!(deny.rule, "secret");
    let git = deny.git.as_ref().unwrap();
    assert_eq!(git.file.as_deref(), Some("config.env"));
    assert_eq!(git.commit.as_deref(), Some(bad.as_str()));
    assert_eq!(git.findings, Some(1));
    assert!(
        !lines
            .iter()
            .any(|r| r.method == "push" && r.decision == "allow"),
        "a refused push has no allow line"
    );
    let raw = std::fs::read_to_string(fx.tmp.path().join("audit.jsonl")).unwrap();
    assert!(!raw.contains(AWS_KEY), "the secret reached the audit log");
}

#[test]
fn upstream_rejection_completes_as_upstream_failed_and_refusals_before_service_are_denied() {
    let Some(mut fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let hook = fx.upstream.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho protected >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fx.commit(&work, "y.txt", "y\n", "clean");
    fx.git_fails(&work, &["push", "origin", "HEAD:refs/heads/main"]);

    let url = fx.gate_url.replace("/app.git", "/other.git");
    fx.git_fails(
        fx.tmp.path(),
        &["clone", &url, fx.path("x").to_str().unwrap()],
    );
    fx.sshd.stop();
    fx.git_fails(&work, &["fetch", "origin"]);

    let lines = git_lines(&fx);
    let push = lines
        .iter()
        .find(|r| r.event == Event::Decided && r.method == "push")
        .expect("the clean push was decided");
    let done = lines
        .iter()
        .find(|r| r.event == Event::Completed && r.of == push.seq)
        .expect("and completed");
    assert_eq!(done.outcome, Some(Outcome::UpstreamFailed));
    assert!(lines
        .iter()
        .any(|r| r.decision == "deny" && r.rule == "unknown-repo"));
    assert!(lines
        .iter()
        .any(|r| r.decision == "deny" && r.rule == "upstream-unreachable" && r.method == "fetch"));
}
