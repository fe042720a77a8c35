//! The client: one connection to the mux's control socket, any number of
//! sessions over it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::tree::{self, SafeWriter, TreeError};
use crate::frame::{data_frames, FrameError, FrameReader, FrameWriter};
use crate::proto::{
    Entry, EntryKind, ExecRequest, ExitStatus, Frame, Msg, Role, Stream, User, CONNECTION,
    PROTOCOL_VERSION,
};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to the mux at {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("framing")]
    Frame(#[from] FrameError),
    #[error("the mux refused this client: {0}")]
    Refused(String),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("the connection to the mux closed")]
    Closed,
    #[error("guest: {0}")]
    Remote(String),
    #[error("unexpected message from the guest: {0}")]
    Unexpected(String),
    #[error("the guest agent did not answer within {0:?}: {1}")]
    NotReady(Duration, String),
    #[error("{0} is larger than the {1}-byte limit")]
    TooLarge(String, u64),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the received tree")]
    Tree(#[from] TreeError),
}

type Sessions = Arc<Mutex<HashMap<u32, mpsc::Sender<Frame>>>>;

fn lock(s: &Sessions) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<Frame>>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// One file for [`Client::write_files`]: its absolute guest path, bytes and
/// permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// A connection to the mux.
#[derive(Debug, Clone)]
pub struct Client {
    out: mpsc::Sender<Frame>,
    sessions: Sessions,
    next: Arc<AtomicU32>,
}

/// What the guest says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInfo {
    pub version: u32,
    pub software: String,
    pub hostname: String,
    pub pid1: bool,
}

/// The captured result of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// One entry of a tree read from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the requested root; empty for the root itself.
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
    pub data: Vec<u8>,
}

/// Frames buffered per session before the connection waits for its reader.
const SESSION_QUEUE: usize = 256;

/// Largest output [`Client::capture`] collects per stream.
pub const CAPTURE_LIMIT: usize = 256 << 20;

/// Largest file [`Client::read_file`] accepts.
pub const READ_FILE_LIMIT: u64 = 256 << 20;

impl Client {
    /// Connects to the mux's control socket and does the handshake.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| ClientError::Connect(path.display().to_string(), e))?;
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let mut writer = FrameWriter::new(w);
        let hello = Msg::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            software: crate::agent::server::SOFTWARE.into(),
            key: None,
        };
        writer.write(&Frame::control(CONNECTION, hello)).await?;
        match reader.read().await? {
            Some(Ok(Frame::Control {
                msg: Msg::Welcome { .. },
                ..
            })) => {}
            Some(Ok(Frame::Control {
                msg: Msg::Refused { reason },
                ..
            })) => return Err(ClientError::Refused(reason)),
            None => return Err(ClientError::Closed),
            Some(other) => {
                return Err(ClientError::Handshake(format!(
                    "expected welcome, got {other:?}"
                )))
            }
        }
        let (out, mut rx) = mpsc::channel::<Frame>(64);
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if writer.write(&frame).await.is_err() {
                    break;
                }
            }
        });
        let sessions: Sessions = Arc::default();
        let s = sessions.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = reader.read().await {
                let Ok(frame) = frame else { continue };
                let id = frame.session();
                let terminal = matches!(&frame, Frame::Control { msg, .. } if msg.is_terminal());
                let tx = {
                    let mut map = lock(&s);
                    if terminal {
                        map.remove(&id)
                    } else {
                        map.get(&id).cloned()
                    }
                };
                // Waiting here pushes back through the mux to the guest when
                // a session's reader falls behind, instead of buffering.
                if let Some(tx) = tx {
                    let _ = tx.send(frame).await;
                }
            }
            lock(&s).clear();
        });
        Ok(Client {
            out,
            sessions,
            next: Arc::new(AtomicU32::new(1)),
        })
    }

    async fn open(&self, msg: Msg) -> Result<(u32, mpsc::Receiver<Frame>), ClientError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        lock(&self.sessions).insert(id, tx);
        self.out
            .send(Frame::control(id, msg))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok((id, rx))
    }

    async fn send(&self, frame: Frame) -> Result<(), ClientError> {
        self.out.send(frame).await.map_err(|_| ClientError::Closed)
    }

    /// Starts a program; returns once the guest has started it.
    pub async fn exec(&self, req: ExecRequest) -> Result<Session, ClientError> {
        let (id, mut events) = self.open(Msg::Exec(req)).await?;
        let pid = match events.recv().await {
            Some(Frame::Control {
                msg: Msg::Started { pid },
                ..
            }) => pid,
            other => return Err(unexpected(other)),
        };
        Ok(Session {
            handle: SessionHandle {
                id,
                out: self.out.clone(),
            },
            pid,
            events,
            done: false,
        })
    }

    /// Runs a program with `stdin` as its input and collects its output.
    pub async fn capture(&self, req: ExecRequest, stdin: &[u8]) -> Result<Output, ClientError> {
        let mut session = self.exec(req).await?;
        session.handle.write_stdin(stdin).await?;
        session.handle.close_stdin().await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let (buf, b) = match session.next_event().await? {
                Event::Stdout(b) => (&mut stdout, b),
                Event::Stderr(b) => (&mut stderr, b),
                Event::Exit(status) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        status,
                    })
                }
            };
            if buf.len() + b.len() > CAPTURE_LIMIT {
                let limit = CAPTURE_LIMIT as u64;
                return Err(ClientError::TooLarge("captured output".into(), limit));
            }
            buf.extend_from_slice(&b);
        }
    }

    /// Runs a program with no input and collects its output.
    pub async fn run_capture(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<User>,
    ) -> Result<Output, ClientError> {
        self.capture(
            ExecRequest {
                argv,
                env,
                cwd,
                user,
                tty: None,
            },
            b"",
        )
        .await
    }

    async fn finish(&self, mut events: mpsc::Receiver<Frame>) -> Result<u64, ClientError> {
        match events.recv().await {
            Some(Frame::Control {
                msg: Msg::Done { entries },
                ..
            }) => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    /// Writes one file in the guest (parent directories are created).
    pub async fn write_file(
        &self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<User>,
    ) -> Result<(), ClientError> {
        self.put_files(std::iter::once((path, bytes, mode)), owner)
            .await
    }

    /// Writes `files` in the guest, in order, all owned by `owner`, in one
    /// session (one round trip, not one per file); stops at the first that
    /// fails. Parent directories are created.
    pub async fn write_files(
        &self,
        files: &[GuestFile],
        owner: Option<User>,
    ) -> Result<(), ClientError> {
        let files = files
            .iter()
            .map(|f| (f.path.as_str(), f.bytes.as_slice(), f.mode));
        self.put_files(files, owner).await
    }

    /// One Put session of `(path, bytes, mode)` files, borrowed: a file's
    /// bytes are copied once, into its frames.
    async fn put_files<'a>(
        &self,
        files: impl Iterator<Item = (&'a str, &'a [u8], u32)>,
        owner: Option<User>,
    ) -> Result<(), ClientError> {
        let (id, events) = self.open(Msg::Put { owner }).await?;
        for (path, bytes, mode) in files {
            let entry = Entry {
                path: path.to_string(),
                mode,
                kind: EntryKind::File {
                    len: bytes.len() as u64,
                },
            };
            self.send(Frame::control(id, Msg::Entry(entry))).await?;
            for f in data_frames(id, Stream::File, Bytes::copy_from_slice(bytes)) {
                self.send(f).await?;
            }
        }
        self.send(Frame::control(id, Msg::End)).await?;
        self.finish(events).await.map(|_| ())
    }

    /// Copies the host directory `host_dir` to `guest_dir` (modes, symlinks
    /// and dot-directories such as `.git` included); returns the entry count.
    pub async fn copy_dir_in(
        &self,
        host_dir: &Path,
        guest_dir: &str,
        owner: Option<User>,
    ) -> Result<u64, ClientError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ClientError::Io { path, source }
        };
        let entries = tree::walk(host_dir).map_err(io(host_dir))?;
        let (id, events) = self.open(Msg::Put { owner }).await?;
        let base = guest_dir.trim_end_matches('/');
        for e in entries {
            let path = if e.rel.is_empty() {
                base.to_string()
            } else {
                format!("{base}/{}", e.rel)
            };
            let kind = match &e.kind {
                EntryKind::File { .. } => {
                    let data = std::fs::read(&e.abs).map_err(io(&e.abs))?;
                    self.send(Frame::control(
                        id,
                        Msg::Entry(Entry {
                            path,
                            mode: e.mode,
                            kind: EntryKind::File {
                                len: data.len() as u64,
                            },
                        }),
                    ))
                    .await?;
                    for f in data_frames(id, Stream::File, Bytes::from(data)) {
                        self.send(f).await?;
                    }
                    continue;
                }
                other => other.clone(),
            };
            self.send(Frame::control(
                id,
                Msg::Entry(Entry {
                    path,
                    mode: e.mode,
                    kind,
                }),
            ))
            .await?;
        }
        self.send(Frame::control(id, Msg::End)).await?;
        self.finish(events).await
    }

    /// Reads a guest file or tree into memory, at most `limit` bytes of data.
    pub async fn read_tree(&self, path: &str, limit: u64) -> Result<Vec<TreeEntry>, ClientError> {
        let (_, mut events) = self
            .open(Msg::Get {
                path: path.to_string(),
            })
            .await?;
        let mut out: Vec<TreeEntry> = Vec::new();
        let mut total = 0u64;
        loop {
            match events.recv().await {
                Some(Frame::Control {
                    msg: Msg::Entry(e), ..
                }) => out.push(TreeEntry {
                    path: e.path,
                    mode: e.mode,
                    kind: e.kind,
                    data: Vec::new(),
                }),
                Some(Frame::Data {
                    stream: Stream::File,
                    bytes,
                    ..
                }) => {
                    total += bytes.len() as u64;
                    if total > limit {
                        return Err(ClientError::TooLarge(path.to_string(), limit));
                    }
                    let Some(last) = out.last_mut() else {
                        return Err(ClientError::Unexpected("data before an entry".into()));
                    };
                    let EntryKind::File { len } = last.kind else {
                        return Err(ClientError::Unexpected("data for a non-file".into()));
                    };
                    if last.data.len() as u64 + bytes.len() as u64 > len {
                        return Err(ClientError::Unexpected(format!(
                            "{}: more data than announced",
                            last.path
                        )));
                    }
                    last.data.extend_from_slice(&bytes);
                }
                Some(Frame::Control {
                    msg: Msg::Done { .. },
                    ..
                }) => return Ok(out),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Reads one guest file (at most [`READ_FILE_LIMIT`] bytes).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut entries = self.read_tree(path, READ_FILE_LIMIT).await?;
        match entries.pop() {
            Some(TreeEntry {
                kind: EntryKind::File { .. },
                data,
                ..
            }) if entries.is_empty() => Ok(data),
            _ => Err(ClientError::Remote(format!("{path} is not a regular file"))),
        }
    }

    /// Copies a guest directory to `host_dir`, which must not exist; paths
    /// from the guest are checked and nothing is written through a symlink.
    pub async fn copy_dir_out(
        &self,
        guest_dir: &str,
        host_dir: &Path,
        limit: u64,
    ) -> Result<u64, ClientError> {
        let entries = self.read_tree(guest_dir, limit).await?;
        let mut writer = SafeWriter::new(host_dir);
        for e in &entries {
            writer.write(&e.path, e.mode, &e.kind, &e.data)?;
        }
        writer.finish()?;
        Ok(entries.len() as u64)
    }

    /// Asks the guest who it is.
    pub async fn probe(&self) -> Result<GuestInfo, ClientError> {
        let (_, mut events) = self.open(Msg::Probe).await?;
        match events.recv().await {
            Some(Frame::Control {
                msg:
                    Msg::Info {
                        version,
                        software,
                        hostname,
                        pid1,
                    },
                ..
            }) => Ok(GuestInfo {
                version,
                software,
                hostname,
                pid1,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until the guest agent answers through the mux.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<GuestInfo, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = "no answer".to_string();
        loop {
            match tokio::time::timeout_at(deadline, self.probe()).await {
                Ok(Ok(info)) => return Ok(info),
                // The guest's one connection ended: waiting cannot help.
                Ok(Err(ClientError::Remote(e))) if e == super::mux::CHANNEL_CLOSED => {
                    return Err(ClientError::Remote(e))
                }
                Ok(Err(ClientError::Remote(e))) => last = e,
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NotReady(timeout, last));
            }
            // A probe of a guest not yet connected is answered by the mux
            // at once: ask again soon (a boot's readiness is seen at most
            // 5 ms late, not 20).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Asks the guest (as init) to sync and power off, or reboot.
    pub async fn poweroff(&self, reboot: bool) -> Result<(), ClientError> {
        let (_, events) = self.open(Msg::Poweroff { reboot }).await?;
        self.finish(events).await.map(|_| ())
    }
}

fn unexpected(frame: Option<Frame>) -> ClientError {
    match frame {
        None => ClientError::Closed,
        Some(Frame::Control {
            msg: Msg::Error { message },
            ..
        }) => ClientError::Remote(message),
        Some(other) => ClientError::Unexpected(format!("{other:?}")),
    }
}

/// Sends input, resizes and signals to a running session; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl SessionHandle {
    async fn send(&self, msg: Msg) -> Result<(), ClientError> {
        self.out
            .send(Frame::control(self.id, msg))
            .await
            .map_err(|_| ClientError::Closed)
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        for f in data_frames(self.id, Stream::Stdin, Bytes::copy_from_slice(data)) {
            self.out.send(f).await.map_err(|_| ClientError::Closed)?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send(Msg::StdinEof).await
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.send(Msg::Resize { rows, cols }).await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.send(Msg::Signal { signal }).await
    }
}

/// Output of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last event.
    Exit(ExitStatus),
}

/// A running program in the guest. Dropping it before its exit kills it.
#[derive(Debug)]
pub struct Session {
    handle: SessionHandle,
    pid: u32,
    events: mpsc::Receiver<Frame>,
    done: bool,
}

impl Session {
    /// The guest pid of the program.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle for stdin, resize and signals, usable from other tasks.
    pub fn handle(&self) -> SessionHandle {
        self.handle.clone()
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.handle.write_stdin(data).await
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.handle.close_stdin().await
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.handle.resize(rows, cols).await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.handle.signal(signal).await
    }

    /// The next output chunk or the exit status.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if self.done {
            return Err(ClientError::Closed);
        }
        let event = match self.events.recv().await {
            Some(Frame::Data {
                stream: Stream::Stdout,
                bytes,
                ..
            }) => Event::Stdout(bytes),
            Some(Frame::Data {
                stream: Stream::Stderr,
                bytes,
                ..
            }) => Event::Stderr(bytes),
            Some(Frame::Control {
                msg: Msg::Exit { status },
                ..
            }) => Event::Exit(status),
            other => {
                self.done = true;
                return Err(unexpected(other));
            }
        };
        self.done = matches!(event, Event::Exit(_));
        Ok(event)
    }

    /// Waits for the exit status, discarding output.
    pub async fn wait(mut self) -> Result<ExitStatus, ClientError> {
        loop {
            if let Event::Exit(status) = self.next_event().await? {
                return Ok(status);
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .handle
                .out
                .try_send(Frame::control(self.handle.id, Msg::Cancel));
        }
    }
}
