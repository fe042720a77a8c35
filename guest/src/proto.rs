//! The typed messages of the host<->guest protocol, shared by both sides.
//!
//! Control messages travel as JSON inside a control frame; bulk bytes
//! (stdin, stdout, stderr, file contents) travel raw in data frames, see
//! [`crate::frame`]. The wire format is documented in `docs/guest-protocol.md`.

use serde::{Deserialize, Serialize};

/// The protocol version both ends must speak; bumped on any incompatible change.
/// Version 2: a guest's hello carries the channel key, and the mux takes one
/// guest connection per boot.
pub const PROTOCOL_VERSION: u32 = 2;

/// The session id reserved for connection-level messages (hello, ping).
pub const CONNECTION: u32 = 0;

/// Which end of a connection a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The agent inside the VM or container; it serves sessions.
    Guest,
    /// A host-side client (CLI) talking to the mux; it opens sessions.
    Client,
}

/// A secret carried in a message (the channel key); `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A user to run as or to own files: a name from the guest's `/etc/passwd`, or
/// a numeric uid (its gid is the passwd entry's, else the same number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum User {
    Name(String),
    Uid(u32),
}

/// A request to run a program in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up on `PATH`.
    pub argv: Vec<String>,
    /// Environment on top of the defaults (PATH, HOME, USER, LOGNAME, TERM).
    pub env: Vec<(String, String)>,
    /// Working directory; the user's home when `None`.
    pub cwd: Option<String>,
    /// User to run as; the agent's own user (root in a VM) when `None`.
    pub user: Option<User>,
    /// `Some((rows, cols))` runs the program on a pseudo-terminal of that size.
    pub tty: Option<(u16, u16)>,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// Whether the program exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// What a file-tree entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file whose `len` bytes follow in file-data frames.
    File { len: u64 },
    /// A directory.
    Dir,
    /// A symbolic link to `target` (never followed).
    Symlink { target: String },
}

/// One entry of a file transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute guest path (host to guest) or path relative to the requested
    /// root, empty for the root itself (guest to host).
    pub path: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub kind: EntryKind,
}

/// A control message. Requests open a session; the rest belong to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    // --- connection level (session 0) ---
    /// First message of the dialing side. A guest sends the channel key
    /// (hex, see [`crate::auth`]); a client sends none.
    Hello {
        version: u32,
        role: Role,
        software: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<Secret>,
    },
    /// The listening side accepts the hello.
    Welcome {
        version: u32,
        guest_connected: bool,
    },
    /// The listening side refuses the connection; it closes after this.
    Refused {
        reason: String,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },

    // --- requests (open a session) ---
    /// Run a program.
    Exec(ExecRequest),
    /// Write entries (each followed by its data); ends with `End`.
    Put {
        owner: Option<User>,
    },
    /// Read a file or a tree; the guest answers with entries, then `Done`.
    Get {
        path: String,
    },
    /// Ask who the guest is; answered with `Info`.
    Probe,
    /// Power the guest off (or reboot it) after a sync; only as init.
    Poweroff {
        reboot: bool,
    },

    // --- within a session, host to guest ---
    /// No more stdin (a `^D` on a terminal).
    StdinEof,
    Resize {
        rows: u16,
        cols: u16,
    },
    Signal {
        signal: i32,
    },
    /// One entry of a `Put`.
    Entry(Entry),
    /// The last entry of a `Put` was sent.
    End,
    /// Abort the session (the client went away); the program is killed.
    Cancel,

    // --- within a session, guest to host ---
    Started {
        pid: u32,
    },
    Exit {
        status: ExitStatus,
    },
    /// A transfer or poweroff succeeded; carries how many entries it moved.
    Done {
        entries: u64,
    },
    Info {
        version: u32,
        software: String,
        hostname: String,
        pid1: bool,
    },
    /// The session failed and is closed.
    Error {
        message: String,
    },
}

impl Msg {
    /// Whether this message opens a session.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Msg::Exec(_) | Msg::Put { .. } | Msg::Get { .. } | Msg::Probe | Msg::Poweroff { .. }
        )
    }

    /// Whether this message (from the guest) ends its session.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Msg::Exit { .. } | Msg::Done { .. } | Msg::Info { .. } | Msg::Error { .. }
        )
    }
}

/// Which byte stream a data frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
    /// Contents of the current file entry of a transfer.
    File,
}

/// One protocol frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control {
        session: u32,
        msg: Msg,
    },
    Data {
        session: u32,
        stream: Stream,
        bytes: bytes::Bytes,
    },
}

impl Frame {
    pub fn session(&self) -> u32 {
        match self {
            Frame::Control { session, .. } | Frame::Data { session, .. } => *session,
        }
    }

    /// The same frame on another session id (the mux remaps ids).
    pub fn with_session(self, id: u32) -> Frame {
        match self {
            Frame::Control { msg, .. } => Frame::Control { session: id, msg },
            Frame::Data { stream, bytes, .. } => Frame::Data {
                session: id,
                stream,
                bytes,
            },
        }
    }

    pub fn control(session: u32, msg: Msg) -> Frame {
        Frame::Control { session, msg }
    }

    pub fn error(session: u32, message: impl Into<String>) -> Frame {
        Frame::Control {
            session,
            msg: Msg::Error {
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_round_trips_through_json() {
        let msg = Msg::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            user: Some(User::Uid(1000)),
            tty: Some((24, 80)),
        });
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.contains("\"type\":\"exec\""), "{json}");
        assert_eq!(serde_json::from_str::<Msg>(&json).unwrap(), msg);
    }

    #[test]
    fn signal_exit_reports_shell_code_above_128() {
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
    }

    #[test]
    fn only_guest_answers_end_sessions() {
        assert!(Msg::Exit {
            status: ExitStatus::Code(0)
        }
        .is_terminal());
        assert!(!Msg::Started { pid: 1 }.is_terminal());
        assert!(Msg::Probe.is_request());
        assert!(!Msg::StdinEof.is_request());
    }
}
