//! An exec session: run a program as the requested user, on pipes or a
//! pseudo-terminal, and relay its stdio, resizes, signals and exit status.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::fdio::FdStream;
use super::passwd;
use super::server::SessionCtx;
use crate::frame::DATA_CHUNK;
use crate::proto::{ExecRequest, ExitStatus, Frame, Msg, Stream, User};
use crate::sys::{self, Creds};

/// Errors setting up an exec session (sent to the host as the session's error).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("empty argv")]
    EmptyArgv,
    #[error("no user {0:?} in /etc/passwd")]
    NoUser(String),
    #[error("cannot switch to uid {0}: the agent is not root")]
    NotRoot(u32),
    #[error("working directory {0:?} is not a directory")]
    Cwd(String),
    #[error("cannot open a pseudo-terminal: {0}")]
    Pty(nix::Error),
    #[error("cannot run {argv0:?}: {source}")]
    Spawn {
        argv0: String,
        source: std::io::Error,
    },
    #[error("stdio set-up: {0}")]
    Io(#[from] std::io::Error),
}

/// Who a program runs as and with which home.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub creds: Option<Creds>,
    pub name: String,
    pub home: String,
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user` against the guest's own passwd and group files.
pub(crate) fn resolve_user(user: Option<&User>) -> Result<Identity, ExecError> {
    let passwd_file = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group_file = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let me = nix::unistd::geteuid().as_raw();
    let (entry, uid) = match user {
        None => (passwd::by_uid(&passwd_file, me), me),
        Some(User::Uid(uid)) => (passwd::by_uid(&passwd_file, *uid), *uid),
        Some(User::Name(name)) => {
            let e = passwd::by_name(&passwd_file, name)
                .ok_or_else(|| ExecError::NoUser(name.clone()))?;
            let uid = e.uid;
            (Some(e), uid)
        }
    };
    let (name, gid, home) = match &entry {
        Some(e) => (e.name.clone(), e.gid, e.home.clone()),
        None => (uid.to_string(), uid, "/".to_string()),
    };
    let creds = if uid == me && user.is_none() {
        None
    } else if me != 0 {
        if uid != me {
            return Err(ExecError::NotRoot(uid));
        }
        None
    } else {
        Some(Creds {
            uid,
            gid,
            groups: passwd::groups_of(&group_file, &name, gid),
        })
    };
    Ok(Identity {
        creds,
        name,
        home,
        uid,
        gid,
    })
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a session's program is started with: its environment (the
/// defaults, then the request's own) and working directory.
#[derive(Debug)]
struct Launch {
    env: Vec<(String, String)>,
    cwd: String,
}

fn launch_of(req: &ExecRequest, who: &Identity) -> Result<Launch, ExecError> {
    if req.argv.is_empty() {
        return Err(ExecError::EmptyArgv);
    }
    let term = if req.tty.is_some() {
        "xterm-256color"
    } else {
        "dumb"
    };
    let mut env: Vec<(String, String)> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", who.home.as_str()),
        ("USER", who.name.as_str()),
        ("LOGNAME", who.name.as_str()),
        ("TERM", term),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in &req.env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    let cwd = match &req.cwd {
        Some(cwd) => cwd.clone(),
        None if std::path::Path::new(&who.home).is_dir() => who.home.clone(),
        None => "/".to_string(),
    };
    if !std::path::Path::new(&cwd).is_dir() {
        return Err(ExecError::Cwd(cwd));
    }
    Ok(Launch { env, cwd })
}

/// A pipe whose two ends close on exec (the child gets its end by dup).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

enum Input {
    Data(Bytes),
    Eof,
}

/// Runs one exec session to its end.
pub(crate) async fn run(mut ctx: SessionCtx, req: ExecRequest) {
    let id = ctx.id;
    let started = match start(&ctx, &req) {
        Ok(s) => s,
        Err(e) => {
            ctx.send(Frame::error(id, e.to_string())).await;
            return;
        }
    };
    let Started {
        pid,
        exit,
        outputs,
        stdin,
        pty_master,
        tty,
    } = started;
    super::trace::step("exec-started");
    ctx.send(Frame::control(
        id,
        Msg::Started {
            pid: pid.as_raw() as u32,
        },
    ))
    .await;

    let (in_tx, in_rx) = mpsc::unbounded_channel::<Input>();
    let stdin_task = tokio::spawn(pump_stdin(stdin, in_rx, tty));
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(stream, fd)| tokio::spawn(pump_output(fd, id, stream, ctx.out.clone())))
        .collect();

    let mut exit = exit;
    let mut in_tx = Some(in_tx);
    let status = loop {
        tokio::select! {
            status = &mut exit => break status.unwrap_or(ExitStatus::Code(-1)),
            frame = ctx.inbound.recv() => match frame {
                Some(Frame::Data { stream: Stream::Stdin, bytes, .. }) => {
                    if let Some(tx) = &in_tx { let _ = tx.send(Input::Data(bytes)); }
                }
                Some(Frame::Control { msg: Msg::StdinEof, .. }) => {
                    if let Some(tx) = in_tx.take() { let _ = tx.send(Input::Eof); }
                }
                Some(Frame::Control { msg: Msg::Resize { rows, cols }, .. }) => {
                    if let Some(m) = &pty_master { let _ = sys::set_winsize(m.as_fd(), rows, cols); }
                }
                Some(Frame::Control { msg: Msg::Signal { signal }, .. }) => {
                    if let Ok(sig) = Signal::try_from(signal) { let _ = kill(pid, sig); }
                }
                Some(Frame::Control { msg: Msg::Cancel, .. }) | None => {
                    let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                    let _ = kill(pid, Signal::SIGKILL);
                    stdin_task.abort();
                    for p in &pumps { p.abort(); }
                    return;
                }
                Some(other) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    stdin_task.abort();
                    ctx.send(Frame::error(id, format!("unexpected frame in exec session: {other:?}"))).await;
                    return;
                }
            },
        }
    };
    super::trace::step("exec-exited");
    drop(in_tx);
    for p in pumps {
        let _ = p.await;
    }
    stdin_task.abort();
    ctx.send(Frame::control(id, Msg::Exit { status })).await;
}

struct Started {
    pid: Pid,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    outputs: Vec<(Stream, OwnedFd)>,
    stdin: OwnedFd,
    pty_master: Option<OwnedFd>,
    tty: bool,
}

fn start(ctx: &SessionCtx, req: &ExecRequest) -> Result<Started, ExecError> {
    let who = resolve_user(req.user.as_ref())?;
    let launch = launch_of(req, &who)?;
    let tty = req.tty.is_some();
    // The parent's ends, and the child's (closed here once it has started)
    // with the descriptors it gets as its stdin, stdout and stderr.
    let (stdin, outputs, pty_master, child_ends, stdio) = match req.tty {
        Some((rows, cols)) => {
            let ws = nix::pty::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&ws), None).map_err(ExecError::Pty)?;
            for fd in [&pty.master, &pty.slave] {
                nix::fcntl::fcntl(
                    fd.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                )
                .map_err(std::io::Error::from)?;
            }
            let stdin = pty.master.try_clone()?;
            let outputs = vec![(Stream::Stdout, pty.master.try_clone()?)];
            let stdio = [pty.slave.as_raw_fd(); 3];
            (stdin, outputs, Some(pty.master), vec![pty.slave], stdio)
        }
        None => {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let outputs = vec![(Stream::Stdout, out_r), (Stream::Stderr, err_r)];
            let stdio = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
            (in_w, outputs, None, vec![in_r, out_w, err_w], stdio)
        }
    };
    let argv0 = req.argv.first().cloned().unwrap_or_default();
    let spawn_error = |source| ExecError::Spawn {
        argv0: argv0.clone(),
        source,
    };
    let plan = sys::SpawnPlan::new(&req.argv, &launch.env, &launch.cwd, stdio, tty, who.creds)
        .map_err(spawn_error)?;
    let (pid, exit) = ctx
        .reaper
        .spawn(|| sys::spawn(&plan))
        .map_err(spawn_error)?;
    drop(child_ends);
    Ok(Started {
        pid: Pid::from_raw(pid),
        exit,
        outputs,
        stdin,
        pty_master,
        tty,
    })
}

async fn pump_stdin(fd: OwnedFd, mut rx: mpsc::UnboundedReceiver<Input>, tty: bool) {
    let Ok(mut w) = FdStream::new(fd) else { return };
    while let Some(input) = rx.recv().await {
        let r = match input {
            Input::Data(b) => w.write_all(&b).await,
            // On a terminal, end of input is the EOF character (^D).
            Input::Eof if tty => w.write_all(&[4]).await,
            Input::Eof => return,
        };
        if r.is_err() {
            return;
        }
    }
}

async fn pump_output(fd: OwnedFd, id: u32, stream: Stream, out: mpsc::Sender<Frame>) {
    let Ok(mut r) = FdStream::new(fd) else { return };
    let mut buf = BytesMut::with_capacity(DATA_CHUNK);
    loop {
        buf.clear();
        buf.reserve(DATA_CHUNK);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let bytes = buf.split().freeze();
                if out
                    .send(Frame::Data {
                        session: id,
                        stream,
                        bytes,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_env_has_defaults_and_request_overrides() {
        let who = Identity {
            creds: None,
            name: "agent".into(),
            home: "/nonexistent-home".into(),
            uid: 1000,
            gid: 1000,
        };
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: vec![("TERM".into(), "vt100".into()), ("X".into(), "1".into())],
            ..Default::default()
        };
        let launch = launch_of(&req, &who).unwrap();
        let env: std::collections::HashMap<_, _> = launch.env.iter().cloned().collect();
        assert_eq!(env["TERM"], "vt100");
        assert_eq!(env["HOME"], "/nonexistent-home");
        assert_eq!(env["X"], "1");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        // One entry per name: the request's value replaced the default.
        assert_eq!(launch.env.iter().filter(|(k, _)| k == "TERM").count(), 1);
        assert_eq!(launch.cwd, "/");
    }

    #[test]
    fn empty_argv_is_refused() {
        let who = Identity {
            creds: None,
            name: "x".into(),
            home: "/".into(),
            uid: 0,
            gid: 0,
        };
        assert!(matches!(
            launch_of(&ExecRequest::default(), &who),
            Err(ExecError::EmptyArgv)
        ));
    }

    #[test]
    fn missing_working_directory_is_named_in_the_error() {
        let who = Identity {
            creds: None,
            name: "x".into(),
            home: "/".into(),
            uid: 0,
            gid: 0,
        };
        let req = ExecRequest {
            argv: vec!["true".into()],
            cwd: Some("/nonexistent-dir-xyz".into()),
            ..Default::default()
        };
        let err = launch_of(&req, &who).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir-xyz"), "{err}");
    }
}
