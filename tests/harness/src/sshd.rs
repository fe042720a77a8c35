//! A real `sshd` upstream on a loopback port, with its own host key, one
//! authorized client key and bare repos to push to and fetch from.
//!
//! ```no_run
//! # fn t(dir: &std::path::Path) -> std::io::Result<()> {
//! use bottle_test_harness::sshd::Sshd;
//! if !Sshd::require() { return Ok(()); }
//! let sshd = Sshd::start(dir)?;
//! let repo = sshd.bare_repo("app", "main")?;
//! let url = sshd.url(&repo); // ssh://user@127.0.0.1:PORT/…/app.git
//! # Ok(()) }
//! ```
//! The daemon is killed in `Drop`.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's openssh-server puts the daemon (it must run by absolute path).
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd` on 127.0.0.1.
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    user: String,
    child: Option<Child>,
}

impl Sshd {
    /// Skip check: sshd, ssh, ssh-keygen and git must be installed.
    #[track_caller]
    pub fn require() -> bool {
        crate::skip::require_programs(&[
            (SSHD, "openssh-server"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
            ("git", "git"),
        ])
    }

    /// Generate keys and a config under `dir` and start sshd on a free port.
    pub fn start(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        for key in ["host_key", "client_key"] {
            let path = dir.join(key);
            if !path.exists() {
                run(Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(&path))?;
            }
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let user = current_user()?;
        // Privilege separation needs this directory when sshd runs as root.
        if crate::skip::is_root() {
            std::fs::create_dir_all("/run/sshd")?;
        }
        // The free port may be taken between probing and sshd's bind: retry.
        let mut last = None;
        for _ in 0..3 {
            match Self::spawn(&dir, &user, free_port()?) {
                Ok(sshd) => return Ok(sshd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("sshd did not start")))
    }

    fn spawn(dir: &Path, user: &str, port: u16) -> io::Result<Self> {
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {dir}/host_key\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             AllowUsers {user}\n\
             AllowTcpForwarding no\n\
             AllowAgentForwarding no\n\
             X11Forwarding no\n\
             PermitTTY no\n\
             PrintMotd no\n\
             LogLevel VERBOSE\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config)?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut sshd = Self {
            dir: dir.to_path_buf(),
            port,
            user: user.to_string(),
            child: Some(child),
        };
        sshd.wait_ready()?;
        Ok(sshd)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            let listening = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if listening {
                // Someone else may hold the port: sshd then exits at once.
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
                    return Err(io::Error::other(format!("sshd exited ({status}): {log}")));
                }
            }
            if listening {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("sshd did not listen within 10s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the client key logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Private key authorized for [`Sshd::user`].
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    /// The server's public host key as `ssh-ed25519 AAAA…` (no comment).
    pub fn host_key(&self) -> io::Result<String> {
        let text = std::fs::read_to_string(self.dir.join("host_key.pub"))?;
        let mut parts = text.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(kind), Some(blob)) => Ok(format!("{kind} {blob}")),
            _ => Err(io::Error::other("host_key.pub is malformed")),
        }
    }

    /// A known_hosts file for direct ssh access (used by tests and the bench).
    pub fn known_hosts_file(&self) -> io::Result<PathBuf> {
        let path = self.dir.join("client_known_hosts");
        let mut f = std::fs::File::create(&path)?;
        writeln!(f, "[127.0.0.1]:{} {}", self.port, self.host_key()?)?;
        Ok(path)
    }

    /// `GIT_SSH_COMMAND` for talking to this sshd directly with the client key.
    pub fn git_ssh_command(&self) -> io::Result<String> {
        Ok(format!(
            "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -i {}",
            self.known_hosts_file()?.display(),
            self.client_key().display()
        ))
    }

    /// Create a bare repo `repos/<name>.git` whose default branch is `branch`.
    pub fn bare_repo(&self, name: &str, branch: &str) -> io::Result<PathBuf> {
        let path = self.dir.join("repos").join(format!("{name}.git"));
        std::fs::create_dir_all(&path)?;
        run(Command::new("git")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["init", "--quiet", "--bare", "--initial-branch", branch])
            .arg(&path))?;
        Ok(path)
    }

    /// `ssh://user@127.0.0.1:PORT/abs/path` of a repo on this server.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// Stop the daemon (the upstream goes down; idempotent).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn current_user() -> io::Result<String> {
    let out = Command::new("id").arg("-un").output()?;
    let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if user.is_empty() {
        return Err(io::Error::other("cannot tell the current user name"));
    }
    Ok(user)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
