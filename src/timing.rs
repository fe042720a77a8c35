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
    for (step, ms) in text.lines().filter_map(guest_step) {
        eprintln!("bottle: guest timing {step} {ms} ms");
    }
}

/// `(STEP, N)` of a console line `bottle-guest: trace STEP N ms`, where STEP
/// is lowercase letters, digits and dashes: the console is the guest's, and
/// nothing else it holds (escape sequences included) reaches the terminal.
fn guest_step(line: &str) -> Option<(&str, u64)> {
    let rest = line
        .trim_end_matches('\r')
        .strip_prefix("bottle-guest: trace ")?;
    let mut words = rest.split(' ');
    let (step, ms, unit) = (words.next()?, words.next()?, words.next()?);
    let step_ok = !step.is_empty()
        && step
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (step_ok && unit == "ms" && words.next().is_none())
        .then(|| ms.parse().ok().map(|ms| (step, ms)))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::guest_step;

    #[test]
    fn only_well_formed_guest_trace_lines_are_taken() {
        assert_eq!(
            guest_step("bottle-guest: trace request-exec 694 ms\r"),
            Some(("request-exec", 694))
        );
        for bad in [
            "BOTTLE-GUEST-READY",
            "bottle-guest: trace \x1b]0;pwned\x07 1 ms",
            "bottle-guest: trace Exec 1 ms",
            "bottle-guest: trace exec 1 ms and more",
            "bottle-guest: trace exec x ms",
            "bottle-guest: trace exec 1 s",
            "bottle-guest: trace  1 ms",
        ] {
            assert_eq!(guest_step(bad), None, "{bad:?}");
        }
    }
}
