//! The in-VM / in-container agent and the host<->guest exec protocol.
//!
//! - [`proto`] and [`frame`]: the wire format, used by both sides.
//! - [`contract`]: the names, ports, sockets and boot configuration both
//!   sides agree on (the `bottle-contract` crate, which every crate can use).
//! - [`auth`]: the channel key that makes the guest connection the agent's alone.
//! - [`agent`]: the guest side (the `bottle-guest` binary's code).
//! - [`host`]: the host side: the mux, the client, and the terminal attach.
#![deny(unsafe_code)]

pub mod agent;
pub mod auth;
pub use bottle_contract as contract;
pub mod frame;
pub mod host;
pub mod proto;
mod sys;

pub use proto::{ExecRequest, ExitStatus, User, PROTOCOL_VERSION};
