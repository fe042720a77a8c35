//! Running a session on the user's terminal: raw mode while attached
//! (restored on every exit path), window-size changes forwarded, stdin and
//! output pumped; plain pipes when stdin is not a terminal.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// Puts a terminal in raw mode and restores its settings when dropped.
#[derive(Debug)]
pub struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    pub fn enter(fd: BorrowedFd<'a>) -> Result<RawMode<'a>, AttachError> {
        let saved = termios::tcgetattr(fd).map_err(AttachError::Termios)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw).map_err(AttachError::Termios)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Pumps the session to this process's stdio until it exits; raw mode and
/// resizes when stdin is a terminal. Returns the program's exit status.
///
/// The stdin reader is a blocking thread that may outlive the session: end
/// the runtime with `shutdown_timeout`/`shutdown_background` (or exit).
pub async fn attach(session: Session) -> Result<ExitStatus, AttachError> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal().then(|| stdin.as_fd());
    attach_with(
        session,
        tokio::io::stdin(),
        tokio::io::stdout(),
        tokio::io::stderr(),
        terminal,
    )
    .await
}

/// [`attach`] on given streams; `terminal` is the user's terminal (put in raw
/// mode, its size followed on SIGWINCH), `None` for plain pipes.
pub async fn attach_with<I, O, E>(
    mut session: Session,
    input: I,
    mut stdout: O,
    mut stderr: E,
    terminal: Option<BorrowedFd<'_>>,
) -> Result<ExitStatus, AttachError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let _raw = terminal.map(RawMode::enter).transpose()?;
    let mut winch = signal(SignalKind::window_change()).map_err(AttachError::Signal)?;
    let size = || terminal.and_then(|t| crate::sys::get_winsize(t).ok());
    let handle = session.handle();
    if let Some((rows, cols)) = size() {
        handle.resize(rows, cols).await?;
    }
    let pump = tokio::spawn(pump_input(input, handle.clone()));
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
                if let Some((rows, cols)) = size() {
                    let _ = handle.resize(rows, cols).await;
                }
            }
        }
    };
    pump.abort();
    result
}

async fn pump_input<I: AsyncRead + Unpin>(mut input: I, handle: super::client::SessionHandle) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match input.read(&mut buf).await {
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
}

async fn write_all(w: &mut (impl AsyncWrite + Unpin), b: &[u8]) -> Result<(), AttachError> {
    match w.write_all(b).await.and(w.flush().await) {
        // The reader went away (`| head`): keep running, drop output.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(AttachError::Output),
    }
}
