//! A mux in process and the real `bottle-guest` binary in `serve` mode.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bottle_guest::auth::ChannelKey;
use bottle_guest::frame::{FrameReader, FrameWriter};
use bottle_guest::host::{run_mux, Client};
use bottle_guest::proto::{Frame, Msg, Role, Secret, CONNECTION, PROTOCOL_VERSION};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub guest_sock: PathBuf,
    pub control: PathBuf,
    /// This launch's channel key, also written to `key_file`.
    pub key: ChannelKey,
    pub key_file: PathBuf,
    pub agent: Option<Child>,
}

/// Writes `key` to a file the agent reads with `--key-file`.
pub fn write_key(dir: &Path, key: &ChannelKey) -> PathBuf {
    let path = dir.join("agent.key");
    std::fs::write(&path, key.to_hex()).unwrap();
    path
}

/// The real agent in `serve` mode, presenting the key in `key_file`.
pub fn spawn_agent(guest_sock: &Path, key_file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bottle-guest"))
        .arg("serve")
        .arg("--connect")
        .arg(format!("unix:{}", guest_sock.display()))
        .arg("--key-file")
        .arg(key_file)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

impl Rig {
    /// A mux with no agent yet.
    pub fn mux_only() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let guest_sock = dir.path().join("guest.sock");
        let control = dir.path().join("control.sock");
        let guest = UnixListener::bind(&guest_sock).unwrap();
        let ctl = UnixListener::bind(&control).unwrap();
        let key = ChannelKey::generate().unwrap();
        let key_file = write_key(dir.path(), &key);
        tokio::spawn(run_mux(guest, ctl, key.clone()));
        Rig {
            dir,
            guest_sock,
            control,
            key,
            key_file,
            agent: None,
        }
    }

    /// The real agent dialing this rig's mux with the right key.
    pub fn spawn_agent(&self) -> Child {
        spawn_agent(&self.guest_sock, &self.key_file)
    }

    /// A mux with a connected agent.
    pub async fn start() -> (Rig, Client) {
        let mut rig = Rig::mux_only();
        rig.agent = Some(rig.spawn_agent());
        let client = Client::connect(&rig.control).await.unwrap();
        client.wait_ready(Duration::from_secs(20)).await.unwrap();
        (rig, client)
    }
}

pub fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

pub fn sh(script: &str) -> Vec<String> {
    argv(&["sh", "-c", script])
}

/// A raw, hand-driven protocol connection.
pub struct Raw {
    pub reader: FrameReader<tokio::net::unix::OwnedReadHalf>,
    pub writer: FrameWriter<tokio::net::unix::OwnedWriteHalf>,
    /// Frames read while looking for another session's.
    pending: std::collections::VecDeque<Frame>,
}

impl Raw {
    pub fn new(s: UnixStream) -> Raw {
        let (r, w) = s.into_split();
        Raw {
            reader: FrameReader::new(r),
            writer: FrameWriter::new(w),
            pending: Default::default(),
        }
    }

    pub async fn connect(path: &Path) -> Raw {
        Raw::new(UnixStream::connect(path).await.unwrap())
    }

    pub async fn hello(&mut self, version: u32, role: Role) -> Msg {
        self.hello_with_key(version, role, None).await
    }

    /// A hello carrying `key` (hex) as a guest would.
    pub async fn hello_with_key(&mut self, version: u32, role: Role, key: Option<&str>) -> Msg {
        let hello = Msg::Hello {
            version,
            role,
            software: "test".into(),
            key: key.map(|k| Secret(k.to_string())),
        };
        self.send(Frame::control(CONNECTION, hello)).await;
        match self.next().await {
            Some(Frame::Control { msg, .. }) => msg,
            other => panic!("no handshake answer: {other:?}"),
        }
    }

    pub async fn client(path: &Path) -> Raw {
        let mut raw = Raw::connect(path).await;
        assert!(matches!(
            raw.hello(PROTOCOL_VERSION, Role::Client).await,
            Msg::Welcome { .. }
        ));
        raw
    }

    pub async fn send(&mut self, f: Frame) {
        self.writer.write(&f).await.unwrap();
    }

    /// The next well-formed frame, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        let f = tokio::time::timeout(Duration::from_secs(30), self.reader.read())
            .await
            .expect("frame timeout");
        match f {
            Ok(Some(Ok(f))) => Some(f),
            Ok(Some(Err(bad))) => panic!("bad frame: {bad}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// The next frame on `session`; frames of other sessions are kept for later.
    pub async fn next_on(&mut self, session: u32) -> Frame {
        if let Some(i) = self.pending.iter().position(|f| f.session() == session) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let f = self.next().await.expect("stream ended");
            if f.session() == session {
                return f;
            }
            self.pending.push_back(f);
        }
    }
}
