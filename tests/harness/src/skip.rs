//! Skip rules for tests that need real components.

use std::path::Path;

/// Environment variable that turns every skip into a failure (set by `.ci/run`).
pub const STRICT_ENV: &str = "BOTTLE_TEST_STRICT";

/// Returns `true` when `ok`; otherwise reports `reason` and returns `false`
/// (or panics in strict mode). Use as `if !require(..) { return; }`.
#[track_caller]
pub fn require(ok: bool, reason: &str) -> bool {
    if ok {
        return true;
    }
    let caller = std::panic::Location::caller();
    if std::env::var_os(STRICT_ENV).is_some_and(|v| v != "0") {
        panic!("{STRICT_ENV} is set and a test would skip ({caller}): {reason}");
    }
    eprintln!("SKIP ({caller}): {reason}");
    false
}

/// Whether the tests run as root (needed for namespaces, TAP, sshd on ports).
pub fn is_root() -> bool {
    // Reading the effective uid from /proc avoids an unsafe libc call here.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether an executable named `name` is on `PATH` (or is an existing path).
pub fn have_program(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// `require` for a list of programs, naming the Debian packages that provide them.
#[track_caller]
pub fn require_programs(programs: &[(&str, &str)]) -> bool {
    for (program, package) in programs {
        if !have_program(program) {
            return require(
                false,
                &format!("`{program}` not found (apt-get install {package})"),
            );
        }
    }
    true
}

/// `require` root privileges.
#[track_caller]
pub fn require_root(what: &str) -> bool {
    require(is_root(), &format!("{what} needs root"))
}
