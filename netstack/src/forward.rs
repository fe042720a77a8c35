//! The forward table's handler kinds, and the built-in handlers (dial, TCP DNS).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::flow::{ConnInfo, GuestStream};
use crate::gate::DnsService;

/// Handler called once per accepted connection.
pub type HandlerFn = Arc<dyn Fn(GuestStream, ConnInfo) + Send + Sync>;

/// What a forwarded gateway port leads to.
#[derive(Clone)]
pub enum Forward {
    /// In-process handler: called once per accepted connection, on the
    /// engine task, so it must return quickly (spawn for real work).
    Handler(HandlerFn),
    /// Dial a host address and splice (tests/benchmarks only; never from the manifest).
    Dial(SocketAddr),
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forward::Handler(_) => f.write_str("Handler"),
            Forward::Dial(a) => write!(f, "Dial({a})"),
        }
    }
}

/// Splice buffer per direction for dialled connections.
const SPLICE_BUF: usize = 256 << 10;

impl Forward {
    pub(crate) fn start(&self, stream: GuestStream, info: ConnInfo) {
        match self {
            Forward::Handler(h) => h(stream, info),
            Forward::Dial(addr) => {
                let addr = *addr;
                tokio::spawn(dial(addr, stream));
            }
        }
    }
}

async fn dial(addr: SocketAddr, mut guest: GuestStream) {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(mut up) => {
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut guest, &mut up, SPLICE_BUF, SPLICE_BUF,
            )
            .await;
        }
        Err(e) => tracing::debug!(%addr, error = %e, "dial forward failed"),
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
