//! Starting, refilling, stopping and sweeping the pool.

use super::{
    destroy, dir, entry_config, lock, read, update, Entry, PoolState, Shape, ShapePool, VERSION,
};
use crate::bundle::files;
use crate::manifest::BackendName;
use crate::plan::Engine;
use crate::state::{self, Metadata, StateDir, Status};
use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The hidden subcommand that boots missing pooled guests, detached:
/// `bottle __pool-refill [--after IDENTITY]`.
pub const REFILL_SUBCOMMAND: &str = "__pool-refill";
/// Held by the one refiller at work.
const REFILL_LOCK: &str = "refill.lock";
const REFILL_LOG: &str = "refill.log";

/// Start (or resize) the pool of `shape`: record its size, then boot guests
/// until every shape's pool is full. Returns once they are ready. Pools of
/// other shapes keep theirs.
pub fn start(root: &Path, size: u32, shape: Shape) -> anyhow::Result<()> {
    // Fewer wanted than there are: the newest go.
    let extra = update(root, |state| {
        let state = state.get_or_insert_with(|| PoolState {
            version: VERSION,
            pools: Vec::new(),
        });
        match state.pools.iter_mut().find(|p| p.shape == shape) {
            Some(p) => {
                p.size = size;
                let keep = size as usize;
                if p.entries.len() > keep {
                    p.entries.split_off(keep)
                } else {
                    Vec::new()
                }
            }
            None => {
                state.pools.push(ShapePool {
                    size,
                    shape,
                    entries: Vec::new(),
                });
                Vec::new()
            }
        }
    })?;
    for e in extra {
        destroy(root, &e.name);
    }
    refill(root, None)
}

/// Stop the pool: forget it, stop every pooled guest (VM and bundle), wait
/// for a refiller at work to give up, and sweep what is left. Bottles that
/// claimed a guest keep running.
pub fn stop(root: &Path) -> anyhow::Result<usize> {
    let entries: Vec<Entry> = update(root, |state| {
        state
            .take()
            .map(|s| s.pools.into_iter().flat_map(|p| p.entries).collect())
    })?
    .unwrap_or_default();
    let n = entries.len();
    for e in &entries {
        destroy(root, &e.name);
    }
    // A refiller booting a guest sees the pool gone and destroys it itself;
    // its lock is free once it has.
    drop(refill_lock(root, FlockArg::LockExclusive)?);
    Ok(n + sweep(root, false)?.len())
}

/// Pooled guests' processes and directories that no pool entry and no
/// bottle accounts for (a stopped pool's, a crashed refiller's): stopped
/// and removed unless `dry_run`. Returns their names.
pub fn sweep(root: &Path, dry_run: bool) -> anyhow::Result<Vec<String>> {
    let pool_dir = dir(root);
    // Never a pool here: nothing to sweep, and nothing is created.
    if !pool_dir.is_dir() {
        return Ok(Vec::new());
    }
    let _guard = lock(root)?;
    let pool = read(root)?;
    let mut known: BTreeSet<String> = pool
        .iter()
        .flat_map(|s| s.entries().map(|e| e.name.clone()))
        .collect();
    // Claimed guests belong to their bottles (which `cleanup` handles).
    for entry in state::list(root)? {
        if let state::Entry::Ok(_, meta) = entry {
            if let Some(name) = meta.pooled {
                known.insert(name);
            }
        }
    }
    let mut swept = BTreeSet::new();
    for (pid, name) in crate::bundle::started_under(&pool_dir) {
        if known.contains(&name) {
            continue;
        }
        if !dry_run {
            crate::sys::process::stop_process(pid, &name, Duration::from_secs(3));
        }
        swept.insert(name);
    }
    if let Ok(rd) = std::fs::read_dir(&pool_dir) {
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if !item.path().is_dir() || known.contains(&name) {
                continue;
            }
            if !dry_run {
                if let Ok(d) = StateDir::open(&pool_dir, &name) {
                    if let Ok(meta) = d.read_metadata() {
                        super::stop_processes(&meta);
                    }
                }
                let _ = std::fs::remove_dir_all(item.path());
            }
            swept.insert(name);
        }
    }
    Ok(swept.into_iter().collect())
}

/// Ready pooled guests whose processes are gone: dropped from the pool and
/// removed unless `dry_run`. Returns their names.
pub fn reap_dead(root: &Path, dry_run: bool) -> anyhow::Result<Vec<String>> {
    if read(root)?.is_none() {
        return Ok(Vec::new());
    }
    let dead = update(root, |state| {
        let Some(state) = state.as_mut() else {
            return Vec::new();
        };
        let dead = state.dead_entries(root);
        if !dry_run {
            state.forget(&dead);
        }
        dead
    })?;
    if !dry_run {
        for d in &dead {
            destroy(root, d);
        }
    }
    Ok(dead)
}

fn refill_lock(root: &Path, how: FlockArg) -> anyhow::Result<Flock<std::fs::File>> {
    std::fs::create_dir_all(dir(root))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir(root).join(REFILL_LOCK))?;
    Flock::lock(file, how).map_err(|(_, e)| anyhow::anyhow!("refill lock: {e}"))
}

/// Boot guests until the pool is full, one at a time. Another refiller at
/// work does it instead (this one returns). With `after`, first wait (up to
/// 30 s) until that bottle is provisioned, so a boot does not compete with
/// its start for the CPU.
pub fn refill(root: &Path, after: Option<&str>) -> anyhow::Result<()> {
    if let Some(identity) = after {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let starting = StateDir::open(root, identity)
                .and_then(|d| d.read_metadata())
                .is_ok_and(|m| m.status == Status::Starting);
            if !starting {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    loop {
        let Ok(guard) = refill_lock(root, FlockArg::LockExclusiveNonblock) else {
            return Ok(());
        };
        while let Some((name, shape)) = next_missing(root)? {
            boot_one(root, &name, &shape)?;
        }
        drop(guard);
        // A claim between the last check and the unlock: look once more.
        let full = |p: &ShapePool| p.entries.len() as u64 >= u64::from(p.size);
        if read(root)?.is_none_or(|s| s.pools.iter().all(full)) {
            return Ok(());
        }
    }
}

/// Reserve an entry for the next guest to boot, in the first pool that
/// misses one (dead entries are dropped first).
fn next_missing(root: &Path) -> anyhow::Result<Option<(String, Shape)>> {
    let mut dead = Vec::new();
    let next = update(root, |state| {
        let state = state.as_mut()?;
        dead = state.dead_entries(root);
        state.forget(&dead);
        let p = state
            .pools
            .iter_mut()
            .find(|p| p.entries.len() < p.size as usize)?;
        let name = crate::identity::new_identity(super::DIR);
        p.entries.push(Entry {
            name: name.clone(),
            ready: false,
            started_at: state::now_rfc3339(),
            boot_ms: None,
        });
        Some((name, p.shape.clone()))
    })?;
    for d in dead {
        destroy(root, &d);
    }
    Ok(next)
}

/// Boot one pooled guest and mark its entry ready once its agent answers;
/// if the entry is gone by then (pool stopped), destroy it instead.
fn boot_one(root: &Path, name: &str, shape: &Shape) -> anyhow::Result<()> {
    let started = Instant::now();
    let result = (|| -> anyhow::Result<()> {
        let d = StateDir::create(&dir(root), name)?;
        d.write_metadata(&entry_metadata(name, shape))?;
        crate::bundle::start(&d, &entry_config(name, shape), Duration::from_secs(120))
            .context("the pooled guest's bundle did not start")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(async {
                let client = bottle_guest::host::Client::connect(&d.file(files::CONTROL)).await?;
                // Give up early when the bundle is gone (`bottle pool stop`
                // destroyed this entry while it booted).
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match client.wait_ready(Duration::from_secs(2)).await {
                        Ok(_) => break,
                        Err(e) => {
                            let alive =
                                d.read_metadata().is_ok_and(|m| crate::bundle::is_alive(&m));
                            if !alive {
                                anyhow::bail!("its bundle exited before the agent answered");
                            }
                            if Instant::now() >= deadline {
                                return Err(e.into());
                            }
                        }
                    }
                }
                warm_up(&client).await;
                anyhow::Ok(())
            })
            .context("the pooled guest's agent did not answer")?;
        d.update_metadata(|m| m.status = Status::Running)?;
        Ok(())
    })();
    let boot_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let kept = result.is_ok()
        && update(root, |state| {
            match state.as_mut().and_then(|s| {
                s.pools
                    .iter_mut()
                    .flat_map(|p| p.entries.iter_mut())
                    .find(|e| e.name == name)
            }) {
                Some(e) => {
                    e.ready = true;
                    e.boot_ms = Some(boot_ms);
                    true
                }
                None => false,
            }
        })?;
    if !kept {
        let _ = update(root, |state| {
            if let Some(s) = state.as_mut() {
                s.forget(&[name.to_string()]);
            }
        });
        destroy(root, name);
    }
    result
}

/// Under TCG the first run of a program in a guest pays for translating
/// its code (hundreds of ms): run what provisioning and a command run
/// (busybox's shell and applets, as root and as the agent user) once, with
/// nothing of any bottle, so the claim finds them translated. Best effort.
async fn warm_up(client: &bottle_guest::host::Client) {
    use bottle_guest::proto::User;
    let script = "set -e; d=$(mktemp -d); mkdir -p $d/a; cat /etc/hosts > $d/h; \
        ln -sf h $d/l; cmp -s $d/h $d/l; chmod 644 $d/h; rm -rf $d; true";
    for user in [User::Uid(0), User::Uid(crate::provision::AGENT_UID)] {
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
        let run = client.run_capture(argv, Vec::new(), None, Some(user));
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .map_err(|_| "timed out".to_string())
            .map(|r| r.map(drop).map_err(|e| e.to_string()))
        {
            eprintln!("bottle: pool: warm-up run failed ({e}); the claim will be slower");
        }
    }
}

/// The metadata of a pooled guest's directory (read by `bundle::start`,
/// `cleanup` and the claim; replaced by the bottle's at the claim).
fn entry_metadata(name: &str, shape: &Shape) -> Metadata {
    Metadata {
        version: state::METADATA_VERSION,
        identity: name.to_string(),
        agent: "(pool)".to_string(),
        bottle: "(pool)".to_string(),
        cwd: "/".into(),
        backend: BackendName::Vm,
        engine: Some(Engine::Vm(shape.engine, shape.accel)),
        started_at: state::now_rfc3339(),
        status: Status::Starting,
        bundle_pid: None,
        vm_pid: None,
        container_id: None,
        cgroup: None,
        command: Vec::new(),
        audit_head: None,
        manifest: None,
        pooled: None,
    }
}

/// Start a refiller in the background, detached from this process (its
/// own process group, output to `pool/refill.log`): it outlives `bottle
/// run`. With `after`, it waits for that bottle to be provisioned first.
pub fn spawn_refill(root: &Path, after: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir(root).join(REFILL_LOG))?;
    let exe = std::env::current_exe().context("cannot find the bottle binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg(REFILL_SUBCOMMAND);
    if let Some(id) = after {
        cmd.args(["--after", id]);
    }
    cmd.env("BOTTLE_STATE_DIR", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0);
    // Not waited for: it is re-parented when this process exits.
    let child = cmd.spawn().context("cannot start the pool refiller")?;
    drop(child);
    Ok(())
}
