//! A stand-in for the Anthropic Messages API on loopback, for end-to-end
//! tests with the real Claude Code CLI: `POST /v1/messages` answered with
//! server-sent events exactly as the API documents them (`message_start`,
//! `content_block_start`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`), or with one JSON message when the
//! request does not ask to stream.
//!
//! The script of a conversation: a request that offers tools and carries no
//! tool result is answered with one `tool_use` of `Bash` running
//! [`FakeAnthropic::command`]; a request carrying a tool result is answered
//! with text in two parts: [`FIRST_PART`], then — only once the test calls
//! [`FakeAnthropic::release`] (it saw the first part arrive), or after a
//! minute — [`SECOND_PART`] and the end. Requests without tools (titles,
//! quota checks) get a short text. Every request is recorded.
#![allow(clippy::expect_used)]

use crate::tls::{SeenRequest, TestCa};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The first text the final turn streams.
pub const FIRST_PART: &str = "BOTTLE-FIRST-PART";
/// The text sent only after the test saw [`FIRST_PART`].
pub const SECOND_PART: &str = "BOTTLE-SECOND-PART";
/// How long the final turn waits for [`FakeAnthropic::release`].
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

struct Shared {
    seen: Mutex<Vec<SeenRequest>>,
    release: tokio::sync::Notify,
    released: Mutex<Option<bool>>,
    command: String,
}

/// The fake API server, stopped on drop.
#[allow(missing_debug_implementations)]
pub struct FakeAnthropic {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAnthropic {
    /// Serve HTTPS for `api.anthropic.com` (a leaf signed by `ca`) on
    /// `127.0.0.1:0`; the tool call runs `command`.
    pub fn start(ca: &TestCa, command: &str) -> Self {
        let config = ca.http1_server_config(&["api.anthropic.com"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            release: tokio::sync::Notify::new(),
            released: Mutex::new(None),
            command: command.to_string(),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let (acceptor, s) = (acceptor.clone(), s.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |req| serve(req, s.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Let the final turn send its second part.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// Whether the final turn's second part was released by the test
    /// (`Some(true)`), by the timeout (`Some(false)`), or not sent yet.
    pub fn released_by_test(&self) -> Option<bool> {
        self.shared.released.lock().ok().and_then(|r| *r)
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

async fn serve(req: Request<Incoming>, s: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Ok(mut seen) = s.seen.lock() {
        seen.push(SeenRequest {
            method: parts.method.to_string(),
            target: target.clone(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        });
    }
    if parts.method != http::Method::POST || !target.starts_with("/v1/messages") {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            serde_json::json!({"type":"error","error":{"type":"not_found_error","message":"not served by the test upstream"}}),
        ));
    }
    if target.starts_with("/v1/messages/count_tokens") {
        return Ok(json_response(
            StatusCode::OK,
            serde_json::json!({"input_tokens": 10}),
        ));
    }
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-test")
        .to_string();
    let has_tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    let has_result = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    let turn = if has_result {
        Turn::Final
    } else if has_tools {
        Turn::ToolUse(s.command.clone())
    } else {
        Turn::Short
    };
    if !stream {
        return Ok(json_response(StatusCode::OK, turn.message(&model)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move { turn.stream(&model, &s, tx).await });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(frames).boxed())
        .expect("response"))
}

enum Turn {
    ToolUse(String),
    Final,
    Short,
}

fn sse(event: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn start(model: &str) -> Bytes {
    sse(
        "message_start",
        serde_json::json!({"type":"message_start","message":{"id":"msg_bottle_test","type":"message","role":"assistant","content":[],"model":model,"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}),
    )
}

fn text_block(index: u32) -> Bytes {
    sse(
        "content_block_start",
        serde_json::json!({"type":"content_block_start","index":index,"content_block":{"type":"text","text":""}}),
    )
}

fn text_delta(index: u32, text: &str) -> Bytes {
    sse(
        "content_block_delta",
        serde_json::json!({"type":"content_block_delta","index":index,"delta":{"type":"text_delta","text":text}}),
    )
}

fn end(index: u32, stop_reason: &str) -> Vec<Bytes> {
    vec![
        sse(
            "content_block_stop",
            serde_json::json!({"type":"content_block_stop","index":index}),
        ),
        sse(
            "message_delta",
            serde_json::json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":null},"usage":{"output_tokens":20}}),
        ),
        sse("message_stop", serde_json::json!({"type":"message_stop"})),
    ]
}

impl Turn {
    /// Send the turn's events; the final turn holds its second part until
    /// the test releases it (or a minute passed).
    async fn stream(self, model: &str, s: &Shared, tx: tokio::sync::mpsc::Sender<Bytes>) {
        let events = match self {
            Turn::ToolUse(command) => {
                let input = serde_json::json!({"command": command, "description": "Show the working tree status"}).to_string();
                let mut v = vec![
                    start(model),
                    sse(
                        "content_block_start",
                        serde_json::json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_bottle_1","name":"Bash","input":{}}}),
                    ),
                    sse(
                        "content_block_delta",
                        serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":input}}),
                    ),
                ];
                v.extend(end(0, "tool_use"));
                v
            }
            Turn::Short => {
                let mut v = vec![start(model), text_block(0), text_delta(0, "ok")];
                v.extend(end(0, "end_turn"));
                v
            }
            Turn::Final => {
                for first in [start(model), text_block(0), text_delta(0, FIRST_PART)] {
                    if tx.send(first).await.is_err() {
                        return;
                    }
                }
                let by_test = tokio::time::timeout(RELEASE_TIMEOUT, s.release.notified())
                    .await
                    .is_ok();
                if let Ok(mut r) = s.released.lock() {
                    *r = Some(by_test);
                }
                let mut v = vec![text_delta(0, &format!(" {SECOND_PART}"))];
                v.extend(end(0, "end_turn"));
                v
            }
        };
        for event in events {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }

    fn message(&self, model: &str) -> serde_json::Value {
        let content = match self {
            Turn::ToolUse(command) => {
                serde_json::json!([{"type":"tool_use","id":"toolu_bottle_1","name":"Bash","input":{"command": command}}])
            }
            Turn::Final => {
                serde_json::json!([{"type":"text","text": format!("{FIRST_PART} {SECOND_PART}")}])
            }
            Turn::Short => serde_json::json!([{"type":"text","text":"ok"}]),
        };
        let stop = if matches!(self, Turn::ToolUse(_)) {
            "tool_use"
        } else {
            "end_turn"
        };
        serde_json::json!({"id":"msg_bottle_test","type":"message","role":"assistant","content":content,"model":model,"stop_reason":stop,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":20}})
    }
}
