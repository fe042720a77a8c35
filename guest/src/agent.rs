//! The agent side: what runs inside the VM or container.

pub mod channel;
pub mod cmdline;
pub mod exec;
mod fdio;
pub mod files;
pub mod forward;
pub mod init;
pub mod passwd;
pub mod reaper;
pub mod server;

use std::time::Duration;

/// The line the VM boot probe waits for once the channel is connected.
pub const READY_MARKER: &str = "BOTTLE-GUEST-READY";

/// Dials `target` and serves it, redialing whenever the connection ends.
/// `announce` prints the ready marker after each accepted handshake.
pub async fn run(target: channel::Target, reaper: reaper::Reaper, announce: fn()) {
    loop {
        let conn = channel::dial_retry(&target).await;
        match server::serve(conn, reaper.clone(), announce).await {
            Ok(()) => eprintln!("bottle-guest: host closed the channel; redialing"),
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                eprintln!("bottle-guest: {msg}; redialing");
                // A refusal (version mismatch) will not heal soon: back off.
                let pause = match e {
                    server::ServeError::Refused(_) => Duration::from_secs(5),
                    _ => Duration::from_millis(500),
                };
                tokio::time::sleep(pause).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
