//! The bundle process itself (`bottle-bundle __bundle STATE_DIR`): reads
//! `bundle.json`, serves the guards and the guest mux, starts and supervises
//! the VM, prints `READY …` and lives until told to stop.

use super::{files, BundleConfig, Mode, Ready, VmLaunch};
use crate::plan::Engine;
use anyhow::Context;
use bottle_sidecars::proxy::ProxyRuntime;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;

/// Entry point of `bottle-bundle __bundle STATE_DIR`.
pub fn run(state_dir: &Path) -> anyhow::Result<()> {
    crate::timing::step("bundle-exec");
    let confined = Confinement::watch();
    let config_path = state_dir.join(files::CONFIG);
    let bytes = std::fs::read(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: BundleConfig = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a bundle config", config_path.display()))?;
    if config.pooled || matches!(config.mode, Mode::Docker) {
        // A bottle's own VM starts first and warms up after (see
        // `serve_vm_bundle`); the others from here.
        warm_up_guards();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bundle")
        .build()
        .context("cannot start the bundle's runtime")?;
    runtime.block_on(serve(state_dir.to_path_buf(), config, confined))
}

/// The scanner's rules and the system's roots, on a thread of their own
/// while this one goes on; the guards take them ready (a pooled bundle's at
/// its claim).
fn warm_up_guards() {
    let _ = std::thread::Builder::new()
        .name("proxy-warm-up".into())
        .spawn(bottle_sidecars::proxy::warm_up);
}

/// The launcher closes our stdin once we are in the bottle's cgroup: we
/// entered it ourselves before our exec (`cgroup::Prepared`), else it moved
/// us. The bundle waits for that only before it starts a process of its own
/// (the VM, an engine probe, git-gate's `git init`), so that every process
/// it starts is born inside the cgroup.
struct Confinement(Option<std::thread::JoinHandle<()>>);

impl Confinement {
    fn watch() -> Self {
        Confinement(Some(std::thread::spawn(|| {
            use std::io::Read;
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        })))
    }

    /// Returns once the launcher has confined us (at once the second time).
    async fn wait(&mut self) {
        if let Some(watcher) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
            crate::timing::step("bundle-confined");
        }
    }
}

async fn serve(dir: PathBuf, config: BundleConfig, confined: Confinement) -> anyhow::Result<()> {
    if config.pooled && matches!(config.mode, Mode::Docker) {
        anyhow::bail!("only a VM bundle can be pooled");
    }
    // Refusals on the guest channel reach the audit log once there is one
    // (a pooled bundle's at its claim).
    let audit: AuditCell = Arc::default();
    let key = start_mux(&dir, &config, audit.clone())?;
    // The proxy serves the bottle's connections on a thread of its own.
    let proxy_rt = Arc::new(ProxyRuntime::start().context("cannot start the proxy's thread")?);
    match config.mode.clone() {
        Mode::Vm(vm) => serve_vm_bundle(dir, config, vm, &key, audit, confined, proxy_rt).await,
        Mode::Docker => serve_docker(dir, config, audit, confined, &proxy_rt).await,
    }
}

/// A VM bundle. A bottle's own starts its VM first, and the VM boots while
/// the guards are built (the scanner's rules and the CA take ~10 ms of CPU,
/// which would delay it on a small host); the netstack forwards to them
/// once they are, long before the guest can dial. A pooled one (`bottle
/// pool start`) has the guest channel, the netstack and the booted VM, but
/// no guards, no CA, no policy and no audit log until a bottle claims it
/// through `pool.sock` (see [`serve_claims`]); until then every connection
/// the guest makes to `proxy.internal` is closed at once.
async fn serve_vm_bundle(
    dir: PathBuf,
    config: BundleConfig,
    mut vm: VmLaunch,
    key: &bottle_guest::auth::ChannelKey,
    audit: AuditCell,
    confined: Confinement,
    proxy_rt: Arc<ProxyRuntime>,
) -> anyhow::Result<()> {
    vm.initramfs = keyed_initramfs(&dir, &vm, key)?;
    let boot = vm_boot(&config, &vm);
    let flows = config.limits.flows as usize;
    let run = VmRun {
        vm,
        boot,
        flows,
        proxy_rt,
    };
    let (guarded, fingerprint) = if config.pooled {
        let claims = bind(&dir.join(files::POOL_CLAIM))?;
        (Guarded::Pooled((claims, audit)), "pooled")
    } else {
        let plan = GuardPlan {
            config: Box::new(config),
            audit,
        };
        (Guarded::Own(plan), "")
    };
    let mut ready = Ready {
        ca_fingerprint: fingerprint.to_string(),
        vm_pid: None,
        engine: None,
    };
    serve_vm(dir, run, guarded, confined, &mut ready).await
}

/// A Docker bottle's bundle: the guards on the sockets the container mounts.
async fn serve_docker(
    dir: PathBuf,
    config: BundleConfig,
    audit: AuditCell,
    mut confined: Confinement,
    proxy_rt: &ProxyRuntime,
) -> anyhow::Result<()> {
    if !config.git.is_empty() {
        // git-gate runs `git` for its mirrors when it starts.
        confined.wait().await;
    }
    let guards = build_guards(&dir, &config)?;
    crate::timing::step("bundle-guards");
    let _ = audit.set(guards.proxy.audit_log().clone());
    let ready = Ready {
        ca_fingerprint: guards.fingerprint.clone(),
        vm_pid: None,
        engine: None,
    };
    let Guards {
        proxy,
        gate,
        supervisor,
        ..
    } = guards;
    let cap = config.limits.connections as usize;
    let sock_dir = dir.join(files::SOCK_DIR);
    // Bound inside the proxy's runtime, whose thread then watches it.
    let proxy_listener = {
        let _in = proxy_rt.handle().enter();
        bind(&sock_dir.join(bottle_contract::PROXY_SOCKET))?
    };
    let proxy2 = proxy.clone();
    proxy_rt.spawn(accept_loop(
        proxy_listener,
        "proxy",
        cap,
        move |s, permit| {
            let p = proxy2.clone();
            tokio::spawn(async move {
                p.serve(s, "container".to_string()).await;
                drop(permit);
            });
        },
    ));
    if let Some(sup) = supervisor.clone() {
        let listener = bind(&sock_dir.join("supervise.sock"))?;
        tokio::spawn(accept_loop(listener, "supervise", cap, move |s, permit| {
            let sup = sup.clone();
            tokio::spawn(async move {
                bottle_sidecars::supervise::http::serve(s, sup, "container".to_string()).await;
                drop(permit);
            });
        }));
    }
    if let Some(gate) = gate.clone() {
        let listener = bind(&sock_dir.join(bottle_contract::GIT_GATE_SOCKET))?;
        tokio::spawn(accept_loop(listener, "git-gate", cap, move |s, permit| {
            let g = gate.clone();
            tokio::spawn(async move {
                g.serve(s, "container".to_string()).await;
                drop(permit);
            });
        }));
    }
    confined.wait().await;
    announce(&ready)?;
    wait_for_stop_signal().await;
    Ok(())
}

/// The boot configuration a bundle gives its VM: a bottle's own VM carries
/// its name; a pooled one (`config.pooled`) carries no name at all.
pub(crate) fn vm_boot(config: &BundleConfig, vm: &VmLaunch) -> bottle_contract::BootConfig {
    boot_config(vm, (!config.pooled).then_some(config.identity.as_str()))
}

/// The boot configuration of a bundle's VM: the network the plan gave it
/// (the same for every bottle of a pool's shape) and, for a bottle booted
/// for itself, its hostname. A pooled VM gets no hostname (the guest's
/// default, `bottle`): the claiming bottle's is set at provisioning.
fn boot_config(vm: &VmLaunch, hostname: Option<&str>) -> bottle_contract::BootConfig {
    bottle_contract::BootConfig {
        net: Some(bottle_contract::NetConfig {
            addr: vm.guest,
            prefix: vm.prefix_len,
            gateway: vm.gateway,
        }),
        mtu: Some(vm.mtu),
        hostname: hostname.map(str::to_string),
        ..bottle_contract::BootConfig::default()
    }
}

/// The image's initramfs plus a segment with this launch's channel key.
fn keyed_initramfs(
    dir: &Path,
    vm: &VmLaunch,
    key: &bottle_guest::auth::ChannelKey,
) -> anyhow::Result<PathBuf> {
    let initramfs = dir.join(files::INITRAMFS);
    bottle_vmm::initramfs_with_secret(
        &vm.initramfs,
        &initramfs,
        bottle_guest::auth::INITRAMFS_KEY_PATH,
        key.to_hex().as_bytes(),
    )
    .context("cannot give the VM its channel key")?;
    Ok(initramfs)
}

/// A bottle's guards, built from its config in its state directory `dir`:
/// its CA (written to `ca.pem`), the proxy with its policy and audit log,
/// supervise and git-gate when the bottle has them.
fn build_guards(dir: &Path, config: &BundleConfig) -> anyhow::Result<Guards> {
    use bottle_sidecars::proxy::{BottleCa, Proxy, ProxyConfig};
    let ca = BottleCa::generate(&config.identity).context("cannot make the bottle CA")?;
    let fingerprint = ca.fingerprint_sha256();
    crate::state::write_atomic(&dir.join(files::CA), ca.cert_pem().as_bytes())?;
    let scanner = bottle_sidecars::scanner::Scanner::builtin()
        .context("cannot load the secret scanner rules")?;
    let mut proxy_config = ProxyConfig::new(config.identity.clone(), config.policy.clone());
    proxy_config.audit_path = Some(dir.join(files::AUDIT));
    let limits = &config.limits;
    proxy_config.audit_max_bytes = u64::from(limits.audit_file_mib) << 20;
    proxy_config.audit_keep = limits.audit_files_kept as usize;
    proxy_config.body_budget = (limits.buffered_mib as usize) << 20;
    proxy_config.max_connections = limits.connections as usize;
    proxy_config.extra_root_pems = config.extra_root_pems.clone();
    if !config.resolve.is_empty() {
        let mut pins = Vec::new();
        for (host, raw) in &config.resolve {
            let pin = bottle_sidecars::proxy::AddressPin::parse(raw)
                .with_context(|| format!("resolve: `{raw}` for {host} is not an address"))?;
            pins.push((host.clone(), pin));
        }
        proxy_config.resolver = Arc::new(bottle_sidecars::proxy::PinnedResolver::new(
            pins,
            proxy_config.resolver.clone(),
        ));
    }
    let proxy = Proxy::new(proxy_config, ca, scanner.clone()).context("cannot start the proxy")?;
    let supervisor = if config.policy.supervise {
        Some(start_supervise(dir, config, &proxy)?)
    } else {
        None
    };
    let gate = if config.git.is_empty() {
        None
    } else {
        // This process's own binary (`bottle-bundle`) serves the hook.
        let exe = std::env::current_exe()
            .context("cannot find the bundle's binary for git-gate's hook")?;
        let gate_config = bottle_sidecars::gitgate::GitGateConfig {
            mirrors_dir: dir.join(files::MIRRORS),
            remotes: config.git.clone(),
            hook_command: vec![exe.display().to_string(), super::GIT_HOOK.to_string()],
            audit: Some(proxy.audit_log().clone()),
        };
        Some(
            bottle_sidecars::gitgate::GitGate::new(gate_config, scanner)
                .context("cannot start git-gate")?,
        )
    };
    Ok(Guards {
        proxy,
        gate,
        supervisor,
        fingerprint,
    })
}

/// Where a refused guest connection is recorded: the bottle's audit log,
/// once it has one (a pooled bundle has none before its claim).
type AuditCell = Arc<std::sync::OnceLock<Arc<bottle_sidecars::audit::AuditLog>>>;

/// Make this launch's guest channel key and serve the guest mux on
/// `guest.sock` (the guest) and `control.sock` (the host). Returns the key.
fn start_mux(
    dir: &Path,
    config: &BundleConfig,
    audit: AuditCell,
) -> anyhow::Result<bottle_guest::auth::ChannelKey> {
    let (guest_sock, control_sock) = match config.mode {
        Mode::Vm(_) => (dir.join(files::GUEST), dir.join(files::CONTROL)),
        Mode::Docker => (
            dir.join(files::SOCK_DIR)
                .join(bottle_contract::docker::AGENT_SOCKET),
            dir.join(files::CONTROL),
        ),
    };
    // Only the guest agent can read this launch's channel key, and the mux
    // takes one guest connection, the first that presents it.
    let key =
        bottle_guest::auth::ChannelKey::generate().context("cannot make the guest channel key")?;
    if matches!(config.mode, Mode::Docker) {
        let sock_dir = dir.join(files::SOCK_DIR);
        std::fs::create_dir_all(&sock_dir)?;
        write_root_only(
            &sock_dir.join(bottle_contract::docker::KEY_FILE),
            key.to_hex().as_bytes(),
        )?;
    }
    let guest_listener = bind(&guest_sock)?;
    let control_listener = bind(&control_sock)?;
    let mux_key = key.clone();
    // A refused guest connection (a second one, a wrong key) is a line in
    // the audit chain too (rate-limited like the log line).
    let on_refused: bottle_guest::host::RefusalHook = Arc::new(move |line: &str| {
        let Some(audit) = audit.get() else {
            tracing::warn!("guest channel refused before the claim: {line}");
            return;
        };
        let mut record = bottle_sidecars::audit::AuditRecord::new(
            bottle_sidecars::audit::Kind::Channel,
            bottle_sidecars::audit::Event::Decided,
        );
        record.decision = "deny".to_string();
        record.rule = "guest-channel".to_string();
        record.detail = Some(line.to_string());
        if let Err(e) = audit.append(record) {
            tracing::warn!("cannot write a channel refusal to the audit log: {e}");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = bottle_guest::host::run_mux_with(
            guest_listener,
            control_listener,
            mux_key,
            Some(on_refused),
        )
        .await
        {
            tracing::error!("guest mux stopped: {e}");
        }
    });
    Ok(key)
}

/// Start supervise: its requests and grants in the state directory, the
/// effective policy applied to the proxy, the grant expiry timer and the
/// operator's control socket (`supervise.ctl`, 0600, never in the guest's
/// reach).
fn start_supervise(
    dir: &Path,
    config: &BundleConfig,
    proxy: &Arc<bottle_sidecars::proxy::Proxy>,
) -> anyhow::Result<Arc<bottle_sidecars::supervise::Supervisor>> {
    use bottle_sidecars::supervise::{control, Supervisor, SupervisorConfig, CONTROL_SOCKET};
    let p = proxy.clone();
    let mut sc = SupervisorConfig::new(
        dir.to_path_buf(),
        config.policy.clone(),
        proxy.audit_log().clone(),
        Arc::new(move |policy, fresh| p.reload_with(policy, fresh).map_err(|e| e.to_string())),
    );
    sc.git_remotes = config.git.iter().map(|g| g.name.clone()).collect();
    let supervisor = Supervisor::new(sc).context("cannot start supervise")?;
    supervisor.spawn_expiry();
    let ctl = dir.join(CONTROL_SOCKET);
    let listener =
        control::bind(&ctl).with_context(|| format!("cannot listen on {}", ctl.display()))?;
    tokio::spawn(control::serve(listener, supervisor.clone()));
    Ok(supervisor)
}

/// The guards the VM's netstack forwards to.
#[derive(Clone)]
struct Guards {
    proxy: Arc<bottle_sidecars::proxy::Proxy>,
    gate: Option<Arc<bottle_sidecars::gitgate::GitGate>>,
    supervisor: Option<Arc<bottle_sidecars::supervise::Supervisor>>,
    /// The bottle CA's SHA-256 fingerprint.
    fingerprint: String,
}

/// The guards once a bottle owns the bundle: set at start for a bottle's own
/// bundle, at the claim for a pooled one, and never replaced.
type GuardSlot = Arc<std::sync::OnceLock<Guards>>;

/// A pooled bundle's claim socket and where its audit log goes once claimed.
type Claims = (UnixListener, AuditCell);

/// A bottle's own VM bundle's guards, built once its VM is started.
struct GuardPlan {
    config: Box<BundleConfig>,
    /// Where refusals of the guest channel go once the audit log exists.
    audit: AuditCell,
}

/// Where a VM bundle's guards come from.
enum Guarded {
    /// Its own bottle's, built at start.
    Own(GuardPlan),
    /// The claiming bottle's (a pooled bundle).
    Pooled(Claims),
}

/// The netstack summary task, started with the bottle's audit log.
type SummarySlot = Arc<std::sync::Mutex<Option<bottle_sidecars::audit::SummaryTask>>>;

/// The VM a bundle starts: its launch settings, its boot configuration, the
/// netstack's flow cap and the proxy's thread.
struct VmRun {
    vm: VmLaunch,
    boot: bottle_contract::BootConfig,
    flows: usize,
    /// Where the proxy's connections are served.
    proxy_rt: Arc<ProxyRuntime>,
}

async fn serve_vm(
    dir: PathBuf,
    run: VmRun,
    guarded: Guarded,
    mut confined: Confinement,
    ready: &mut Ready,
) -> anyhow::Result<()> {
    use bottle_netstack::{Forward, NetConfig};
    let VmRun {
        vm,
        boot,
        flows,
        proxy_rt,
    } = run;
    let slot: GuardSlot = Arc::default();
    let net_listener = bind(&dir.join(files::NET))?;
    // Probing an engine starts a VM too.
    if vm.decided.is_none() {
        confined.wait().await;
    }
    let (engine, selection) = match vm.decided {
        Some((kind, accel)) => (
            bottle_vmm::engine_for(kind, accel),
            bottle_vmm::Selection {
                engine: kind,
                accel,
                reason: "decided by the plan".to_string(),
                warning: (accel == bottle_vmm::Accel::Tcg)
                    .then(|| bottle_vmm::TCG_WARNING.to_string()),
            },
        ),
        None => tokio::task::spawn_blocking(move || bottle_vmm::select_engine(vm.engine))
            .await
            .context("engine selection panicked")??,
    };
    if let Some(warning) = &selection.warning {
        eprintln!("bottle: warning: {warning}");
    }
    let spec = bottle_vmm::VmSpec {
        cpus: vm.cpus,
        memory_mib: vm.memory_mib,
        kernel: vm.kernel.clone(),
        initramfs: vm.initramfs.clone(),
        root_disk: vm.root_disk.clone(),
        boot,
        // BOTTLE_TIMING=guest also times the guest agent's steps (on the console).
        cmdline_extra: crate::timing::guest_enabled()
            .then(|| bottle_guest::agent::trace::WORD.to_string())
            .into_iter()
            .collect(),
        net_socket: dir.join(files::NET),
        agent_socket: dir.join(files::GUEST),
        console_log: dir.join(files::CONSOLE),
        guest_mac: bottle_vmm::MacAddr(vm.guest_mac),
    };
    confined.wait().await;
    let mut process = engine.spawn(&spec).context("cannot start the VM")?;
    crate::timing::step("bundle-spawned");
    ready.vm_pid = Some(process.pid());
    ready.engine = Some(Engine::Vm(selection.engine, selection.accel));
    let (claims, supervise, git) = match guarded {
        Guarded::Own(GuardPlan { config, audit }) => {
            warm_up_guards();
            let (supervise, git) = (config.policy.supervise, !config.git.is_empty());
            let build_dir = dir.clone();
            let building = tokio::task::spawn_blocking(move || build_guards(&build_dir, &config));
            let built = match building.await {
                Ok(built) => built,
                Err(e) => Err(anyhow::anyhow!("building the guards failed: {e}")),
            };
            let guards = match built {
                Ok(guards) => guards,
                Err(e) => {
                    let _ = process.kill();
                    return Err(e);
                }
            };
            crate::timing::step("bundle-guards");
            let _ = audit.set(guards.proxy.audit_log().clone());
            ready.ca_fingerprint = guards.fingerprint.clone();
            let _ = slot.set(guards);
            (None, supervise, git)
        }
        Guarded::Pooled(claims) => (Some(claims), true, true),
    };
    let transport = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        bottle_netstack::accept_unix_stream(&net_listener),
    )
    .await
    .context("the VM did not attach to the network within 60 s")?
    .context("the VM's network attachment failed")?;
    let net = NetConfig {
        gateway: vm.gateway,
        guest: vm.guest,
        prefix_len: vm.prefix_len,
        mtu: usize::try_from(vm.mtu).unwrap_or(1500),
        guest_mac: Some(vm.guest_mac),
        ..NetConfig::default()
    };
    let tuning = bottle_netstack::Tuning {
        max_flows: flows,
        ..bottle_netstack::Tuning::default()
    };
    // Each guard port forwards to the bottle's guard; before a pooled
    // bundle's claim there is none and the connection is closed at once.
    let present = slot.get().cloned();
    let mut forwards = BTreeMap::new();
    let s = slot.clone();
    forwards.insert(
        bottle_contract::PROXY_PORT,
        Forward::Handler(Arc::new(move |stream, info| {
            if let Some(p) = s.get().map(|g| g.proxy.clone()) {
                proxy_rt.spawn(async move { p.serve(stream, info.guest_addr.to_string()).await });
            }
        })),
    );
    if supervise {
        let s = slot.clone();
        forwards.insert(
            crate::plan::SUPERVISE_PORT,
            Forward::Handler(Arc::new(move |stream, info| {
                if let Some(sup) = s.get().and_then(|g| g.supervisor.clone()) {
                    tokio::spawn(bottle_sidecars::supervise::http::serve(
                        stream,
                        sup,
                        info.guest_addr.to_string(),
                    ));
                }
            })),
        );
    }
    if git {
        let s = slot.clone();
        forwards.insert(
            bottle_contract::GIT_PORT,
            Forward::Handler(Arc::new(move |stream, info| {
                if let Some(g) = s.get().and_then(|g| g.gate.clone()) {
                    tokio::spawn(async move { g.serve(stream, info.guest_addr.to_string()).await });
                }
            })),
        );
    }
    let netstack = bottle_netstack::spawn_tuned(net, tuning, transport, forwards)
        .context("cannot start the netstack")?;
    // What the netstack refused goes into the audit chain every minute (when
    // anything was) and once more at the end.
    let counters = netstack.counters_reader();
    let summary: SummarySlot = Arc::default();
    let start_summary = {
        let summary = summary.clone();
        move |audit: Arc<bottle_sidecars::audit::AuditLog>| {
            let task = bottle_sidecars::audit::SummaryTask::spawn(
                audit,
                bottle_sidecars::audit::Kind::Netstack,
                bottle_sidecars::audit::SUMMARY_PERIOD,
                move || {
                    let refusals = counters.snapshot().refusals();
                    refusals.into_iter().map(|(k, v)| (k.into(), v)).collect()
                },
            );
            *summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
    };
    match claims {
        Some((listener, audit)) => {
            tokio::spawn(serve_claims(listener, slot, audit, start_summary));
        }
        None => {
            if let Some(g) = present {
                start_summary(g.proxy.audit_log().clone());
            }
        }
    }
    crate::timing::step("bundle-ready");
    announce(ready)?;

    // Live until the VM exits, the stack's transport closes, or we are told to stop.
    let vm_exit = tokio::task::spawn_blocking(move || {
        let status = process.wait();
        (process, status)
    });
    tokio::select! {
        result = vm_exit => {
            if let Ok((_, status)) = result {
                eprintln!("bottle: the VM exited ({status:?}); stopping the bundle");
            }
        }
        _ = wait_for_stop_signal() => {
            eprintln!("bottle: stop requested; stopping the VM");
            if let Some(pid) = ready.vm_pid {
                crate::sys::process::stop_process(pid, "", std::time::Duration::from_secs(2));
            }
        }
    }
    let task = summary.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(task) = task {
        task.finish().await;
    }
    netstack.request_shutdown();
    Ok(())
}

/// A pooled bundle's claim: one line `{"dir": "<state dir>"}` on
/// `pool.sock` from the launcher, which has moved the pooled entry to that
/// bottle state directory and written the bottle's `bundle.json` there. The
/// bundle builds the bottle's guards from it (its CA, policy, audit log,
/// supervise, git-gate), installs them at once, and answers `OK <ca
/// fingerprint>` or `ERR <why>`. The first successful claim is the only one.
async fn serve_claims(
    listener: UnixListener,
    slot: GuardSlot,
    audit: AuditCell,
    start_summary: impl FnOnce(Arc<bottle_sidecars::audit::AuditLog>),
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut start_summary = Some(start_summary);
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("pool claim: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (read, mut write) = stream.split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
        let answer = match reader.read_line(&mut line).await {
            Ok(_) => match claim(&line, &slot) {
                Ok(guards) => {
                    let _ = audit.set(guards.proxy.audit_log().clone());
                    if let Some(start) = start_summary.take() {
                        start(guards.proxy.audit_log().clone());
                    }
                    Ok(guards.fingerprint.clone())
                }
                Err(e) => Err(format!("{e:#}")),
            },
            Err(e) => Err(format!("cannot read the claim: {e}")),
        };
        let (reply, claimed) = match answer {
            Ok(fp) => (format!("OK {fp}\n"), true),
            Err(why) => (format!("ERR {}\n", why.replace('\n', "; ")), false),
        };
        let _ = write.write_all(reply.as_bytes()).await;
        let _ = write.flush().await;
        if claimed {
            eprintln!("bottle: claimed; serving the bottle's guards");
            return;
        }
    }
}

/// What a launcher sends on `pool.sock`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClaimRequest {
    /// The bottle's state directory (the pooled entry, moved there).
    pub dir: PathBuf,
}

fn claim(line: &str, slot: &GuardSlot) -> anyhow::Result<Guards> {
    anyhow::ensure!(slot.get().is_none(), "this pooled guest is already claimed");
    let request: ClaimRequest =
        serde_json::from_str(line.trim()).context("the claim is not a claim request")?;
    let dir = request.dir;
    anyhow::ensure!(
        dir.is_absolute(),
        "the claimed state directory must be absolute"
    );
    let path = dir.join(files::CONFIG);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: BundleConfig = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a bundle config", path.display()))?;
    anyhow::ensure!(
        !config.pooled && matches!(config.mode, Mode::Vm(_)),
        "{} is not a VM bottle's config",
        path.display()
    );
    let guards = build_guards(&dir, &config)?;
    slot.set(guards.clone())
        .map_err(|_| anyhow::anyhow!("this pooled guest is already claimed"))?;
    Ok(guards)
}

/// Bind a unix listener, replacing a stale socket file. Sockets are 0600,
/// except those in the Docker socket directory: the container's agent user
/// (uid 1000) must connect to the guards', and the guest channel is 0000 (in
/// the read-only bind mount nobody can chmod it), so only the container's
/// guest agent, root with `CAP_DAC_OVERRIDE`, can connect to it, whatever
/// uid owns it on the host. The state directory itself is 0700, so on the
/// host only its owner can reach them.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let shared = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == files::SOCK_DIR);
    let guest_channel = path
        .file_name()
        .is_some_and(|n| n == bottle_contract::docker::AGENT_SOCKET);
    let mode = match (shared, guest_channel) {
        (true, true) => 0o000,
        (true, false) => 0o666,
        (false, _) => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Writes a file with mode 0000: in the container's read-only bind mount only
/// a process with `CAP_DAC_OVERRIDE` (the guest agent) can read it.
fn write_root_only(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Serve a guard's socket for a container, at most `cap` connections at
/// once (`limits.connections`); past it a new connection is closed at once
/// (the netstack has the same kind of cap on the VM side, `limits.flows`).
async fn accept_loop(
    listener: UnixListener,
    guard: &'static str,
    cap: usize,
    mut handle: impl FnMut(tokio::net::UnixStream, tokio::sync::OwnedSemaphorePermit) + Send + 'static,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    let mut refused: u64 = 0;
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(permit) => handle(stream, permit),
                Err(_) => {
                    drop(stream);
                    refused += 1;
                    // Rate-limited: the agent must not flood the host's log.
                    if last_warning
                        .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10))
                    {
                        tracing::warn!("{guard}: {cap} connections open; refused {refused} so far");
                        last_warning = Some(std::time::Instant::now());
                    }
                }
            },
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Print the READY line on stdout (the launcher's pipe) and detach from it.
fn announce(ready: &Ready) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(ready.to_line().as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guard_socket_serves_at_most_its_cap_and_closes_the_rest() {
        use tokio::io::AsyncReadExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("g.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // The handler holds every connection (and its permit) open.
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = held.clone();
        const CAP: usize = 64;
        tokio::spawn(accept_loop(listener, "test", CAP, move |s, permit| {
            h.lock().unwrap().push((s, permit));
        }));
        let mut clients = Vec::new();
        for _ in 0..CAP {
            clients.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        while held.lock().unwrap().len() < CAP {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut over = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), over.read(&mut buf))
            .await
            .expect("the connection over the cap is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // One served connection ends: a new one is served again.
        held.lock().unwrap().pop();
        let again = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(held.lock().unwrap().len(), CAP);
        drop(again);
    }
}
