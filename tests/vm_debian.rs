//! The slower tests: the Debian image (git, curl, node) in a real VM and in a
//! container, with
//! an HTTPS upstream on host loopback reached through the intercepting proxy
//! (the bottle CA trusted in the guest), and a real sshd upstream reached
//! through git-gate for clone and push.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bottle_test_harness::sshd::Sshd;
use bottle_test_harness::tls::{TestCa, Upstream};
use common::*;
use std::process::Command;

fn require_debian_image(sb: &Sandbox) -> bool {
    let out = sb.run(&["image", "ls"]);
    skip::require(
        stdout(&out).lines().any(|l| l.starts_with("debian\t")),
        "the Debian image is not built (run `bottle image build debian`, scripts/setup does)",
    )
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn debian_vm_reaches_https_upstream_and_git_gate() {
    if !require_vm() || !Sshd::require() {
        return;
    }
    debian_suite("--vm");
}

#[test]
fn debian_container_reaches_https_upstream_and_git_gate() {
    let doctor = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .arg("doctor")
        .output()
        .unwrap();
    if !skip::require(
        stdout(&doctor).contains("backend docker: ready"),
        "dockerd is not reachable (run scripts/setup-docker.sh)",
    ) || !Sshd::require()
    {
        return;
    }
    debian_suite("--docker");
}

fn debian_suite(backend: &str) {
    let sb = Sandbox::new();
    if !require_debian_image(&sb) {
        return;
    }
    // HTTPS upstream on host loopback, trusted through `upstream_ca`.
    let ca = TestCa::new();
    let ca_path = ca.write_pem(sb.dir.path());
    let upstream = Upstream::https(&ca, &["localhost"]);
    // A real sshd upstream with one commit on main.
    let sshd = Sshd::start(&sb.dir.path().join("sshd")).unwrap();
    let bare = sshd.bare_repo("app", "main").unwrap();
    let seed = sb.dir.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q"]);
    std::fs::write(seed.join("README"), "upstream readme\n").unwrap();
    git(&seed, &["add", "README"]);
    git(&seed, &["commit", "-q", "-m", "first upstream commit"]);
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let url = sshd.url(&bare);
    let manifest = format!(
        r#"
[bottles.d]
image = "debian"
cpus = 1
memory_mib = 1024
allow = ["localhost"]
allow_ports = [{port}]
allow_ips = ["127.0.0.1"]
upstream_ca = ["{ca}"]

[[bottles.d.git]]
name = "app"
upstream = "{url}"
identity_file = "{key}"
known_host_key = "{host_key}"

[agents.a]
bottle = "d"
copy_cwd = false
"#,
        port = upstream.port(),
        ca = ca_path.display(),
        key = sshd.client_key().display(),
        host_key = sshd.host_key().unwrap().trim(),
    );
    let m = sb.manifest(&manifest);
    let script = format!(
        r#"
set -u
echo "node: $(node -e 'console.log(process.version)')"
echo "https: $(curl -sS https://localhost:{port}/through-proxy | head -n1)"
echo "unlisted: $(curl -s -o /dev/null -w '%{{http_connect}}' https://unlisted.example/)"
cd /tmp
git clone -q {url} app 2>/tmp/clone.err && echo "clone: $(git -C app log --format=%s -1)" || {{ echo "clone failed:"; cat /tmp/clone.err; }}
cd app
echo "agent line" >> README && git commit -qam "agent change" && git push -q origin main && echo "push-clean: ok"
echo "aws_access_key_id = AKIAQ3EGRZN5LMXW7TPB" > creds.txt && git add creds.txt && git commit -qm "oops"
if git push -q origin main 2>/tmp/push.err; then echo "push-secret: accepted"; else echo "push-secret: rejected"; fi
grep -q -i aws /tmp/push.err && echo "push-secret-message: names the rule"
git reset -q --hard HEAD~1
blob=$(printf 'token ghp_R4nd0mT0k3nV4lu3Xy9Zq8Wv7Ut6Sr5Qp4On3\n' | git hash-object -w --stdin)
git tag blob-tag "$blob"
if git push -q origin refs/tags/blob-tag 2>/tmp/tag.err; then echo "push-tag-on-blob: accepted"; else echo "push-tag-on-blob: rejected"; fi
git tag -d blob-tag >/dev/null
echo x > "AKIAQ3EGRZN5LMXW7TPB.txt" && git add . && git commit -qm "named file"
if git push -q origin main 2>/tmp/name.err; then echo "push-secret-name: accepted"; else echo "push-secret-name: rejected"; fi
"#,
        port = upstream.port(),
    );
    // TCG boots of the Debian image are slow on a loaded 2-core machine.
    let out = sb
        .bottle()
        .env("BOTTLE_GUEST_TIMEOUT_SECS", "300")
        .args(["run", backend, "--yes", "--manifest"])
        .arg(&m)
        .args(["a", "--", "/bin/bash", "-c", &script])
        .output()
        .unwrap();
    let so = stdout(&out);
    let diag = format!("stdout:\n{so}\nstderr:\n{}", stderr(&out));
    assert!(out.status.success(), "{diag}");
    assert!(so.contains("node: v"), "{diag}");
    assert!(
        so.contains("https: GET /through-proxy"),
        "the upstream answered through the proxy: {diag}"
    );
    assert!(so.contains("unlisted: 403"), "{diag}");
    assert!(so.contains("clone: first upstream commit"), "{diag}");
    assert!(so.contains("push-clean: ok"), "{diag}");
    assert!(so.contains("push-secret: rejected"), "{diag}");
    assert!(so.contains("push-secret-message: names the rule"), "{diag}");
    // Objects no new commit reaches, and file names, are scanned too.
    assert!(so.contains("push-tag-on-blob: rejected"), "{diag}");
    assert!(so.contains("push-secret-name: rejected"), "{diag}");
    let tags = Command::new("git")
        .args(["--git-dir", bare.to_str().unwrap(), "tag", "--list"])
        .output()
        .unwrap();
    assert!(tags.stdout.is_empty(), "a tag reached upstream: {tags:?}");
    // Upstream has the clean commit and not the one with the secret.
    let log = Command::new("git")
        .args([
            "--git-dir",
            bare.to_str().unwrap(),
            "log",
            "--format=%s",
            "main",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["agent change", "first upstream commit"],
        "{log}"
    );
    assert!(sb.state_entries().is_empty());
}
