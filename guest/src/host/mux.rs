//! The mux: accepts the guest's one connection on one listener and any
//! number of clients on another, and multiplexes the clients' sessions onto
//! the guest stream, remapping session ids.
//!
//! Who may be the guest: the first connection whose hello carries this
//! launch's channel key ([`ChannelKey`]). Once a guest is accepted, every
//! later guest connection is refused and logged (rate-limited), even after
//! the accepted one ends: there is one guest connection per boot, never a
//! replacement.
//!
//! Guest-sent frames are untrusted: they are only routed to the client that
//! owns the session, and a bad one fails that session alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::auth::ChannelKey;
use crate::frame::{FrameReader, FrameWriter};
use crate::proto::{Frame, Msg, Role, Secret, CONNECTION, PROTOCOL_VERSION};

/// Errors that stop the mux.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("accept on the {0} socket")]
    Accept(&'static str, #[source] std::io::Error),
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const QUEUE: usize = 256;
/// Guest connections that may wait for their hello at once (before a guest
/// is accepted only the VMM's or the agent's own connection arrives).
const MAX_PENDING_GUESTS: usize = 4;
/// At most one refusal line per this interval; the rest are counted.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long a refused peer gets to take its `refused` frame.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a guest connection is refused once a guest was accepted.
pub const ALREADY_CONNECTED: &str =
    "a guest agent is already connected: the channel takes one guest connection per boot";
/// Why a guest connection without this launch's key is refused.
pub const BAD_KEY: &str = "the guest did not present this launch's channel key";
/// What clients are told once the accepted guest's connection ended.
pub const CHANNEL_CLOSED: &str = "the guest agent's channel closed and is never reopened \
     (one guest connection per boot): stop the bottle and run it again";

#[derive(Debug, Clone, Copy)]
struct Route {
    client: u64,
    sid: u32,
}

/// Rate-limits the log lines about refused guest connections.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// The line to log for a refusal at `now`, or `None` while rate-limited.
    fn note(&mut self, now: Instant, reason: &str) -> Option<String> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        let line = match self.suppressed {
            0 => format!("bottle: guest channel: refused a guest connection: {reason}"),
            n => format!(
                "bottle: guest channel: refused a guest connection: {reason} \
                 ({n} more refused since the last report)"
            ),
        };
        self.last = Some(now);
        self.suppressed = 0;
        Some(line)
    }
}

/// Called with each (rate-limited) refusal line, e.g. to write it to the
/// bottle's audit log.
pub type RefusalHook = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Hook(Option<RefusalHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

#[derive(Debug, Default)]
struct State {
    on_refused: Hook,
    guest: Option<(u64, mpsc::Sender<Frame>)>,
    /// Set when a guest is accepted, never cleared: one guest per boot.
    claimed: bool,
    /// Guest connections waiting for their hello.
    pending: usize,
    /// Why the last guest connection was refused, for clients' errors.
    last_refusal: Option<String>,
    refusals: RefusalLog,
    routes: HashMap<u32, Route>,
    by_client: HashMap<(u64, u32), u32>,
    clients: HashMap<u64, mpsc::Sender<Frame>>,
    next_sid: u32,
    next_id: u64,
}

impl State {
    fn alloc_sid(&mut self) -> u32 {
        loop {
            self.next_sid = self.next_sid.wrapping_add(1);
            if self.next_sid != CONNECTION && !self.routes.contains_key(&self.next_sid) {
                return self.next_sid;
            }
        }
    }

    fn remove_route(&mut self, gsid: u32) -> Option<Route> {
        let route = self.routes.remove(&gsid)?;
        self.by_client.remove(&(route.client, route.sid));
        Some(route)
    }

    /// Drops every route, returning where to send the failure.
    fn fail_all(&mut self) -> Vec<(mpsc::Sender<Frame>, u32)> {
        self.by_client.clear();
        self.routes
            .drain()
            .filter_map(|(_, r)| self.clients.get(&r.client).map(|tx| (tx.clone(), r.sid)))
            .collect()
    }

    /// Records and logs (rate-limited) a refused guest connection.
    fn refused(&mut self, reason: &str) {
        if !self.claimed {
            self.last_refusal = Some(reason.to_string());
        }
        if let Some(line) = self.refusals.note(Instant::now(), reason) {
            eprintln!("{line}");
            if let Some(hook) = &self.on_refused.0 {
                hook(&line);
            }
        }
    }

    /// Why a new session cannot reach the guest right now.
    fn no_guest(&self) -> String {
        match (&self.last_refusal, self.claimed) {
            (_, true) => CHANNEL_CLOSED.to_string(),
            (Some(why), false) => format!(
                "the guest agent is not connected (the last guest connection was refused: {why})"
            ),
            (None, false) => "the guest agent is not connected".to_string(),
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the mux until a listener fails. Only a guest whose hello carries
/// `key` is accepted, and only the first one.
pub async fn run_mux(
    guest: UnixListener,
    control: UnixListener,
    key: ChannelKey,
) -> Result<(), MuxError> {
    run_mux_with(guest, control, key, None).await
}

/// [`run_mux`], calling `on_refused` with each (rate-limited) refusal line.
pub async fn run_mux_with(
    guest: UnixListener,
    control: UnixListener,
    key: ChannelKey,
    on_refused: Option<RefusalHook>,
) -> Result<(), MuxError> {
    let state: Shared = Arc::default();
    lock(&state).on_refused = Hook(on_refused);
    let key = Arc::new(key);
    let guests = {
        let state = state.clone();
        async move {
            loop {
                let (s, _) = guest
                    .accept()
                    .await
                    .map_err(|e| MuxError::Accept("guest", e))?;
                tokio::spawn(guest_conn(s, state.clone(), key.clone()));
            }
        }
    };
    let clients = async move {
        loop {
            let (s, _) = control
                .accept()
                .await
                .map_err(|e| MuxError::Accept("control", e))?;
            tokio::spawn(client_conn(s, state.clone()));
        }
    };
    tokio::select! {
        r = guests => r,
        r = clients => r,
    }
}

/// Reads the first frame, which must be a hello; `Err` carries the reason to
/// refuse with, `Ok(None)` means the peer went away first.
async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    deadline: Option<Duration>,
) -> Result<Option<(u32, Role, Option<Secret>)>, String> {
    let first = match deadline {
        None => reader.read().await,
        Some(d) => match tokio::time::timeout(d, reader.read()).await {
            Ok(r) => r,
            Err(_) => return Ok(None),
        },
    };
    match first {
        Ok(None) | Err(_) => Ok(None),
        Ok(Some(Ok(Frame::Control {
            msg: Msg::Hello {
                version, role, key, ..
            },
            ..
        }))) => Ok(Some((version, role, key))),
        Ok(Some(_)) => Err("the first frame must be a hello".to_string()),
    }
}

/// Why a hello with this version and role is refused on a `want` socket.
fn check_hello(version: u32, role: Role, want: Role) -> Option<String> {
    if version != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {version} is not supported: this host speaks version {PROTOCOL_VERSION}; \
             use the bottle-guest built with this bottle"
        ))
    } else if role != want {
        Some(format!(
            "expected a {want:?} on this socket, got a {role:?}"
        ))
    } else {
        None
    }
}

async fn send_refusal<W: AsyncWrite + Unpin>(writer: &mut FrameWriter<W>, reason: &str) {
    let refused = Frame::control(
        CONNECTION,
        Msg::Refused {
            reason: reason.to_string(),
        },
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, writer.write(&refused)).await;
}

fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut writer: FrameWriter<W>,
) -> mpsc::Sender<Frame> {
    let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    tx
}

async fn fail(targets: Vec<(mpsc::Sender<Frame>, u32)>, why: &str) {
    for (tx, sid) in targets {
        let _ = tx.send(Frame::error(sid, why)).await;
    }
}

/// Counts a guest connection as waiting for its hello while alive.
struct Pending(Shared);

impl Drop for Pending {
    fn drop(&mut self) {
        let mut st = lock(&self.0);
        st.pending = st.pending.saturating_sub(1);
    }
}

/// Admits one guest connection: `Ok` with the writer's queue and generation
/// once its hello carried the key and no guest was accepted before; `Err`
/// with the reason it was refused (already sent to the peer and logged), or
/// `None` when the peer left before saying hello.
async fn admit_guest<R, W>(
    reader: &mut FrameReader<R>,
    mut writer: FrameWriter<W>,
    state: &Shared,
    key: &ChannelKey,
) -> Option<(u64, mpsc::Sender<Frame>)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let early = {
        let mut st = lock(state);
        if st.claimed {
            Some(ALREADY_CONNECTED.to_string())
        } else if st.pending >= MAX_PENDING_GUESTS {
            Some("too many guest connections are waiting for their hello".to_string())
        } else {
            st.pending += 1;
            None
        }
    };
    let refusal = match early {
        Some(reason) => Some(reason),
        None => {
            let _pending = Pending(state.clone());
            // QEMU connects its chardev before the guest boots, so the
            // guest's hello may come much later (a slow TCG boot): no deadline.
            match read_hello(reader, None).await {
                Ok(None) => return None,
                Err(reason) => Some(reason),
                Ok(Some((version, role, offered))) => check_hello(version, role, Role::Guest)
                    .or_else(|| {
                        let ok = offered.is_some_and(|Secret(k)| key.matches(&k));
                        (!ok).then(|| BAD_KEY.to_string())
                    }),
            }
        }
    };
    let refusal = refusal.or_else(|| lock(state).claimed.then(|| ALREADY_CONNECTED.to_string()));
    if let Some(reason) = refusal {
        lock(state).refused(&reason);
        send_refusal(&mut writer, &reason).await;
        return None;
    }
    let welcome = Frame::control(
        CONNECTION,
        Msg::Welcome {
            version: PROTOCOL_VERSION,
            guest_connected: true,
        },
    );
    let tx = spawn_writer(writer);
    let mut st = lock(state);
    if st.claimed {
        // Another connection won while this one's hello was checked.
        st.refused(ALREADY_CONNECTED);
        let _ = tx.try_send(Frame::control(
            CONNECTION,
            Msg::Refused {
                reason: ALREADY_CONNECTED.to_string(),
            },
        ));
        return None;
    }
    if tx.try_send(welcome).is_err() {
        return None;
    }
    st.claimed = true;
    st.last_refusal = None;
    st.next_id += 1;
    let gen = st.next_id;
    st.guest = Some((gen, tx.clone()));
    Some((gen, tx))
}

async fn guest_conn(stream: UnixStream, state: Shared, key: Arc<ChannelKey>) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let Some((gen, tx)) = admit_guest(&mut reader, FrameWriter::new(w), &state, &key).await else {
        return;
    };

    loop {
        let frame = match reader.read().await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        match frame {
            Ok(Frame::Control {
                session: CONNECTION,
                msg: Msg::Ping { nonce },
            }) => {
                let _ = tx
                    .send(Frame::control(CONNECTION, Msg::Pong { nonce }))
                    .await;
            }
            Ok(Frame::Control {
                session: CONNECTION,
                msg: Msg::Hello { .. },
            }) => {
                // A second hello on the accepted stream (a persistent virtio
                // port reopened by someone else) is never a new guest.
                let reason = "the channel is already open: a second hello is never a replacement";
                lock(&state).refused(reason);
                let reply = Msg::Refused {
                    reason: reason.to_string(),
                };
                let _ = tx.send(Frame::control(CONNECTION, reply)).await;
            }
            Ok(Frame::Control {
                session: CONNECTION,
                ..
            }) => {}
            Ok(frame) => {
                let gsid = frame.session();
                let terminal = matches!(&frame, Frame::Control { msg, .. } if msg.is_terminal());
                let target = {
                    let mut st = lock(&state);
                    let route = if terminal {
                        st.remove_route(gsid)
                    } else {
                        st.routes.get(&gsid).copied()
                    };
                    route.and_then(|r| st.clients.get(&r.client).map(|c| (c.clone(), r.sid)))
                };
                if let Some((client, sid)) = target {
                    let _ = client.send(frame.with_session(sid)).await;
                }
            }
            Err(bad) => {
                let target = {
                    let mut st = lock(&state);
                    st.remove_route(bad.session)
                        .and_then(|r| st.clients.get(&r.client).map(|c| (c.clone(), r.sid)))
                };
                if let Some((client, sid)) = target {
                    let _ = client
                        .send(Frame::error(
                            sid,
                            format!("the guest sent a bad frame: {}", bad.reason),
                        ))
                        .await;
                    let _ = tx.send(Frame::control(bad.session, Msg::Cancel)).await;
                }
            }
        }
    }
    let stale = {
        let mut st = lock(&state);
        if st.guest.as_ref().is_some_and(|(g, _)| *g == gen) {
            st.guest = None;
            st.fail_all()
        } else {
            Vec::new()
        }
    };
    fail(stale, CHANNEL_CLOSED).await;
}

async fn client_conn(stream: UnixStream, state: Shared) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let refusal = match read_hello(&mut reader, Some(HELLO_TIMEOUT)).await {
        Ok(None) => return,
        Ok(Some((version, role, _))) => check_hello(version, role, Role::Client),
        Err(reason) => Some(reason),
    };
    if let Some(reason) = refusal {
        send_refusal(&mut writer, &reason).await;
        return;
    }
    let welcome = Msg::Welcome {
        version: PROTOCOL_VERSION,
        guest_connected: lock(&state).guest.is_some(),
    };
    if writer
        .write(&Frame::control(CONNECTION, welcome))
        .await
        .is_err()
    {
        return;
    }
    let tx = spawn_writer(writer);
    let id = {
        let mut st = lock(&state);
        st.next_id += 1;
        let id = st.next_id;
        st.clients.insert(id, tx.clone());
        id
    };
    while let Ok(Some(frame)) = reader.read().await {
        match frame {
            Ok(Frame::Control {
                session: CONNECTION,
                msg: Msg::Ping { nonce },
            }) => {
                let _ = tx
                    .send(Frame::control(CONNECTION, Msg::Pong { nonce }))
                    .await;
            }
            Ok(Frame::Control {
                session: CONNECTION,
                ..
            }) => {}
            Ok(frame) => {
                let sid = frame.session();
                let is_request = matches!(&frame, Frame::Control { msg, .. } if msg.is_request());
                let is_cancel = matches!(
                    &frame,
                    Frame::Control {
                        msg: Msg::Cancel,
                        ..
                    }
                );
                let forward: Result<(mpsc::Sender<Frame>, u32), String> = {
                    let mut st = lock(&state);
                    let existing = st.by_client.get(&(id, sid)).copied();
                    match (&st.guest, existing, is_request) {
                        (_, Some(_), true) => Err("session id already in use".to_string()),
                        (None, _, true) => Err(st.no_guest()),
                        (Some((_, g)), None, true) => {
                            let g = g.clone();
                            let gsid = st.alloc_sid();
                            st.routes.insert(gsid, Route { client: id, sid });
                            st.by_client.insert((id, sid), gsid);
                            Ok((g, gsid))
                        }
                        (Some((_, g)), Some(gsid), false) => {
                            let g = g.clone();
                            if is_cancel {
                                st.remove_route(gsid);
                            }
                            Ok((g, gsid))
                        }
                        (_, _, false) => Err("unknown session".to_string()),
                    }
                };
                match forward {
                    Ok((guest, gsid)) => {
                        let _ = guest.send(frame.with_session(gsid)).await;
                    }
                    Err(_) if is_cancel => {}
                    Err(why) => {
                        let _ = tx.send(Frame::error(sid, why)).await;
                    }
                }
            }
            Err(bad) => {
                let cancel = {
                    let mut st = lock(&state);
                    let gsid = st.by_client.get(&(id, bad.session)).copied();
                    let guest = st.guest.as_ref().map(|(_, g)| g.clone());
                    gsid.and_then(|g| st.remove_route(g).map(|_| g)).zip(guest)
                };
                if let Some((gsid, guest)) = cancel {
                    let _ = guest.send(Frame::control(gsid, Msg::Cancel)).await;
                }
                if bad.session != CONNECTION {
                    let _ = tx.send(Frame::error(bad.session, bad.reason)).await;
                }
            }
        }
    }
    let (cancels, guest) = {
        let mut st = lock(&state);
        st.clients.remove(&id);
        let mine: Vec<u32> = st
            .by_client
            .iter()
            .filter(|((c, _), _)| *c == id)
            .map(|(_, g)| *g)
            .collect();
        for g in &mine {
            st.remove_route(*g);
        }
        (mine, st.guest.as_ref().map(|(_, g)| g.clone()))
    };
    if let Some(guest) = guest {
        for gsid in cancels {
            let _ = guest.send(Frame::control(gsid, Msg::Cancel)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_with_a_count() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let first = log.note(t0, "x").unwrap();
        assert!(first.contains("refused a guest connection: x"), "{first}");
        for i in 1..=5 {
            assert_eq!(log.note(t0 + Duration::from_secs(i), "x"), None);
        }
        let next = log.note(t0 + REFUSAL_LOG_INTERVAL, "y").unwrap();
        assert!(next.contains(": y (5 more refused"), "{next}");
        assert_eq!(log.note(t0 + REFUSAL_LOG_INTERVAL, "z"), None);
    }
}
