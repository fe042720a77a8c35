//! Serving the protocol on one connection to the host: the handshake, then a
//! dispatch loop that runs each session in its own task.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::reaper::Reaper;
use super::{exec, files};
use crate::auth::ChannelKey;
use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::proto::{Frame, Msg, Role, Secret, User, CONNECTION, PROTOCOL_VERSION};

/// The agent's software name, sent in the hello.
pub const SOFTWARE: &str = concat!("bottle-guest ", env!("CARGO_PKG_VERSION"));

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("framing")]
    Frame(#[from] FrameError),
    #[error("host refused the agent: {0}")]
    Refused(String),
    #[error("handshake: {0}")]
    Handshake(String),
}

/// How the agent serves a connection.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The channel key presented in the hello (the host refuses a guest
    /// without this launch's key).
    pub key: Option<ChannelKey>,
    /// Who runs commands and owns written files when a request names no
    /// user; the agent's own user when `None`. A container's root agent
    /// serves as the agent user (`serve --user 1000`).
    pub default_user: Option<User>,
}

/// What a session task gets: its id, the shared outbound queue, its own
/// inbound frames, and the reaper for children.
#[derive(Debug)]
pub(crate) struct SessionCtx {
    pub id: u32,
    pub out: mpsc::Sender<Frame>,
    pub inbound: mpsc::UnboundedReceiver<Frame>,
    pub reaper: Reaper,
}

impl SessionCtx {
    /// Queues a frame to the host; false when the connection is gone.
    pub async fn send(&self, frame: Frame) -> bool {
        self.out.send(frame).await.is_ok()
    }
}

/// Serves one connection until the host closes it or the framing breaks.
/// `on_ready` runs once the host accepted the handshake.
pub async fn serve<S>(
    stream: S,
    reaper: Reaper,
    opts: &ServeOptions,
    on_ready: impl FnOnce(),
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let hello = Msg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Guest,
        software: SOFTWARE.into(),
        key: opts.key.as_ref().map(|k| Secret(k.to_hex())),
    };
    // A host that refuses at once may close before the hello is written:
    // its answer is still there to read.
    let sent = writer.write(&Frame::control(CONNECTION, hello)).await;
    let answer = match (reader.read().await, sent) {
        (Ok(None) | Err(_), Err(e)) => return Err(e.into()),
        (answer, _) => answer?,
    };
    match answer {
        Some(Ok(Frame::Control {
            msg: Msg::Welcome { .. },
            ..
        })) => {}
        Some(Ok(Frame::Control {
            msg: Msg::Refused { reason },
            ..
        })) => return Err(ServeError::Refused(reason)),
        None => return Err(ServeError::Handshake("host closed the connection".into())),
        Some(other) => {
            return Err(ServeError::Handshake(format!(
                "expected welcome, got {other:?}"
            )))
        }
    }
    super::trace::step("welcomed");
    on_ready();

    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if writer.write(&frame).await.is_err() {
                break;
            }
        }
    });
    let result = dispatch(&mut reader, &out_tx, &reaper, &opts.default_user).await;
    drop(out_tx);
    writer_task.abort();
    result
}

async fn dispatch<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    out: &mpsc::Sender<Frame>,
    reaper: &Reaper,
    default_user: &Option<User>,
) -> Result<(), ServeError> {
    let mut sessions: HashMap<u32, mpsc::UnboundedSender<Frame>> = HashMap::new();
    while let Some(frame) = reader.read().await? {
        sessions.retain(|_, tx| !tx.is_closed());
        let frame = match frame {
            Ok(frame) => frame,
            Err(bad) => {
                // Dropping the sender ends the session (its program is killed).
                sessions.remove(&bad.session);
                if bad.session != CONNECTION {
                    let _ = out.send(Frame::error(bad.session, bad.reason)).await;
                }
                continue;
            }
        };
        let id = frame.session();
        match frame {
            Frame::Control {
                session: CONNECTION,
                msg: Msg::Ping { nonce },
            } => {
                let _ = out
                    .send(Frame::control(CONNECTION, Msg::Pong { nonce }))
                    .await;
            }
            Frame::Control {
                session: CONNECTION,
                ..
            } => {}
            Frame::Control { msg, .. } if msg.is_request() => {
                if sessions.contains_key(&id) {
                    sessions.remove(&id);
                    let _ = out
                        .send(Frame::error(id, "session id already in use"))
                        .await;
                    continue;
                }
                if let Some(tx) = open(id, msg, out, reaper, default_user).await {
                    sessions.insert(id, tx);
                }
            }
            frame => {
                if let Some(tx) = sessions.get(&id) {
                    if tx.send(frame).is_err() {
                        sessions.remove(&id);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn open(
    id: u32,
    msg: Msg,
    out: &mpsc::Sender<Frame>,
    reaper: &Reaper,
    default_user: &Option<User>,
) -> Option<mpsc::UnboundedSender<Frame>> {
    super::trace::step(match &msg {
        Msg::Exec(_) => "request-exec",
        Msg::Put { .. } => "request-put",
        Msg::Get { .. } => "request-get",
        Msg::Probe => "request-probe",
        Msg::Poweroff { .. } => "request-poweroff",
        _ => "request-other",
    });
    let (tx, inbound) = mpsc::unbounded_channel();
    let ctx = SessionCtx {
        id,
        out: out.clone(),
        inbound,
        reaper: reaper.clone(),
    };
    match msg {
        Msg::Exec(mut req) => {
            req.user = req.user.or_else(|| default_user.clone());
            tokio::spawn(exec::run(ctx, req));
        }
        Msg::Put { owner } => {
            tokio::spawn(files::put(ctx, owner.or_else(|| default_user.clone())));
        }
        Msg::Get { path } => {
            tokio::spawn(files::get(ctx, path));
        }
        Msg::Probe => {
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let info = Msg::Info {
                version: PROTOCOL_VERSION,
                software: SOFTWARE.into(),
                hostname: hostname.trim().to_string(),
                pid1: std::process::id() == 1,
            };
            let _ = out.send(Frame::control(id, info)).await;
            return None;
        }
        Msg::Poweroff { reboot } => {
            if std::process::id() != 1 {
                let _ = out
                    .send(Frame::error(
                        id,
                        "poweroff is only served by the agent as init",
                    ))
                    .await;
                return None;
            }
            let _ = out.send(Frame::control(id, Msg::Done { entries: 0 })).await;
            tokio::spawn(async move {
                // Give the writer a moment to deliver the answer.
                tokio::time::sleep(Duration::from_millis(100)).await;
                super::init::power_off(reboot);
            });
            return None;
        }
        _ => return None,
    }
    Some(tx)
}
