//! Launching a bottle and tearing it down: state dir, bundle process, backend,
//! provisioning, the agent's session. Shared by both backends.

use crate::backend::{backend_for, BackendError, Found};
use crate::manifest::BackendName;
use crate::plan::Plan;
use crate::state::{self, Metadata, StateDir, Status};
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// Whether a pid is a live process whose command line mentions `needle`
/// (so a recycled pid is never mistaken for ours).
pub fn pid_matches(pid: u32, needle: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => needle.is_empty() || String::from_utf8_lossy(&cmdline).contains(needle),
        Err(_) => false,
    }
}

/// Whether the bottle's processes (or container) are still there.
pub fn is_alive(meta: &Metadata) -> bool {
    meta.bundle_pid
        .is_some_and(|pid| pid_matches(pid, &meta.identity))
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
    }
}

/// Stop a process we started: SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop_process(pid: u32, needle: &str, grace: Duration) {
    if !pid_matches(pid, needle) {
        return;
    }
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if !pid_matches(pid, needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..40 {
        if !pid_matches(pid, needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Memory the bundle's guards may use beyond the VM's own memory (qemu's
/// TCG translation cache included); past it the kernel stops this bottle,
/// not the host.
pub const BUNDLE_MEMORY_MIB: u64 = 1024;
/// Processes and threads of one bottle's bundle and VM.
pub const BUNDLE_PIDS: u32 = 1024;

/// Put the bundle (and so the VM it starts) in its own cgroup with memory
/// and pids limits, where the host lets us; warn where it does not.
fn confine_bundle(
    config: &crate::bundle::BundleConfig,
    pid: u32,
) -> Option<crate::sys::cgroup::Confined> {
    let vm_mib = match &config.mode {
        crate::bundle::Mode::Vm(vm) => u64::from(vm.memory_mib),
        _ => 0,
    };
    let limits = crate::sys::cgroup::Limits {
        memory_bytes: (vm_mib + BUNDLE_MEMORY_MIB) << 20,
        pids: BUNDLE_PIDS,
    };
    match crate::sys::cgroup::confine(&config.identity, pid, limits) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "bottle: warning: {}: the bundle runs without memory and pids limits ({e})",
                config.identity
            );
            None
        }
    }
}

/// Stop everything a bottle made. Idempotent.
pub fn teardown(meta: &Metadata, dir: &StateDir) -> Result<(), BackendError> {
    crate::detached::stop(dir);
    let result = backend_for(meta.backend).teardown(meta, dir);
    if let Some(pid) = meta.vm_pid {
        stop_process(pid, &meta.identity, Duration::from_secs(2));
    }
    if let Some(pid) = meta.bundle_pid {
        stop_process(pid, &meta.identity, Duration::from_secs(3));
    }
    if let Some(confined) = &meta.cgroup {
        crate::sys::cgroup::release(confined);
    }
    result
}

/// Remove a bottle a backend runs that has no state: its bundle process
/// (VM) or its container (Docker).
pub fn remove_orphan(backend: BackendName, found: &Found) -> Result<(), BackendError> {
    match backend {
        BackendName::Vm => {
            if let Ok(pid) = found.handle.parse::<u32>() {
                stop_process(pid, &found.identity, Duration::from_secs(3));
            }
            Ok(())
        }
        BackendName::Docker => crate::backend::docker_backend::remove_container(&found.identity),
    }
}

/// The last `lines` lines of a log file, for failure reports.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(_) => format!("({} is missing)", path.display()),
    }
}

/// Spawn the bundle process for a bottle and wait for its READY line.
/// Records its pid (and the VM's) in the metadata.
pub fn start_bundle(
    dir: &StateDir,
    config: &crate::bundle::BundleConfig,
    timeout: Duration,
) -> Result<crate::bundle::Ready, BackendError> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let bytes = serde_json::to_vec_pretty(config)
        .map_err(|e| BackendError::failed("cannot encode the bundle config", e))?;
    state::write_atomic(&dir.file(crate::bundle::files::CONFIG), &bytes)
        .map_err(|e| BackendError::failed("cannot write the bundle config", e))?;
    let log_path = dir.file(crate::bundle::files::LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| BackendError::failed(format!("cannot open {}", log_path.display()), e))?;
    let exe = std::env::current_exe()
        .map_err(|e| BackendError::failed("cannot find the bottle binary", e))?;
    let mut child = Command::new(exe)
        .arg("__bundle")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C on the terminal is for the agent, not the guards.
        .process_group(0)
        .spawn()
        .map_err(|e| BackendError::failed("cannot start the bundle process", e))?;
    let pid = child.id();
    let confined = confine_bundle(config, pid);
    dir.update_metadata(|m| {
        m.bundle_pid = Some(pid);
        m.cgroup = confined;
    })
    .map_err(|e| BackendError::failed("cannot record the bundle pid", e))?;
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
        BackendError::Unavailable(format!(
            "{why}\n--- bundle log ({}) ---\n{}\n--- VM console ({}) ---\n{}",
            log_path.display(),
            log_tail(&log_path, 25),
            dir.file(crate::bundle::files::CONSOLE).display(),
            log_tail(&dir.file(crate::bundle::files::CONSOLE), 15)
        ))
    };
    match rx.recv_timeout(timeout) {
        Ok(line) => match crate::bundle::Ready::parse(&line) {
            Some(ready) => {
                dir.update_metadata(|m| {
                    m.vm_pid = ready.vm_pid;
                    if ready.engine.is_some() {
                        m.engine = ready.engine;
                    }
                })
                .map_err(|e| BackendError::failed("cannot record the VM pid", e))?;
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

/// With `BOTTLE_TIMING=1`, print when a launch step finished, in ms since
/// the process started (read by `bench/boot.sh`).
pub fn timing(step: &str) {
    if std::env::var_os("BOTTLE_TIMING").is_some_and(|v| v == "1") {
        let start = crate::commands::START.get_or_init(std::time::Instant::now);
        eprintln!("bottle: timing {step} {} ms", start.elapsed().as_millis());
    }
}

/// Launch a bottle for `plan`, run its command, tear it down unless detached.
/// Returns the command's exit code.
pub fn launch_and_run(plan: &Plan, detach: bool) -> anyhow::Result<i32> {
    let backend = backend_for(plan.backend);
    let root = state::state_root()?;
    let dir = StateDir::create(&root, &plan.identity)?;
    let meta = Metadata {
        version: state::METADATA_VERSION,
        identity: plan.identity.clone(),
        agent: plan.agent.clone(),
        bottle: plan.bottle.clone(),
        cwd: plan.cwd.clone(),
        backend: plan.backend,
        engine: plan.engine,
        started_at: state::now_rfc3339(),
        status: Status::Starting,
        bundle_pid: None,
        vm_pid: None,
        container_id: None,
        cgroup: None,
        command: plan.command.clone(),
    };
    dir.write_metadata(&meta)?;
    let fail = |e: anyhow::Error| -> anyhow::Error {
        let meta = dir.read_metadata().unwrap_or_else(|_| meta.clone());
        let _ = teardown(&meta, &dir);
        let _ = dir.clone().retire();
        e
    };
    let timing = std::time::Instant::now();
    self::timing("planned");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // From here on SIGINT/SIGTERM/SIGHUP tear the bottle down instead of
    // killing this process half way and leaving a VM or container behind.
    let mut interrupts = runtime.block_on(async { Interrupts::new() })?;
    if let Err(e) = backend.launch(plan, &dir) {
        return Err(fail(
            anyhow::Error::new(e).context(format!("cannot launch {}", plan.identity)),
        ));
    }
    if let Some(signal) = runtime.block_on(interrupts.pending()) {
        return Err(fail(anyhow::anyhow!(
            "interrupted by {signal} while launching; stopped and removed {}",
            plan.identity
        )));
    }
    self::timing("launched");
    eprintln!(
        "bottle: {} launched in {} ms; waiting for the guest agent",
        plan.identity,
        timing.elapsed().as_millis()
    );
    let ready = runtime.block_on(interrupts.guard(async {
        let client =
            bottle_guest::host::Client::connect(&dir.file(crate::bundle::files::CONTROL)).await?;
        wait_for_guest(&client, &dir).await?;
        self::timing("agent-ready");
        eprintln!(
            "bottle: guest agent ready after {} ms",
            timing.elapsed().as_millis()
        );
        let ca = crate::provision::read_ca(dir.path())?;
        crate::provision::provision(&client, plan, &ca).await?;
        anyhow::Ok(client)
    }));
    let client = match ready {
        Ok(c) => c,
        Err(e) => {
            let tails = format!(
                "--- bundle log ---\n{}\n--- VM console ---\n{}",
                log_tail(&dir.file(crate::bundle::files::LOG), 20),
                log_tail(&dir.file(crate::bundle::files::CONSOLE), 20)
            );
            return Err(fail(e.context(format!(
                "{} started but could not be provisioned\n{tails}",
                plan.identity
            ))));
        }
    };
    dir.update_metadata(|m| m.status = Status::Running)?;
    self::timing("provisioned");
    eprintln!(
        "bottle: {} provisioned in {} ms; running {}",
        plan.identity,
        timing.elapsed().as_millis(),
        crate::plan::render_command(&plan.command)
    );
    let session = SessionSpec {
        env: crate::provision::agent_env(plan),
        cwd: crate::provision::agent_cwd(plan),
        uid: crate::provision::layout(plan)
            .privileged
            .then_some(crate::provision::AGENT_UID),
    };
    let bytes = serde_json::to_vec(&session)?;
    state::write_atomic(&dir.file(SESSION_FILE), &bytes)?;
    if detach {
        // The session belongs to the bottle: a holder process runs it, and
        // this client returns as soon as the command started.
        drop(client);
        drop(interrupts);
        runtime.shutdown_background();
        if let Err(e) = crate::detached::start(&dir, &plan.command) {
            return Err(fail(e.context(format!(
                "{} was provisioned but its command could not be started",
                plan.identity
            ))));
        }
        self::timing("command-started");
        eprintln!(
            "bottle: {0} runs detached (bottle attach {0}, bottle exec {0} -- CMD, bottle stop {0})",
            plan.identity
        );
        println!("{}", plan.identity);
        return Ok(0);
    }
    let code =
        runtime.block_on(interrupts.guard(run_session(&client, &session, plan.command.clone())));
    if let BackendName::Vm = plan.backend {
        // Power the guest off first: the VM, then the bundle, exit at once.
        let _ = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), client.poweroff(false)).await
        });
    }
    drop(client);
    // The attach helper reads stdin on a blocking thread that only returns at
    // the next key press; do not wait for it.
    drop(interrupts);
    runtime.shutdown_background();
    self::timing("command-done");
    let meta = dir.read_metadata().unwrap_or(meta);
    teardown(&meta, &dir)?;
    let _ = dir.update_metadata(|m| m.status = Status::Stopped);
    dir.retire()?;
    self::timing("torn-down");
    code
}

/// SIGINT, SIGTERM and SIGHUP, caught so that a launch can clean up.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// A signal that already arrived, if any.
    async fn pending(&mut self) -> Option<&'static str> {
        tokio::select! {
            biased;
            signal = self.recv() => Some(signal),
            _ = std::future::ready(()) => None,
        }
    }

    /// Run `fut`, or fail when a signal arrives first.
    async fn guard<T>(
        &mut self,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            result = fut => result,
            signal = self.recv() => Err(anyhow::anyhow!("interrupted by {signal}")),
        }
    }
}

/// Wait for the guest agent, giving up early when the bundle (and so the VM) is gone.
async fn wait_for_guest(client: &bottle_guest::host::Client, dir: &StateDir) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + guest_timeout();
    loop {
        match client.wait_ready(Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let meta = dir.read_metadata()?;
                if !is_alive(&meta) {
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

/// Run `command` as the agent on this terminal (or plain pipes); its exit code.
async fn run_session(
    client: &bottle_guest::host::Client,
    session: &SessionSpec,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let tty = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        Some(bottle_guest::host::terminal_size().unwrap_or((24, 80)))
    } else {
        None
    };
    let mut env = session.env.clone();
    if tty.is_some() {
        env.push((
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into()),
        ));
    }
    let request = bottle_guest::proto::ExecRequest {
        argv: command,
        env,
        cwd: Some(session.cwd.clone()),
        user: session.uid.map(bottle_guest::proto::User::Uid),
        tty,
    };
    let session = client.exec(request).await?;
    let status = bottle_guest::host::attach(session).await?;
    Ok(status.shell_code())
}

/// Run a command in a running bottle on the user's terminal; its exit code.
pub fn run_in(dir: &StateDir, meta: &Metadata, command: Vec<String>) -> anyhow::Result<i32> {
    if !is_alive(meta) {
        anyhow::bail!(
            "bottle {} is not running (its bundle process is gone); `bottle cleanup` removes it",
            meta.identity
        );
    }
    let path = dir.file(SESSION_FILE);
    let session: SessionSpec = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", path.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        let client =
            bottle_guest::host::Client::connect(&dir.file(crate::bundle::files::CONTROL)).await?;
        run_session(&client, &session, command).await
    });
    // The attach helper reads stdin on a blocking thread that only returns at
    // the next key press; do not wait for it.
    runtime.shutdown_background();
    code
}

/// How commands run in a bottle (environment, directory), kept for `exec` and `attach`.
pub const SESSION_FILE: &str = "session.json";

/// The agent's environment and working directory in the guest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionSpec {
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// The uid to ask the guest agent for (`None`: its own, in a container).
    pub uid: Option<u32>,
}

/// Print and verify a bottle's audit log.
pub fn print_audit(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(crate::bundle::files::AUDIT);
    let records = bottle_sidecars::proxy::audit::read_verified(&path)
        .with_context(|| format!("audit log {} failed verification", path.display()))?;
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(&r)?);
        out.push('\n');
    }
    crate::commands::print_text(&out)
}

/// Bundle processes of bottles under the state root `root`: (pid, identity),
/// found in /proc by their command line `… __bundle <root>/<identity>`.
/// Bottles of other state roots (other users, other test sandboxes) are not ours.
pub fn bundle_processes(root: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if let Some(pos) = args.iter().position(|a| *a == b"__bundle") {
            if let Some(dir) = args.get(pos + 1) {
                let dir = Path::new(std::str::from_utf8(dir).unwrap_or_default());
                if dir.parent() != Some(root) {
                    continue;
                }
                if let Some(identity) = dir.file_name().and_then(|n| n.to_str()) {
                    if crate::identity::is_identity(identity) {
                        found.push((pid, identity.to_string()));
                    }
                }
            }
        }
    }
    found
}
