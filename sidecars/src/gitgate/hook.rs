//! The pre-receive hook, in two halves.
//!
//! * [`run_hook`]: what git runs (through the hook command). A thin client: it
//!   sends the ref updates and the quarantine location to the gate over a
//!   per-push unix socket (path in [`SOCKET_ENV`], set by the gate on
//!   `receive-pack`, never by the guest), prints the gate's answer and exits
//!   with its verdict. Any failure rejects the push.
//! * [`check_and_forward`]: what the gate does with it, in its own process,
//!   with its configured scanner and the SSH key: policy check, secret scan,
//!   then `git push` to upstream. Local refs move only when this returns ok.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::audit::GateAudit;
use super::mirror::{self, Mirror};
use super::refusal::PushRefusal;
use super::scan::{self, GitRunner, ObjectKind, PeeledUpdate, RefUpdate, ScanOptions};
use crate::scanner::Scanner;

/// Environment variable naming the gate's socket for this push.
pub const SOCKET_ENV: &str = "BOTTLE_GITGATE_SOCKET";

/// What the hook sends to the gate.
#[derive(Debug, Serialize, Deserialize)]
pub struct HookRequest {
    /// The hook's stdin: `<old> <new> <ref>` lines.
    pub updates: String,
    /// `GIT_OBJECT_DIRECTORY` (the quarantine) as set by receive-pack.
    pub object_dir: Option<PathBuf>,
}

/// The gate's verdict.
#[derive(Debug, Serialize, Deserialize)]
pub struct HookReply {
    pub ok: bool,
    pub message: String,
}

/// The hook entry point: `env` is the process environment, `stdin` the ref
/// updates from git, `stderr` goes to the pusher (as `remote: …`). Returns the
/// exit code: 0 accepts the push, anything else rejects it.
pub fn run_hook(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stderr: &mut dyn Write,
) -> i32 {
    match ask_gate(env, stdin) {
        Ok(reply) => {
            let _ = stderr.write_all(reply.message.as_bytes());
            if !reply.message.ends_with('\n') && !reply.message.is_empty() {
                let _ = stderr.write_all(b"\n");
            }
            if reply.ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            let _ = writeln!(stderr, "git-gate: push refused: {e}");
            1
        }
    }
}

/// [`run_hook`] on the real process environment, stdin and stderr.
pub fn run_hook_main() -> std::process::ExitCode {
    let code = run_hook(
        &|k| std::env::var(k).ok(),
        &mut std::io::stdin().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn ask_gate(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<HookReply, String> {
    let socket = env(SOCKET_ENV)
        .ok_or_else(|| format!("{SOCKET_ENV} is not set (hook not started by the gate)"))?;
    let mut updates = String::new();
    stdin
        .read_to_string(&mut updates)
        .map_err(|e| format!("cannot read ref updates: {e}"))?;
    let request = HookRequest {
        updates,
        object_dir: env("GIT_OBJECT_DIRECTORY").map(PathBuf::from),
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let mut stream =
        UnixStream::connect(&socket).map_err(|e| format!("cannot reach the gate: {e}"))?;
    stream
        .write_all(&line)
        .map_err(|e| format!("cannot talk to the gate: {e}"))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("no answer from the gate: {e}"))?;
    serde_json::from_str(&reply).map_err(|_| "no verdict from the gate".to_string())
}

/// Git run against the mirror with the push's quarantined objects visible.
#[derive(Debug)]
pub struct QuarantineGit {
    pub repo: PathBuf,
    pub quarantine: Option<PathBuf>,
}

impl GitRunner for QuarantineGit {
    fn command(&self) -> Command {
        let mut c = mirror::git(&self.repo);
        if let Some(q) = &self.quarantine {
            c.env("GIT_OBJECT_DIRECTORY", q)
                .env("GIT_QUARANTINE_PATH", q)
                .env(
                    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                    self.repo.join("objects"),
                );
        }
        c
    }
}

/// The quarantine must be a directory inside the mirror's object store.
pub fn check_quarantine(repo: &Path, object_dir: Option<&Path>) -> Result<Option<PathBuf>, String> {
    let Some(dir) = object_dir else {
        return Ok(None);
    };
    let objects = repo
        .join("objects")
        .canonicalize()
        .map_err(|e| format!("mirror objects: {e}"))?;
    let q = dir
        .canonicalize()
        .map_err(|_| "the push's object directory does not exist".to_string())?;
    if q.parent() == Some(objects.as_path())
        && q.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tmp_objdir-incoming-"))
    {
        Ok(Some(q))
    } else {
        Err("the push's object directory is not a quarantine of this mirror".into())
    }
}

/// Check a push against the remote's policy, scan it, and forward it; every
/// refusal and every forward is written to `audit`.
pub fn check_and_forward(
    mirror: &Mirror,
    scanner: &Scanner,
    request: &HookRequest,
    audit: &GateAudit,
) -> HookReply {
    match gate_push(mirror, scanner, request, audit) {
        Ok(message) => HookReply { ok: true, message },
        Err(refusal) => {
            tracing::info!(
                remote = %mirror.remote.name,
                rule = refusal.rule(),
                "git-gate refused push"
            );
            HookReply {
                ok: false,
                message: refusal.to_string(),
            }
        }
    }
}

/// [`check_and_forward`] with a typed refusal: the checks in order (ref
/// updates, quarantine, deletions, ref targets, fast-forwards, the scan),
/// the audit line, then the forward. Returns the message for the pusher.
pub fn gate_push(
    mirror: &Mirror,
    scanner: &Scanner,
    request: &HookRequest,
    audit: &GateAudit,
) -> Result<String, PushRefusal> {
    let checked = check_push(mirror, scanner, request).inspect_err(|r| audit.refused_push(r))?;
    let Some(checked) = checked else {
        return Ok(String::new());
    };
    let refs = checked.updates.iter().map(|u| u.name.clone()).collect();
    let exchange = audit.allow("push", refs).map_err(|e| {
        let refusal = PushRefusal::CannotCheck(format!(
            "cannot write the bottle's audit log ({e}); nothing was sent upstream"
        ));
        audit.refused_push(&refusal);
        refusal
    })?;
    let forced: Vec<&RefUpdate> = checked.forced.iter().collect();
    let result = forward(&checked.git, mirror, &checked.updates, &forced);
    exchange.complete(result.is_ok());
    result.map(|text| checked.summary + &text)
}

/// A push that passed every check, ready to forward.
struct CheckedPush {
    git: QuarantineGit,
    updates: Vec<RefUpdate>,
    forced: Vec<RefUpdate>,
    summary: String,
}

/// Every check before the forward; `None` when the push updates nothing.
fn check_push(
    mirror: &Mirror,
    scanner: &Scanner,
    request: &HookRequest,
) -> Result<Option<CheckedPush>, PushRefusal> {
    let updates = scan::parse_updates(&request.updates).map_err(PushRefusal::BadRequest)?;
    if updates.is_empty() {
        return Ok(None);
    }
    let quarantine = check_quarantine(&mirror.path, request.object_dir.as_deref())
        .map_err(PushRefusal::BadRequest)?;
    let git = QuarantineGit {
        repo: mirror.path.clone(),
        quarantine,
    };
    let remote = &mirror.remote;
    if !remote.allow_force_push {
        if let Some(u) = updates.iter().find(|u| u.is_delete()) {
            return Err(PushRefusal::Deletion {
                ref_name: u.name.clone(),
                remote: remote.name.clone(),
            });
        }
    }
    let options = ScanOptions::for_remote(remote);
    let peeled = scan::peel_updates(&git, &updates)?;
    scan::check_targets(&updates, &peeled, &options)?;
    let forced: Vec<RefUpdate> = forced_updates(&git, &updates, &peeled)?
        .into_iter()
        .cloned()
        .collect();
    if !remote.allow_force_push {
        if let Some(u) = forced.first() {
            return Err(PushRefusal::NonFastForward {
                ref_name: u.name.clone(),
                remote: remote.name.clone(),
            });
        }
    }

    let started = std::time::Instant::now();
    let report = scan::scan_updates(&git, scanner, &updates, &peeled, &options)?;
    let stats = report.stats;
    tracing::info!(
        remote = %remote.name,
        commits = stats.commits,
        objects = stats.objects,
        bytes = stats.bytes,
        ms = started.elapsed().as_millis() as u64,
        findings = report.findings.len(),
        "git-gate scanned push"
    );
    if !report.findings.is_empty() {
        return Err(PushRefusal::Secrets(report.findings));
    }
    let summary = format!(
        "git-gate: scanned {} commit(s), {} bytes in {} ms (and {} other object(s)): no secrets found\n",
        stats.commits,
        stats.bytes,
        started.elapsed().as_millis(),
        stats.objects,
    );
    Ok(Some(CheckedPush {
        git,
        updates,
        forced,
        summary,
    }))
}

/// The updates that are not fast-forwards (deletions excluded). An update
/// of a ref whose old or new side is not a commit is never a fast-forward.
fn forced_updates<'a>(
    git: &QuarantineGit,
    updates: &'a [RefUpdate],
    peeled: &[PeeledUpdate],
) -> Result<Vec<&'a RefUpdate>, PushRefusal> {
    let mut out = Vec::new();
    for (u, p) in updates.iter().zip(peeled) {
        let (Some(old), Some(new)) = (&p.old, &p.new) else {
            continue;
        };
        if old.target_kind != ObjectKind::Commit || new.target_kind != ObjectKind::Commit {
            out.push(u);
            continue;
        }
        let status = git
            .command()
            .args(["merge-base", "--is-ancestor", &old.target, &new.target])
            .status()
            .map_err(|e| PushRefusal::CannotCheck(format!("cannot run git merge-base: {e}")))?;
        match status.code() {
            Some(0) => {}
            Some(1) => out.push(u),
            _ => {
                return Err(PushRefusal::CannotCheck(format!(
                    "cannot tell whether {} is a fast-forward",
                    u.name
                )))
            }
        }
    }
    Ok(out)
}

/// `git push <upstream> <sha>:<ref>…` over the pinned SSH transport; the
/// upstream's answer is passed back verbatim.
fn forward(
    git: &QuarantineGit,
    mirror: &Mirror,
    updates: &[RefUpdate],
    forced: &[&RefUpdate],
) -> Result<String, PushRefusal> {
    let ssh = mirror
        .ssh
        .command()
        .map_err(|e| PushRefusal::CannotCheck(e.to_string()))?;
    let refspecs: Vec<String> = updates
        .iter()
        .map(|u| {
            if u.is_delete() {
                format!(":{}", u.name)
            } else if forced.iter().any(|f| f.name == u.name) {
                format!("+{}:{}", u.new, u.name)
            } else {
                format!("{}:{}", u.new, u.name)
            }
        })
        .collect();
    let mut cmd = git.command();
    cmd.env("GIT_SSH_COMMAND", ssh)
        .args([
            "push",
            "--no-verify",
            "--porcelain",
            "--atomic",
            "--",
            &mirror.remote.upstream,
        ])
        .args(&refspecs);
    let out = cmd
        .output()
        .map_err(|e| PushRefusal::CannotCheck(format!("cannot run git push: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(format!(
            "git-gate: scanned clean, forwarded to upstream `{}`:\n{text}",
            mirror.remote.name
        ))
    } else {
        Err(PushRefusal::Upstream {
            remote: mirror.remote.name.clone(),
            output: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_without_socket_rejects_the_push() {
        let mut err = Vec::new();
        let code = run_hook(&|_| None, &mut &b""[..], &mut err);
        assert_eq!(code, 1);
        assert!(String::from_utf8_lossy(&err).contains(SOCKET_ENV));
    }

    #[test]
    fn hook_with_dead_socket_rejects_the_push() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock").to_string_lossy().into_owned();
        let mut err = Vec::new();
        let code = run_hook(
            &|k| (k == SOCKET_ENV).then(|| sock.clone()),
            &mut &b""[..],
            &mut err,
        );
        assert_eq!(code, 1);
        assert!(String::from_utf8_lossy(&err).contains("cannot reach the gate"));
    }

    fn test_mirror(dir: &Path, allow_force_push: bool) -> Mirror {
        let remote = crate::policy::GitRemote {
            name: "app".into(),
            upstream: "ssh://git@127.0.0.1:1/app.git".into(),
            identity_file: None,
            known_host_key:
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            extra_hosts: Default::default(),
            allow_force_push,
            allow_non_commit_refs: false,
        };
        Mirror::open(dir, &remote, &["/bin/false".into()]).unwrap()
    }

    /// Commit an empty tree on top of `parent` in `repo`; returns the oid.
    fn commit(repo: &Path, parent: Option<&str>, msg: &str) -> String {
        let tree = mirror::git(repo).args(["mktree"]).output().unwrap();
        let tree = String::from_utf8(tree.stdout).unwrap();
        let mut c = mirror::git(repo);
        c.env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t");
        c.env("GIT_COMMITTER_EMAIL", "t@t")
            .args(["commit-tree", tree.trim(), "-m", msg]);
        if let Some(p) = parent {
            c.args(["-p", p]);
        }
        String::from_utf8(c.output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn rewritten_history_is_seen_as_forced() {
        let dir = tempfile::tempdir().unwrap();
        let m = test_mirror(dir.path(), false);
        let base = commit(&m.path, None, "base");
        let a = commit(&m.path, Some(&base), "a");
        let b = commit(&m.path, Some(&base), "b");
        let git = QuarantineGit {
            repo: m.path.clone(),
            quarantine: None,
        };
        let ff = RefUpdate {
            old: base.clone(),
            new: a.clone(),
            name: "refs/heads/ff".into(),
        };
        let forced = RefUpdate {
            old: a,
            new: b,
            name: "refs/heads/forced".into(),
        };
        let updates = [ff, forced];
        let peeled = scan::peel_updates(&git, &updates).unwrap();
        let got = forced_updates(&git, &updates, &peeled).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "refs/heads/forced");
    }

    #[test]
    fn hook_refuses_force_push_and_deletion_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        let m = test_mirror(dir.path(), false);
        let base = commit(&m.path, None, "base");
        let a = commit(&m.path, Some(&base), "a");
        let b = commit(&m.path, Some(&base), "b");
        let zero = "0".repeat(40);
        let scanner = Scanner::default();
        let forced = HookRequest {
            updates: format!("{a} {b} refs/heads/main\n"),
            object_dir: None,
        };
        let reply = check_and_forward(&m, &scanner, &forced, &GateAudit::disabled());
        assert!(!reply.ok);
        assert!(
            reply.message.contains("not a fast-forward"),
            "{}",
            reply.message
        );
        let delete = HookRequest {
            updates: format!("{a} {zero} refs/heads/main\n"),
            object_dir: None,
        };
        let reply = check_and_forward(&m, &scanner, &delete, &GateAudit::disabled());
        assert!(!reply.ok);
        assert!(
            reply
                .message
                .contains("deleting refs/heads/main is not allowed"),
            "{}",
            reply.message
        );
    }

    #[test]
    fn malformed_hook_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = test_mirror(dir.path(), false);
        let req = HookRequest {
            updates: "not a ref update\n".into(),
            object_dir: None,
        };
        let reply = check_and_forward(&m, &Scanner::default(), &req, &GateAudit::disabled());
        assert!(!reply.ok);
        assert!(reply.message.contains("malformed ref update"));
    }

    #[test]
    fn quarantine_outside_the_mirror_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("m.git");
        std::fs::create_dir_all(repo.join("objects/tmp_objdir-incoming-x")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        assert!(check_quarantine(&repo, Some(&dir.path().join("elsewhere"))).is_err());
        assert!(check_quarantine(&repo, Some(&repo.join("objects"))).is_err());
        let ok =
            check_quarantine(&repo, Some(&repo.join("objects/tmp_objdir-incoming-x"))).unwrap();
        assert!(ok.is_some());
    }
}
