//! Upstream connections: the SSRF-checked dial (resolve once, check every
//! address, dial exactly those), TLS verified against system + extra roots,
//! and the pooled HTTP client built on them.

use super::net::{Dialer, IpAllowlist, Resolver};
use super::State;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Why an upstream connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{host}` resolves to {addr}, a {why} address, which is not in allow_ips")]
    Ssrf {
        host: String,
        addr: IpAddr,
        why: &'static str,
    },
    #[error("cannot resolve `{host}`")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect to `{host}` (tried {tried} addresses)")]
    Dial {
        host: String,
        tried: usize,
        #[source]
        source: io::Error,
    },
    #[error("TLS to `{host}` failed")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("request URI has no host")]
    NoHost,
}

/// What the connector needs, shared with the proxy.
#[derive(Debug)]
pub struct Upstream {
    pub resolver: Arc<dyn Resolver>,
    pub dialer: Arc<dyn Dialer>,
    pub tls: Arc<rustls::ClientConfig>,
    pub state: Arc<RwLock<Arc<State>>>,
}

impl Upstream {
    fn allow_ips(&self) -> IpAllowlist {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.ips.clone()
    }

    /// Resolve `host` once, refuse if any address is not allowed, then dial
    /// the checked addresses in order until one answers.
    pub async fn connect_checked(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let ips = self.allow_ips();
        let addrs =
            match host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => self.resolver.resolve(host, port).await.map_err(|source| {
                    ConnectError::Resolve {
                        host: host.into(),
                        source,
                    }
                })?,
            };
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress { host: host.into() });
        }
        for addr in &addrs {
            ips.check(addr.ip()).map_err(|why| ConnectError::Ssrf {
                host: host.into(),
                addr: addr.ip(),
                why,
            })?;
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in &addrs {
            match self.dialer.dial(*addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(ConnectError::Dial {
            host: host.into(),
            tried: addrs.len(),
            source: last,
        })
    }

    async fn connect_uri(&self, uri: Uri) -> Result<Stream, ConnectError> {
        let host = uri.host().ok_or(ConnectError::NoHost)?.to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = self.connect_checked(&host, port).await?;
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = ServerName::try_from(bare).map_err(|e| ConnectError::Tls {
            host: host.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls { host, source })?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// The connector the pooled client dials through.
#[derive(Debug, Clone)]
pub struct Connector(pub Arc<Upstream>);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let up = self.0.clone();
        Box::pin(async move { up.connect_uri(uri).await.map(TokioIo::new) })
    }
}

/// A plain or TLS upstream stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why the upstream TLS roots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(
        "extra root #{index} is not valid PEM; give each extra root as a PEM `CERTIFICATE` block"
    )]
    Pem {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("extra root #{index} is not a usable CA certificate; give a CA certificate in PEM")]
    Certificate {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("extra root #{index} holds no PEM certificate; give each extra root as a PEM `CERTIFICATE` block")]
    Empty { index: usize },
    #[error("the TLS provider has no safe protocol version")]
    Protocols(#[source] rustls::Error),
}

/// The system's root certificates. Reading and parsing them takes a few ms
/// (every file under the system's certificate paths), so they are read once
/// per process and again only when the store changed on disk since (a
/// pooled bundle reads them when its guest boots and builds its bottle's
/// guards at a claim, maybe hours later). A call made while another thread
/// reads them waits for it.
pub fn system_root_store() -> rustls::RootCertStore {
    static ROOTS: StampedCache<Vec<StoreEntry>, rustls::RootCertStore> = StampedCache::new();
    ROOTS.get(store_stamp(), || {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // Individual unparsable system certificates are skipped, as browsers do.
            let _ = roots.add(cert);
        }
        roots
    })
}

/// One path rustls-native-certs reads the store from, with its size and
/// modification time (`None`: gone).
type StoreEntry = (std::path::PathBuf, Option<(u64, std::time::SystemTime)>);

/// The paths rustls-native-certs reads (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else
/// OpenSSL's usual bundle file and directories; the same probe it makes),
/// each with its size and modification time. `update-ca-certificates`
/// rewrites the bundle file and changes the directory's links, so a change
/// of the store changes this.
fn store_stamp() -> Vec<StoreEntry> {
    let probe = openssl_probe::probe();
    stamp_of(probe.cert_file.into_iter().chain(probe.cert_dir))
}

fn stamp_of(paths: impl IntoIterator<Item = std::path::PathBuf>) -> Vec<StoreEntry> {
    paths
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (path, meta)
        })
        .collect()
}

/// A value computed once and again only when its stamp changed.
struct StampedCache<S, T>(std::sync::Mutex<Option<(S, T)>>);

impl<S: PartialEq, T: Clone> StampedCache<S, T> {
    const fn new() -> Self {
        StampedCache(std::sync::Mutex::new(None))
    }

    /// The cached value when it was made under `stamp`, else `make()`'s
    /// (cached under `stamp`). Callers wait for one another, so a value
    /// being made is made once.
    fn get(&self, stamp: S, make: impl FnOnce() -> T) -> T {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, value)) = cached.as_ref() {
            if *s == stamp {
                return value.clone();
            }
        }
        let value = make();
        *cached = Some((stamp, value.clone()));
        value
    }
}

/// rustls client config: system roots (unless disabled) plus extra PEM roots,
/// HTTP/1.1 ALPN.
pub fn client_config(
    system_roots: bool,
    extra_root_pems: &[String],
) -> Result<rustls::ClientConfig, RootsError> {
    let mut roots = if system_roots {
        system_root_store()
    } else {
        rustls::RootCertStore::empty()
    };
    for (i, pem) in extra_root_pems.iter().enumerate() {
        let index = i + 1;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|source| RootsError::Pem { index, source })?;
            roots
                .add(cert)
                .map_err(|source| RootsError::Certificate { index, source })?;
            found += 1;
        }
        if found == 0 {
            return Err(RootsError::Empty { index });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(RootsError::Protocols)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_value_is_made_again_only_when_its_stamp_changes() {
        let cache = StampedCache::new();
        let made = std::cell::Cell::new(0);
        let make = |v: &'static str| {
            made.set(made.get() + 1);
            v
        };
        assert_eq!(cache.get(1, || make("a")), "a");
        assert_eq!(cache.get(1, || make("b")), "a");
        assert_eq!(made.get(), 1);
        assert_eq!(cache.get(2, || make("c")), "c");
        assert_eq!(cache.get(2, || make("d")), "c");
        assert_eq!(made.get(), 2);
    }

    #[test]
    fn the_store_stamp_changes_when_a_bundle_file_is_rewritten_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca-certificates.crt");
        std::fs::write(&bundle, "one root\n").unwrap();
        let first = stamp_of([bundle.clone()]);
        assert_eq!(first, stamp_of([bundle.clone()]));
        std::fs::write(&bundle, "one root\nand another\n").unwrap();
        let second = stamp_of([bundle.clone()]);
        assert_ne!(first, second);
        std::fs::remove_file(&bundle).unwrap();
        assert_eq!(stamp_of([bundle.clone()]), vec![(bundle, None)]);
    }
}
