//! The launcher: one `bottle run`, in the order it happens.
//!
//! 1. The state directory and its metadata (status `starting`).
//! 2. The backend launches the bottle: its bundle, then its sandbox
//!    (`Backend::launch`), recording pids and ids in the metadata.
//! 3. Wait for the guest agent on the bundle's control socket.
//! 4. Provision the guest (`provision`).
//! 5. The agent's command: in a holder process that outlives this one
//!    (`detached`) when on a terminal (this client attaches to it) or with
//!    `--detach`; else here, on this process's pipes (`session`).
//! 6. Unless detached: keep the workspace and transcripts (`kept`), stop
//!    the bottle ([`stop`]) and retire its state.
//!
//! A failure or a signal at any step stops what was made so far.

use crate::backend::{backend_for, BackendError};
use crate::bundle::files;
use crate::manifest::BackendName;
use crate::plan::Plan;
use crate::session::{self, Interrupts, SESSION_FILE};
use crate::state::{self, Metadata, StateDir, Status};
use crate::timing;
use std::io::IsTerminal;
use std::time::Duration;

/// Launch a bottle for `plan`, run its command, tear it down unless detached.
/// Returns the command's exit code.
pub fn launch_and_run(plan: &Plan, detach: bool) -> anyhow::Result<i32> {
    let backend = backend_for(plan.backend);
    let root = state::state_root()?;
    // A VM bottle claims a pooled guest of its shape when a pool runs.
    timing::step("claim-start");
    let (dir, pooled) = match crate::pool::claim(&root, plan) {
        crate::pool::Start::Warm(claimed) => {
            let claimed = *claimed;
            timing::step("claimed");
            // Its bundle builds the bottle's guards now. A guest that fails
            // here is destroyed and the bottle boots cold instead.
            let attached = write_kept_grants(plan, &claimed.dir)
                .and_then(|()| crate::pool::attach(plan, &claimed.dir));
            // The pool refills behind it once this bottle is provisioned.
            if let Err(e) = crate::pool::spawn_refill(&root, Some(&plan.identity)) {
                eprintln!("bottle: warning: the pool is not refilled: {e:#}");
            }
            match attached {
                Ok(()) => {
                    eprintln!(
                        "bottle: warm: claimed pooled guest {} (qemu pid {})",
                        claimed.entry.identity,
                        claimed
                            .entry
                            .vm_pid
                            .map_or_else(|| "?".to_string(), |p| p.to_string())
                    );
                    (claimed.dir, Some(claimed.entry))
                }
                Err(e) => {
                    eprintln!(
                        "bottle: cold boot: pooled guest {} failed at its claim ({e:#}); it was destroyed",
                        claimed.entry.identity
                    );
                    crate::pool::discard(claimed);
                    (StateDir::create(&root, &plan.identity)?, None)
                }
            }
        }
        crate::pool::Start::Cold(why) => {
            eprintln!("bottle: cold boot: {why}");
            (StateDir::create(&root, &plan.identity)?, None)
        }
        crate::pool::Start::NoPool => (StateDir::create(&root, &plan.identity)?, None),
    };
    if pooled.is_none() {
        write_kept_grants(plan, &dir)?;
    }
    if let Some(requests) = plan.resume.as_ref().and_then(|r| r.requests.as_ref()) {
        copy_requests(requests, &dir.file(bottle_sidecars::supervise::DIR))?;
    }
    let meta = Metadata {
        version: state::METADATA_VERSION,
        identity: plan.identity.clone(),
        agent: plan.agent.clone(),
        bottle: plan.bottle.clone(),
        cwd: plan.cwd.clone(),
        backend: plan.backend,
        engine: pooled.as_ref().and_then(|e| e.engine).or(plan.engine),
        started_at: state::now_rfc3339(),
        status: Status::Starting,
        bundle_pid: pooled.as_ref().and_then(|e| e.bundle_pid),
        vm_pid: pooled.as_ref().and_then(|e| e.vm_pid),
        container_id: None,
        cgroup: pooled.as_ref().and_then(|e| e.cgroup.clone()),
        command: plan.command.clone(),
        audit_head: None,
        manifest: plan.manifest_path.clone(),
        pooled: pooled.as_ref().map(|e| e.identity.clone()),
    };
    dir.write_metadata(&meta)?;
    // Approved image additions stay with the bottle for its next resume.
    if let Some(packages) = plan
        .resume
        .as_ref()
        .map(|r| &r.image_packages)
        .filter(|p| !p.is_empty())
    {
        state::write_atomic(
            &dir.file(crate::kept::IMAGE_ADDITIONS),
            &serde_json::to_vec(packages)?,
        )?;
    }
    // Whatever fails from here on takes down what was made so far.
    let fail = |e: anyhow::Error| -> anyhow::Error {
        let meta = dir.read_metadata().unwrap_or_else(|_| meta.clone());
        let _ = stop(&meta, &dir);
        let _ = dir.clone().retire();
        e
    };
    let started = std::time::Instant::now();
    timing::step("planned");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // From here on SIGINT/SIGTERM/SIGHUP tear the bottle down instead of
    // killing this process half way and leaving a VM or container behind.
    let mut interrupts = runtime.block_on(async { Interrupts::new() })?;
    // A claimed pooled guest is already running and attached.
    if pooled.is_none() {
        if let Err(e) = backend.launch(plan, &dir) {
            return Err(fail(
                anyhow::Error::new(e).context(format!("cannot launch {}", plan.identity)),
            ));
        }
    }
    if let Some(signal) = runtime.block_on(interrupts.pending()) {
        return Err(fail(anyhow::anyhow!(
            "interrupted by {signal} while launching; stopped and removed {}",
            plan.identity
        )));
    }
    timing::step("launched");
    eprintln!(
        "bottle: {} launched in {} ms; waiting for the guest agent",
        plan.identity,
        started.elapsed().as_millis()
    );
    let ready = runtime.block_on(interrupts.guard(async {
        let client = bottle_guest::host::Client::connect(&dir.file(files::CONTROL)).await?;
        wait_for_guest(&client, &dir).await?;
        timing::step("agent-ready");
        eprintln!(
            "bottle: guest agent ready after {} ms",
            started.elapsed().as_millis()
        );
        let ca = crate::provision::read_ca(dir.path())?;
        if pooled.is_some() {
            let hostname = crate::pool::hostname_script(plan);
            crate::provision::provision_claimed(&client, plan, &ca, &hostname).await?;
        } else {
            crate::provision::provision(&client, plan, &ca).await?;
        }
        anyhow::Ok(client)
    }));
    let client = match ready {
        Ok(c) => c,
        Err(e) => {
            let tails = crate::bundle::failure_logs(&dir);
            return Err(fail(e.context(format!(
                "{} started but could not be provisioned\n{tails}",
                plan.identity
            ))));
        }
    };
    dir.update_metadata(|m| m.status = Status::Running)?;
    timing::step("provisioned");
    eprintln!(
        "bottle: {} provisioned in {} ms; running {}",
        plan.identity,
        started.elapsed().as_millis(),
        crate::plan::render_command(&plan.command)
    );
    let session = crate::provision::session(plan);
    let bytes = serde_json::to_vec(&session)?;
    state::write_atomic(&dir.file(SESSION_FILE), &bytes)?;
    // On a terminal the session belongs to the bottle too: a holder runs it
    // and this client attaches, so a closed terminal or the detach keys
    // leave the agent running (`bottle attach` rejoins it).
    let interactive = !detach && std::io::stdin().is_terminal();
    if detach || interactive {
        drop(client);
        drop(interrupts);
        runtime.shutdown_background();
        if let Err(e) = crate::detached::start(&dir, &plan.command) {
            return Err(fail(e.context(format!(
                "{} was provisioned but its command could not be started",
                plan.identity
            ))));
        }
        timing::step("command-started");
        if detach {
            eprintln!(
                "bottle: {0} runs detached (bottle attach {0}, bottle exec {0} -- CMD, bottle stop {0})",
                plan.identity
            );
            println!("{}", plan.identity);
            return Ok(0);
        }
        return match crate::detached::attach(&dir, &plan.identity) {
            Ok(crate::detached::AttachEnd::Exited(code)) => {
                timing::step("command-done");
                report_kept(&crate::kept::keep_running(&dir));
                let meta = dir.read_metadata().unwrap_or(meta);
                stop(&meta, &dir)?;
                let _ = dir.update_metadata(|m| m.status = Status::Stopped);
                dir.retire()?;
                timing::step("torn-down");
                Ok(code)
            }
            Ok(crate::detached::AttachEnd::Detached) => Ok(0),
            Err(e) => Err(e.context(format!(
                "lost the session; {0} keeps running (bottle attach {0}, bottle stop {0})",
                plan.identity
            ))),
        };
    }
    let code =
        runtime.block_on(interrupts.guard(session::run(&client, &session, plan.command.clone())));
    timing::step("command-exited");
    // What the agent left, for `bottle resume`.
    report_kept(&runtime.block_on(crate::kept::keep(&client, &dir)));
    timing::step("kept");
    match plan.backend {
        // Power the guest off first: the VM, then the bundle, exit at once.
        BackendName::Vm => {
            let _ = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), client.poweroff(false)).await
            });
        }
        // The guest agent is not init there; the teardown removes the container.
        BackendName::Docker => {}
    }
    drop(client);
    // The attach helper reads stdin on a blocking thread that only returns at
    // the next key press; do not wait for it.
    drop(interrupts);
    runtime.shutdown_background();
    timing::step("command-done");
    timing::guest_steps(&dir.file(files::CONSOLE));
    let meta = dir.read_metadata().unwrap_or(meta);
    stop(&meta, &dir)?;
    timing::step("stopped");
    let _ = dir.update_metadata(|m| m.status = Status::Stopped);
    dir.retire()?;
    timing::step("torn-down");
    code
}

/// A resumed bottle's approved supervise grants, where its bundle's
/// supervise reads them at start (or at a pooled guest's claim).
fn write_kept_grants(plan: &Plan, dir: &StateDir) -> anyhow::Result<()> {
    if let Some(grants) = plan.resume.as_ref().and_then(|r| r.grants.as_ref()) {
        let bytes = std::fs::read(grants).map_err(|e| {
            anyhow::anyhow!("cannot read the kept grants {}: {e}", grants.display())
        })?;
        state::write_atomic(&dir.file(bottle_sidecars::supervise::GRANTS_FILE), &bytes)?;
    }
    Ok(())
}

/// Say what a stopping bottle kept (or could not keep).
pub fn report_kept(report: &crate::kept::KeptReport) {
    for line in &report.lines {
        eprintln!("bottle: {line}");
    }
}

/// Stop everything a bottle made: its detached session holder, then what
/// its backend made (sandbox, bundle, cgroup). The state directory stays
/// (the caller retires it). Idempotent.
pub fn stop(meta: &Metadata, dir: &StateDir) -> Result<(), BackendError> {
    crate::detached::stop(dir);
    let result = backend_for(meta.backend).teardown(meta, dir);
    // The bundle is gone: its audit head is final. Kept in the metadata (which
    // outlives the bottle with the log) so a cut tail shows in `bottle logs`.
    if let Err(e) = dir.record_audit_head() {
        eprintln!("bottle: warning: cannot record the audit log's head: {e:#}");
    }
    result
}

/// Wait for the guest agent, giving up early when the bundle (and so the VM) is gone.
async fn wait_for_guest(client: &bottle_guest::host::Client, dir: &StateDir) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + guest_timeout();
    loop {
        match client.wait_ready(Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let meta = dir.read_metadata()?;
                if !crate::bundle::is_alive(&meta) {
                    anyhow::bail!("the bundle process exited before the guest agent answered (the VM stopped)");
                }
                if std::time::Instant::now() >= deadline {
                    return Err(anyhow::Error::new(e).context(format!(
                        "the guest agent did not answer within {} s",
                        guest_timeout().as_secs()
                    )));
                }
            }
        }
    }
}

/// How long to wait for the guest agent (a TCG boot is slower).
fn guest_timeout() -> Duration {
    std::env::var("BOTTLE_GUEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs)
}

/// Copy a stopped bottle's kept requests (`supervise/*.json`) into the new
/// state directory (0700, files 0600); the bundle validates each on read.
fn copy_requests(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from)
        .map_err(|e| anyhow::anyhow!("cannot read the kept requests {}: {e}", from.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_request = name.to_str().is_some_and(|n| n.ends_with(".json"));
        if is_request && entry.file_type().is_ok_and(|t| t.is_file()) {
            let bytes = std::fs::read(entry.path()).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the kept request {}: {e}",
                    entry.path().display()
                )
            })?;
            state::write_atomic(&to.join(&name), &bytes)?;
        }
    }
    Ok(())
}
