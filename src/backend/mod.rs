//! The `Backend` trait and its two implementations.

pub mod docker;
