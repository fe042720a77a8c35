//! The launcher's side of the bundle: start the process and wait for its
//! `READY` line, confine it, tell whether it lives, find it, stop it.

use super::{files, BundleConfig, Mode, Ready};
use crate::state::{self, Metadata, StateDir};
use crate::sys::process;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the bundle is started: `bottle-bundle __bundle STATE_DIR` (the word
/// also finds its processes in /proc).
pub const SUBCOMMAND: &str = "__bundle";
/// The bundle's binary, next to `bottle`.
pub const BINARY: &str = "bottle-bundle";
/// How to get `bottle-bundle` where it is missing.
pub const BUILD_HINT: &str = "build it with `cargo build --release --bin bottle-bundle` (scripts/setup does) or install it next to `bottle`";
/// git-gate's pre-receive hook: `bottle-bundle __git-hook`.
pub const GIT_HOOK: &str = "__git-hook";

/// Memory the bundle's guards may use beyond the VM's own memory (qemu's
/// TCG translation cache included); past it the kernel stops this bottle,
/// not the host.
pub const BUNDLE_MEMORY_MIB: u64 = 1024;
/// Processes and threads of one bottle's bundle and VM.
pub const BUNDLE_PIDS: u32 = 1024;

/// Why the bundle could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// It started but did not report ready; the text ends with its log.
    #[error("{0}")]
    NotReady(String),
    /// Its binary, `bottle-bundle`, is not next to this one (`beside`).
    #[error("no `{BINARY}` next to {}: it runs each bottle's guards; {BUILD_HINT}", beside.display())]
    NoBinary { beside: PathBuf },
}

fn failed(
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StartError {
    StartError::Failed {
        what: what.into(),
        source: Box::new(source),
    }
}

/// The bundle's binary: `bottle-bundle` next to this executable, or one
/// directory up (a test binary runs from `target/*/deps`).
pub fn executable() -> Result<PathBuf, StartError> {
    let exe = std::env::current_exe().map_err(|e| failed("cannot find the bottle binary", e))?;
    bottle_util::exe::beside(&exe, BINARY).ok_or(StartError::NoBinary { beside: exe })
}

/// The bundle's own cgroup (and so its VM's), with memory and pids limits,
/// made before it is spawned so that it is born inside; where the host does
/// not let us, warn, and the bundle runs unconfined.
fn prepare_groups(config: &BundleConfig) -> Option<crate::sys::cgroup::Prepared> {
    let vm_mib = match &config.mode {
        Mode::Vm(vm) => u64::from(vm.memory_mib),
        Mode::Docker => 0,
    };
    let limits = crate::sys::cgroup::Limits {
        memory_bytes: (vm_mib + BUNDLE_MEMORY_MIB) << 20,
        pids: BUNDLE_PIDS,
    };
    crate::sys::cgroup::prepare(&config.identity, limits)
        .map_err(|e| unconfined(config, &e))
        .ok()
}

fn unconfined(config: &BundleConfig, e: &crate::sys::cgroup::CgroupError) {
    eprintln!(
        "bottle: warning: {}: the bundle runs without memory and pids limits ({e})",
        config.identity
    );
}

/// Write `bundle.json`, spawn the bundle process for a bottle and wait for
/// its READY line. Records its pid, cgroup, and the VM's pid and engine in
/// the metadata.
pub fn start(
    dir: &StateDir,
    config: &BundleConfig,
    timeout: Duration,
) -> Result<Ready, StartError> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let bytes = serde_json::to_vec_pretty(config)
        .map_err(|e| failed("cannot encode the bundle config", e))?;
    state::write_atomic(&dir.file(files::CONFIG), &bytes)
        .map_err(|e| failed("cannot write the bundle config", e))?;
    let log_path = dir.file(files::LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| failed(format!("cannot open {}", log_path.display()), e))?;
    let exe = executable()?;
    let groups = prepare_groups(config);
    let mut cmd = Command::new(exe);
    cmd.arg(SUBCOMMAND)
        .arg(dir.path())
        // Closed once the bundle is in its cgroup (it waits for that).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C on the terminal is for the agent, not the guards.
        .process_group(0);
    if let Some(groups) = &groups {
        groups.enter_in_child(&mut cmd);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            if let Some(groups) = groups {
                groups.abandon();
            }
            return Err(failed("cannot start the bundle process", e));
        }
    };
    let pid = child.id();
    let confined = groups.map(|g| {
        let (groups, entered) = g.confirm(pid);
        if let Err(e) = entered {
            unconfined(config, &e);
        }
        groups
    });
    // Confined (or not confinable here): let the bundle go on.
    drop(child.stdin.take());
    dir.update_metadata(|m| {
        m.bundle_pid = Some(pid);
        m.cgroup = confined;
    })
    .map_err(|e| failed("cannot record the bundle pid", e))?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    let mut failure = |why: String| {
        let _ = child.kill();
        let _ = child.wait();
        StartError::NotReady(format!("{why}\n{}", super::failure_logs(dir)))
    };
    match rx.recv_timeout(timeout) {
        Ok(line) => match Ready::parse(&line) {
            Some(ready) => {
                dir.update_metadata(|m| {
                    m.vm_pid = ready.vm_pid;
                    if ready.engine.is_some() {
                        m.engine = ready.engine;
                    }
                })
                .map_err(|e| failed("cannot record the VM pid", e))?;
                // The child is reaped by nobody once we exit; it was re-parented
                // to its own process group and keeps running as a daemon.
                std::mem::forget(child);
                Ok(ready)
            }
            None => Err(failure("the bundle process failed to start".to_string())),
        },
        Err(_) => Err(failure(format!(
            "the bundle process did not get ready within {} s",
            timeout.as_secs()
        ))),
    }
}

/// Whether the bottle's bundle process (and so its guards) still runs.
pub fn is_alive(meta: &Metadata) -> bool {
    meta.bundle_pid
        .is_some_and(|pid| process::pid_matches(pid, meta.process_tag()))
}

/// Stop the bundle process and remove its cgroup. Idempotent.
pub fn stop(meta: &Metadata) {
    if let Some(pid) = meta.bundle_pid {
        process::stop_process(pid, meta.process_tag(), Duration::from_secs(3));
        crate::timing::step("bundle-stopped");
    }
    if let Some(confined) = &meta.cgroup {
        crate::sys::cgroup::release(confined);
        crate::timing::step("cgroup-released");
    }
}

/// Bundle processes of bottles under the state root `root`: (pid, identity),
/// found in /proc by their command line `… __bundle <root>/<identity>`.
/// Bottles of other state roots (other users, other test sandboxes) are not ours.
pub fn processes(root: &Path) -> Vec<(u32, String)> {
    process::started_with(SUBCOMMAND, root)
        .into_iter()
        .filter(|(_, identity)| crate::identity::is_identity(identity))
        .collect()
}

/// Bundle processes started with a state directory right under `dir`
/// (pooled guests' under `<root>/pool`): (pid, directory name).
pub fn started_under(dir: &Path) -> Vec<(u32, String)> {
    process::started_with(SUBCOMMAND, dir)
}
