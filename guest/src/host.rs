//! The host side: the mux between the guest's one stream and any number of
//! CLI clients, the client API, and attaching a session to a terminal.

pub mod attach;
pub mod client;
pub mod mux;
mod tree;

pub use attach::{attach, attach_with, terminal_size, AttachError, RawMode};
pub use client::{
    Client, ClientError, Event, GuestFile, GuestInfo, Output, Session, SessionHandle, TreeEntry,
};
pub use mux::{run_mux, run_mux_with, MuxError, RefusalHook};
