//! The guard bundle that stands between a bottle and the world.
//!
//! * [`policy`]: the serialisable policy every guard reads (hosts, routes, DLP).
//! * [`scanner`]: the secret scanner shared by the proxy and git-gate.
//! * [`proxy`]: firewall + DLP + credential-injecting HTTP(S) proxy.
//! * [`gitgate`]: the git:// gate that mirrors fetches and scans pushes.
//! * [`audit`]: the hash-chained audit log all of them write to.
//!
//! Every guard serves any `AsyncRead + AsyncWrite` stream, so the same code runs
//! on a netstack forward (VM backend) or on a unix socket (Docker backend).
#![deny(unsafe_code)]

pub mod audit;
pub mod gitgate;
pub mod policy;
pub mod proxy;
pub mod scanner;
pub mod supervise;
