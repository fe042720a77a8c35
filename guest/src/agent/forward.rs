//! TCP to unix-socket forwarders (Docker backend: `127.0.0.1:PORT` inside the
//! container to a guard's socket in the bind-mounted directory). When the
//! socket refuses, the TCP connection is closed: there is no fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixStream};

/// Errors parsing or starting a forward.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("bad forward {0:?}: expected ADDR:PORT=unix:PATH")]
    Parse(String),
    #[error("listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// One forward: listen here, connect there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub to: PathBuf,
}

impl Forward {
    /// Parses the two halves `ADDR:PORT` and `unix:PATH`.
    pub fn parse(listen: &str, to: &str) -> Result<Forward, ForwardError> {
        let err = || ForwardError::Parse(format!("{listen}={to}"));
        let listen = listen.parse().map_err(|_| err())?;
        let to = to
            .strip_prefix("unix:")
            .filter(|p| !p.is_empty())
            .ok_or_else(err)?;
        Ok(Forward {
            listen,
            to: PathBuf::from(to),
        })
    }
}

/// Binds the listener (so errors surface before serving), then serves forever.
pub async fn start(fwd: Forward) -> Result<tokio::task::JoinHandle<()>, ForwardError> {
    let listener = TcpListener::bind(fwd.listen)
        .await
        .map_err(|e| ForwardError::Bind(fwd.listen, e))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let to = fwd.to.clone();
            tokio::spawn(async move {
                // A refused or missing socket drops `tcp`: the client sees the close.
                if let Ok(mut unix) = UnixStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn forwards_parse_and_reject_non_unix_targets() {
        let f = Forward::parse("127.0.0.1:8888", "unix:/run/bottle/proxy.sock").unwrap();
        assert_eq!(f.listen.port(), 8888);
        assert!(Forward::parse("127.0.0.1:8888", "tcp:1.2.3.4:80").is_err());
        assert!(Forward::parse("localhost", "unix:/x").is_err());
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_a_dead_socket_closes_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let unix = tokio::net::UnixListener::bind(&sock).unwrap();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        start(Forward {
            listen: addr,
            to: sock.clone(),
        })
        .await
        .unwrap();
        tokio::spawn(async move {
            let (mut s, _) = unix.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        std::fs::remove_file(&sock).unwrap();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.unwrap_or(0), 0);
    }
}
