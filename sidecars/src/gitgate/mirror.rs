//! One bare mirror per remote: created on start, refreshed from upstream
//! before every fetch and push, HEAD following upstream's default branch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tokio::sync::Mutex;

use super::ssh::{SshError, SshSettings};
use crate::policy::GitRemote;

/// Why a mirror could not be set up or refreshed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("remote name `{0}` is not usable (letters, digits, `.`, `_`, `-`; not starting with `.` or `-`)")]
    BadName(String),
    #[error("remote `{0}`")]
    Ssh(String, #[source] SshError),
    #[error("cannot run git")]
    Spawn(#[source] std::io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{0} exists and is not a bare git repository")]
    NotBare(PathBuf),
    #[error("`git {0}` failed: {1}")]
    Git(String, String),
    #[error("cannot fetch from upstream: {0}")]
    Upstream(String),
}

/// The hook script git runs before accepting a push.
pub const HOOK_NAME: &str = "pre-receive";

/// Largest pack a push may send (`receive.maxInputSize`): 512 MiB.
pub const MAX_PUSH_PACK: u64 = 512 << 20;

/// A bare mirror of one remote.
#[derive(Debug)]
pub struct Mirror {
    pub remote: GitRemote,
    pub path: PathBuf,
    pub ssh: SshSettings,
    /// Serialises fetches and pushes on this mirror.
    pub lock: Mutex<()>,
}

impl Mirror {
    /// Create (or validate) the mirror of `remote` under `dir` and write its
    /// known_hosts file and pre-receive hook.
    pub fn open(
        dir: &Path,
        remote: &GitRemote,
        hook_command: &[String],
    ) -> Result<Self, MirrorError> {
        if !super::pktline::is_valid_name(&remote.name) {
            return Err(MirrorError::BadName(remote.name.clone()));
        }
        let path = dir.join(format!("{}.git", remote.name));
        let gate_dir = path.join("bottle-gate");
        let ssh = SshSettings::for_remote(remote, gate_dir.join("known_hosts"))
            .map_err(|e| MirrorError::Ssh(remote.name.clone(), e))?;
        ssh.command()
            .map_err(|e| MirrorError::Ssh(remote.name.clone(), e))?;

        if path.exists() {
            let out = run(git(&path).args(["rev-parse", "--is-bare-repository"]))?;
            if !out.status.success() || out.stdout.trim_ascii() != b"true" {
                return Err(MirrorError::NotBare(path));
            }
        } else {
            std::fs::create_dir_all(dir).map_err(|e| MirrorError::Write(dir.to_path_buf(), e))?;
            check(
                git_plain()
                    .arg("init")
                    .arg("--bare")
                    .arg("--quiet")
                    .arg(&path),
                "init --bare",
            )?;
        }

        let deny = if remote.allow_force_push {
            "false"
        } else {
            "true"
        };
        let max_pack = MAX_PUSH_PACK.to_string();
        for (key, value) in [
            ("receive.maxInputSize", max_pack.as_str()),
            ("receive.denyDeletes", deny),
            ("receive.denyNonFastForwards", deny),
            ("receive.fsckObjects", "true"),
            ("receive.advertisePushOptions", "false"),
            ("core.logAllRefUpdates", "false"),
            ("uploadpack.allowFilter", "true"),
            ("gc.autoDetach", "false"),
        ] {
            check(git(&path).args(["config", key, value]), "config")?;
        }

        std::fs::create_dir_all(&gate_dir).map_err(|e| MirrorError::Write(gate_dir.clone(), e))?;
        let known_hosts = ssh
            .known_hosts_line(&remote.known_host_key)
            .map_err(|e| MirrorError::Ssh(remote.name.clone(), e))?;
        write_file(&ssh.known_hosts, known_hosts.as_bytes(), 0o600)?;

        let hooks = path.join("hooks");
        std::fs::create_dir_all(&hooks).map_err(|e| MirrorError::Write(hooks.clone(), e))?;
        write_file(
            &hooks.join(HOOK_NAME),
            hook_script(hook_command).as_bytes(),
            0o755,
        )?;

        Ok(Self {
            remote: remote.clone(),
            path,
            ssh,
            lock: Mutex::new(()),
        })
    }

    /// Directory of the hooks git runs for this mirror.
    pub fn hooks_dir(&self) -> PathBuf {
        self.path.join("hooks")
    }

    /// Bring the mirror up to date with upstream: HEAD follows upstream's
    /// default branch, heads and tags are mirrored with `--prune`. Callers
    /// hold [`Mirror::lock`].
    pub async fn refresh(&self) -> Result<(), MirrorError> {
        let ssh_command = self
            .ssh
            .command()
            .map_err(|e| MirrorError::Ssh(self.remote.name.clone(), e))?;

        let mut ls = git(&self.path);
        ls.env("GIT_SSH_COMMAND", &ssh_command).args([
            "ls-remote",
            "--symref",
            "--",
            &self.remote.upstream,
            "HEAD",
        ]);
        let mut fetch = git(&self.path);
        fetch.env("GIT_SSH_COMMAND", &ssh_command).args([
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--",
            &self.remote.upstream,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ]);
        // Both talk to upstream; run them side by side to pay one round of
        // connection setup instead of two.
        let (ls, fetch) = tokio::join!(run_async(ls), run_async(fetch));
        let (ls, fetch) = (ls?, fetch?);
        if !ls.status.success() {
            return Err(MirrorError::Upstream(stderr_tail(&ls)));
        }
        if !fetch.status.success() {
            return Err(MirrorError::Upstream(stderr_tail(&fetch)));
        }
        let head = symref_head(&ls.stdout);

        if let Some(head) = head {
            let out = run_async({
                let mut c = git(&self.path);
                c.args(["symbolic-ref", "HEAD", &head]);
                c
            })
            .await?;
            if !out.status.success() {
                return Err(MirrorError::Git(
                    "symbolic-ref HEAD".into(),
                    stderr_tail(&out),
                ));
            }
        }
        Ok(())
    }
}

/// `ls-remote --symref` output → the branch HEAD points at, if it is a
/// well-formed branch name.
pub fn symref_head(out: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(out).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("ref: ")?;
        let (target, name) = rest.split_once('\t')?;
        let ok = name == "HEAD"
            && target.starts_with("refs/heads/")
            && target.len() > "refs/heads/".len()
            && !target.contains("..")
            && target
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"~^:?*[\\".contains(&b));
        ok.then(|| target.to_string())
    })
}

/// The pre-receive script: exec the configured hook command.
pub fn hook_script(hook_command: &[String]) -> String {
    let argv: Vec<String> = hook_command
        .iter()
        .map(|a| bottle_util::shell_quote(a))
        .collect();
    format!(
        "#!/bin/sh\n# Written by bottle git-gate: every push is checked by the gate.\nexec {}\n",
        argv.join(" ")
    )
}

/// A `git` command with a clean environment: no system or global config,
/// no prompts, C locale, and no replace refs (a pushed `refs/replace/*`
/// must never change what the gate reads). The caller's PATH is kept to
/// find `git` and `ssh`.
pub fn git_plain() -> Command {
    let mut c = Command::new("git");
    c.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        c.env("PATH", path);
    }
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", "/nonexistent")
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .stdin(Stdio::null());
    c
}

/// [`git_plain`] run against the repository at `repo`.
pub fn git(repo: &Path) -> Command {
    let mut c = git_plain();
    c.env("GIT_DIR", repo);
    c
}

fn run(cmd: &mut Command) -> Result<Output, MirrorError> {
    cmd.output().map_err(MirrorError::Spawn)
}

async fn run_async(cmd: Command) -> Result<Output, MirrorError> {
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(MirrorError::Spawn)
}

fn check(cmd: &mut Command, what: &str) -> Result<(), MirrorError> {
    let out = run(cmd)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MirrorError::Git(what.into(), stderr_tail(&out)))
    }
}

/// The last few non-empty lines of a command's stderr, joined into one line.
pub fn stderr_tail(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    // git's generic advice after a transport failure hides the real cause.
    let boilerplate = [
        "Could not read from remote repository",
        "Please make sure you have",
        "and the repository exists",
    ];
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !boilerplate.iter().any(|b| l.contains(b)))
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("; ");
    if tail.is_empty() {
        format!("git exited with {}", out.status)
    } else {
        tail
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), MirrorError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let res = std::fs::write(&tmp, data)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path));
    res.map_err(|e| MirrorError::Write(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symref_head_finds_default_branch() {
        let out = b"ref: refs/heads/main\tHEAD\n0123456789abcdef0123456789abcdef01234567\tHEAD\n";
        assert_eq!(symref_head(out).as_deref(), Some("refs/heads/main"));
    }

    #[test]
    fn symref_head_ignores_non_branch_targets() {
        assert_eq!(symref_head(b"ref: refs/tags/v1\tHEAD\n"), None);
        assert_eq!(symref_head(b"ref: refs/heads/a..b\tHEAD\n"), None);
        assert_eq!(symref_head(b"ref: refs/heads/\tHEAD\n"), None);
        assert_eq!(symref_head(b""), None);
    }

    #[test]
    fn hook_script_quotes_every_argument() {
        let s = hook_script(&["/opt/my bottle".into(), "__git-hook".into()]);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.ends_with("exec '/opt/my bottle' '__git-hook'\n"));
    }
}
