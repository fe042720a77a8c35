//! Running a session on the user's terminal: raw mode while attached
//! (restored on every exit path), window-size changes forwarded, stdin and
//! output pumped; plain pipes when stdin is not a terminal.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use super::client::{ClientError, Event, Session};
use crate::proto::ExitStatus;

/// Errors of an attached session.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("terminal mode")]
    Termios(#[source] nix::Error),
    #[error("watch window size changes")]
    Signal(#[source] std::io::Error),
    #[error("session")]
    Client(#[from] ClientError),
    #[error("write output")]
    Output(#[source] std::io::Error),
}

/// The current size `(rows, cols)` of the terminal on stdin, if it is one;
/// use it as the `tty` of the exec request for an attached session.
pub fn terminal_size() -> Option<(u16, u16)> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    crate::sys::get_winsize(stdin.as_fd()).ok()
}

/// Puts the terminal in raw mode and restores it when dropped.
#[derive(Debug)]
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode, AttachError> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(AttachError::Termios)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).map_err(AttachError::Termios)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Pumps the session to this process's stdio until it exits; raw mode and
/// resizes when stdin is a terminal. Returns the program's exit status.
pub async fn attach(mut session: Session) -> Result<ExitStatus, AttachError> {
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    let mut winch = signal(SignalKind::window_change()).map_err(AttachError::Signal)?;
    let handle = session.handle();
    if let (true, Some((rows, cols))) = (tty, terminal_size()) {
        handle.resize(rows, cols).await?;
    }
    let input = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = handle.close_stdin().await;
                        return;
                    }
                    Ok(n) => {
                        if handle.write_stdin(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let result = loop {
        tokio::select! {
            event = session.next_event() => match event {
                Ok(Event::Stdout(b)) => {
                    if let Err(e) = write_all(&mut stdout, &b).await { break Err(e) }
                }
                Ok(Event::Stderr(b)) => {
                    if let Err(e) = write_all(&mut stderr, &b).await { break Err(e) }
                }
                Ok(Event::Exit(status)) => break Ok(status),
                Err(e) => break Err(e.into()),
            },
            _ = winch.recv() => {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = handle.resize(rows, cols).await;
                }
            }
        }
    };
    input.abort();
    result
}

async fn write_all(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    b: &[u8],
) -> Result<(), AttachError> {
    match w.write_all(b).await.and(w.flush().await) {
        // The reader went away (`| head`): keep running, drop output.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(AttachError::Output),
    }
}
