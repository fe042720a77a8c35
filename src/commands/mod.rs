//! One module per subcommand; `main` dispatches and maps errors to exit codes:
//! 0 success, 1 failure, 2 usage or configuration error, and a command's own
//! status for `run` and `exec`. A broken pipe on output counts as success.

mod cleanup;
mod cp;
mod doctor;
mod lifecycle;
mod ls;
mod pool;
mod resume;
pub(crate) mod run;
mod save;
pub(crate) mod supervise;
mod trust;

use crate::cli::{Cli, Command};
use clap::{CommandFactory, Parser};
use std::io::Write;
use std::process::ExitCode;
pub(crate) use supervise::parse_duration;

/// A usage or configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A command's own exit status, passed through.
#[derive(Debug, thiserror::Error)]
#[error("command exited with status {0}")]
pub struct ExitStatusError(pub u8);

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    crate::timing::start();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let manifest = cli.manifest;
    let done = match cli.command {
        Command::Run {
            agent,
            backend,
            yes,
            dry_run,
            detach,
            command,
        } => run::run(run::RunArgs {
            manifest,
            agent,
            backend,
            yes,
            dry_run,
            detach,
            command,
        }),
        Command::Plan {
            agent,
            backend,
            json,
        } => run::plan(manifest, &agent, backend, json),
        Command::Trust { path, revoke, list } => trust::trust(manifest, path, revoke, list),
        Command::Untrust { path } => trust::trust(manifest, path, true, false),
        Command::Ls { json } => ls::ls(json),
        Command::Attach { id } => lifecycle::attach(&id),
        Command::Dashboard => crate::dashboard::app::run(manifest),
        Command::Exec { id, command } => lifecycle::exec(&id, command),
        Command::Stop { id, discard } => lifecycle::stop(&id, discard),
        Command::Resume { id, detach, yes } => resume::resume(&id, detach, yes),
        Command::Transcript { id } => resume::transcript(&id),
        Command::Cp { src, dest } => cp::cp(&src, &dest),
        Command::Logs { id } => lifecycle::logs(&id),
        Command::Policy { id, change, json } => supervise::policy(&id, change, json),
        Command::Requests { id, json } => supervise::requests(id.as_deref(), json),
        Command::Approve {
            id,
            request,
            r#for,
            save,
            yes,
        } => supervise::approve(
            &id,
            &request,
            r#for.as_deref(),
            crate::cli::SaveFlags { save, yes },
        ),
        Command::Reject {
            id,
            request,
            reason,
        } => supervise::reject(&id, &request, reason),
        Command::Cleanup { dry_run } => cleanup::cleanup(dry_run),
        Command::Doctor { rules } => doctor::doctor(rules),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bottle", &mut std::io::stdout());
            Ok(())
        }
        Command::Image(cmd) => lifecycle::image(manifest, cmd),
        Command::Pool(cmd) => match cmd {
            crate::cli::PoolCommand::Start {
                size,
                image,
                cpus,
                memory_mib,
                engine,
            } => pool::start(size, &image, cpus, memory_mib, engine.into()),
            crate::cli::PoolCommand::Status { json } => pool::status(json),
            crate::cli::PoolCommand::Stop => pool::stop(),
        },
        Command::PoolRefill { after } => {
            crate::pool::refill(&crate::state::state_root()?, after.as_deref())
        }
        Command::Session { state_dir } => crate::detached::serve(&state_dir),
        Command::Krun { spec_json } => bottle_vmm::krun_main(&spec_json),
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// Print an error as one paragraph (the chain, without a debug dump) and pick
/// the exit code (also `bottle-bundle`'s).
pub fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(ExitStatusError(code)) = err.downcast_ref::<ExitStatusError>() {
        return ExitCode::from(*code);
    }
    if err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return ExitCode::SUCCESS;
    }
    let mut stderr = std::io::stderr().lock();
    let mut first = true;
    for cause in err.chain() {
        let text = cause.to_string();
        if first {
            let _ = writeln!(stderr, "error: {text}");
            first = false;
        } else {
            let _ = writeln!(stderr, "  caused by: {text}");
        }
    }
    if is_usage(err) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<crate::manifest::ManifestError>()
            || e.is::<crate::plan::PlanError>()
            || e.is::<crate::backend::selection::SelectionError>()
    })
}

/// Write to stdout (a closed pipe ends the output: `report` counts it as success).
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
