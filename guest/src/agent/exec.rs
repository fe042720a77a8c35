//! An exec session: run a program as the requested user, on pipes or a
//! pseudo-terminal, and relay its stdio, resizes, signals and exit status.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};

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

fn build_command(req: &ExecRequest, who: &Identity) -> Result<Command, ExecError> {
    let (argv0, args) = req.argv.split_first().ok_or(ExecError::EmptyArgv)?;
    let mut cmd = Command::new(argv0);
    cmd.args(args).env_clear();
    cmd.env("PATH", DEFAULT_PATH)
        .env("HOME", &who.home)
        .env("USER", &who.name)
        .env("LOGNAME", &who.name)
        .env(
            "TERM",
            if req.tty.is_some() {
                "xterm-256color"
            } else {
                "dumb"
            },
        );
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    let cwd = match &req.cwd {
        Some(cwd) => cwd.clone(),
        None if std::path::Path::new(&who.home).is_dir() => who.home.clone(),
        None => "/".to_string(),
    };
    if !std::path::Path::new(&cwd).is_dir() {
        return Err(ExecError::Cwd(cwd));
    }
    cmd.current_dir(cwd);
    Ok(cmd)
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
    let mut cmd = build_command(req, &who)?;
    let tty = req.tty.is_some();
    let mut pty_master = None;
    if let Some((rows, cols)) = req.tty {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(ExecError::Pty)?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    sys::prepare_child(&mut cmd, who.creds.clone(), tty);
    let argv0 = req.argv.first().cloned().unwrap_or_default();
    let (mut child, exit) = ctx
        .reaper
        .spawn(&mut cmd)
        .map_err(|source| ExecError::Spawn { argv0, source })?;
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let (stdin, outputs) = match &pty_master {
        Some(master) => (
            master.try_clone()?,
            vec![(Stream::Stdout, master.try_clone()?)],
        ),
        None => {
            let missing = || std::io::Error::other("child stdio missing");
            let stdin: OwnedFd = child.stdin.take().ok_or_else(missing)?.into();
            let stdout: OwnedFd = child.stdout.take().ok_or_else(missing)?.into();
            let stderr: OwnedFd = child.stderr.take().ok_or_else(missing)?.into();
            (
                stdin,
                vec![(Stream::Stdout, stdout), (Stream::Stderr, stderr)],
            )
        }
    };
    Ok(Started {
        pid,
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
        let cmd = build_command(&req, &who).unwrap();
        let envs: std::collections::HashMap<_, _> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        assert_eq!(
            envs[std::ffi::OsStr::new("TERM")].as_deref(),
            Some(std::ffi::OsStr::new("vt100"))
        );
        assert_eq!(
            envs[std::ffi::OsStr::new("HOME")].as_deref(),
            Some(std::ffi::OsStr::new("/nonexistent-home"))
        );
        assert_eq!(cmd.get_current_dir(), Some(std::path::Path::new("/")));
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
            build_command(&ExecRequest::default(), &who),
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
        let err = build_command(&req, &who).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir-xyz"), "{err}");
    }
}
