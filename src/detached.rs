//! Detached sessions: the agent's command belongs to the bottle, not to the
//! client that started it.
//!
//! `bottle run --detach` provisions the bottle, then starts a session holder
//! (`bottle __session STATE_DIR`, its own process group) and returns as soon
//! as the holder reports the command started. The holder runs the command on
//! a terminal in the guest, keeps the recent output (replayed to whoever
//! attaches) and the whole transcript (`session.log`, capped), and serves
//! `session.sock` (mode 0600) to any number of `bottle attach` clients. When
//! the command exits it records the status in `session-exit.json` and goes
//! away; the bottle keeps running until `bottle stop`.
//!
//! Wire format on `session.sock`: frames of one kind byte, a big-endian u32
//! length and the payload. Client → holder: `HELLO` (rows, cols),
//! `INPUT` (bytes), `RESIZE` (rows, cols). Holder → client: `ROLE` (1 byte:
//! 1 writer, 0 viewer), `OUTPUT` (bytes), `EXIT` (i32 status).
//!
//! One writer: the first client to attach while nobody writes gets the
//! keyboard (its input and terminal size reach the command); clients that
//! attach meanwhile watch. When the writer leaves, the next client to
//! attach writes.

use crate::session::{SessionSpec, SESSION_FILE};
use crate::state::{self, StateDir};
use anyhow::Context;
use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

/// The hidden subcommand the holder runs as: `bottle __session STATE_DIR`.
pub const SUBCOMMAND: &str = "__session";
/// The holder's socket in the bottle's state dir.
pub const SOCKET: &str = "session.sock";
/// The command the holder runs (JSON array of strings).
pub const COMMAND_FILE: &str = "session-command.json";
/// Written once the command runs in the guest.
pub const STARTED_FILE: &str = "session-started";
/// The command's exit status, once it ended (`{"code": N}`).
pub const EXIT_FILE: &str = "session-exit.json";
/// Everything the command printed (capped at [`TRANSCRIPT_CAP`]).
pub const TRANSCRIPT: &str = "session.log";
/// The holder's pid.
pub const PID_FILE: &str = "session.pid";
/// The holder's own log.
pub const HOLDER_LOG: &str = "session-holder.log";

/// Output replayed to a client that attaches.
const REPLAY_CAP: usize = 256 * 1024;
/// Size at which the transcript stops growing.
pub const TRANSCRIPT_CAP: u64 = 64 * 1024 * 1024;
/// Terminal size before anyone attached.
const DEFAULT_SIZE: (u16, u16) = (24, 80);
/// Ctrl-P Ctrl-Q: detach, as in `docker attach`.
const DETACH_KEYS: [u8; 2] = [0x10, 0x11];

const HELLO: u8 = 1;
const INPUT: u8 = 2;
const RESIZE: u8 = 3;
const OUTPUT: u8 = 4;
const EXIT: u8 = 5;
const ROLE: u8 = 6;
/// Largest frame either side accepts.
const MAX_FRAME: usize = 1 << 20;

async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.push(kind);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("session frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((head[0], body))
}

fn size_body((rows, cols): (u16, u16)) -> [u8; 4] {
    let [a, b] = rows.to_be_bytes();
    let [c, d] = cols.to_be_bytes();
    [a, b, c, d]
}

fn parse_size(body: &[u8]) -> Option<(u16, u16)> {
    let b: [u8; 4] = body.try_into().ok()?;
    let size = (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    );
    (size.0 > 0 && size.1 > 0).then_some(size)
}

// ---------------------------------------------------------------- starting

/// Start the holder for `command` in the provisioned bottle at `dir` and
/// wait until the command runs in the guest (or failed to start).
pub fn start(dir: &StateDir, command: &[String]) -> anyhow::Result<u32> {
    state::write_atomic(&dir.file(COMMAND_FILE), &serde_json::to_vec(command)?)?;
    let exe = std::env::current_exe().context("cannot find the bottle binary")?;
    let log = std::fs::File::create(dir.file(HOLDER_LOG))
        .with_context(|| format!("cannot create {}", dir.file(HOLDER_LOG).display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(SUBCOMMAND)
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: the terminal's ^C or hang-up do not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the session holder")?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if dir.file(STARTED_FILE).exists() {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            if dir.file(EXIT_FILE).exists() {
                return Ok(pid); // ran and ended already
            }
            anyhow::bail!(
                "the session holder exited ({status}) before the command started:\n{}",
                dir.log_tail(HOLDER_LOG, 10)
            );
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!("the command did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop a bottle's session holder, if one runs.
pub fn stop(dir: &StateDir) {
    if let Some(pid) = std::fs::read_to_string(dir.file(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        crate::sys::process::stop_process(pid, SUBCOMMAND, Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------- the holder

/// Output kept for replay, and the live feed of new output.
struct Feed {
    recent: VecDeque<u8>,
    live: broadcast::Sender<Arc<Vec<u8>>>,
    exit: Option<i32>,
    /// The client that holds the keyboard, if any.
    writer: Option<u64>,
    next_client: u64,
}

impl Feed {
    fn push(&mut self, bytes: &[u8]) {
        self.recent.extend(bytes);
        let excess = self.recent.len().saturating_sub(REPLAY_CAP);
        self.recent.drain(..excess);
        let _ = self.live.send(Arc::new(bytes.to_vec()));
    }
}

/// `bottle __session STATE_DIR`: hold the bottle's agent session.
pub fn serve(state_dir: &Path) -> anyhow::Result<()> {
    let identity = state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the state dir has no bottle identity in its name")?;
    let root = state_dir.parent().context("the state dir has no parent")?;
    let dir = StateDir::open(root, identity)?;
    let session: SessionSpec = serde_json::from_slice(
        &std::fs::read(dir.file(SESSION_FILE)).context("cannot read the session spec")?,
    )?;
    let command: Vec<String> = serde_json::from_slice(
        &std::fs::read(dir.file(COMMAND_FILE)).context("cannot read the session command")?,
    )?;
    state::write_atomic(
        &dir.file(PID_FILE),
        std::process::id().to_string().as_bytes(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(hold(&dir, session, command));
    let _ = std::fs::remove_file(dir.file(SOCKET));
    let _ = std::fs::remove_file(dir.file(PID_FILE));
    runtime.shutdown_background();
    result
}

async fn hold(dir: &StateDir, spec: SessionSpec, command: Vec<String>) -> anyhow::Result<()> {
    let client =
        bottle_guest::host::Client::connect(&dir.file(crate::bundle::files::CONTROL)).await?;
    let mut env = spec.env.clone();
    env.push(("TERM".into(), "xterm-256color".into()));
    let request = bottle_guest::proto::ExecRequest {
        argv: command,
        env,
        cwd: Some(spec.cwd.clone()),
        user: spec.uid.map(bottle_guest::proto::User::Uid),
        tty: Some(DEFAULT_SIZE),
    };
    let mut session = client
        .exec(request)
        .await
        .context("cannot start the command")?;
    let handle = session.handle();

    let socket = dir.file(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    let (live, _) = broadcast::channel(1024);
    let feed = Arc::new(Mutex::new(Feed {
        recent: VecDeque::new(),
        live,
        exit: None,
        writer: None,
        next_client: 0,
    }));
    let mut transcript = Transcript::open(&dir.file(TRANSCRIPT))?;
    state::write_atomic(&dir.file(STARTED_FILE), b"")?;

    let code = loop {
        tokio::select! {
            event = session.next_event() => match event {
                Ok(bottle_guest::host::Event::Stdout(b) | bottle_guest::host::Event::Stderr(b)) => {
                    transcript.write(&b);
                    feed.lock().map_err(|_| anyhow::anyhow!("feed poisoned"))?.push(&b);
                }
                Ok(bottle_guest::host::Event::Exit(status)) => break status.shell_code(),
                Err(e) => return Err(anyhow::Error::new(e).context("the bottle went away during the session")),
            },
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_client(stream, feed.clone(), handle.clone()));
                }
            }
        }
    };
    state::write_atomic(
        &dir.file(EXIT_FILE),
        serde_json::json!({ "code": code }).to_string().as_bytes(),
    )?;
    // No new clients from here on: they read the recorded status instead.
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    {
        let mut f = feed.lock().map_err(|_| anyhow::anyhow!("feed poisoned"))?;
        f.exit = Some(code);
        // An empty chunk after `exit` is set tells live clients to finish.
        let _ = f.live.send(Arc::new(Vec::new()));
    }
    // Let attached clients receive the end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// One attached client: replay, then live output; its input to the command.
async fn serve_client(
    stream: UnixStream,
    feed: Arc<Mutex<Feed>>,
    handle: bottle_guest::host::SessionHandle,
) {
    let (mut rd, mut wr) = stream.into_split();
    let Ok((HELLO, body)) = read_frame(&mut rd).await else {
        return;
    };
    let (replay, mut live, exit, me, writes) = match feed.lock() {
        Ok(mut f) => {
            let me = f.next_client;
            f.next_client += 1;
            let writes = f.writer.is_none();
            if writes {
                f.writer = Some(me);
            }
            (
                f.recent.iter().copied().collect::<Vec<u8>>(),
                f.live.subscribe(),
                f.exit,
                me,
                writes,
            )
        }
        Err(_) => return,
    };
    if writes {
        if let Some((rows, cols)) = parse_size(&body) {
            let _ = handle.resize(rows, cols).await;
        }
    }
    if write_frame(&mut wr, ROLE, &[u8::from(writes)])
        .await
        .is_err()
    {
        release(&feed, me);
        return;
    }
    let input = tokio::spawn(async move {
        while let Ok((kind, body)) = read_frame(&mut rd).await {
            if !writes {
                continue; // a viewer's keys go nowhere
            }
            let sent = match kind {
                INPUT => handle.write_stdin(&body).await,
                RESIZE => match parse_size(&body) {
                    Some((rows, cols)) => handle.resize(rows, cols).await,
                    None => Ok(()),
                },
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let out = async {
        if !replay.is_empty() {
            write_frame(&mut wr, OUTPUT, &replay).await?;
        }
        let mut exit = exit;
        while exit.is_none() {
            match live.recv().await {
                Ok(chunk) if chunk.is_empty() => {
                    exit = feed.lock().ok().and_then(|f| f.exit);
                }
                Ok(chunk) => write_frame(&mut wr, OUTPUT, &chunk).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!(
                        "\r\n[bottle: this client fell behind; {n} chunks of output skipped]\r\n"
                    );
                    write_frame(&mut wr, OUTPUT, note.as_bytes()).await?;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        if let Some(code) = exit {
            write_frame(&mut wr, EXIT, &code.to_be_bytes()).await?;
        }
        std::io::Result::Ok(())
    };
    let _ = out.await;
    input.abort();
    release(&feed, me);
}

/// The client `me` left: free the keyboard if it held it.
fn release(feed: &Mutex<Feed>, me: u64) {
    if let Ok(mut f) = feed.lock() {
        if f.writer == Some(me) {
            f.writer = None;
        }
    }
}

/// The session's whole output, up to [`TRANSCRIPT_CAP`].
struct Transcript {
    file: std::fs::File,
    written: u64,
    full: bool,
}

impl Transcript {
    fn open(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            file,
            written: 0,
            full: false,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.full {
            return;
        }
        if self.written + bytes.len() as u64 > TRANSCRIPT_CAP {
            self.full = true;
            let _ = self
                .file
                .write_all(b"\n[bottle: transcript cap reached; later output is not kept]\n");
            return;
        }
        if self.file.write_all(bytes).is_ok() {
            self.written += bytes.len() as u64;
        }
    }
}

// ---------------------------------------------------------------- attaching

/// What an attach ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// The command exited with this status.
    Exited(i32),
    /// The user pressed the detach keys; the command runs on.
    Detached,
}

/// `bottle attach ID`: join the bottle's session on this terminal (or pipes).
pub fn attach(dir: &StateDir, identity: &str) -> anyhow::Result<AttachEnd> {
    let socket = dir.file(SOCKET);
    if !socket.exists() {
        if let Some(end) = ended(dir, identity) {
            return Ok(end);
        }
        anyhow::bail!(
            "bottle {identity} has no session to attach to (it was not started with `bottle run --detach`); run a command in it with `bottle exec {identity} -- CMD`"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(attach_terminal(&socket, identity));
    // The stdin reader is a blocking thread; do not wait for it.
    runtime.shutdown_background();
    match result {
        // The command ended as we connected: its recorded status.
        Err(e) => ended(dir, identity).ok_or(e),
        ok => ok,
    }
}

/// The recorded end of a session that already finished, said to the user.
fn ended(dir: &StateDir, identity: &str) -> Option<AttachEnd> {
    let code = recorded_exit(dir)?;
    eprintln!(
        "bottle: the session of {identity} already ended (exit {code}); its output is in {}",
        dir.file(TRANSCRIPT).display()
    );
    Some(AttachEnd::Exited(code))
}

fn recorded_exit(dir: &StateDir) -> Option<i32> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.file(EXIT_FILE)).ok()?).ok()?;
    v["code"].as_i64().and_then(|c| i32::try_from(c).ok())
}

async fn attach_terminal(socket: &PathBuf, identity: &str) -> anyhow::Result<AttachEnd> {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let (mut rd, mut wr) = stream.into_split();
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal().then(|| stdin.as_fd());
    let size = bottle_guest::host::terminal_size();
    write_frame(&mut wr, HELLO, &size_body(size.unwrap_or(DEFAULT_SIZE))).await?;
    let _raw = terminal
        .map(bottle_guest::host::RawMode::enter)
        .transpose()
        .context("cannot put the terminal in raw mode")?;
    if terminal.is_some() {
        eprint!("bottle: attached to {identity} (Ctrl-P Ctrl-Q detaches)\r\n");
    }
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let is_tty = terminal.is_some();
    let pump = tokio::spawn(async move {
        let mut input = tokio::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        let mut last = 0u8;
        loop {
            tokio::select! {
                read = input.read(&mut buf) => {
                    let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                    let chunk = &buf[..n];
                    if is_tty {
                        if let Some(at) = detach_at(last, chunk) {
                            if at > 0 {
                                let _ = write_frame(&mut wr, INPUT, &chunk[..at]).await;
                            }
                            let _ = detach_tx.send(());
                            return;
                        }
                    }
                    last = chunk[n - 1];
                    if write_frame(&mut wr, INPUT, chunk).await.is_err() { return; }
                }
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    if let Some(size) = bottle_guest::host::terminal_size() {
                        if write_frame(&mut wr, RESIZE, &size_body(size)).await.is_err() { return; }
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut detach_open = true;
    let end = loop {
        tokio::select! {
            frame = read_frame(&mut rd) => match frame {
                Ok((OUTPUT, body)) => {
                    stdout.write_all(&body).await?;
                    stdout.flush().await?;
                }
                Ok((EXIT, body)) => {
                    let code = body.try_into().map(i32::from_be_bytes).unwrap_or(1);
                    break AttachEnd::Exited(code);
                }
                Ok((ROLE, body)) => {
                    if body.first() == Some(&0) {
                        eprint!("bottle: watching {identity} read-only: another terminal has the keyboard (when it detaches, attach again to type)\r\n");
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    anyhow::bail!("the session of {identity} went away without an exit status (was the bottle stopped?)");
                }
                Err(e) => return Err(e.into()),
            },
            keys = &mut detach_rx, if detach_open => match keys {
                Ok(()) => break AttachEnd::Detached,
                // Input ended (not a terminal, or closed): keep streaming.
                Err(_) => detach_open = false,
            },
        }
    };
    pump.abort();
    if end == AttachEnd::Detached {
        eprint!(
            "\r\nbottle: detached from {identity}; `bottle attach {identity}` returns to it\r\n"
        );
    }
    Ok(end)
}

/// Where in `chunk` the detach keys end, given the byte before it (keys
/// may be split across reads): the offset of the first detach key.
fn detach_at(last: u8, chunk: &[u8]) -> Option<usize> {
    if last == DETACH_KEYS[0] && chunk.first() == Some(&DETACH_KEYS[1]) {
        return Some(0);
    }
    chunk.windows(2).position(|w| w == DETACH_KEYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_are_found_within_and_across_reads() {
        assert_eq!(detach_at(0, b"ab\x10\x11cd"), Some(2));
        assert_eq!(detach_at(0x10, b"\x11"), Some(0));
        assert_eq!(detach_at(0, b"\x10"), None);
        assert_eq!(detach_at(0, b"\x11\x10"), None);
    }

    #[test]
    fn sizes_round_trip_and_zero_is_refused() {
        assert_eq!(parse_size(&size_body((50, 200))), Some((50, 200)));
        assert_eq!(parse_size(&size_body((0, 80))), None);
        assert_eq!(parse_size(b"abc"), None);
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, OUTPUT, b"hello").await.unwrap();
        assert_eq!(
            read_frame(&mut b).await.unwrap(),
            (OUTPUT, b"hello".to_vec())
        );
        let mut huge = vec![INPUT];
        huge.extend_from_slice(&(u32::MAX).to_be_bytes());
        a.write_all(&huge).await.unwrap();
        assert!(read_frame(&mut b).await.is_err());
    }
}
