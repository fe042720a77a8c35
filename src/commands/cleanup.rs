//! `bottle cleanup`: remove orphans — state whose bottle is gone (or whose
//! metadata is broken), and bottles the backends still run without state.

use super::print;
use crate::backend::backend_for;
use crate::manifest::BackendName;
use crate::state::{self, Entry};

pub fn cleanup(dry_run: bool) -> anyhow::Result<()> {
    let root = state::state_root()?;
    let mut removed = 0usize;
    let mut known = std::collections::BTreeSet::new();
    for entry in state::list(&root)? {
        known.insert(entry.identity().to_string());
        let (dir, why, meta) = match entry {
            Entry::Broken { dir, reason } => (dir, reason, None),
            Entry::Ok(dir, meta) => {
                if crate::bundle::is_alive(&meta) {
                    continue;
                }
                (dir, "its processes are gone".to_string(), Some(meta))
            }
        };
        print(&format!(
            "{}: {why}{}\n",
            dir.identity(),
            if dry_run {
                " (would remove)"
            } else {
                ": removing"
            }
        ))?;
        if !dry_run {
            if let Some(meta) = &meta {
                crate::launch::stop(meta, &dir)?;
            }
            dir.retire()?;
            removed += 1;
        }
    }
    for name in BackendName::ALL {
        let backend = backend_for(name);
        if !backend.availability().is_ready() {
            continue;
        }
        for found in backend.enumerate().unwrap_or_default() {
            if known.contains(&found.identity) {
                continue;
            }
            print(&format!(
                "{}: {name} {} has no state{}\n",
                found.identity,
                found.handle,
                if dry_run {
                    " (would remove)"
                } else {
                    ": removing"
                }
            ))?;
            if !dry_run {
                backend.remove_orphan(&found)?;
                removed += 1;
            }
        }
    }
    // Pooled guests whose pool is gone or which died, and their processes.
    let dead = crate::pool::reap_dead(&root, dry_run)?;
    let strays = crate::pool::sweep(&root, dry_run)?;
    let dead = dead
        .into_iter()
        .map(|n| (n, "pooled guest's processes are gone"));
    let strays = strays
        .into_iter()
        .map(|n| (n, "pooled guest without a pool"));
    for (name, what) in dead.chain(strays) {
        let act = if dry_run {
            " (would remove)"
        } else {
            ": removing"
        };
        print(&format!("{name}: {what}{act}\n"))?;
        if !dry_run {
            removed += 1;
        }
    }
    if !dry_run {
        print(&format!(
            "removed {removed} orphan{}\n",
            if removed == 1 { "" } else { "s" }
        ))?;
    }
    Ok(())
}
