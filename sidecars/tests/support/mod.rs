//! The git-gate end-to-end fixture shared by `gitgate_e2e` and
//! `gitgate_objects`: a real `sshd` upstream and a gate in front of it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use bottle_sidecars::audit::{read_verified, AuditLog, AuditOptions, AuditRecord};
use bottle_sidecars::gitgate::{serve_tcp, GitGate, GitGateConfig};
use bottle_sidecars::policy::GitRemote;
use bottle_sidecars::scanner::Scanner;
use bottle_test_harness::sshd::Sshd;

pub const AWS_KEY: &str = "AKIAZ7VRSQ5TJ2NXKQ4P";
pub const GITHUB_TOKEN: &str = "ghp_R8xK2mQv7LpZ4nWt9YcB3sHd6FjA1uEo5GiN";

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub sshd: Sshd,
    pub upstream: PathBuf,
    pub gate_url: String,
    _rt: tokio::runtime::Runtime,
}

impl Fixture {
    /// The gate's audit log, its chain verified.
    pub fn audit(&self) -> Vec<AuditRecord> {
        read_verified(&self.tmp.path().join("audit.jsonl")).unwrap()
    }

    /// sshd upstream with one commit on `branch`, and a gate serving it as `app`.
    pub fn new(branch: &str, tweak: impl FnOnce(&mut GitRemote)) -> Option<Self> {
        if !Sshd::require() {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        std::fs::write(tmp.path().join("home/.gitconfig"), "").unwrap();
        let sshd = Sshd::start(&tmp.path().join("sshd")).unwrap();
        let upstream = sshd.bare_repo("app", branch).unwrap();

        let mut remote = GitRemote {
            name: "app".into(),
            upstream: sshd.url(&upstream),
            identity_file: Some(sshd.client_key()),
            known_host_key: sshd.host_key().unwrap(),
            extra_hosts: Default::default(),
            allow_force_push: false,
            allow_non_commit_refs: false,
        };
        tweak(&mut remote);
        let audit =
            AuditLog::open(&tmp.path().join("audit.jsonl"), AuditOptions::new("test")).unwrap();
        let config = GitGateConfig {
            mirrors_dir: tmp.path().join("mirrors"),
            remotes: vec![remote],
            hook_command: vec![env!("CARGO_BIN_EXE_bottle-git-hook").into()],
            audit: Some(Arc::new(audit)),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let gate = GitGate::new(config, Scanner::builtin().unwrap()).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(serve_tcp(Arc::clone(&gate), listener));

        let fx = Self {
            tmp,
            sshd,
            upstream,
            gate_url: format!("git://127.0.0.1:{port}/app.git"),
            _rt: rt,
        };
        // Seed upstream with one commit, out of band (local path).
        let seed = fx.path("seed");
        fx.git_ok(
            fx.tmp.path(),
            &[
                "clone",
                "--quiet",
                fx.upstream.to_str().unwrap(),
                seed.to_str().unwrap(),
            ],
        );
        fx.commit(&seed, "README.md", "hello\n", "initial commit");
        fx.git_ok(
            &seed,
            &[
                "push",
                "--quiet",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        Some(fx)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Run git with an isolated HOME and global config.
    pub fn git(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new("git")
            .current_dir(dir)
            .env("HOME", self.path("home"))
            .env("GIT_CONFIG_GLOBAL", self.path("home/.gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "Agent")
            .env("GIT_AUTHOR_EMAIL", "agent@example.invalid")
            .env("GIT_COMMITTER_NAME", "Agent")
            .env("GIT_COMMITTER_EMAIL", "agent@example.invalid")
            .env_remove("GIT_DIR")
            .env_remove("GIT_SSH_COMMAND")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `git` expected to fail; returns its stderr.
    pub fn git_fails(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(!out.status.success(), "git {args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn commit(&self, repo: &Path, file: &str, content: &str, msg: &str) -> String {
        std::fs::write(repo.join(file), content).unwrap();
        self.git_ok(repo, &["add", file]);
        self.git_ok(repo, &["commit", "--quiet", "-m", msg]);
        self.git_ok(repo, &["rev-parse", "HEAD"])
    }

    pub fn clone_through_gate(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        self.git_ok(
            self.tmp.path(),
            &["clone", "--quiet", &self.gate_url, dir.to_str().unwrap()],
        );
        dir
    }

    pub fn upstream_rev(&self, rev: &str) -> String {
        self.git_ok(&self.upstream, &["rev-parse", rev])
    }

    /// Everything upstream holds: its refs and the ids of all its objects.
    pub fn upstream_snapshot(&self) -> (String, Vec<String>) {
        let refs = self.git_ok(
            &self.upstream,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
        );
        let objects = self.git_ok(
            &self.upstream,
            &[
                "cat-file",
                "--batch-all-objects",
                "--batch-check=%(objectname)",
            ],
        );
        let mut objects: Vec<String> = objects.lines().map(str::to_string).collect();
        objects.sort();
        (refs, objects)
    }

    /// Whether upstream has the object `oid` at all.
    pub fn upstream_has(&self, oid: &str) -> bool {
        self.git(&self.upstream, &["cat-file", "-e", oid])
            .status
            .success()
    }
}
