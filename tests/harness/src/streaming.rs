//! A local HTTPS upstream whose responses stream: each request is answered
//! `200` at once with a body fed chunk by chunk by the test (server-sent
//! events, a large download), with no length. HTTP/1.1 on `127.0.0.1:0`, leaf for the given
//! names signed by a [`TestCa`](crate::tls::TestCa).
//!
//! Setup failures panic with a message, as a failing test would.
#![allow(clippy::expect_used)]

use crate::tls::TestCa;
use bytes::Bytes;
use http::{HeaderMap, Response};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
pub use tokio::sync::mpsc::Sender;

/// The body's chunks are handed over through a channel this deep: a
/// client that does not read stops the feeder soon.
const DEPTH: usize = 4;

/// An upstream streaming responses; stops when dropped.
pub struct StreamingUpstream {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for StreamingUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StreamingUpstream {
    /// Serve on a thread of its own. Each request is answered `200`,
    /// `text/event-stream`, at once; `feed(request headers, sender)` runs as
    /// a task and sends the body's chunks (it ends when the sender drops).
    pub fn https<F, Fut>(ca: &TestCa, names: &[&str], feed: F) -> Self
    where
        F: Fn(HeaderMap, mpsc::Sender<Bytes>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        Self::https_with_headers(ca, names, headers, feed)
    }

    /// Like [`https`](Self::https), with `headers` as the response headers.
    pub fn https_with_headers<F, Fut>(
        ca: &TestCa,
        names: &[&str],
        headers: HeaderMap,
        feed: F,
    ) -> Self
    where
        F: Fn(HeaderMap, mpsc::Sender<Bytes>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = ca.http1_server_config(names);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let feed = feed.clone();
                    let headers = headers.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            service_fn(move |req: http::Request<hyper::body::Incoming>| {
                                let reply = respond(req, &feed, headers.clone());
                                async move { Ok::<_, Infallible>(reply) }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Block the calling thread forever (benchmark servers).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response body fed through a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

fn respond<F, Fut>(
    req: http::Request<hyper::body::Incoming>,
    feed: &F,
    headers: HeaderMap,
) -> Response<ChannelBody>
where
    F: Fn(HeaderMap, mpsc::Sender<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(DEPTH);
    tokio::spawn(feed(req.headers().clone(), tx));
    let mut resp = Response::new(ChannelBody(rx));
    *resp.headers_mut() = headers;
    resp
}

impl Drop for StreamingUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
