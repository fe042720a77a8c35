//! The audit log: one JSON line per decision of every guard (proxy requests
//! and passthrough tunnels, git-gate fetches and pushes, netstack refusal
//! summaries), each carrying the SHA-256 of the line before it, so an
//! edited, dropped or reordered line breaks the chain.
//!
//! * [`record`]: what a line holds (old lines still parse).
//! * [`log`]: appending, rotation at a size cap (the chain continues across
//!   files) and the head (last hash and position) kept next to the log.
//! * [`verify`]: reading a chain back across rotated files, against a head.
//! * [`exchange`]: a `decided` line before dialling, a `completed` line when
//!   the exchange ends (dropped unfinished: `cancelled`).
//! * [`redact`]: secrets out of recorded URLs.
//! * [`summary`]: periodic refusal summaries.

pub mod exchange;
pub mod log;
pub mod record;
pub mod redact;
pub mod summary;
pub mod verify;

pub use exchange::{Completion, Exchange};
pub use log::{read_head, AuditLog, AuditOptions, Head, DEFAULT_KEEP, DEFAULT_MAX_BYTES};
pub use record::{AuditRecord, Event, GitAudit, GitFields, Kind, Outcome};
pub use summary::{RefusalSummary, SummaryTask, SUMMARY_PERIOD};
pub use verify::{read_verified, verify_chain, Verified};

use std::path::PathBuf;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why an audit log could not be written, read, or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "audit log {path} is closed after a failed write ({why}); nothing more can be recorded \
         until the bottle is restarted"
    )]
    Closed { path: PathBuf, why: String },
    #[error("cannot encode an audit line: {0}")]
    Encode(String),
    #[error("line {line} of {file} is not a valid audit record: {why}")]
    Parse {
        file: PathBuf,
        line: usize,
        why: String,
    },
    #[error(
        "line {line} of {file} does not chain to the line before it (edited, dropped or \
         reordered): do not trust the log from there on"
    )]
    Broken { file: PathBuf, line: usize },
    #[error(
        "the audit log was cut: it ends at line {last} (in {file}) but the bottle recorded line \
         {head} as its last, so its last {} line(s) are missing",
        head - last
    )]
    Cut { file: PathBuf, last: u64, head: u64 },
    #[error(
        "line {line} of the audit log is not the line the bottle recorded as its head: the log's \
         tail was cut and rewritten"
    )]
    HeadMismatch { line: u64 },
    #[error(
        "audit lines {from} to {to} are missing: a rotated file before {file} was removed \
         (rotation had kept them)"
    )]
    Missing { file: PathBuf, from: u64, to: u64 },
    #[error("audit head {path} is unreadable: {why}")]
    BadHead { path: PathBuf, why: String },
}

#[cfg(test)]
mod tests;
