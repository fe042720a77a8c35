//! The agent's session on the user's terminal: the command runs in the
//! guest with the terminal in raw mode (or on plain pipes), its exit status
//! is passed through, and SIGINT/SIGTERM/SIGHUP end it cleanly instead of
//! killing the launcher half way. `bottle exec` runs here too; the detached
//! holder (`detached`) keeps a session of its own.

use crate::state::{Metadata, StateDir};
use anyhow::Context;

/// How commands run in a bottle (environment, directory), kept for `exec` and `attach`.
pub const SESSION_FILE: &str = "session.json";

/// The agent's environment and working directory in the guest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionSpec {
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// The uid to ask the guest agent for (`None`: its own, in a container).
    pub uid: Option<u32>,
}

/// SIGINT, SIGTERM and SIGHUP, caught so that a launch can clean up.
#[derive(Debug)]
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// A signal that already arrived, if any.
    pub async fn pending(&mut self) -> Option<&'static str> {
        tokio::select! {
            biased;
            signal = self.recv() => Some(signal),
            _ = std::future::ready(()) => None,
        }
    }

    /// Run `fut`, or fail when a signal arrives first.
    pub async fn guard<T>(
        &mut self,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            result = fut => result,
            signal = self.recv() => Err(anyhow::anyhow!("interrupted by {signal}")),
        }
    }
}

/// Run `command` as the agent on this terminal (or plain pipes); its exit code.
pub async fn run(
    client: &bottle_guest::host::Client,
    session: &SessionSpec,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let tty = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        Some(bottle_guest::host::terminal_size().unwrap_or((24, 80)))
    } else {
        None
    };
    let mut env = session.env.clone();
    if tty.is_some() {
        env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
        ));
    }
    let request = bottle_guest::proto::ExecRequest {
        argv: command,
        env,
        cwd: Some(session.cwd.clone()),
        user: session.uid.map(bottle_guest::proto::User::Uid),
        tty,
    };
    let session = client.exec(request).await?;
    let status = bottle_guest::host::attach(session).await?;
    Ok(status.shell_code())
}

/// Run a command in a running bottle on the user's terminal; its exit code.
pub fn run_in(dir: &StateDir, meta: &Metadata, command: Vec<String>) -> anyhow::Result<i32> {
    if !crate::bundle::is_alive(meta) {
        anyhow::bail!(
            "bottle {} is not running (its bundle process is gone); `bottle cleanup` removes it",
            meta.identity
        );
    }
    let path = dir.file(SESSION_FILE);
    let session: SessionSpec = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", path.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        let client =
            bottle_guest::host::Client::connect(&dir.file(crate::bundle::files::CONTROL)).await?;
        run(&client, &session, command).await
    });
    // The attach helper reads stdin on a blocking thread that only returns at
    // the next key press; do not wait for it.
    runtime.shutdown_background();
    code
}
