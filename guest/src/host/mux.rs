//! The mux: accepts the guest's (re)connections on one listener and any
//! number of clients on another, and multiplexes the clients' sessions onto
//! the guest stream, remapping session ids.
//!
//! Guest-sent frames are untrusted: they are only routed to the client that
//! owns the session, and a bad one fails that session alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::frame::{FrameReader, FrameWriter};
use crate::proto::{Frame, Msg, Role, CONNECTION, PROTOCOL_VERSION};

/// Errors that stop the mux.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("accept on the {0} socket")]
    Accept(&'static str, #[source] std::io::Error),
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const QUEUE: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Route {
    client: u64,
    sid: u32,
}

#[derive(Debug, Default)]
struct State {
    guest: Option<(u64, mpsc::Sender<Frame>)>,
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
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the mux until a listener fails.
pub async fn run_mux(guest: UnixListener, control: UnixListener) -> Result<(), MuxError> {
    let state: Shared = Arc::default();
    let guests = {
        let state = state.clone();
        async move {
            loop {
                let (s, _) = guest
                    .accept()
                    .await
                    .map_err(|e| MuxError::Accept("guest", e))?;
                tokio::spawn(guest_conn(s, state.clone()));
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

/// Reads the hello and answers it; `None` when refused or broken.
async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    role: Role,
    guest_connected: impl FnOnce() -> bool,
) -> Option<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // QEMU connects its chardev before the guest boots, so the guest's hello
    // may come much later (a slow TCG boot): only clients get a deadline.
    let first = match role {
        Role::Guest => reader.read().await.ok()??,
        Role::Client => tokio::time::timeout(HELLO_TIMEOUT, reader.read())
            .await
            .ok()?
            .ok()??,
    };
    let refusal = match first {
        Ok(Frame::Control {
            msg: Msg::Hello {
                version, role: r, ..
            },
            ..
        }) => {
            if version != PROTOCOL_VERSION {
                Some(format!(
                    "protocol version {version} is not supported: this host speaks version {PROTOCOL_VERSION}; \
                     use the bottle-guest built with this bottle"
                ))
            } else if r != role {
                Some(format!("expected a {role:?} on this socket, got a {r:?}"))
            } else {
                None
            }
        }
        _ => Some("the first frame must be a hello".to_string()),
    };
    let reply = match &refusal {
        Some(reason) => Msg::Refused {
            reason: reason.clone(),
        },
        None => Msg::Welcome {
            version: PROTOCOL_VERSION,
            guest_connected: guest_connected(),
        },
    };
    writer
        .write(&Frame::control(CONNECTION, reply))
        .await
        .ok()?;
    match refusal {
        Some(_) => None,
        None => Some(()),
    }
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

async fn guest_conn(stream: UnixStream, state: Shared) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    if handshake(&mut reader, &mut writer, Role::Guest, || true)
        .await
        .is_none()
    {
        return;
    }
    let tx = spawn_writer(writer);
    let (gen, stale) = {
        let mut st = lock(&state);
        st.next_id += 1;
        let gen = st.next_id;
        st.guest = Some((gen, tx.clone()));
        (gen, st.fail_all())
    };
    fail(stale, "the guest agent reconnected; the session was lost").await;

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
                msg: Msg::Hello { version, .. },
            }) => {
                // The agent restarted on a persistent channel (virtio port).
                let stale = lock(&state).fail_all();
                fail(stale, "the guest agent restarted; the session was lost").await;
                let reply = if version == PROTOCOL_VERSION {
                    Msg::Welcome {
                        version: PROTOCOL_VERSION,
                        guest_connected: true,
                    }
                } else {
                    Msg::Refused {
                        reason: format!("protocol version {version} is not supported"),
                    }
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
    fail(stale, "the guest agent disconnected").await;
}

async fn client_conn(stream: UnixStream, state: Shared) {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w);
    let connected = || lock(&state).guest.is_some();
    if handshake(&mut reader, &mut writer, Role::Client, connected)
        .await
        .is_none()
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
                let forward: Result<(mpsc::Sender<Frame>, u32), &str> = {
                    let mut st = lock(&state);
                    let existing = st.by_client.get(&(id, sid)).copied();
                    match (&st.guest, existing, is_request) {
                        (_, Some(_), true) => Err("session id already in use"),
                        (None, _, true) => Err("the guest agent is not connected"),
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
                        (_, _, false) => Err("unknown session"),
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
