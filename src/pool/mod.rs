//! The warm pool (`bottle pool`): booted, unprovisioned VM guests, kept per
//! shape (each `bottle pool start` of another shape adds one), each with its
//! own bundle (guest channel, netstack, VM) and no guards, no CA and no
//! policy. `bottle run --vm` claims one whose shape matches its plan, moves
//! the entry into its own state directory, has its bundle build the
//! bottle's guards there, provisions it (hostname included) and runs the
//! command; a detached `bottle __pool-refill` boots a replacement. A
//! claimed guest is never returned: it is torn down as any bottle.
//!
//! State: `<state root>/pool/pool.json` (per shape: size and entries;
//! written atomically under `pool.lock`), one directory per entry next to
//! it.

mod claim;
mod fill;

pub use claim::{attach, claim, discard, hostname_script, preview, Claimed, Start};
pub use fill::{reap_dead, refill, spawn_refill, start, stop, sweep, REFILL_SUBCOMMAND};

use crate::bundle::{BundleConfig, Mode, VmLaunch};
use crate::manifest::Limits;
use crate::state::{self, Metadata, StateDir};
use bottle_vmm::{Accel, EngineKind};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The pool's directory under the state root (not a bottle identity).
pub const DIR: &str = "pool";
const STATE: &str = "pool.json";
const LOCK: &str = "pool.lock";
const VERSION: u32 = 2;

/// What a pooled guest is: everything its boot depends on. A bottle claims
/// only a guest of exactly its own shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub engine: EngineKind,
    pub accel: Accel,
    pub kernel: PathBuf,
    /// The tiny image's initramfs (its path carries the image key).
    pub initramfs: PathBuf,
    /// The image's root disk (none for the tiny image).
    pub root_disk: Option<PathBuf>,
    pub image: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub gateway: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
    pub limits: Limits,
}

impl Shape {
    /// The shape of a bottle's VM launch.
    pub fn of_launch(vm: &VmLaunch, image: &str, limits: Limits) -> Result<Self, String> {
        let (engine, accel) = vm.decided.ok_or_else(|| {
            "the VM engine is only decided at launch (no cached boot probe yet)".to_string()
        })?;
        Ok(Shape {
            engine,
            accel,
            kernel: vm.kernel.clone(),
            initramfs: vm.initramfs.clone(),
            root_disk: vm.root_disk.clone(),
            image: image.to_string(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            gateway: vm.gateway,
            guest: vm.guest,
            prefix_len: vm.prefix_len,
            mtu: vm.mtu,
            limits,
        })
    }

    /// How `self` (what a bottle needs) differs from the pool's `other`,
    /// for the plan's "cold boot" line; `None` when they are the same.
    pub fn mismatch(&self, pool: &Shape) -> Option<String> {
        let what = if self.image != pool.image || self.root_disk != pool.root_disk {
            format!("image {} (the pool's: {})", self.image, pool.image)
        } else if self.cpus != pool.cpus || self.memory_mib != pool.memory_mib {
            format!(
                "{} vCPU, {} MiB (the pool's: {} vCPU, {} MiB)",
                self.cpus, self.memory_mib, pool.cpus, pool.memory_mib
            )
        } else if self.engine != pool.engine || self.accel != pool.accel {
            format!(
                "engine {}-{} (the pool's: {}-{})",
                self.engine, self.accel, pool.engine, pool.accel
            )
        } else if self.kernel != pool.kernel || self.initramfs != pool.initramfs {
            "another kernel or guest agent build than the pool's".to_string()
        } else if (self.gateway, self.guest, self.prefix_len, self.mtu)
            != (pool.gateway, pool.guest, pool.prefix_len, pool.mtu)
        {
            "another network or MTU than the pool's".to_string()
        } else if self.limits != pool.limits {
            "other [limits] than the pool's (the defaults)".to_string()
        } else {
            return None;
        };
        Some(format!("this bottle needs {what}"))
    }

    /// The VM launch of a pooled guest of this shape (a fresh MAC).
    pub fn launch(&self) -> VmLaunch {
        let mut mac = [0x02, 0, 0, 0, 0, 0];
        let seed: [u8; 4] = rand::random();
        mac[2..].copy_from_slice(&seed);
        VmLaunch {
            engine: match self.engine {
                EngineKind::Qemu => bottle_vmm::EngineChoice::Qemu,
                EngineKind::Libkrun => bottle_vmm::EngineChoice::Libkrun,
            },
            decided: Some((self.engine, self.accel)),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            root_disk: self.root_disk.clone(),
            gateway: self.gateway,
            guest: self.guest,
            prefix_len: self.prefix_len,
            mtu: self.mtu,
            guest_mac: mac,
        }
    }
}

/// The bundle config of a pooled guest: its entry's name, the shape's VM,
/// an empty (deny-all) policy, no git remotes, no extra roots, no pins.
/// Nothing in it belongs to a bottle.
pub fn entry_config(name: &str, shape: &Shape) -> BundleConfig {
    BundleConfig {
        identity: name.to_string(),
        mode: Mode::Vm(shape.launch()),
        policy: bottle_sidecars::policy::Policy::default(),
        git: Vec::new(),
        extra_root_pems: Vec::new(),
        limits: shape.limits,
        resolve: Default::default(),
        pooled: true,
    }
}

/// `pool.json`: the pools, one per shape, in the order they were started.
#[derive(Debug, Clone, Serialize)]
pub struct PoolState {
    pub version: u32,
    pub pools: Vec<ShapePool>,
}

/// The guests kept booted for one shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShapePool {
    /// Guests kept booted.
    pub size: u32,
    pub shape: Shape,
    pub entries: Vec<Entry>,
}

impl PoolState {
    /// Every pooled guest, of every shape.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.pools.iter().flat_map(|p| p.entries.iter())
    }

    /// The index in `pools` of the pool of exactly `want`'s shape, or why a
    /// bottle of that shape finds none: what differs from the one pool, or
    /// from the first.
    pub fn pool_for(&self, want: &Shape) -> Result<usize, String> {
        if let Some(i) = self.pools.iter().position(|p| &p.shape == want) {
            return Ok(i);
        }
        let why = self
            .pools
            .first()
            .and_then(|first| want.mismatch(&first.shape))
            .unwrap_or_else(|| "no pool of this bottle's shape".to_string());
        Err(match self.pools.len() {
            0 | 1 => why,
            n => format!("{why}; none of the {n} pooled shapes matches (`bottle pool status`)"),
        })
    }

    /// Ready guests whose processes are gone, of every shape.
    fn dead_entries(&self, root: &Path) -> Vec<String> {
        self.entries()
            .filter(|e| e.ready && !entry_alive(root, &e.name))
            .map(|e| e.name.clone())
            .collect()
    }

    /// Forget the entries named in `names`, whatever their shape.
    fn forget(&mut self, names: &[String]) {
        for p in &mut self.pools {
            p.entries.retain(|e| !names.contains(&e.name));
        }
    }
}

impl<'de> Deserialize<'de> for PoolState {
    /// Version 2, or version 1 (one shape: `size`, `shape`, `entries` at the
    /// top), as a pool started by an earlier bottle wrote it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            V2 { version: u32, pools: Vec<ShapePool> },
            V1(ShapePool),
        }
        Ok(match Any::deserialize(d)? {
            Any::V2 { version, pools } => PoolState { version, pools },
            Any::V1(one) => PoolState {
                version: VERSION,
                pools: vec![one],
            },
        })
    }
}

/// One pooled guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Its directory under `pool/`, and the name its processes carry.
    pub name: String,
    /// Booted and its guest agent answered: it can be claimed.
    pub ready: bool,
    pub started_at: String,
    /// From the start of its bundle to the guest agent's answer.
    #[serde(default)]
    pub boot_ms: Option<u64>,
}

/// The pool's directory under the state root `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(DIR)
}

/// Hold the pool lock (a blocking flock on `pool/pool.lock`).
fn lock(root: &Path) -> anyhow::Result<Flock<File>> {
    let dir = dir(root);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock the pool: {e}"))
}

/// The pools' state, `None` when no pool is running.
pub fn read(root: &Path) -> anyhow::Result<Option<PoolState>> {
    let path = dir(root).join(STATE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is corrupt ({e}); `bottle pool stop` removes the pool",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Read, change and write (or remove, when the change leaves `None`) the
/// pool's state under its lock.
fn update<T>(root: &Path, change: impl FnOnce(&mut Option<PoolState>) -> T) -> anyhow::Result<T> {
    let _guard = lock(root)?;
    let mut pool = read(root)?;
    let out = change(&mut pool);
    let path = dir(root).join(STATE);
    match &pool {
        Some(p) => state::write_atomic(&path, &serde_json::to_vec_pretty(p)?)?,
        None => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("cannot remove {}: {e}", path.display())),
        },
    }
    Ok(out)
}

/// An entry's state directory (a [`StateDir`] named after the entry).
fn entry_dir(root: &Path, name: &str) -> Option<StateDir> {
    StateDir::open(&dir(root), name).ok()
}

/// Whether an entry's bundle (and so its VM) still runs.
fn entry_alive(root: &Path, name: &str) -> bool {
    entry_dir(root, name)
        .and_then(|d| d.read_metadata().ok())
        .is_some_and(|m| crate::bundle::is_alive(&m))
}

/// Stop an entry's VM and bundle, release its cgroup, remove its directory.
fn destroy(root: &Path, name: &str) {
    let Some(d) = entry_dir(root, name) else {
        return;
    };
    if let Ok(meta) = d.read_metadata() {
        stop_processes(&meta);
    }
    let _ = d.remove();
}

/// Stop a pooled guest's VM, then its bundle (and release its cgroup).
fn stop_processes(meta: &Metadata) {
    if let Some(pid) = meta.vm_pid {
        crate::sys::process::stop_process(
            pid,
            meta.process_tag(),
            std::time::Duration::from_secs(2),
        );
    }
    crate::bundle::stop(meta);
}

/// One line on the pool for the dashboard, `None` without a pool:
/// `pool: 1 of 2 ready (tiny), 0 of 1 ready (debian)` (`bottle pool
/// status` has the rest).
pub fn summary(root: &Path) -> Option<String> {
    let state = read(root).ok().flatten()?;
    let parts: Vec<String> = state
        .pools
        .iter()
        .map(|p| {
            let ready = p
                .entries
                .iter()
                .filter(|e| e.ready && entry_alive(root, &e.name))
                .count();
            format!("{ready} of {} ready ({})", p.size, p.shape.image)
        })
        .collect();
    Some(format!("pool: {}", parts.join(", ")))
}

/// A resident set size in KiB (`VmRSS` of /proc/PID/status), 0 when gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
