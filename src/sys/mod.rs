//! Host facilities the CLI uses directly (Linux): cgroups for the bundle,
//! and the processes bottle started.

pub mod cgroup;
pub mod process;
