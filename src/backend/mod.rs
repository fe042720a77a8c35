//! The `Backend` trait and its two implementations.

#[allow(dead_code)]
pub mod docker;
