//! Serving supervise on one connection: streamable HTTP at `/mcp`
//! (stateless, JSON responses), behind the checks the MCP specification asks
//! of HTTP servers: the `Host` must be `proxy.internal` (port 9100 or none)
//! or a loopback name, and an `Origin`, when present, the same host. A
//! request failing either gets 403, one elsewhere than `/mcp` 404.

use super::server::Tools;
use super::Supervisor;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest request body accepted (a JSON-RPC message with its arguments).
pub const MAX_BODY: usize = 64 << 10;

/// Host names that are never another site: the guest's name for the
/// bundle and loopback.
const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// Split `host[:port]` (port absent, or digits).
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim().to_ascii_lowercase();
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (name, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(p) => (name.to_string(), Some(p.parse().ok()?)),
            None if rest.is_empty() => (name.to_string(), None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((n, p)) => (n.to_string(), Some(p.parse().ok()?)),
            None => (authority.clone(), None),
        }
    };
    (!name.is_empty()).then_some((name, port))
}

/// Whether a `Host` header names supervise: `proxy.internal` or
/// `proxy.internal:9100`, or a loopback name on any port.
pub fn host_allowed(host: &str) -> bool {
    match split_authority(host) {
        Some((name, port)) if name == "proxy.internal" => port.is_none_or(|p| p == super::PORT),
        Some((name, _)) => LOOPBACK.contains(&name.as_str()),
        None => false,
    }
}

/// Whether an `Origin` is allowed with this `Host`: none, or `http://` and
/// the same authority (a web page elsewhere is never let in).
pub fn origin_allowed(origin: Option<&str>, host: &str) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(authority) = origin.trim().strip_prefix("http://") else {
        return false;
    };
    match (split_authority(authority), split_authority(host)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The `Host`/`Origin` decision for one request; `Err` is the 403 text.
pub fn check_headers(headers: &http::HeaderMap) -> Result<(), &'static str> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or("a Host header is required")?;
    if !host_allowed(host) {
        return Err("supervise answers only to Host proxy.internal:9100");
    }
    let origin = match headers.get(http::header::ORIGIN) {
        None => None,
        Some(o) => Some(o.to_str().map_err(|_| "the Origin header is not text")?),
    };
    if !origin_allowed(origin, host) {
        return Err("cross-origin requests are refused");
    }
    Ok(())
}

fn text(status: StatusCode, body: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *r.status_mut() = status;
    r
}

/// The rmcp service for one peer (stateless: every POST stands alone).
fn mcp_service(
    supervisor: Arc<Supervisor>,
    peer: String,
) -> StreamableHttpService<Tools, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(MAX_BODY)
        .with_allowed_hosts(["proxy.internal", "localhost", "127.0.0.1", "::1"]);
    StreamableHttpService::new(
        move || Ok(Tools::new(supervisor.clone(), peer.clone())),
        Default::default(),
        config,
    )
}

/// Serve HTTP/1.1 on one connection from the guest (`peer` names it in
/// the audit log) until it closes.
pub async fn serve<S>(stream: S, supervisor: Arc<Supervisor>, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = mcp_service(supervisor, peer);
    let handler = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        async move {
            if let Err(why) = check_headers(req.headers()) {
                return Ok::<_, Infallible>(text(StatusCode::FORBIDDEN, why));
            }
            if req.uri().path() != "/mcp" {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    "supervise serves MCP at /mcp only",
                ));
            }
            tower_service::Service::call(&mut service, req).await
        }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(std::time::Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(io, handler);
    if let Err(e) = conn.await {
        tracing::debug!("supervise: connection ended: {e}");
    }
}

/// Serve every connection of a TCP listener (tests, benchmarks).
pub async fn serve_tcp(listener: tokio::net::TcpListener, supervisor: Arc<Supervisor>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                tokio::spawn(serve(stream, supervisor.clone(), addr.to_string()));
            }
            Err(e) => {
                tracing::warn!("supervise: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proxy_internal_and_loopback_hosts_are_served() {
        for ok in [
            "proxy.internal",
            "proxy.internal:9100",
            "PROXY.INTERNAL:9100",
            "localhost:1234",
            "127.0.0.1:9100",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "proxy.internal:80",
            "proxy.internal:x",
            "evil.test",
            "evil.test:9100",
            "proxy.internal.evil.test",
            "127.0.0.2",
            "[::1]x",
            "localhost:99999",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn only_same_host_origins_are_served() {
        assert!(origin_allowed(None, "proxy.internal:9100"));
        assert!(origin_allowed(
            Some("http://proxy.internal:9100"),
            "proxy.internal:9100"
        ));
        for bad in [
            "http://evil.test",
            "https://proxy.internal:9100",
            "null",
            "http://proxy.internal:9101",
            "http://localhost:9100",
        ] {
            assert!(!origin_allowed(Some(bad), "proxy.internal:9100"), "{bad}");
        }
    }

    #[test]
    fn header_checks_refuse_missing_host_and_foreign_origin() {
        let mut h = http::HeaderMap::new();
        assert!(check_headers(&h).is_err());
        h.insert(http::header::HOST, "proxy.internal:9100".parse().unwrap());
        assert!(check_headers(&h).is_ok());
        h.insert(http::header::ORIGIN, "http://evil.test".parse().unwrap());
        assert!(check_headers(&h).is_err());
    }
}
