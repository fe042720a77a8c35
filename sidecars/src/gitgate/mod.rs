//! git-gate: git:// server that mirrors fetches from upstream and scans
//! pushes before forwarding them over pinned SSH.
//!
//! * [`pktline`]: the checked git:// request parser and `ERR` packets.
//! * [`ssh`]: upstream URL parsing and the pinned `GIT_SSH_COMMAND`.
//! * [`mirror`]: one bare mirror per remote, refreshed before every service.
//! * [`scan`]: the secret scan over every object a push brings.
//! * [`refusal`]: why a push was refused, typed, and what the pusher is told.
//! * [`hook`]: the pre-receive hook client and the gate's check-and-forward.
//! * [`audit`]: every decision in the bottle's hash-chained audit log.
//!
//! Real `git upload-pack` / `git receive-pack` do all pack work, with the
//! client stream as their stdio.

pub mod audit;
pub mod hook;
pub mod mirror;
pub mod pktline;
pub mod refusal;
pub mod scan;
pub mod ssh;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

pub use audit::GateAudit;
pub use hook::{run_hook, run_hook_main, SOCKET_ENV};
pub use mirror::{Mirror, MirrorError};
pub use pktline::{PktLineError, Request, Service};
pub use refusal::PushRefusal;

use crate::audit::AuditLog;
use crate::policy::GitRemote;
use crate::scanner::Scanner;

/// Host name the agent's git config points at.
pub use bottle_contract::PROXY_HOST;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a push session may hold its mirror's lock.
const PUSH_SESSION_LIMIT: Duration = Duration::from_secs(3600);

/// Largest hook request accepted (ref update lines).
const MAX_HOOK_REQUEST: u64 = 4 << 20;

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum GitGateError {
    #[error("mirror setup failed")]
    Mirror(#[from] MirrorError),
    #[error("two git remotes are named `{0}`")]
    DuplicateName(String),
    #[error("hook_command is empty")]
    NoHookCommand,
    #[error("socket directory {0} is too deep for a unix socket path; use a shorter mirrors_dir")]
    SocketPathTooLong(PathBuf),
    #[error("cannot create {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// What the gate serves and where it keeps its state.
#[derive(Debug, Clone)]
pub struct GitGateConfig {
    /// Directory holding `<name>.git` bare mirrors (host side, never shared).
    pub mirrors_dir: PathBuf,
    pub remotes: Vec<GitRemote>,
    /// argv git runs as the pre-receive hook; it must call [`run_hook`]
    /// (production: `[<bottle-bundle binary>, "__git-hook"]`).
    pub hook_command: Vec<String>,
    /// The bottle's audit log (the proxy's): every fetch, push and refusal
    /// is written to it; `None` writes nothing (tests, benchmarks).
    pub audit: Option<Arc<AuditLog>>,
}

/// The git:// server of one bottle.
#[derive(Debug)]
pub struct GitGate {
    mirrors: HashMap<String, Arc<Mirror>>,
    scanner: Arc<Scanner>,
    socket_dir: PathBuf,
    sessions: AtomicU64,
    audit: Option<Arc<AuditLog>>,
}

impl GitGate {
    /// Create or validate every mirror (no network yet: upstream is first
    /// contacted by the first fetch or push).
    pub fn new(config: GitGateConfig, scanner: Scanner) -> Result<Arc<Self>, GitGateError> {
        if config.hook_command.is_empty() {
            return Err(GitGateError::NoHookCommand);
        }
        let socket_dir = config.mirrors_dir.join(".gate");
        // `<dir>/<pid>-<n>.sock` must fit in sun_path (108 bytes).
        if socket_dir.as_os_str().len() + 32 > 107 {
            return Err(GitGateError::SocketPathTooLong(socket_dir));
        }
        create_private_dir(&socket_dir)?;
        let mut mirrors = HashMap::new();
        for remote in &config.remotes {
            if mirrors.contains_key(&remote.name) {
                return Err(GitGateError::DuplicateName(remote.name.clone()));
            }
            let m = Mirror::open(&config.mirrors_dir, remote, &config.hook_command)?;
            mirrors.insert(remote.name.clone(), Arc::new(m));
        }
        Ok(Arc::new(Self {
            mirrors,
            scanner: Arc::new(scanner),
            socket_dir,
            sessions: AtomicU64::new(0),
            audit: config.audit,
        }))
    }

    /// Path of the bare mirror of `name`, if configured.
    pub fn mirror_path(&self, name: &str) -> Option<&Path> {
        self.mirrors.get(name).map(|m| m.path.as_path())
    }

    /// Serve one git:// connection to the end. Never panics on client input;
    /// every refusal reaches the client as an `ERR` packet.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        self: &Arc<Self>,
        mut stream: S,
        peer: String,
    ) {
        let audit = GateAudit::new(self.audit.clone(), &peer);
        let request =
            match tokio::time::timeout(REQUEST_TIMEOUT, pktline::read_request(&mut stream)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let msg = format!("git-gate: {e}");
                    audit.refused("", "bad-request", &msg);
                    return refuse(&mut stream, &peer, &msg).await;
                }
                Err(_) => {
                    let msg = "git-gate: no request within 30s";
                    audit.refused("", "request-timeout", msg);
                    return refuse(&mut stream, &peer, msg).await;
                }
            };
        let service = service_name(request.service);
        let Some(mirror) = self.mirrors.get(&request.repo).cloned() else {
            let mut names: Vec<&str> = self.mirrors.keys().map(String::as_str).collect();
            names.sort_unstable();
            let msg = format!(
                "git-gate: no repository `{}.git` here (configured: {})",
                request.repo,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
            audit.refused(service, "unknown-repo", &msg);
            return refuse(&mut stream, &peer, &msg).await;
        };
        let audit = audit.for_remote(&mirror.remote.name);
        tracing::debug!(%peer, repo = %request.repo, service = request.service.subcommand(), "git-gate request");
        match request.service {
            Service::UploadPack => {
                {
                    let _guard = mirror.lock.lock().await;
                    if let Err(e) = mirror.refresh().await {
                        let msg = stale_message(&mirror, &e);
                        audit.refused(service, "upstream-unreachable", &msg);
                        return refuse(&mut stream, &peer, &msg).await;
                    }
                }
                let exchange = match audit.allow(service, Vec::new()) {
                    Ok(x) => x,
                    Err(e) => {
                        let msg = audit_message(&e);
                        return refuse(&mut stream, &peer, &msg).await;
                    }
                };
                let ok = self.run_service(stream, &mirror, &request, None).await;
                exchange.complete(ok);
            }
            Service::ReceivePack => {
                let _guard = mirror.lock.lock().await;
                if let Err(e) = mirror.refresh().await {
                    let msg = stale_message(&mirror, &e);
                    audit.refused(service, "upstream-unreachable", &msg);
                    return refuse(&mut stream, &peer, &msg).await;
                }
                let n = self.sessions.fetch_add(1, Ordering::Relaxed);
                let socket = self
                    .socket_dir
                    .join(format!("{}-{n}.sock", std::process::id()));
                let _ = std::fs::remove_file(&socket);
                let listener = match tokio::net::UnixListener::bind(&socket) {
                    Ok(l) => l,
                    Err(e) => {
                        let msg = format!("git-gate: cannot accept pushes right now ({e})");
                        audit.refused(service, "hook-unavailable", &msg);
                        return refuse(&mut stream, &peer, &msg).await;
                    }
                };
                let hook_task = tokio::spawn(serve_hook(
                    listener,
                    mirror.clone(),
                    self.scanner.clone(),
                    audit,
                ));
                // The mirror stays locked for the whole push; a stalled client
                // must not keep it forever (dropping the future kills git).
                let session = self.run_service(stream, &mirror, &request, Some(&socket));
                if tokio::time::timeout(PUSH_SESSION_LIMIT, session)
                    .await
                    .is_err()
                {
                    tracing::debug!(%peer, repo = %request.repo, "git-gate push session timed out");
                }
                hook_task.abort();
                let _ = std::fs::remove_file(&socket);
            }
        }
    }

    /// Run the git service on the mirror with `stream` as its stdio.
    async fn run_service<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        mirror: &Mirror,
        request: &Request,
        hook_socket: Option<&Path>,
    ) -> bool {
        let mut cmd = mirror::git_plain();
        cmd.arg("-c")
            .arg(format!("core.hooksPath={}", mirror.hooks_dir().display()));
        cmd.arg(request.service.subcommand());
        if request.service == Service::UploadPack {
            // Drop clients that stall mid-transfer (seconds of no I/O).
            cmd.arg("--strict").arg("--timeout=300");
        }
        cmd.arg(&mirror.path);
        if let Some(v) = request.protocol_version {
            cmd.env("GIT_PROTOCOL", format!("version={v}"));
        }
        if let Some(sock) = hook_socket {
            cmd.env(SOCKET_ENV, sock);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = wr
                    .write_all(&pktline::err_packet(&format!(
                        "git-gate: cannot run git ({e})"
                    )))
                    .await;
                return false;
            }
        };
        let (Some(mut cin), Some(mut cout), Some(cerr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return false;
        };
        let name = mirror.remote.name.clone();
        let err_task = tokio::spawn(async move {
            let mut lines = BufReader::new(cerr.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(remote = %name, "git: {line}");
            }
        });
        let in_task = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut rd, &mut cin).await;
        });
        let _ = tokio::io::copy(&mut cout, &mut wr).await;
        let _ = wr.shutdown().await;
        let status = child.wait().await;
        in_task.abort();
        let _ = err_task.await;
        status.is_ok_and(|s| s.success())
    }
}

/// Accept the hook's connection(s) for one receive-pack session.
async fn serve_hook(
    listener: tokio::net::UnixListener,
    mirror: Arc<Mirror>,
    scanner: Arc<Scanner>,
    audit: GateAudit,
) {
    while let Ok((conn, _)) = listener.accept().await {
        let (rd, mut wr) = conn.into_split();
        let mut line = String::new();
        let reply = match BufReader::new(rd.take(MAX_HOOK_REQUEST))
            .read_line(&mut line)
            .await
        {
            Ok(_) => match serde_json::from_str::<hook::HookRequest>(&line) {
                Ok(req) => {
                    let (m, s, a) = (mirror.clone(), scanner.clone(), audit.clone());
                    tokio::task::spawn_blocking(move || hook::check_and_forward(&m, &s, &req, &a))
                        .await
                        .unwrap_or_else(|_| hook::HookReply {
                            ok: false,
                            message: "git-gate: push check failed".into(),
                        })
                }
                Err(_) => hook::HookReply {
                    ok: false,
                    message: "git-gate: malformed hook request".into(),
                },
            },
            Err(e) => hook::HookReply {
                ok: false,
                message: format!("git-gate: cannot read hook request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&reply)
            .unwrap_or_else(|_| b"{\"ok\":false,\"message\":\"\"}".to_vec());
        out.push(b'\n');
        let _ = wr.write_all(&out).await;
    }
}

/// The service's name in audit lines.
fn service_name(service: Service) -> &'static str {
    match service {
        Service::UploadPack => "fetch",
        Service::ReceivePack => "push",
    }
}

/// What the client is told when its allowed request cannot be recorded.
fn audit_message(e: &crate::audit::AuditError) -> String {
    format!("git-gate: cannot write the bottle's audit log ({e}); refusing, since every fetch and push must be recorded")
}

fn stale_message(mirror: &Mirror, e: &MirrorError) -> String {
    format!(
        "git-gate: cannot reach upstream of `{}` ({e}); refusing to serve a stale mirror, try again when upstream is reachable",
        mirror.remote.name
    )
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, peer: &str, msg: &str) {
    tracing::debug!(%peer, "git-gate refused: {msg}");
    let _ = stream.write_all(&pktline::err_packet(msg)).await;
    let _ = stream.shutdown().await;
}

fn create_private_dir(dir: &Path) -> Result<(), GitGateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| GitGateError::Io(dir.to_path_buf(), e))
}

/// Accept git:// connections on `listener` until it fails (tests, bench).
pub async fn serve_tcp(gate: Arc<GitGate>, listener: tokio::net::TcpListener) {
    while let Ok((stream, peer)) = listener.accept().await {
        let gate = gate.clone();
        tokio::spawn(async move { gate.serve(stream, peer.to_string()).await });
    }
}

/// The agent's git config: each upstream URL rewritten to the gate, so the
/// agent keeps using the URL as written.
pub fn agent_git_config(remotes: &[GitRemote]) -> String {
    let mut out = String::new();
    for r in remotes {
        out.push_str(&format!(
            "[url \"git://{PROXY_HOST}/{}.git\"]\n\tinsteadOf = {}\n",
            config_escape(&r.name),
            config_value(&r.upstream)
        ));
    }
    out
}

fn config_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A git config value, quoted so `#`, `;` and spaces survive.
fn config_value(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    format!("\"{}\"", config_escape(&clean))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn remote(name: &str, upstream: &str) -> GitRemote {
        GitRemote {
            name: name.into(),
            upstream: upstream.into(),
            identity_file: None,
            known_host_key:
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            extra_hosts: BTreeMap::new(),
            allow_force_push: false,
            allow_non_commit_refs: false,
        }
    }

    #[test]
    fn agent_config_rewrites_each_upstream_to_the_gate() {
        let cfg = agent_git_config(&[
            remote("app", "git@github.com:o/app.git"),
            remote("lib", "ssh://h/lib.git"),
        ]);
        assert_eq!(
            cfg,
            "[url \"git://proxy.internal/app.git\"]\n\tinsteadOf = \"git@github.com:o/app.git\"\n\
             [url \"git://proxy.internal/lib.git\"]\n\tinsteadOf = \"ssh://h/lib.git\"\n"
        );
    }

    #[test]
    fn duplicate_remote_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GitGateConfig {
            mirrors_dir: dir.path().into(),
            remotes: vec![remote("a", "git@h:a.git"), remote("a", "git@h:b.git")],
            hook_command: vec!["/bin/false".into()],
            audit: None,
        };
        assert!(matches!(
            GitGate::new(cfg, Scanner::default()),
            Err(GitGateError::DuplicateName(_))
        ));
    }

    #[test]
    fn remote_without_pinned_key_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = remote("a", "git@h:a.git");
        r.known_host_key = String::new();
        let cfg = GitGateConfig {
            mirrors_dir: dir.path().into(),
            remotes: vec![r],
            hook_command: vec!["x".into()],
            audit: None,
        };
        let err = GitGate::new(cfg, Scanner::default()).unwrap_err();
        assert!(format!("{:?}", err).contains("NoHostKey"));
    }

    #[tokio::test]
    async fn unknown_repository_gets_an_err_packet() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GitGateConfig {
            mirrors_dir: dir.path().into(),
            remotes: vec![remote("app", "git@h:a.git")],
            hook_command: vec!["x".into()],
            audit: None,
        };
        let gate = GitGate::new(cfg, Scanner::default()).unwrap();
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn({
            let gate = gate.clone();
            async move { gate.serve(server, "test".into()).await }
        });
        let req = b"git-upload-pack /other.git\0host=x\0";
        client
            .write_all(format!("{:04x}", req.len() + 4).as_bytes())
            .await
            .unwrap();
        client.write_all(req).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("ERR git-gate: no repository `other.git` here (configured: app)"),
            "{text}"
        );
    }
}
