//! The agent side: what runs inside the VM or container.

pub mod channel;
pub mod exec;
mod fdio;
pub mod files;
pub mod forward;
pub mod init;
pub mod passwd;
pub mod reaper;
pub mod server;
pub mod trace;

use std::path::PathBuf;
use std::time::Duration;

use bottle_util::error_chain;

use crate::auth::{ChannelKey, KeyError};

/// The line the VM boot probe waits for once the channel is connected.
pub use bottle_contract::READY_MARKER;

/// Where the agent gets the channel key it presents to the host.
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    /// No key: the host will refuse the connection (tests and diagnostics).
    #[default]
    None,
    /// A key taken at boot (a VM's init).
    Fixed(ChannelKey),
    /// A root-only file read before each dial (Docker's socket directory).
    File(PathBuf),
}

impl KeySource {
    fn load(&self) -> Result<Option<ChannelKey>, KeyError> {
        match self {
            KeySource::None => Ok(None),
            KeySource::Fixed(k) => Ok(Some(k.clone())),
            KeySource::File(p) => ChannelKey::read(p).map(Some),
        }
    }
}

/// Dials `target` and serves it, redialing whenever the connection ends (the
/// host accepts one guest connection per boot, so a redial is refused unless
/// the first never got through). `announce` prints the ready marker after
/// each accepted handshake; `default_user` is [`server::ServeOptions`]'s.
pub async fn run(
    target: channel::Target,
    reaper: reaper::Reaper,
    key: KeySource,
    default_user: Option<crate::proto::User>,
    announce: fn(),
) {
    loop {
        let key = match key.load() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("bottle-guest: {}; retrying", error_chain(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let opts = server::ServeOptions {
            key,
            default_user: default_user.clone(),
        };
        let conn = channel::dial_retry(&target).await;
        trace::step("dialed");
        match server::serve(conn, reaper.clone(), &opts, announce).await {
            Ok(()) => eprintln!("bottle-guest: host closed the channel; redialing"),
            Err(e) => {
                eprintln!("bottle-guest: {}; redialing", error_chain(&e));
                // A refusal (version mismatch, key, one connection per boot)
                // will not heal soon: back off.
                let pause = match e {
                    server::ServeError::Refused(_) => Duration::from_secs(5),
                    _ => Duration::from_millis(500),
                };
                tokio::time::sleep(pause).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the host answered one guest dial ([`dial_once`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialAnswer {
    /// Accepted as the guest.
    Welcome,
    /// Refused, with the host's reason.
    Refused(String),
    /// The channel could not be opened, or the handshake broke.
    Failed(String),
}

impl std::fmt::Display for DialAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialAnswer::Welcome => f.write_str("welcome: the host accepted this connection"),
            DialAnswer::Refused(why) => write!(f, "refused: {why}"),
            DialAnswer::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Opens the channel once and says hello as a guest, then hangs up: what
/// `bottle-guest dial` runs to check from inside that nobody but the agent
/// can take the channel. Gives up after 10 s.
pub async fn dial_once(target: &channel::Target, key: &KeySource) -> DialAnswer {
    use crate::frame::{FrameReader, FrameWriter};
    use crate::proto::{Frame, Msg, Role, Secret, CONNECTION, PROTOCOL_VERSION};
    let key = match key.load() {
        Ok(k) => k,
        Err(e) => return DialAnswer::Failed(error_chain(&e)),
    };
    let attempt = async {
        let conn = channel::dial(target)
            .await
            .map_err(|e| DialAnswer::Failed(error_chain(&e)))?;
        let (r, w) = tokio::io::split(conn);
        let (mut reader, mut writer) = (FrameReader::new(r), FrameWriter::new(w));
        let hello = Msg::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Guest,
            software: server::SOFTWARE.into(),
            key: key.map(|k| Secret(k.to_hex())),
        };
        let failed = |e: &dyn std::error::Error| DialAnswer::Failed(error_chain(e));
        // A host that refuses at once may close before the hello is written:
        // its answer is still there to read.
        let sent = writer.write(&Frame::control(CONNECTION, hello)).await;
        let answer = reader.read().await;
        let answer = match (answer, sent) {
            (Ok(None) | Err(_), Err(e)) => return Err(failed(&e)),
            (answer, _) => answer.map_err(|e| failed(&e))?,
        };
        Ok::<_, DialAnswer>(match answer {
            Some(Ok(Frame::Control {
                msg: Msg::Welcome { .. },
                ..
            })) => DialAnswer::Welcome,
            Some(Ok(Frame::Control {
                msg: Msg::Refused { reason },
                ..
            })) => DialAnswer::Refused(reason),
            None => DialAnswer::Failed("the host closed the connection".into()),
            Some(other) => DialAnswer::Failed(format!("unexpected answer {other:?}")),
        })
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(answer) | Err(answer)) => answer,
        Err(_) => DialAnswer::Failed("no answer within 10 s".into()),
    }
}
