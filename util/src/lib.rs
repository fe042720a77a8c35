//! Small helpers the bottle crates share, each in one place: an error and
//! its sources on one line ([`error_chain`]), single-quoting for `sh`
//! ([`shell_quote`]), a token bucket ([`TokenBucket`]) and Debian package
//! names ([`debian::is_package_name`]), programs beside the running one
//! ([`exe::beside`]). No dependencies,
//! so any crate of the workspace can use it without a cycle.
#![deny(unsafe_code)]

mod chain;
pub mod debian;
pub mod exe;
mod ratelimit;
mod shell;

pub use chain::{error_chain, ErrorChain};
pub use ratelimit::TokenBucket;
pub use shell::shell_quote;
