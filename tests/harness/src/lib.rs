//! Shared harness for integration tests that use real components.
//!
//! Every test that needs something the machine may lack calls [`skip::require`]
//! first. Locally a missing component prints `SKIP <test>: <reason>` and the
//! test returns early; in CI (`BOTTLE_TEST_STRICT=1`) it fails instead, so a
//! skipped feature can never pass CI unnoticed.

pub mod anthropic;
pub mod netns;
pub mod skip;
pub mod sshd;
pub mod streaming;
pub mod tls;
