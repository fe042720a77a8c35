//! Debugging aid: run the mux on two sockets, wait for the guest agent, run
//! one command through it and print the result; `--poweroff` then powers the
//! guest off; `--tty` runs the command on a 24x80 pseudo-terminal.
//!
//! `cargo run -p bottle-guest --example mux_exec -- GUEST.sock CONTROL.sock [--poweroff] [--tty] -- CMD...`

use std::time::Duration;

use bottle_guest::host::{run_mux, Client};
use bottle_guest::ExecRequest;
use tokio::net::UnixListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("missing -- CMD")?;
    let (opts, cmd) = (&args[..split], args[split + 1..].to_vec());
    let [guest, control, rest @ ..] = opts else {
        return Err("need GUEST.sock CONTROL.sock".into());
    };
    let poweroff = rest.iter().any(|a| a == "--poweroff");
    let tty = rest.iter().any(|a| a == "--tty").then_some((24, 80));
    // The guest must present this key: write it where the agent reads it
    // (`serve --key-file`, or the VM's initramfs key segment).
    let key = bottle_guest::auth::ChannelKey::generate()?;
    let key_file = format!("{guest}.key");
    std::fs::write(&key_file, key.to_hex())?;
    eprintln!("channel key written to {key_file}");
    tokio::spawn(run_mux(
        UnixListener::bind(guest)?,
        UnixListener::bind(control)?,
        key,
    ));
    let client = Client::connect(control.as_ref()).await?;
    let info = client.wait_ready(Duration::from_secs(120)).await?;
    eprintln!("guest ready: {info:?}");
    let req = ExecRequest {
        argv: cmd,
        tty,
        ..Default::default()
    };
    let out = client.capture(req, b"").await?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("status: {:?}", out.status);
    if poweroff {
        client.poweroff(false).await?;
        eprintln!("poweroff acknowledged");
    }
    Ok(())
}
