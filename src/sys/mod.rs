//! Host facilities the CLI uses directly (Linux).

pub mod cgroup;
