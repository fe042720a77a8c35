//! git-gate scans every object a push brings, not only the commits it
//! adds: blobs and trees on tags, tags of tags, file names, ref names. A real
//! `git` client pushes through the gate to a real `sshd` upstream, and every
//! refused push must leave upstream exactly as it was (refs and objects).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use support::{Fixture, AWS_KEY, GITHUB_TOKEN};

/// Write `content` as a blob into `repo`; returns its id.
fn blob(fx: &Fixture, repo: &Path, content: &str) -> String {
    let mut child = Command::new("git")
        .current_dir(repo)
        .env("HOME", fx.path("home"))
        .env("GIT_CONFIG_GLOBAL", fx.path("home/.gitconfig"))
        .args(["hash-object", "-w", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A tree holding one file `name` with `content`; returns (tree, blob).
fn tree(fx: &Fixture, repo: &Path, name: &str, content: &str) -> (String, String) {
    let b = blob(fx, repo, content);
    let mut child = Command::new("git")
        .current_dir(repo)
        .env("HOME", fx.path("home"))
        .env("GIT_CONFIG_GLOBAL", fx.path("home/.gitconfig"))
        .arg("mktree")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("100644 blob {b}\t{name}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    (String::from_utf8(out.stdout).unwrap().trim().to_string(), b)
}

/// Push `refspec`, expect a refusal, and check upstream did not change.
fn refused_and_upstream_unchanged(fx: &Fixture, work: &Path, refspec: &str) -> String {
    let before = fx.upstream_snapshot();
    let err = fx.git_fails(work, &["push", "origin", refspec]);
    assert_eq!(fx.upstream_snapshot(), before, "upstream changed: {err}");
    // The gate's lines (`remote: …`) never echo the secret (git's own
    // summary line repeats the ref name the pusher typed).
    let gate: String = err.lines().filter(|l| l.starts_with("remote:")).collect();
    assert!(
        !gate.contains(AWS_KEY) && !gate.contains(GITHUB_TOKEN),
        "the secret itself must not be echoed: {err}"
    );
    err
}

fn allow_non_commit_refs(r: &mut bottle_sidecars::policy::GitRemote) {
    r.allow_non_commit_refs = true;
}

#[test]
fn tag_on_a_blob_holding_an_aws_key_is_refused() {
    let Some(fx) = Fixture::new("main", allow_non_commit_refs) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let b = blob(&fx, &work, &format!("region = eu\nkey = {AWS_KEY}\n"));
    fx.git_ok(&work, &["tag", "leak", &b]);
    let err = refused_and_upstream_unchanged(&fx, &work, "refs/tags/leak");
    assert!(err.contains("secret(s) found"), "{err}");
    assert!(err.contains("aws-access-key-id"), "{err}");
    assert!(
        err.contains(&format!("line 2 in blob {}", &b[..12])),
        "{err}"
    );
    assert!(err.contains("refs/tags/leak"), "{err}");
    assert!(!fx.upstream_has(&b));
}

#[test]
fn annotated_tag_on_a_tree_holding_a_github_token_is_refused() {
    let Some(fx) = Fixture::new("main", allow_non_commit_refs) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let (t, b) = tree(&fx, &work, "token.txt", &format!("{GITHUB_TOKEN}\n"));
    fx.git_ok(&work, &["tag", "-a", "snap", "-m", "a tree", &t]);
    let err = refused_and_upstream_unchanged(&fx, &work, "refs/tags/snap");
    assert!(err.contains("github-pat"), "{err}");
    assert!(err.contains("token.txt line 1"), "{err}");
    assert!(!fx.upstream_has(&t) && !fx.upstream_has(&b));
}

#[test]
fn tag_of_a_tag_with_a_secret_in_the_inner_message_is_refused() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let msg = format!("inner\n\ndeploy key {AWS_KEY}\n");
    fx.git_ok(&work, &["tag", "-a", "inner", "-m", &msg]);
    let inner = fx.git_ok(&work, &["rev-parse", "refs/tags/inner"]);
    fx.git_ok(
        &work,
        &[
            "-c",
            "advice.nestedTag=false",
            "tag",
            "-a",
            "outer",
            "-m",
            "clean",
            "inner",
        ],
    );
    // Only the outer tag is pushed; the inner one travels inside it.
    fx.git_ok(&work, &["tag", "-d", "inner"]);
    let err = refused_and_upstream_unchanged(&fx, &work, "refs/tags/outer");
    assert!(err.contains("aws-access-key-id"), "{err}");
    assert!(
        err.contains(&format!("(tag message) line 3 in tag {}", &inner[..12])),
        "{err}"
    );
    assert!(!fx.upstream_has(&inner));
}

#[test]
fn secret_in_a_file_name_is_refused() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    std::fs::create_dir_all(work.join("keys")).unwrap();
    let name = format!("keys/{AWS_KEY}.txt");
    let c = fx.commit(&work, &name, "nothing secret in here\n", "add a key file");
    let err = refused_and_upstream_unchanged(&fx, &work, "HEAD:refs/heads/main");
    assert!(err.contains("aws-access-key-id"), "{err}");
    assert!(err.contains("file name `keys/AKIA"), "{err}");
    assert!(err.contains(&format!("in commit {}", &c[..12])), "{err}");
    assert!(!fx.upstream_has(&c));
}

#[test]
fn secret_in_a_tag_message_is_refused() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let msg = format!("release\n\nsigned with {GITHUB_TOKEN}");
    fx.git_ok(&work, &["tag", "-a", "v1", "-m", &msg]);
    let tag = fx.git_ok(&work, &["rev-parse", "refs/tags/v1"]);
    let err = refused_and_upstream_unchanged(&fx, &work, "refs/tags/v1");
    assert!(err.contains("github-pat"), "{err}");
    assert!(err.contains("(tag message) line 3"), "{err}");
    assert!(err.contains("git tag -d"), "says how to fix it: {err}");
    assert!(!fx.upstream_has(&tag));
}

#[test]
fn ref_pointing_at_a_blob_is_refused_with_its_reason() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let b = blob(&fx, &work, "harmless\n");
    fx.git_ok(&work, &["tag", "data", &b]);
    let err = refused_and_upstream_unchanged(&fx, &work, "refs/tags/data");
    assert!(err.contains("refs/tags/data points at a blob"), "{err}");
    assert!(err.contains("allow_non_commit_refs"), "{err}");
    assert!(!fx.upstream_has(&b));
}

#[test]
fn annotated_tag_on_a_tree_is_refused_by_default() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let (t, _) = tree(&fx, &work, "a.txt", "harmless\n");
    fx.git_ok(&work, &["tag", "-a", "snap", "-m", "a tree", &t]);
    let err = refused_and_upstream_unchanged(&fx, &work, "refs/tags/snap");
    assert!(
        err.contains("refs/tags/snap points at a tree (through an annotated tag)"),
        "{err}"
    );
    assert!(!fx.upstream_has(&t));
}

#[test]
fn clean_tag_on_a_blob_is_forwarded_when_allowed() {
    let Some(fx) = Fixture::new("main", allow_non_commit_refs) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let b = blob(
        &fx,
        &work,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\nnot secret\n",
    );
    fx.git_ok(&work, &["tag", "pubkey", &b]);
    let out = fx.git(&work, &["push", "origin", "refs/tags/pubkey"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(fx.upstream_rev("refs/tags/pubkey"), b);
}

#[test]
fn secret_in_a_ref_name_is_refused() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let err = refused_and_upstream_unchanged(&fx, &work, &format!("HEAD:refs/heads/{AWS_KEY}"));
    assert!(err.contains("aws-access-key-id"), "{err}");
    assert!(err.contains("ref name `refs/heads/AKIA"), "{err}");
}

#[test]
fn a_replace_ref_does_not_hide_a_pushed_commit_from_the_scan() {
    let Some(fx) = Fixture::new("main", |_| {}) else {
        return;
    };
    let work = fx.clone_through_gate("work");
    let base = fx.git_ok(&work, &["rev-parse", "HEAD"]);
    // X carries the secret; Y is a clean stand-in for it.
    let x = fx.commit(&work, "k.txt", &format!("{AWS_KEY}\n"), "x");
    fx.git_ok(&work, &["reset", "--quiet", "--hard", &base]);
    let y = fx.commit(&work, "k.txt", "clean\n", "y");
    fx.git_ok(&work, &["replace", &x, &y]);
    // The replace ref itself is clean and forwarded …
    fx.git_ok(
        &work,
        &["push", "--quiet", "origin", &format!("refs/replace/{x}")],
    );
    // … but must not make the gate read Y when X is pushed.
    let err = fx.git_fails(
        &work,
        &[
            "--no-replace-objects",
            "push",
            "origin",
            &format!("{x}:refs/heads/main"),
        ],
    );
    assert!(err.contains("k.txt line 1"), "{err}");
    assert!(!fx.upstream_has(&x));
}
