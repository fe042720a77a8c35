//! Attaches the netstack to a TAP device inside a network namespace, for
//! tests and benchmarks.
//!
//! ```text
//! netstack-tap --netns NAME|PATH [--tap tap0] [--mtu 1500] [--no-offload]
//!              [--forward PORT=dial:HOST:PORT]... [--echo PORT]... [--counters]
//! ```
//! Runs until SIGINT/SIGTERM or until the TAP goes away; `--counters` prints
//! the counters as JSON on exit. The TAP carries a virtio-net header with
//! checksum offload on (the namespace's kernel leaves TCP/UDP checksums to
//! the stack, which does not check them); `--no-offload` makes it a plain
//! TAP with full checksums, checked.

#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use bottle_netstack::sys::TapMode;
use bottle_netstack::{Forward, NetConfig, TapTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct Args {
    netns: PathBuf,
    tap: String,
    mtu: usize,
    forwards: BTreeMap<u16, Forward>,
    counters: bool,
    mode: TapMode,
}

fn usage() -> &'static str {
    "usage: netstack-tap --netns NAME|PATH [--tap tap0] [--mtu N] [--no-offload] [--forward PORT=dial:HOST:PORT]... [--echo PORT]... [--counters]"
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        netns: PathBuf::new(),
        tap: "tap0".into(),
        mtu: 1500,
        forwards: BTreeMap::new(),
        counters: false,
        mode: TapMode::ChecksumOffload,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--netns" => {
                let v = value()?;
                args.netns = if v.contains('/') {
                    v.into()
                } else {
                    PathBuf::from("/run/netns").join(v)
                };
            }
            "--tap" => args.tap = value()?,
            "--mtu" => args.mtu = value()?.parse().context("--mtu takes a number")?,
            "--forward" => {
                let v = value()?;
                let (port, target) = v
                    .split_once('=')
                    .context("--forward takes PORT=dial:HOST:PORT")?;
                let addr = target
                    .strip_prefix("dial:")
                    .context("--forward target must start with dial:")?;
                let addr: SocketAddr = addr
                    .parse()
                    .context("--forward dial address must be IP:PORT")?;
                args.forwards
                    .insert(port.parse().context("--forward port")?, dial(addr));
            }
            "--echo" => {
                let port = value()?.parse().context("--echo takes a port")?;
                args.forwards.insert(port, echo());
            }
            "--counters" => args.counters = true,
            "--no-offload" => args.mode = TapMode::Plain,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if args.netns.as_os_str().is_empty() {
        bail!("--netns is required\n{}", usage());
    }
    Ok(args)
}

/// Dial `addr` on the host for each connection; the engine moves the bytes
/// itself (this tool's benchmarks and tests only: bottle's forwards all lead
/// to in-process guards).
fn dial(addr: SocketAddr) -> Forward {
    Forward::Dial(addr)
}

/// Built-in echo handler: writes back whatever the guest sends.
fn echo() -> Forward {
    Forward::Handler(Arc::new(|mut stream, _info| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
    }))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let transport = TapTransport::open_in_netns_as(&args.netns, &args.tap, args.mode)
        .with_context(|| format!("attaching to TAP {} in {}", args.tap, args.netns.display()))?;
    let config = NetConfig {
        mtu: args.mtu,
        ..NetConfig::default()
    };
    let handle = bottle_netstack::spawn(config, transport, args.forwards)
        .context("starting the netstack")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stopped_by_signal = tokio::select! {
        _ = tokio::signal::ctrl_c() => true,
        _ = term.recv() => true,
        _ = wait_finished(&handle) => false,
    };
    let counters = handle.counters();
    if stopped_by_signal {
        handle.shutdown().await;
    } else {
        handle.wait_result().await.context("netstack stopped")?;
    }
    if args.counters {
        println!("{}", serde_json::to_string(&counters)?);
    }
    Ok(())
}

async fn wait_finished(handle: &bottle_netstack::NetstackHandle) {
    while !handle.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("netstack-tap: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netstack-tap: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netstack-tap: {e:#}");
            ExitCode::FAILURE
        }
    }
}
