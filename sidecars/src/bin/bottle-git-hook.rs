//! The git-gate pre-receive hook as a standalone binary (tests and bench; the
//! `bottle` CLI runs the same code as its hidden `__git-hook` subcommand).

fn main() -> std::process::ExitCode {
    bottle_sidecars::gitgate::run_hook_main()
}
