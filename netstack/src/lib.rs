//! The userspace network a bottle's guest sees: one gateway that answers
//! ARP, DHCP, DNS for one name, ICMP echo, and TCP on the forwarded ports.
//! There is no NAT: nothing the guest sends is ever routed anywhere.
//!
//! ```text
//! transport ──frames──► gate ──► smoltcp Interface ──► flows ──► forward handlers
//!  (unix stream/dgram,   │  policy: DHCP, UDP DNS answered here,
//!   TAP)                 │  SYN elsewhere → RST, the rest dropped and counted
//! ```
#![deny(unsafe_code)]

mod config;
mod counters;
mod device;
mod dhcp;
mod dial;
mod dns;
mod engine;
mod flow;
mod forward;
mod gate;
pub mod sys;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use config::{ConfigError, NetConfig, Tuning, DEFAULT_GATEWAY_MAC, MAX_MTU, MIN_MTU};
pub use counters::Counters;
pub use flow::{ConnInfo, GuestStream};
pub use forward::{Forward, HandlerFn};
pub use transport::{
    accept_unix_stream, ChannelTransport, FrameTransport, TapTransport, TransportError,
    UnixDatagramTransport, UnixStreamTransport,
};

use counters::LiveCounters;
use engine::{Engine, Stop};
use gate::DnsService;

/// Starting or running the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum NetstackError {
    #[error("invalid network configuration")]
    Config(#[from] ConfigError),
    #[error("netstack must be started inside a tokio runtime")]
    NoRuntime,
    #[error("transport failed")]
    Transport(#[from] TransportError),
    #[error("netstack task panicked or was cancelled")]
    Task,
}

/// A running stack.
#[derive(Debug)]
pub struct NetstackHandle {
    counters: Arc<LiveCounters>,
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<Result<(), TransportError>>,
}

impl NetstackHandle {
    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// A handle that reads the counters after the stack is gone (for the
    /// audit log's refusal summary).
    pub fn counters_reader(&self) -> CountersReader {
        CountersReader(Arc::clone(&self.counters))
    }

    /// Stops the stack: open connections are reset, the transport is dropped.
    pub async fn shutdown(self) {
        self.stop.stop();
        log_end(self.wait_result().await);
    }

    /// Waits until the stack ends (transport closed or shutdown).
    pub async fn wait(self) {
        log_end(self.wait_result().await);
    }

    /// Like [`wait`](Self::wait), with the reason the stack ended.
    pub async fn wait_result(self) -> Result<(), NetstackError> {
        match self.task.await {
            Ok(r) => r.map_err(NetstackError::Transport),
            Err(_) => Err(NetstackError::Task),
        }
    }

    /// Whether the stack has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the stack to stop without waiting.
    pub fn request_shutdown(&self) {
        self.stop.stop();
    }
}

/// Reads a stack's counters; cheap to clone.
#[derive(Debug, Clone)]
pub struct CountersReader(Arc<LiveCounters>);

impl CountersReader {
    pub fn snapshot(&self) -> Counters {
        self.0.snapshot()
    }
}

fn log_end(r: Result<(), NetstackError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "netstack ended with an error");
    }
}

/// Starts the stack on `transport` with the default [`Tuning`]. Runs until
/// shutdown or transport EOF. Port 53 serves DNS over TCP unless `forwards`
/// maps it to something else.
pub fn spawn(
    config: NetConfig,
    transport: impl FrameTransport,
    forwards: BTreeMap<u16, Forward>,
) -> Result<NetstackHandle, NetstackError> {
    spawn_tuned(config, Tuning::default(), transport, forwards)
}

/// [`spawn`] with explicit buffer sizes and limits.
pub fn spawn_tuned(
    config: NetConfig,
    tuning: Tuning,
    transport: impl FrameTransport,
    mut forwards: BTreeMap<u16, Forward>,
) -> Result<NetstackHandle, NetstackError> {
    config.validate()?;
    let rt = tokio::runtime::Handle::try_current().map_err(|_| NetstackError::NoRuntime)?;
    let counters = Arc::new(LiveCounters::default());
    let dns = Arc::new(DnsService::new(
        &config,
        tuning.dns_per_second,
        Arc::clone(&counters),
    ));
    forwards
        .entry(53)
        .or_insert_with(|| forward::dns_tcp(Arc::clone(&dns)));
    let stop = Arc::new(Stop::default());
    let mut engine = Engine::new(
        config,
        tuning,
        transport,
        forwards,
        dns,
        Arc::clone(&counters),
        Arc::clone(&stop),
    );
    let task = rt.spawn(async move { std::future::poll_fn(|cx| engine.poll_turn(cx)).await });
    Ok(NetstackHandle {
        counters,
        stop,
        task,
    })
}
