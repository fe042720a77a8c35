//! git-gate end to end: a real `git` client talks git:// to the gate, which
//! talks to a real `sshd` upstream with a pinned host key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use bottle_sidecars::scanner::Scanner;
use bottle_test_harness::sshd::Sshd;
use support::{Fixture, AWS_KEY, GITHUB_TOKEN};

#[test]
fn clone_through_gate_returns_upstreams_head_on_main() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    assert_eq!(
        fx.git_ok(&work, &["rev-parse", "HEAD"]),
        fx.upstream_rev("refs/heads/main")
    );
    assert_eq!(
        fx.git_ok(&work, &["symbolic-ref", "HEAD"]),
        "refs/heads/main"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("README.md")).unwrap(),
        "hello\n"
    );
}

#[test]
fn master_default_branch_works_and_mirror_head_follows_upstream() {
    let Some(fx) = Fixture::new("master", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    assert_eq!(
        fx.git_ok(&work, &["symbolic-ref", "HEAD"]),
        "refs/heads/master"
    );
    assert_eq!(
        fx.git_ok(&work, &["rev-parse", "HEAD"]),
        fx.upstream_rev("refs/heads/master")
    );

    // Upstream switches its default branch: the next clone follows.
    fx.git_ok(&fx.upstream, &["branch", "trunk", "master"]);
    fx.git_ok(&fx.upstream, &["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let again = fx.clone_through_gate("again");
    assert_eq!(
        fx.git_ok(&again, &["symbolic-ref", "HEAD"]),
        "refs/heads/trunk"
    );
}

#[test]
fn protocol_v2_and_v0_clients_both_fetch() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    for v in ["0", "2"] {
        let dir = fx.path(&format!("v{v}"));
        fx.git_ok(
            fx.tmp.path(),
            &[
                "-c",
                &format!("protocol.version={v}"),
                "clone",
                "--quiet",
                &fx.gate_url,
                dir.to_str().unwrap(),
            ],
        );
        assert_eq!(
            fx.git_ok(&dir, &["rev-parse", "HEAD"]),
            fx.upstream_rev("HEAD")
        );
    }
}

#[test]
fn out_of_band_upstream_commit_shows_on_next_fetch() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let seed = fx.path("seed");
    let new = fx.commit(&seed, "b.txt", "from elsewhere\n", "out of band");
    fx.git_ok(
        &seed,
        &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
    );
    fx.git_ok(&work, &["fetch", "--quiet", "origin"]);
    assert_eq!(fx.git_ok(&work, &["rev-parse", "origin/main"]), new);
}

#[test]
fn clean_push_lands_upstream() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let new = fx.commit(&work, "feature.rs", "fn main() {}\n", "add feature");
    let out = fx.git(&work, &["push", "origin", "HEAD:refs/heads/main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.upstream_rev("refs/heads/main"), new);
    // A new branch lands too, and the mirror agrees with upstream.
    fx.git_ok(
        &work,
        &["push", "--quiet", "origin", "HEAD:refs/heads/topic"],
    );
    assert_eq!(fx.upstream_rev("refs/heads/topic"), new);
    fx.git_ok(&work, &["fetch", "--quiet", "origin"]);
    assert_eq!(fx.git_ok(&work, &["rev-parse", "origin/topic"]), new);
}

fn assert_rejected_and_unchanged(
    fx: &Fixture,
    work: &Path,
    before: &str,
    rule_hint: &str,
) -> String {
    let err = fx.git_fails(work, &["push", "origin", "HEAD:refs/heads/main"]);
    assert!(err.contains("secret(s) found"), "{err}");
    assert!(err.contains(rule_hint), "{err}");
    assert_eq!(fx.upstream_rev("refs/heads/main"), before, "upstream moved");
    err
}

#[test]
fn push_with_aws_key_in_new_file_is_rejected_and_upstream_unchanged() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    assert!(
        !Scanner::builtin()
            .unwrap()
            .scan(AWS_KEY.as_bytes())
            .is_empty(),
        "scanner must know AWS keys"
    );
    let before = fx.upstream_rev("refs/heads/main");
    let work = fx.clone_through_gate("work");
    let bad = fx.commit(
        &work,
        "config.env",
        &format!("REGION=eu\nAWS_ACCESS_KEY_ID={AWS_KEY}\n"),
        "add config",
    );
    let err = assert_rejected_and_unchanged(&fx, &work, &before, "config.env line 2");
    assert!(err.contains(&bad[..12]), "{err}");
    assert!(
        !err.contains(AWS_KEY),
        "the secret itself must not be echoed: {err}"
    );
}

#[test]
fn push_with_secret_in_commit_message_is_rejected() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let before = fx.upstream_rev("refs/heads/main");
    let work = fx.clone_through_gate("work");
    fx.commit(
        &work,
        "notes.md",
        "nothing here\n",
        &format!("fix deploy\n\ntoken was {GITHUB_TOKEN}"),
    );
    assert_rejected_and_unchanged(&fx, &work, &before, "(commit message)");
}

#[test]
fn push_with_secret_in_second_of_three_commits_is_rejected() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let before = fx.upstream_rev("refs/heads/main");
    let work = fx.clone_through_gate("work");
    fx.commit(&work, "one.txt", "one\n", "first");
    let second = fx.commit(
        &work,
        "two.txt",
        &format!("a\nb\nkey = \"{AWS_KEY}\"\n"),
        "second",
    );
    // The third commit removes the secret again: history still carries it.
    fx.commit(&work, "two.txt", "a\nb\n", "third");
    let err = assert_rejected_and_unchanged(&fx, &work, &before, "two.txt line 3");
    assert!(err.contains(&second[..12]), "{err}");
}

#[test]
fn secret_on_a_new_branch_is_rejected() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    fx.git_ok(&work, &["checkout", "--quiet", "-b", "leak"]);
    fx.commit(&work, "k.txt", &format!("{AWS_KEY}\n"), "leak");
    let err = fx.git_fails(&work, &["push", "origin", "HEAD:refs/heads/leak"]);
    assert!(err.contains("k.txt line 1"), "{err}");
    assert!(fx
        .git(
            &fx.upstream,
            &["rev-parse", "--verify", "--quiet", "refs/heads/leak"]
        )
        .stdout
        .is_empty());
}

#[test]
fn wrong_pinned_host_key_fails_closed() {
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    if !Sshd::require() {
        return;
    }
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let wrong = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let Some(fx) = Fixture::new("main", |r| r.known_host_key = wrong.trim().to_string()) else {
        return;
    };
    let err = fx.git_fails(
        fx.tmp.path(),
        &["clone", &fx.gate_url, fx.path("work").to_str().unwrap()],
    );
    assert!(err.contains("cannot reach upstream"), "{err}");
    assert!(err.contains("Host key verification failed"), "{err}");
}

#[test]
fn upstream_down_fails_closed_on_fetch_and_push() {
    let Some(mut fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let before = fx.upstream_rev("refs/heads/main");
    fx.commit(&work, "x.txt", "x\n", "while down");
    fx.sshd.stop();
    let err = fx.git_fails(&work, &["fetch", "origin"]);
    assert!(err.contains("refusing to serve a stale mirror"), "{err}");
    let err = fx.git_fails(&work, &["push", "origin", "HEAD:refs/heads/main"]);
    assert!(err.contains("cannot reach upstream"), "{err}");
    assert_eq!(fx.upstream_rev("refs/heads/main"), before);
}

#[test]
fn unknown_repository_is_refused() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let url = fx.gate_url.replace("/app.git", "/secret.git");
    let err = fx.git_fails(
        fx.tmp.path(),
        &["clone", &url, fx.path("x").to_str().unwrap()],
    );
    assert!(err.contains("no repository `secret.git`"), "{err}");
}

#[test]
fn force_push_and_delete_are_refused_by_default() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let before = fx.upstream_rev("refs/heads/main");
    fx.git_ok(&work, &["commit", "--quiet", "--amend", "-m", "rewritten"]);
    let err = fx.git_fails(
        &work,
        &["push", "--force", "origin", "HEAD:refs/heads/main"],
    );
    assert!(
        err.contains("rejected") || err.contains("not a fast-forward"),
        "{err}"
    );
    assert_eq!(fx.upstream_rev("refs/heads/main"), before);
    let err = fx.git_fails(&work, &["push", "origin", ":refs/heads/main"]);
    assert!(
        err.contains("rejected") || err.contains("not allowed"),
        "{err}"
    );
    assert_eq!(fx.upstream_rev("refs/heads/main"), before);
}

#[test]
fn force_push_is_forwarded_when_allowed() {
    let Some(fx) = Fixture::new("main", |r| r.allow_force_push = true) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    fx.commit(&work, "a.txt", "a\n", "to be rewritten");
    fx.git_ok(
        &work,
        &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
    );
    fx.git_ok(&work, &["commit", "--quiet", "--amend", "-m", "rewritten"]);
    let new = fx.git_ok(&work, &["rev-parse", "HEAD"]);
    fx.git_ok(
        &work,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            "HEAD:refs/heads/main",
        ],
    );
    assert_eq!(fx.upstream_rev("refs/heads/main"), new);
}

#[test]
fn upstream_rejection_is_reported_verbatim() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    // Upstream refuses every push with its own hook message.
    let hook = fx.upstream.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'upstream says: branch is protected' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = fx.upstream_rev("refs/heads/main");
    fx.commit(&work, "y.txt", "y\n", "clean");
    let err = fx.git_fails(&work, &["push", "origin", "HEAD:refs/heads/main"]);
    assert!(err.contains("upstream says: branch is protected"), "{err}");
    assert!(err.contains("rejected the push"), "{err}");
    assert_eq!(fx.upstream_rev("refs/heads/main"), before);
    // The mirror did not move either: a fresh clone still sees the old head.
    let again = fx.clone_through_gate("again");
    assert_eq!(fx.git_ok(&again, &["rev-parse", "HEAD"]), before);
}

#[test]
fn extra_hosts_resolve_the_upstream_name_with_the_pinned_key() {
    let Some(fx) = Fixture::new("main", |r| {
        r.upstream = r.upstream.replace("@127.0.0.1:", "@git.upstream.invalid:");
        r.extra_hosts
            .insert("git.upstream.invalid".into(), "127.0.0.1".into());
    }) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    assert_eq!(
        fx.git_ok(&work, &["rev-parse", "HEAD"]),
        fx.upstream_rev("refs/heads/main")
    );
    let new = fx.commit(&work, "z.txt", "z\n", "via alias");
    fx.git_ok(
        &work,
        &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
    );
    assert_eq!(fx.upstream_rev("refs/heads/main"), new);
}

#[test]
fn concurrent_clones_of_one_mirror_all_get_upstreams_head() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let head = fx.upstream_rev("refs/heads/main");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let fx = &fx;
                s.spawn(move || {
                    let dir = fx.clone_through_gate(&format!("c{i}"));
                    fx.git_ok(&dir, &["rev-parse", "HEAD"])
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), head);
        }
    });
}

#[test]
fn clean_push_reports_what_was_scanned() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    fx.commit(&work, "a.txt", "a\n", "one");
    fx.commit(&work, "b.txt", "b\n", "two");
    let out = fx.git(&work, &["push", "origin", "HEAD:refs/heads/main"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("scanned 2 commit(s)"), "{err}");
}
