//! `bottle`: run an AI coding agent in a microVM (or container) whose only way
//! out is a set of host-side guards.
#![deny(unsafe_code)]

mod backend;

fn main() {}
