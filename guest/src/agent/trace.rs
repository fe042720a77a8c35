//! `bottle.trace=1` on the kernel command line (the bundle adds it when
//! `BOTTLE_TIMING=guest`): the agent prints when each step of its start and of
//! its first requests finished, in ms since the guest booted, on its stderr
//! (the console for init), as `bottle-guest: trace STEP N ms`.

use std::sync::OnceLock;

/// The command line word that turns tracing on.
pub const WORD: &str = "bottle.trace=1";

static ON: OnceLock<bool> = OnceLock::new();

/// Decided at the first step that can read `/proc/cmdline` (init's first
/// steps run before /proc is mounted).
fn on() -> bool {
    if let Some(on) = ON.get() {
        return *on;
    }
    match std::fs::read_to_string("/proc/cmdline") {
        Ok(c) => *ON.get_or_init(|| c.split_whitespace().any(|w| w == WORD)),
        Err(_) => false,
    }
}

/// Prints `step` with the time since boot, when tracing is on.
pub fn step(step: &str) {
    if !on() {
        return;
    }
    if let Ok(ts) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        let ms = ts.tv_sec() * 1000 + ts.tv_nsec() / 1_000_000;
        eprintln!("bottle-guest: trace {step} {ms} ms");
    }
}
