//! The per-bottle bundle process (`bottle-bundle __bundle STATE_DIR`, a
//! binary of its own next to `bottle`: src/bin/bottle-bundle.rs): the guards
//! (proxy, git-gate), the guest-agent mux and, for the VM backend, the
//! netstack and the VM process it supervises — all in one process.
//!
//! The launcher writes `bundle.json` (no secrets: token sources only), starts
//! this process with stdout on a pipe and waits for one `READY …` line. The
//! bundle lives until SIGTERM, until the VM exits, or until the netstack's
//! transport closes; then it stops the VM and exits. The VM process dies with
//! the bundle (parent-death signal), so `kill -9` of either leaves neither.

mod serve;
mod start;

pub use serve::run;
#[cfg(test)]
pub(crate) use serve::vm_boot;
pub(crate) use serve::ClaimRequest;
pub use start::{
    executable, is_alive, processes, start, started_under, stop, StartError, BINARY, BUILD_HINT,
    BUNDLE_MEMORY_MIB, BUNDLE_PIDS, GIT_HOOK, SUBCOMMAND,
};

use crate::plan::Engine;
use bottle_sidecars::policy::{GitRemote, Policy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// File names inside a bottle's state directory.
pub mod files {
    pub const CONFIG: &str = "bundle.json";
    pub const LOG: &str = "bundle.log";
    pub const CA: &str = "ca.pem";
    /// The audit log; rotated files are `audit.<n>.jsonl`, its head `audit.head`.
    pub const AUDIT: &str = "audit.jsonl";
    pub const CONTROL: &str = "control.sock";
    pub const GUEST: &str = "guest.sock";
    pub const NET: &str = "net.sock";
    pub const CONSOLE: &str = "console.log";
    /// The VM engine's own stderr (qemu's or libkrun's), next to the console.
    pub const ENGINE_LOG: &str = "console.log.engine";
    /// A pooled bundle's claim socket (`bottle pool`), gone once claimed.
    pub const POOL_CLAIM: &str = "pool.sock";
    /// VM: the image's initramfs plus a segment with the guest channel key.
    pub const INITRAMFS: &str = "initramfs.img";
    pub const MIRRORS: &str = "git";
    /// Docker: the directory bind-mounted into the container.
    pub const SOCK_DIR: &str = "sock";
}

/// The tails of the bundle log, the VM console and the engine's own log
/// (when it said anything), for a start or provisioning failure report.
pub fn failure_logs(dir: &crate::state::StateDir) -> String {
    let mut out = format!(
        "--- bundle log ({}) ---\n{}\n--- VM console ({}) ---\n{}",
        dir.file(files::LOG).display(),
        dir.log_tail(files::LOG, 25),
        dir.file(files::CONSOLE).display(),
        dir.log_tail(files::CONSOLE, 15)
    );
    let engine_log = dir.file(files::ENGINE_LOG);
    if engine_log.exists() {
        let engine = dir.log_tail(files::ENGINE_LOG, 15);
        if !engine.trim().is_empty() {
            out.push_str(&format!(
                "\n--- VM engine log ({}) ---\n{engine}",
                engine_log.display()
            ));
        }
    }
    out
}

/// How the guest reaches the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Mode {
    /// A microVM on the netstack; the bundle starts and supervises it.
    Vm(VmLaunch),
    /// A container with no network; guards on unix sockets in `sock/`.
    Docker,
}

/// What the bundle needs to boot the VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmLaunch {
    pub engine: bottle_vmm::EngineChoice,
    /// The engine the plan already decided from cached probes, if any: the
    /// bundle then starts it without probing again.
    #[serde(default)]
    pub decided: Option<(bottle_vmm::EngineKind, bottle_vmm::Accel)>,
    pub cpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub root_disk: Option<PathBuf>,
    pub gateway: std::net::Ipv4Addr,
    pub guest: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
    pub guest_mac: [u8; 6],
}

/// `bundle.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleConfig {
    pub identity: String,
    pub mode: Mode,
    pub policy: Policy,
    pub git: Vec<GitRemote>,
    /// PEM roots trusted for upstream TLS besides the system's.
    #[serde(default)]
    pub extra_root_pems: Vec<String>,
    /// Caps on connections, flows, buffered bodies and the audit log.
    #[serde(default)]
    pub limits: crate::manifest::Limits,
    /// Names the proxy resolves to fixed addresses (`ADDR` or `ADDR:PORT`).
    #[serde(default)]
    pub resolve: std::collections::BTreeMap<String, String>,
    /// A pooled guest (`bottle pool`): booted with no guards and no policy
    /// until a bottle claims it (`identity` is then the pool entry's name).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pooled: bool,
}

impl BundleConfig {
    /// The guards of `plan`'s bottle in `mode` (not pooled).
    pub fn for_plan(
        plan: &crate::plan::Plan,
        mode: Mode,
    ) -> Result<Self, crate::policy::PolicyError> {
        Ok(BundleConfig {
            identity: plan.identity.clone(),
            mode,
            policy: plan.policy.clone(),
            git: plan.git_remotes.clone(),
            extra_root_pems: crate::policy::read_pems(&plan.upstream_ca)?,
            limits: plan.limits,
            resolve: plan.resolve.clone(),
            pooled: false,
        })
    }
}

/// The line the bundle prints when it is serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub ca_fingerprint: String,
    pub vm_pid: Option<u32>,
    /// The VM engine it started (VM backend).
    pub engine: Option<Engine>,
}

impl Ready {
    pub fn to_line(&self) -> String {
        format!(
            "READY fp={} vm_pid={} engine={}\n",
            self.ca_fingerprint,
            self.vm_pid
                .map_or_else(|| "-".to_string(), |p| p.to_string()),
            self.engine
                .map_or_else(|| "-".to_string(), |e| e.to_string())
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("READY ")?;
        let fields: BTreeMap<&str, &str> = rest
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Some(Self {
            ca_fingerprint: fields.get("fp")?.to_string(),
            vm_pid: fields.get("vm_pid").and_then(|p| p.parse().ok()),
            engine: fields.get("engine").and_then(|e| e.parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let r = Ready {
            ca_fingerprint: "ab:cd".into(),
            vm_pid: Some(42),
            engine: Some(Engine::Vm(
                bottle_vmm::EngineKind::Qemu,
                bottle_vmm::Accel::Tcg,
            )),
        };
        assert_eq!(Ready::parse(&r.to_line()), Some(r));
        let r = Ready {
            ca_fingerprint: "ab".into(),
            vm_pid: None,
            engine: None,
        };
        assert_eq!(Ready::parse(&r.to_line()), Some(r));
        assert_eq!(Ready::parse("error: x"), None);
    }
}
