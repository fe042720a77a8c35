//! Client connections: the outer HTTP/1.1 proxy connection, CONNECT tunnels,
//! TLS interception with the bottle CA, and passthrough splicing.

use super::clienthello::{self, Peek};
use super::counted::Counted;
use super::decide::{self, Refusal};
use super::handler::{refusal_response, Body, Scheme};
use super::target::{parse_authority, parse_host, Target};
use super::Proxy;
use crate::audit::{Completion, Kind, Outcome};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a client may take to send its ClientHello after CONNECT.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client may take to send a request head (slow-loris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/1.1 read and write buffer per connection (bounds a request head).
const H1_BUF: usize = 64 * 1024;
/// HTTP/2 per connection: streams at once, flow-control windows (how much a
/// client may send that the proxy has not read yet) and the send buffer of
/// each stream (how much of a response waits for a client that does not read).
const H2_STREAMS: u32 = 64;
const H2_CONN_WINDOW: u32 = 512 * 1024;
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_SEND_BUF: usize = 64 * 1024;
/// A refused connection: how long the answer may take, and how much of what
/// the client sent is read and dropped so it sees the answer, not a reset.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);
const REFUSE_DRAIN: usize = 64 * 1024;

/// Held while a client connection (and any tunnel opened on it) lives.
type Slot = Arc<tokio::sync::OwnedSemaphorePermit>;

impl Proxy {
    /// Serve one client connection (HTTP/1.1 proxy protocol) until it closes.
    pub async fn serve<S>(self: &Arc<Self>, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(slot) = self.connections.clone().try_acquire_owned() else {
            return self.refuse_connection(stream, &peer).await;
        };
        let slot: Slot = Arc::new(slot);
        let proxy = self.clone();
        let peer = Arc::new(peer);
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let peer = peer.clone();
            let slot = slot.clone();
            async move { Ok::<_, Infallible>(proxy.outer(req, peer, slot).await) }
        });
        let result = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(H1_BUF)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
        if let Err(e) = result {
            if !e.is_incomplete_message() {
                self.log
                    .warn(format_args!("client connection ended with an error: {e}"));
            }
        }
    }

    /// Over `max_connections`: answer 503 on the raw stream and close it.
    async fn refuse_connection<S>(&self, mut stream: S, peer: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let refusal = Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            rule: "too-many-connections".into(),
            message: format!(
                "this bottle already has {} connections open to the proxy, its cap; close idle \
                 connections (or tunnels) or retry shortly",
                self.max_connections
            ),
        };
        self.record_refusal(peer, "", "", "", &refusal.rule);
        self.log.warn(format_args!("{}", refusal.message));
        let body = refusal.body();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             x-bottle-rule: {}\r\nretry-after: 1\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            refusal.rule,
            body.len()
        );
        let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut read = 0;
            while read < REFUSE_DRAIN {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => read += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    }

    async fn outer(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<String>,
        slot: Slot,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return self.connect(req, peer, slot);
        }
        let uri = req.uri();
        let method = req.method().as_str().to_string();
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let refuse = |proxy: &Self, refusal: Refusal, host: &str| {
            proxy.record_refusal(&peer, &method, host, pq, &refusal.rule);
            refusal_response(&refusal)
        };
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) => match parse_authority(authority.as_str(), Some(80)) {
                Ok(target) => self.handle(req, Arc::new(target), Scheme::Http, peer).await,
                Err(e) => refuse(&self, Refusal::bad_request("bad-target", format!("target: {e}")), authority.as_str()),
            },
            (Some(_), Some(authority)) => refuse(
                &self,
                Refusal::bad_request(
                    "not-a-proxy-request",
                    "only http:// URLs are forwarded in absolute form; for https:// send CONNECT \
                     (set HTTPS_PROXY, not a plain-HTTP rewrite)",
                ),
                authority.as_str(),
            ),
            _ => refuse(
                &self,
                Refusal::bad_request(
                    "not-a-proxy-request",
                    "this is an HTTP proxy: send absolute-form requests (http://host/path) or CONNECT host:port",
                ),
                "",
            ),
        }
    }

    fn connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<String>,
        slot: Slot,
    ) -> Response<Body> {
        let raw = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let target = match parse_authority(&raw, None) {
            Ok(t) => t,
            Err(e) => {
                let refusal =
                    Refusal::bad_request("bad-target", format!("CONNECT target `{raw}`: {e}"));
                self.record_refusal(&peer, "CONNECT", &raw, "", &refusal.rule);
                return refusal_response(&refusal);
            }
        };
        let state = self.current();
        if let Err(refusal) = decide::check_target(&state.policy, &state.ips, &target) {
            self.record_refusal(&peer, "CONNECT", &target.authority(), "", &refusal.rule);
            return refusal_response(&refusal);
        }
        let passthrough = decide::is_passthrough(&state.policy, &target);
        drop(state);
        let proxy = self.clone();
        tokio::spawn(async move {
            // The tunnel outlives the HTTP/1.1 connection it came from.
            let _slot = slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    if passthrough {
                        proxy.passthrough(io, target, peer).await;
                    } else {
                        proxy.intercept(io, Arc::new(target), peer).await;
                    }
                }
                Err(e) => proxy.log.warn(format_args!("CONNECT upgrade failed: {e}")),
            }
        });
        let mut resp = Response::new(super::handler::empty());
        *resp.status_mut() = StatusCode::OK;
        resp
    }

    /// Refuse (audit line + rate-limited log) when the SNI the client sent
    /// does not fit the CONNECT target; true when refused.
    fn refuse_sni_mismatch(&self, peer: &str, target: &Target, sni: Option<&str>) -> bool {
        match Self::sni_refusal(target, sni) {
            Some(refusal) => {
                self.record_refusal(peer, "CONNECT", &target.authority(), "", &refusal.rule);
                self.log.warn(format_args!("{}", refusal.message));
                true
            }
            None => false,
        }
    }

    /// Whether the SNI the client sent fits the CONNECT target.
    fn sni_refusal(target: &Target, sni: Option<&str>) -> Option<Refusal> {
        let ok = match (sni, target.ip) {
            (None, Some(_)) => true,
            (None, None) => false,
            (Some(name), _) => parse_host(name, target.port).is_ok_and(|t| t.host == target.host),
        };
        (!ok).then(|| {
            Refusal::forbidden(
                "sni-mismatch",
                format!(
                    "TLS server name {:?} does not match the CONNECT host `{}`",
                    sni, target.host
                ),
            )
        })
    }

    async fn intercept<S>(self: Arc<Self>, io: S, target: Arc<Target>, peer: Arc<String>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(HELLO_TIMEOUT, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                return self
                    .log
                    .warn(format_args!("tunnel to {target}: bad ClientHello: {e}"))
            }
            Err(_) => {
                return self
                    .log
                    .warn(format_args!("tunnel to {target}: no ClientHello in time"))
            }
        };
        let hello = start.client_hello();
        if self.refuse_sni_mismatch(&peer, &target, hello.server_name()) {
            return;
        }
        let offers_h2 = self.http2
            && hello
                .alpn()
                .is_some_and(|mut alpn| alpn.any(|p| p == b"h2"));
        let leaf = match self.ca.leaf(&target.host) {
            Ok(leaf) => leaf,
            Err(e) => return tracing::error!(error = %e, "cannot mint a leaf certificate"),
        };
        let mut config = match rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        {
            Ok(b) => b
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(FixedCert(leaf))),
            Err(e) => return tracing::error!(error = %e, "TLS server config"),
        };
        config.alpn_protocols = if offers_h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let tls = match start.into_stream(Arc::new(config)).await {
            Ok(tls) => tls,
            Err(e) => {
                return self.log.warn(format_args!(
                    "tunnel to {target}: TLS handshake failed: {e}"
                ))
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let proxy = self.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let target = target.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(proxy.inner(req, target, peer).await) }
        });
        let io = TokioIo::new(tls);
        let result = if h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(H2_STREAMS)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .max_send_buf_size(H2_SEND_BUF)
                .serve_connection(io, service)
                .await
        } else {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(H1_BUF)
                .keep_alive(true)
                .serve_connection(io, service)
                .await
        };
        if let Err(e) = result {
            if !e.is_incomplete_message() {
                self.log.warn(format_args!(
                    "intercepted connection ended with an error: {e}"
                ));
            }
        }
    }

    /// A request inside an intercepted tunnel: Host/:authority must be the tunnel host.
    async fn inner(
        self: Arc<Self>,
        req: Request<Incoming>,
        target: Arc<Target>,
        peer: Arc<String>,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            let refusal = Refusal::forbidden(
                "nested-connect",
                format!(
                    "CONNECT inside the tunnel to `{}` is not allowed",
                    target.authority()
                ),
            );
            self.record_refusal(&peer, "CONNECT", &target.host, "", &refusal.rule);
            return refusal_response(&refusal);
        }
        let named = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let matches = named.as_deref().is_some_and(|raw| {
            let port_given = !raw.ends_with(']') && raw.contains(':');
            parse_authority(raw, Some(target.port))
                .is_ok_and(|t| t.host == target.host && (!port_given || t.port == target.port))
        });
        if !matches {
            let refusal = Refusal::forbidden(
                "host-mismatch",
                format!(
                    "the request names host {:?} inside a tunnel to `{}`; open a tunnel to that host instead",
                    named.unwrap_or_default(),
                    target.authority()
                ),
            );
            self.record_refusal(
                &peer,
                req.method().as_str(),
                &target.host,
                req.uri().path_and_query().map_or("/", |p| p.as_str()),
                &refusal.rule,
            );
            return refusal_response(&refusal);
        }
        self.handle(req, target, Scheme::Https, peer).await
    }

    async fn passthrough<S>(self: Arc<Self>, mut io: S, target: Target, peer: Arc<String>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = Vec::with_capacity(2048);
        let sni = loop {
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(HELLO_TIMEOUT, io.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => return,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return self.log.warn(format_args!("passthrough to {target}: {e}")),
            };
            buf.extend_from_slice(&chunk[..n]);
            match clienthello::peek(&buf) {
                Ok(Peek::Incomplete) => continue,
                Ok(Peek::Hello { sni }) => break sni,
                Err(e) => {
                    let rule = match e {
                        clienthello::HelloError::Encrypted(_) => "encrypted-client-hello",
                        _ => "not-tls",
                    };
                    let line = self.line(
                        &self.current(),
                        Kind::Tunnel,
                        &peer,
                        "CONNECT",
                        &target.authority(),
                        "",
                    );
                    self.record_deny(line, rule, 0);
                    return self.log.warn(format_args!("passthrough to {target}: {e}"));
                }
            }
        };
        if self.refuse_sni_mismatch(&peer, &target, sni.as_deref()) {
            return;
        }
        // The decision is on record before the dial; if it cannot be, the
        // tunnel is closed and nothing is dialled.
        let mut line = self.line(
            &self.current(),
            Kind::Tunnel,
            &peer,
            "CONNECT",
            &target.authority(),
            "",
        );
        line.decision = "allow".into();
        line.rule = "passthrough".into();
        let exchange = match self.audit.decide(line) {
            Ok(exchange) => exchange,
            Err(e) => {
                return self.log.warn(format_args!(
                    "passthrough to {target} refused: cannot write the audit log: {e}"
                ))
            }
        };
        let upstream = match self
            .upstream
            .connect_checked(&target.host, target.port)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let (rule, outcome) = if matches!(e, super::ConnectError::Ssrf { .. }) {
                    ("ssrf", Outcome::Refused)
                } else {
                    ("upstream-error", Outcome::UpstreamFailed)
                };
                let mut done = Completion::new(outcome);
                done.rule = Some(rule.into());
                let _ = exchange.complete(done);
                return self.log.warn(format_args!("passthrough to {target}: {e}"));
            }
        };
        let mut client = Counted::new(io);
        let mut upstream = Counted::new(upstream);
        let spliced = async {
            upstream.write_all(&buf).await?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
        }
        .await;
        // Many TLS clients end a connection with a reset rather than a
        // close: only a failure on the upstream side is one.
        let outcome = match spliced {
            Err(_) if upstream.failed => Outcome::UpstreamFailed,
            _ => Outcome::Ok,
        };
        let _ = exchange.complete(Completion {
            outcome,
            status: None,
            bytes_up: buf.len() as u64 + client.read,
            bytes_down: upstream.read,
            rule: None,
        });
    }
}

/// Serves the one leaf minted for the tunnel's host.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_must_name_the_connect_host_and_may_be_absent_only_for_ip_literals() {
        let name = parse_authority("api.example:443", None).unwrap();
        assert!(Proxy::sni_refusal(&name, Some("API.example.")).is_none());
        assert!(Proxy::sni_refusal(&name, Some("other.example")).is_some());
        assert!(Proxy::sni_refusal(&name, None).is_some());
        let ip = parse_authority("10.0.0.1:443", None).unwrap();
        assert!(Proxy::sni_refusal(&ip, None).is_none());
        assert!(Proxy::sni_refusal(&ip, Some("x.example")).is_some());
    }
}
