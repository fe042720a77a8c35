//! `BOTTLE_TIMING=1`: when each launch step finished, in ms since the
//! process started, on stderr (read by `bench/boot.sh`).

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Mark the start of the process (the first call wins).
pub fn start() {
    START.get_or_init(Instant::now);
}

/// Print `bottle: timing STEP N ms` when `BOTTLE_TIMING=1`.
pub fn step(name: &str) {
    if std::env::var_os("BOTTLE_TIMING").is_some_and(|v| v == "1") {
        let start = START.get_or_init(Instant::now);
        eprintln!("bottle: timing {name} {} ms", start.elapsed().as_millis());
    }
}
