//! `bottle pool start|status|stop`: the warm pool of booted VM guests.

use super::{print, UsageError};
use crate::pool::{self, Shape};
use crate::state;

/// `bottle pool start`: the shape from the flags and the defaults a bottle
/// without its own `[network]` and `[limits]` has; the engine chosen as
/// `bottle run --vm --engine CHOICE` chooses it.
pub fn start(
    size: u32,
    image: &str,
    cpus: u8,
    memory_mib: u32,
    choice: bottle_vmm::EngineChoice,
) -> anyhow::Result<()> {
    if size == 0 || size > 16 {
        return Err(UsageError("--size must be from 1 to 16".into()).into());
    }
    let def = crate::images::definition(image).map_err(|e| UsageError(format!("{e:#}")))?;
    let (kernel, initramfs) =
        crate::backend::vm::boot_assets().map_err(|(why, fix)| anyhow::anyhow!("{why}; {fix}"))?;
    let root_disk = match &def {
        crate::images::ImageDef::Tiny => None,
        crate::images::ImageDef::Debian(_) => {
            let dir = crate::images::find(&def)?;
            Some(crate::images::root_disk(&dir).ok_or_else(|| {
                anyhow::anyhow!(
                    "image `{image}` has no root disk in {}; rebuild it with `bottle image build {image}`",
                    dir.display()
                )
            })?)
        }
    };
    let selection = match crate::backend::vm::decide_engine(choice) {
        Some(s) => s,
        None => bottle_vmm::select_engine(choice)?.1,
    };
    let network = crate::manifest::NetworkSection::default();
    let (subnet, gateway, guest) = crate::plan::addresses(&network.subnet);
    let shape = Shape {
        engine: selection.engine,
        accel: selection.accel,
        kernel,
        initramfs,
        root_disk,
        image: image.to_string(),
        cpus,
        memory_mib,
        gateway,
        guest,
        prefix_len: subnet.prefix_len,
        mtu: network.mtu,
        limits: crate::manifest::Limits::default(),
    };
    let root = state::state_root()?;
    eprintln!(
        "bottle: pool: booting {size} {image} guest{} ({cpus} vCPU, {memory_mib} MiB, {}-{})",
        if size == 1 { "" } else { "s" },
        selection.engine,
        selection.accel
    );
    let started = std::time::Instant::now();
    pool::start(&root, size, shape)?;
    eprintln!(
        "bottle: pool: ready after {} ms; `bottle run --vm` claims a guest of this shape",
        started.elapsed().as_millis()
    );
    status(false)
}

/// One row of `bottle pool status`.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    name: String,
    status: &'static str,
    bundle_pid: Option<u32>,
    vm_pid: Option<u32>,
    /// Resident memory of the bundle and the VM, KiB.
    rss_kib: u64,
    boot_ms: Option<u64>,
    started: String,
}

/// `bottle pool status --json`: every guest (`guests`), and per shape its
/// size, how many are ready and its guests (`pools`).
#[derive(Debug, serde::Serialize)]
struct Status {
    pools: Vec<PoolRows>,
    guests: Vec<Row>,
}

#[derive(Debug, serde::Serialize)]
struct PoolRows {
    size: u32,
    ready: usize,
    shape: Shape,
    guests: Vec<Row>,
}

fn rows(root: &std::path::Path, p: &pool::ShapePool) -> Vec<Row> {
    p.entries
        .iter()
        .map(|e| {
            let meta = state::StateDir::open(&pool::dir(root), &e.name)
                .and_then(|d| d.read_metadata())
                .ok();
            let alive = meta.as_ref().is_some_and(crate::bundle::is_alive);
            let bundle_pid = meta.as_ref().and_then(|m| m.bundle_pid);
            let vm_pid = meta.as_ref().and_then(|m| m.vm_pid);
            let rss = if alive {
                bundle_pid.map_or(0, pool::rss_kib) + vm_pid.map_or(0, pool::rss_kib)
            } else {
                0
            };
            Row {
                name: e.name.clone(),
                status: match (alive, e.ready) {
                    (true, true) => "ready",
                    (_, false) => "booting",
                    (false, true) => "dead",
                },
                bundle_pid,
                vm_pid,
                rss_kib: rss,
                boot_ms: e.boot_ms,
                started: e.started_at.clone(),
            }
        })
        .collect()
}

/// `bottle pool status`.
pub fn status(json: bool) -> anyhow::Result<()> {
    let root = state::state_root()?;
    let Some(state) = pool::read(&root)? else {
        if json {
            return print("null\n");
        }
        eprintln!("no pool is running (`bottle pool start` starts one)");
        return Ok(());
    };
    let pools: Vec<PoolRows> = state
        .pools
        .into_iter()
        .map(|p| {
            let guests = rows(&root, &p);
            PoolRows {
                size: p.size,
                ready: guests.iter().filter(|g| g.status == "ready").count(),
                shape: p.shape,
                guests,
            }
        })
        .collect();
    if json {
        let s = Status {
            guests: pools.iter().flat_map(|p| p.guests.clone()).collect(),
            pools,
        };
        return print(&format!("{}\n", serde_json::to_string_pretty(&s)?));
    }
    let mut out = String::new();
    for p in &pools {
        out.push_str(&format!(
            "pool: {} of {} ready; {} image, {} vCPU, {} MiB, {}-{}\n",
            p.ready,
            p.size,
            p.shape.image,
            p.shape.cpus,
            p.shape.memory_mib,
            p.shape.engine,
            p.shape.accel
        ));
        for g in &p.guests {
            out.push_str(&format!(
                "{}\t{}\tqemu {}\tbundle {}\t{} MiB\tboot {}\t{}\n",
                g.name,
                g.status,
                g.vm_pid.map_or("-".to_string(), |p| p.to_string()),
                g.bundle_pid.map_or("-".to_string(), |p| p.to_string()),
                g.rss_kib / 1024,
                g.boot_ms.map_or("-".to_string(), |m| format!("{m} ms")),
                g.started
            ));
        }
    }
    print(&out)
}

/// `bottle pool stop`.
pub fn stop() -> anyhow::Result<()> {
    let root = state::state_root()?;
    let n = pool::stop(&root)?;
    print(&format!(
        "pool stopped: {n} pooled guest{} removed\n",
        if n == 1 { "" } else { "s" }
    ))
}

/// The lines `bottle ls` prints for pooled guests, after the bottles.
pub fn ls_lines(root: &std::path::Path) -> String {
    let Ok(Some(state)) = pool::read(root) else {
        return String::new();
    };
    state
        .pools
        .iter()
        .flat_map(|p| rows(root, p))
        .map(|g| format!("pool\t{}\t-\t{}\t{}\n", g.name, g.status, g.started))
        .collect()
}
