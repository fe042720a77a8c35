//! `bottle resume` and `bottle transcript`: a bottle after its agent stopped.

use super::{lifecycle, print, run};
use crate::cli::BackendFlags;
use crate::kept::{self, ResumeFrom};
use crate::manifest::{self, BackendName, Origin};
use crate::state::{self, StateDir};
use anyhow::Context;

/// Rejoin a running bottle's session, or restart a stopped one: the same
/// identity, agent and manifest (trusted again if it changed), the
/// workspace and transcripts it kept, and the agent continuing.
pub fn resume(id: &str, detach: bool, yes: bool) -> anyhow::Result<()> {
    let root = state::state_root()?;
    if let Ok(dir) = StateDir::open(&root, id) {
        let meta = dir.read_metadata().with_context(|| {
            format!("bottle `{id}` has broken state; `bottle cleanup` removes it")
        })?;
        if crate::bundle::is_alive(&meta) {
            return lifecycle::attach(id);
        }
        anyhow::bail!(
            "bottle {id} is not running but its state is still here; `bottle cleanup` removes it, then `bottle resume {id}` restarts it from what it kept"
        );
    }
    let archive = state::archived(&root, id).with_context(|| {
        format!(
            "no bottle `{id}` running or stopped on this host (`bottle ls` lists running ones; stopped ones are kept in {})",
            state::logs_root(&root).display()
        )
    })?;
    let meta = state::read_metadata_in(&archive)
        .with_context(|| format!("the record of {id} in {} is unreadable", archive.display()))?;
    let origin = match &meta.manifest {
        Some(path) => Origin::Flag(path.clone()),
        None => Origin::Embedded,
    };
    let loaded = manifest::load(origin)
        .with_context(|| format!("cannot load the manifest {id} was started from"))?;
    manifest::trust::require(&loaded)?;
    let flags = BackendFlags {
        vm: meta.backend == BackendName::Vm,
        docker: meta.backend == BackendName::Docker,
        ..BackendFlags::default()
    };
    let mut plan = run::make_plan_as(
        &loaded,
        &meta.cwd,
        &meta.agent,
        flags,
        kept::resume_command(&meta.command),
        Some(id.to_string()),
    )?;
    let (workspace, transcripts) = kept::kept_in(&archive);
    eprint!("{}", plan.render());
    eprintln!(
        "Resuming {id}: workspace from {}; agent transcripts {}",
        workspace
            .as_ref()
            .map_or("the working directory (none was kept)".to_string(), |p| p
                .display()
                .to_string()),
        transcripts
            .as_ref()
            .map_or("none kept".to_string(), |p| format!("from {}", p.display())),
    );
    let grants =
        Some(archive.join(bottle_sidecars::supervise::GRANTS_FILE)).filter(|p| p.is_file());
    let requests = Some(archive.join(bottle_sidecars::supervise::DIR)).filter(|p| p.is_dir());
    let image_packages = kept::image_additions(&archive);
    kept::add_packages(&mut plan, &image_packages)?;
    if !image_packages.is_empty() {
        eprintln!(
            "Image {}: with the approved package(s) {}",
            plan.image,
            image_packages.join(", ")
        );
    }
    plan.resume = Some(ResumeFrom {
        workspace,
        transcripts,
        grants,
        requests,
        image_packages,
    });
    if !yes {
        run::confirm()?;
    }
    run::build_own_image(&plan)?;
    let code = crate::launch::launch_and_run(&plan, detach)?;
    lifecycle::exit_with(code)
}

/// Where a bottle's transcripts are, one `what<TAB>path` line each.
pub fn transcript(id: &str) -> anyhow::Result<()> {
    let root = state::state_root()?;
    let (dir, running) = match StateDir::open(&root, id) {
        Ok(dir) => (dir.path().to_path_buf(), true),
        Err(e) => match state::archived(&root, id) {
            Some(archive) => (archive, false),
            None => {
                return Err(anyhow::Error::new(e).context(format!(
                    "no bottle `{id}` running, and nothing kept for it in {}",
                    state::logs_root(&root).display()
                )))
            }
        },
    };
    let mut out = String::new();
    let mut line = |what: &str, path: std::path::PathBuf| {
        if path.exists() {
            out.push_str(&format!("{what}\t{}\n", path.display()));
        }
    };
    line("session output", dir.join(crate::detached::TRANSCRIPT));
    line(
        "agent transcripts",
        dir.join(kept::KEPT).join(kept::KEPT_TRANSCRIPTS),
    );
    line("workspace", dir.join(kept::KEPT).join(kept::KEPT_WORKSPACE));
    line("audit log", dir.join(crate::bundle::files::AUDIT));
    if running {
        out.push_str(&format!(
            "# {id} is running: the agent's transcripts are kept when it stops (or now: bottle cp {id}:{} DEST)\n",
            kept::GUEST_TRANSCRIPTS
        ));
    }
    print(&out)
}
