//! `bottle`: run an AI coding agent in a microVM (or container) whose only way
//! out is a set of host-side guards. The binary in `main.rs` is a thin shell
//! over this library so integration tests can reach every module.
#![deny(unsafe_code)]

pub mod backend;
pub mod bundle;
pub mod cert_hash;
pub mod cli;
pub mod commands;
pub mod dashboard;
pub mod detached;
pub mod doctor;
pub mod identity;
pub mod images;
pub mod kept;
pub mod launch;
pub mod manifest;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod provision;
pub mod session;
pub mod state;
pub mod sys;
pub mod timing;
