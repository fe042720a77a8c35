//! `bottle` command-line entry point.
#![deny(unsafe_code)]

fn main() {}
