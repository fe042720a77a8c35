//! `attach`, `exec`, `stop`, `resume`, `logs` and `image` on existing bottles.

use super::{print, ExitStatusError};
use crate::cli::ImageCommand;
use crate::images;
use crate::state::{self, StateDir};
use anyhow::Context;
use std::path::{Path, PathBuf};

pub(super) fn open(id: &str) -> anyhow::Result<(StateDir, state::Metadata)> {
    let root = state::state_root()?;
    let dir = StateDir::open(&root, id)?;
    let meta = dir
        .read_metadata()
        .with_context(|| format!("bottle `{id}` has broken state; `bottle cleanup` removes it"))?;
    Ok((dir, meta))
}

pub(super) fn exit_with(code: i32) -> anyhow::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(ExitStatusError(u8::try_from(code.clamp(1, 255)).unwrap_or(1)).into())
    }
}

pub fn attach(id: &str) -> anyhow::Result<()> {
    let (dir, meta) = open(id)?;
    if !crate::bundle::is_alive(&meta) {
        anyhow::bail!(
            "bottle {id} is not running (its bundle process is gone); `bottle cleanup` removes it"
        );
    }
    match crate::detached::attach(&dir, id)? {
        crate::detached::AttachEnd::Exited(code) => exit_with(code),
        crate::detached::AttachEnd::Detached => Ok(()),
    }
}

pub fn exec(id: &str, command: Vec<String>) -> anyhow::Result<()> {
    let (dir, meta) = open(id)?;
    exit_with(crate::session::run_in(&dir, &meta, command)?)
}

pub fn stop(id: &str, discard: bool) -> anyhow::Result<()> {
    let root = state::state_root()?;
    let dir = StateDir::open(&root, id)?;
    if let Ok(meta) = dir.read_metadata() {
        if !discard && crate::bundle::is_alive(&meta) {
            crate::launch::report_kept(&crate::kept::keep_running(&dir));
        }
        crate::launch::stop(&meta, &dir)?;
        let _ = dir.update_metadata(|m| m.status = state::Status::Stopped);
    }
    dir.retire()?;
    print(&format!("stopped {id}\n"))
}

/// The audit log of a running bottle, or of a stopped one whose logs are kept.
pub fn logs(id: &str) -> anyhow::Result<()> {
    let root = state::state_root()?;
    match StateDir::open(&root, id) {
        Ok(dir) => print_audit(dir.path()),
        Err(e) => match state::archived(&root, id) {
            Some(archive) => print_audit(&archive),
            None => Err(anyhow::Error::new(e).context(format!(
                "no running bottle `{id}` and no kept logs for it in {}",
                state::logs_root(&root).display()
            ))),
        },
    }
}

/// Print a bottle's audit log (all rotated files, oldest first, each line
/// as written) once its chain verifies and reaches the recorded head: a
/// running bottle's `audit.head`, or the head its metadata kept at stop.
fn print_audit(dir: &Path) -> anyhow::Result<()> {
    use bottle_sidecars::audit::{read_head, verify_chain};
    use std::io::Write;
    let path = dir.join(crate::bundle::files::AUDIT);
    let head = match read_head(&path)? {
        Some(head) => Some(head),
        None => state::read_metadata_in(dir).ok().and_then(|m| m.audit_head),
    };
    let failed = || format!("audit log {} failed verification", path.display());
    let verified = verify_chain(&path, head.as_ref(), |_, _| {}).with_context(failed)?;
    if head.is_none() && verified.last > 0 {
        eprintln!(
            "bottle: warning: no head was recorded for this log (a bottle from an older \
             version, or its bundle never wrote one): a cut tail cannot be detected"
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_error = None;
    verify_chain(&path, head.as_ref(), |line, _| {
        if write_error.is_none() {
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
            }
        }
    })
    .with_context(failed)?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    out.flush()?;
    Ok(())
}

/// `bottle image build|ls|rm|prune`.
pub fn image(manifest: Option<PathBuf>, cmd: ImageCommand) -> anyhow::Result<()> {
    let store = bottle_vmm::image::ImageStore::open();
    match cmd {
        ImageCommand::Build { name, claude } => {
            let name = match (name.as_str(), claude) {
                ("debian", true) => "claude".to_string(),
                (_, true) => anyhow::bail!("--claude adds Claude Code to the `debian` image (the result is the `claude` image)"),
                _ => name,
            };
            let def = if images::IMAGE_NAMES.contains(&name.as_str()) {
                images::definition(&name)?
            } else {
                bottle_image(manifest, &name)?
            };
            let started = std::time::Instant::now();
            let dir = images::build_def(&def)?;
            print(&format!(
                "built {} in {} s: {}\n",
                def.name(),
                started.elapsed().as_secs(),
                dir.display()
            ))
        }
        ImageCommand::Ls => {
            let used = in_use(manifest);
            let mut out = String::from("NAME\tKEY\tSIZE\tAGE\tIN USE\tPURPOSE\tDIR\n");
            for i in store.list()? {
                let users: Vec<&str> = used
                    .iter()
                    .filter(|(dir, _)| *dir == i.dir)
                    .map(|(_, who)| who.as_str())
                    .collect();
                out.push_str(&format!(
                    "{}\t{}\t{:.1} MiB\t{}\t{}\t{}\t{}\n",
                    i.name,
                    i.key,
                    i.size_bytes as f64 / (1024.0 * 1024.0),
                    age(i.built),
                    if users.is_empty() {
                        "no".to_string()
                    } else {
                        users.join(", ")
                    },
                    i.purpose,
                    i.dir.display()
                ));
            }
            print(&out)
        }
        ImageCommand::Rm { name } => {
            let victims = match store.builds(&name) {
                Err(bottle_vmm::VmmError::ImageMissing(_)) => {
                    anyhow::bail!("no image `{name}` (see `bottle image ls`)")
                }
                other => other?,
            };
            let mut out = String::new();
            for i in &victims {
                remove_build(&store, i, &mut out)?;
            }
            out.push_str(&format!(
                "removed {} build{} of {name}\n",
                victims.len(),
                if victims.len() == 1 { "" } else { "s" }
            ));
            print(&out)
        }
        ImageCommand::Prune { dry_run } => {
            let used = in_use(manifest);
            let mut freed = 0u64;
            let mut out = String::new();
            for i in store.list()? {
                // Probe images are the boot probes' own, rebuilt on demand.
                if used.iter().any(|(dir, _)| *dir == i.dir) || i.name.starts_with("tiny-probe") {
                    continue;
                }
                if !dry_run {
                    remove_build(&store, &i, &mut out)?;
                }
                freed += i.size_bytes;
                out.push_str(&format!(
                    "{} {} {} ({:.1} MiB)\n",
                    if dry_run { "would remove" } else { "removed" },
                    i.name,
                    i.key,
                    i.size_bytes as f64 / (1024.0 * 1024.0)
                ));
            }
            out.push_str(&format!(
                "{} {:.1} MiB\n",
                if dry_run { "would free" } else { "freed" },
                freed as f64 / (1024.0 * 1024.0)
            ));
            print(&out)
        }
    }
}

/// Deletes one built image: its directory, and the copy Docker imported
/// (noted in `out` when dockerd refuses, e.g. a container still uses it).
fn remove_build(
    store: &bottle_vmm::image::ImageStore,
    i: &bottle_vmm::image::ImageInfo,
    out: &mut String,
) -> anyhow::Result<()> {
    store
        .remove_build(i)
        .with_context(|| format!("cannot remove {}", i.dir.display()))?;
    if let Err(e) = crate::backend::docker_backend::remove_image_copy(&i.name, &i.key) {
        out.push_str(&format!(
            "kept Docker's copy bottle-{}:{}: {e}\n",
            i.name, i.key
        ));
    }
    Ok(())
}

/// The image a bottle of the manifest defines (or names).
fn bottle_image(manifest: Option<PathBuf>, bottle: &str) -> anyhow::Result<images::ImageDef> {
    let (loaded, cwd) = super::run::load_manifest(manifest)?;
    crate::manifest::trust::require(&loaded)?;
    let Some(agent) = loaded
        .manifest
        .agents
        .iter()
        .find(|(_, a)| a.bottle == bottle)
        .map(|(name, _)| name.clone())
    else {
        let known: Vec<&str> = images::IMAGE_NAMES.to_vec();
        anyhow::bail!(
            "`{bottle}` is neither a built-in image ({}) nor a bottle an agent of {} uses",
            known.join(", "),
            loaded.origin.describe()
        );
    };
    images::for_plan(&image_plan(&loaded, &cwd, &agent)?)
}

/// A plan made only to learn an agent's image (nothing is launched, so the
/// backend does not matter).
fn image_plan(
    loaded: &crate::manifest::Loaded,
    cwd: &Path,
    agent: &str,
) -> anyhow::Result<crate::plan::Plan> {
    Ok(crate::plan::prepare(crate::plan::PlanInputs {
        loaded,
        agent,
        cwd,
        backend: crate::manifest::BackendName::Vm,
        backend_reason: String::new(),
        engine: None,
        runtime: None,
        command_override: None,
        identity: crate::identity::new_identity(agent),
    })?)
}

/// Built images in use: this binary's built-in images, and each bottle's
/// image in the manifest (when one loads), with who uses it.
fn in_use(manifest: Option<PathBuf>) -> Vec<(PathBuf, String)> {
    let mut used = Vec::new();
    for name in images::IMAGE_NAMES {
        if let Ok(dir) = images::image_dir(name) {
            used.push((dir, "yes".to_string()));
        }
    }
    let Ok((loaded, cwd)) = super::run::load_manifest(manifest) else {
        return used;
    };
    for (agent, a) in &loaded.manifest.agents {
        let Ok(plan) = image_plan(&loaded, &cwd, agent) else {
            continue;
        };
        if let Ok(dir) = images::for_plan(&plan).and_then(|d| images::find(&d)) {
            let who = format!("bottle {}", a.bottle);
            if !used.iter().any(|(d, w)| *d == dir && *w == who) {
                used.push((dir, who));
            }
        }
    }
    used
}

fn age(built: Option<std::time::SystemTime>) -> String {
    let Some(secs) = built.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()) else {
        return "?".to_string();
    };
    match secs {
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
