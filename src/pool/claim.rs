//! Claiming a pooled guest for a bottle: pick one from the pool of the
//! plan's shape, move its entry into the bottle's state directory, hand its
//! bundle the bottle's config, set the bottle's hostname in the guest.

use super::{entry_alive, update, Shape};
use crate::backend::BackendError;
use crate::bundle::files;
use crate::manifest::BackendName;
use crate::plan::Plan;
use crate::state::{Metadata, StateDir};
use anyhow::Context;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

/// How a VM bottle starts.
#[derive(Debug)]
pub enum Start {
    /// No pool is running: the cold path, unchanged.
    NoPool,
    /// A pool runs but cannot serve this bottle: why.
    Cold(String),
    /// A pooled guest, moved to the bottle's state directory.
    Warm(Box<Claimed>),
}

/// A pooled guest taken for a bottle.
#[derive(Debug)]
pub struct Claimed {
    /// The bottle's state directory (the entry's, moved).
    pub dir: StateDir,
    /// The entry's metadata: its bundle and VM pids, cgroup and engine.
    pub entry: Metadata,
}

/// The shape a plan needs from a pool.
fn shape_of(plan: &Plan) -> Result<Shape, String> {
    let config = crate::backend::vm::bundle_config(plan).map_err(|e| e.to_string())?;
    match &config.mode {
        crate::bundle::Mode::Vm(vm) => Shape::of_launch(vm, &plan.image, plan.limits),
        crate::bundle::Mode::Docker => Err("not a VM bottle".to_string()),
    }
}

/// The plan's `start` line: `None` without a pool, else whether a pooled
/// guest of its shape is ready or why it boots cold.
pub fn preview(plan: &Plan) -> Option<String> {
    let root = crate::state::state_root().ok()?;
    let pool = super::read(&root).ok().flatten()?;
    let want = match shape_of(plan) {
        Ok(s) => s,
        Err(why) => return Some(format!("cold boot: {why}")),
    };
    let pool = match pool.pool_for(&want) {
        Ok(i) => &pool.pools[i],
        Err(why) => return Some(format!("cold boot: {why}")),
    };
    let ready = pool.entries.iter().filter(|e| e.ready).count();
    Some(if ready > 0 {
        format!(
            "warm: a pooled guest is ready ({ready} of {}); claimed at launch",
            pool.size
        )
    } else {
        "cold boot: no pooled guest is ready yet (still booting)".to_string()
    })
}

/// Take a ready pooled guest of the plan's shape and move it to the
/// bottle's state directory `<root>/<identity>`. Never fails: what goes
/// wrong is a reason to boot cold.
pub fn claim(root: &Path, plan: &Plan) -> Start {
    if plan.backend != BackendName::Vm || !super::dir(root).join(super::STATE).exists() {
        return Start::NoPool;
    }
    let want = match shape_of(plan) {
        Ok(s) => s,
        Err(why) => return Start::Cold(why),
    };
    let taken = update(root, |state| {
        let Some(state) = state.as_mut() else {
            return Err("the pool was stopped".to_string());
        };
        let i = state.pool_for(&want)?;
        let pool = &mut state.pools[i];
        // The oldest ready entry whose processes still run; dead ones go.
        let mut dead = Vec::new();
        let mut found = None;
        for (i, e) in pool.entries.iter().enumerate() {
            if !e.ready {
                continue;
            }
            if entry_alive(root, &e.name) {
                found = Some(i);
                break;
            }
            dead.push(e.name.clone());
        }
        let taken = found.map(|i| pool.entries.remove(i).name);
        pool.entries.retain(|e| !dead.contains(&e.name));
        Ok((taken, dead))
    });
    let (name, dead) = match taken {
        Ok(Ok(t)) => t,
        Ok(Err(why)) => return Start::Cold(why),
        Err(e) => return Start::Cold(format!("cannot read the pool: {e:#}")),
    };
    for d in &dead {
        super::destroy(root, d);
    }
    let Some(name) = name else {
        return Start::Cold("no pooled guest is ready (the pool is refilling)".to_string());
    };
    let from = super::dir(root).join(&name);
    let entry = match StateDir::open(&super::dir(root), &name).and_then(|d| d.read_metadata()) {
        Ok(m) => m,
        Err(e) => {
            super::destroy(root, &name);
            return Start::Cold(format!("pooled guest {name} has no metadata: {e}"));
        }
    };
    match StateDir::adopt(root, &plan.identity, &from) {
        Ok(dir) => Start::Warm(Box::new(Claimed { dir, entry })),
        Err(e) => {
            super::destroy(root, &name);
            Start::Cold(format!("cannot move pooled guest {name}: {e}"))
        }
    }
}

/// Destroy a claimed guest whose claim failed: its VM, its bundle, its
/// directory (it never served the bottle, and is never returned).
pub fn discard(claimed: Claimed) {
    super::stop_processes(&claimed.entry);
    let _ = claimed.dir.remove();
}

/// Give a claimed guest's bundle the bottle: write the bottle's
/// `bundle.json` in its (moved) state directory and send the claim on
/// `pool.sock`; the bundle builds the guards from it and answers.
pub fn attach(plan: &Plan, dir: &StateDir) -> anyhow::Result<()> {
    let config = crate::backend::vm::bundle_config(plan).map_err(|e: BackendError| {
        anyhow::Error::new(e).context("cannot make the bottle's bundle config")
    })?;
    let bytes = serde_json::to_vec_pretty(&config)?;
    crate::state::write_atomic(&dir.file(files::CONFIG), &bytes)?;
    let sock = dir.file(files::POOL_CLAIM);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock)
        .with_context(|| format!("cannot reach the pooled bundle on {}", sock.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let request = crate::bundle::ClaimRequest {
        dir: dir.path().to_path_buf(),
    };
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .context("the pooled bundle did not answer the claim")?;
    let _ = std::fs::remove_file(&sock);
    match answer.trim().split_once(' ') {
        Some(("OK", _)) => Ok(()),
        Some(("ERR", why)) => anyhow::bail!("the pooled bundle refused the claim: {why}"),
        _ => anyhow::bail!("the pooled bundle answered the claim with {answer:?}"),
    }
}

/// The root shell lines that give a claimed guest the bottle's hostname
/// (it booted as `bottle`, with no name of any bottle): the kernel's
/// hostname and `/etc/hosts`, as a cold boot's init writes them. Run by
/// [`crate::provision::provision_claimed`].
pub fn hostname_script(plan: &Plan) -> String {
    // An identity is [a-z0-9_-]; a hostname takes [a-z0-9-] (as on the
    // kernel command line of a cold boot). Nothing else reaches the shell.
    let hostname: String = plan
        .identity
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .collect();
    format!(
        "echo {hostname} > /proc/sys/kernel/hostname\nprintf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n%s\\t%s\\n' {hostname} {} {} > /etc/hosts",
        plan.network.gateway,
        bottle_contract::PROXY_HOST
    )
}
