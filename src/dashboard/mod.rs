//! `bottle dashboard`: every bottle on the host in one screen, over the same
//! state directories and control sockets as the CLI (no daemon).
//!
//! * [`model`]: the rows, read from the state root (pure data).
//! * [`tail`]: an audit log's counts, read incrementally.
//! * [`view`]: drawing them into a ratatui buffer.
//! * [`app`]: the terminal, the keys, and the actions (run as the CLI's own
//!   commands).

pub mod app;
pub mod model;
pub mod tail;
pub mod view;
