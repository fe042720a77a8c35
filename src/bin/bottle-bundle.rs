//! `bottle-bundle`: the per-bottle bundle process (`src/bundle/`): the
//! guards, the guest mux, the netstack and the VM's supervisor. `bottle run`
//! (and `bottle pool`) start it from next to their own binary as
//! `bottle-bundle __bundle STATE_DIR`. It is a binary of its own, without
//! the command line, the dashboard or the image builder, so that every
//! bottle's bundle maps only the code it runs (idle RSS 17.9 → 14.3–14.8
//! MiB, docs/BENCHMARKS.md).
//!
//! It also serves the two programs the bundle starts from its own binary:
//! git-gate's pre-receive hook (`__git-hook`) and, where no
//! `bottle-vmm-krun` helper is installed, one libkrun VM (`__krun SPEC`).
#![deny(unsafe_code)]

use bottle::bundle::SUBCOMMAND;
use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    bottle::timing::start();
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    let rest: Vec<OsString> = args.collect();
    match (first.as_ref().and_then(|a| a.to_str()), rest.as_slice()) {
        (Some(SUBCOMMAND), [dir]) => match bottle::bundle::run(std::path::Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => bottle::commands::report(&e),
        },
        (Some(bottle::bundle::GIT_HOOK), _) => bottle_sidecars::gitgate::run_hook_main(),
        (Some(bottle_vmm::KRUN_SUBCOMMAND), [spec]) => match spec.to_str() {
            Some(spec) => bottle_vmm::krun_main(spec),
            None => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "bottle-bundle is started by bottle for each bottle (`bottle-bundle {SUBCOMMAND} STATE_DIR`); it is not a command to run by hand"
    );
    ExitCode::from(2)
}
