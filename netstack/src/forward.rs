//! The forward table's handler kind, and the built-in TCP DNS handler.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dial::DialFlow;
use crate::flow::{ConnInfo, Flow, GuestStream, PipeFlow};
use crate::gate::DnsService;

/// Handler called once per accepted connection.
pub type HandlerFn = Arc<dyn Fn(GuestStream, ConnInfo) + Send + Sync>;

/// What a forwarded gateway port leads to.
#[derive(Clone)]
pub enum Forward {
    /// In-process handler: called once per accepted connection, on the
    /// engine task, so it must return quickly (spawn for real work).
    Handler(HandlerFn),
    /// Each connection is dialled to this host address, and the engine
    /// moves bytes between the two sockets itself (no pipe, no task). The
    /// address is fixed by whoever builds the table, never by the guest.
    Dial(SocketAddr),
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forward::Handler(_) => f.write_str("Handler"),
            Forward::Dial(addr) => write!(f, "Dial({addr})"),
        }
    }
}

impl Forward {
    /// The engine's end of a connection just accepted for this forward.
    pub(crate) fn open(&self, info: ConnInfo, pipe_buffer: usize) -> Flow {
        match self {
            Forward::Handler(h) => {
                let (flow, stream) = PipeFlow::new(pipe_buffer);
                h(stream, info);
                Flow::Pipe(flow)
            }
            Forward::Dial(addr) => Flow::Dial(DialFlow::connect(*addr)),
        }
    }
}

/// Most queries answered on one TCP connection.
const DNS_TCP_MAX_QUERIES: usize = 64;

/// DNS over TCP on gateway:53: 2-byte length, query; same answers as UDP.
pub(crate) fn dns_tcp(service: Arc<DnsService>) -> Forward {
    Forward::Handler(Arc::new(move |stream, _info| {
        tokio::spawn(serve_dns_tcp(Arc::clone(&service), stream));
    }))
}

async fn serve_dns_tcp(service: Arc<DnsService>, mut stream: GuestStream) {
    let mut buf = vec![0u8; crate::dns::MAX_QUERY];
    for _ in 0..DNS_TCP_MAX_QUERIES {
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_exact(&mut len),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len > buf.len() || stream.read_exact(&mut buf[..len]).await.is_err() {
            return;
        }
        let Some(answer) = service.respond(&buf[..len]) else {
            return;
        };
        let Ok(alen) = u16::try_from(answer.len()) else {
            return;
        };
        if stream.write_all(&alen.to_be_bytes()).await.is_err()
            || stream.write_all(&answer).await.is_err()
        {
            return;
        }
    }
    let _ = stream.shutdown().await;
}
