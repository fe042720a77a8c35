//! `bottle run` and `bottle plan`: manifest → plan → preflight → launch.

use super::{print, UsageError};
use crate::backend::{backend_for, selection, Availability};
use crate::cli::BackendFlags;
use crate::manifest::{self, BackendName, Loaded};
use crate::plan::{self, Plan, PlanInputs};
use anyhow::Context;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug)]
pub struct RunArgs {
    pub manifest: Option<PathBuf>,
    pub agent: String,
    pub backend: BackendFlags,
    pub yes: bool,
    pub dry_run: bool,
    pub detach: bool,
    pub command: Vec<String>,
}

/// Load the manifest the usual way.
pub fn load_manifest(flag: Option<PathBuf>) -> anyhow::Result<(Loaded, PathBuf)> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    let origin = manifest::locate(flag.as_deref(), &cwd, config_home.as_deref())?;
    Ok((manifest::load(origin)?, cwd))
}

/// Build the plan for an agent (no side effects).
pub fn make_plan(
    loaded: &Loaded,
    cwd: &std::path::Path,
    agent: &str,
    flags: BackendFlags,
    command: Vec<String>,
) -> anyhow::Result<Plan> {
    make_plan_as(loaded, cwd, agent, flags, command, None)
}

/// [`make_plan`] for a given identity (`bottle resume` keeps its own).
pub fn make_plan_as(
    loaded: &Loaded,
    cwd: &std::path::Path,
    agent: &str,
    flags: BackendFlags,
    command: Vec<String>,
    identity: Option<String>,
) -> anyhow::Result<Plan> {
    let (_, bottle) = plan::find_agent(loaded, agent)?;
    let env = std::env::var("BOTTLE_BACKEND").ok();
    let mut cache = std::collections::BTreeMap::new();
    let mut available = |name: BackendName| -> Availability {
        cache
            .entry(name)
            .or_insert_with(|| backend_for(name).availability())
            .clone()
    };
    let (backend, backend_reason) = selection::select(
        flags.backend(),
        env.as_deref(),
        bottle.backend,
        &mut available,
    )?;
    let mut plan = plan::prepare(PlanInputs {
        loaded,
        agent,
        cwd,
        backend,
        backend_reason,
        engine: flags.engine(),
        runtime: flags.runtime(),
        command_override: (!command.is_empty()).then_some(command),
        identity: identity.unwrap_or_else(|| crate::identity::new_identity(agent)),
    })?;
    backend_for(backend)
        .prepare(&mut plan)
        .context("cannot prepare the bottle")?;
    Ok(plan)
}

pub fn plan(
    manifest: Option<PathBuf>,
    agent: &str,
    flags: BackendFlags,
    json: bool,
) -> anyhow::Result<()> {
    let (loaded, cwd) = load_manifest(manifest)?;
    let plan = make_plan(&loaded, &cwd, agent, flags, Vec::new())?;
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&plan)?))
    } else {
        print(&plan.render())
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (loaded, cwd) = load_manifest(args.manifest)?;
    manifest::trust::require(&loaded)?;
    let plan = make_plan(&loaded, &cwd, &args.agent, args.backend, args.command)?;
    if args.dry_run {
        print(&plan.render())?;
        return print("dry run: nothing was started or written.\n");
    }
    // The preflight goes to stderr: stdout belongs to the agent's command.
    eprint!("{}", plan.render());
    if !args.yes {
        confirm()?;
    }
    build_own_image(&plan)?;
    let code = crate::launch::launch_and_run(&plan, args.detach)?;
    if code == 0 {
        Ok(())
    } else {
        Err(super::ExitStatusError(u8::try_from(code.clamp(1, 255)).unwrap_or(1)).into())
    }
}

/// A bottle's own image is built the first time it runs (cached by its
/// definition after that); built-in images are built by `bottle image build`.
pub(super) fn build_own_image(plan: &Plan) -> anyhow::Result<()> {
    if plan.custom_image.is_none() {
        return Ok(());
    }
    let def = crate::images::for_plan(plan)?;
    if crate::images::find(&def).is_ok() {
        return Ok(());
    }
    eprintln!("bottle: building image {} first", plan.image);
    let started = std::time::Instant::now();
    crate::images::build_def(&def)
        .with_context(|| format!("cannot build image {} (nothing was launched)", plan.image))?;
    eprintln!(
        "bottle: image {} built in {} s",
        plan.image,
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Ask y/N on a terminal; refuse without one.
pub(super) fn confirm() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(UsageError("no terminal to confirm the plan on: pass --yes to launch without asking, or --dry-run to only print the plan".to_string()).into());
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "Launch this bottle? [y/N] ")?;
    stderr.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    match answer.trim() {
        "y" | "Y" | "yes" | "Yes" => Ok(()),
        _ => Err(UsageError("not launched: the plan was not confirmed".to_string()).into()),
    }
}
