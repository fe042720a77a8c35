//! `BOTTLE_TIMING=1`: when each launch step finished, in ms since the
//! process started, on stderr (read by `bench/boot.sh`); `BOTTLE_TIMING=guest`
//! adds the guest agent's own steps, in ms since the guest booted.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Mark the start of the process (the first call wins).
pub fn start() {
    START.get_or_init(Instant::now);
}

/// Whether `BOTTLE_TIMING=1` (or `guest`) asks for timings.
pub fn enabled() -> bool {
    std::env::var_os("BOTTLE_TIMING").is_some_and(|v| v == "1" || v == "guest")
}

/// Whether `BOTTLE_TIMING=guest` asks for the guest agent's timings too
/// (they go over the guest's serial console, which costs guest time under
/// TCG, so plain `1` leaves them out).
pub fn guest_enabled() -> bool {
    std::env::var_os("BOTTLE_TIMING").is_some_and(|v| v == "guest")
}

/// Print `bottle: timing STEP N ms` when `BOTTLE_TIMING=1`.
pub fn step(name: &str) {
    if enabled() {
        let start = START.get_or_init(Instant::now);
        eprintln!("bottle: timing {name} {} ms", start.elapsed().as_millis());
    }
}

/// With `BOTTLE_TIMING=guest`, the guest agent's own steps (it traces them
/// when the kernel command line has `bottle.trace=1`), read from the console log
/// at `console`: `bottle: guest timing STEP N ms`, in ms since the guest
/// booted (another clock than [`step`]'s).
pub fn guest_steps(console: &std::path::Path) {
    if !guest_enabled() {
        return;
    }
    let Ok(text) = std::fs::read_to_string(console) else {
        return;
    };
    for line in text.lines() {
        if let Some(rest) = line
            .trim_end_matches('\r')
            .strip_prefix("bottle-guest: trace ")
        {
            eprintln!("bottle: guest timing {rest}");
        }
    }
}
