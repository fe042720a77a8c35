//! Platform code: the only place with `unsafe`.
#[allow(unsafe_code)]
mod linux;
pub use linux::*;
#[allow(unsafe_code)]
mod spawn;
pub use spawn::{spawn, Creds, SpawnPlan};
