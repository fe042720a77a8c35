//! The git-gate pre-receive hook as a standalone binary (tests and bench; the
//! bundle binary `bottle-bundle` runs the same code as `bottle-bundle __git-hook`).

fn main() -> std::process::ExitCode {
    bottle_sidecars::gitgate::run_hook_main()
}
