//! `bottle` command-line entry point: parse, dispatch, map errors to exit codes.
#![deny(unsafe_code)]

use bottle::commands;
use std::process::ExitCode;

fn main() -> ExitCode {
    commands::main()
}
