//! `bottle-guest`: the agent inside the VM (as PID 1) or container.

use std::io::Write;
use std::process::ExitCode;

use bottle_guest::agent::{
    self, channel::Target, forward::Forward, init, reaper::Reaper, trace, KeySource,
};
use bottle_guest::proto::User;
use bottle_util::error_chain;

const USAGE: &str = "usage:
  bottle-guest init                      run as the VM's init (default when PID 1)
  bottle-guest serve --connect unix:PATH [--key-file PATH] [--user UID|NAME] [--forward ADDR:PORT=unix:PATH]...
  bottle-guest dial TARGET [--key-file PATH]   try the host channel once as a guest; exit 0 only if accepted
  bottle-guest forward --listen ADDR:PORT --to unix:PATH [--listen .. --to ..]...
  bottle-guest net 'bottle.net=IP/PREFIX,GW bottle.mtu=N'   configure lo and eth0 only (testing aid)
  bottle-guest version";

#[derive(Debug)]
enum Mode {
    Init {
        stage2: bool,
    },
    Serve {
        connect: Target,
        forwards: Vec<Forward>,
        key: KeySource,
        user: Option<User>,
    },
    Dial {
        target: Target,
        key: KeySource,
    },
    Forward {
        forwards: Vec<Forward>,
    },
    Net {
        cmdline: String,
    },
    Version,
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return if std::process::id() == 1 {
            Ok(Mode::Init { stage2: false })
        } else {
            Err("no command".into())
        };
    };
    match cmd.as_str() {
        "init" => Ok(Mode::Init {
            stage2: rest.iter().any(|a| a == "--stage2"),
        }),
        "version" | "--version" => Ok(Mode::Version),
        "net" => Ok(Mode::Net {
            cmdline: rest.join(" "),
        }),
        "dial" => {
            let (target, rest) = rest.split_first().ok_or("dial needs a TARGET")?;
            let target = target.parse::<Target>().map_err(|e| e.to_string())?;
            let key = match rest {
                [] => KeySource::None,
                [flag, path] if flag == "--key-file" => KeySource::File(path.into()),
                _ => return Err("dial takes TARGET [--key-file PATH]".into()),
            };
            Ok(Mode::Dial { target, key })
        }
        "serve" => {
            let mut connect = None;
            let mut forwards = Vec::new();
            let mut key = KeySource::None;
            let mut user = None;
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--connect" => {
                        connect = Some(value.parse::<Target>().map_err(|e| e.to_string())?)
                    }
                    "--key-file" => key = KeySource::File(value.into()),
                    "--user" => {
                        user = Some(match value.parse::<u32>() {
                            Ok(uid) => User::Uid(uid),
                            Err(_) => User::Name(value.clone()),
                        })
                    }
                    "--forward" => {
                        let (listen, to) = value
                            .split_once('=')
                            .ok_or_else(|| format!("bad --forward {value:?}"))?;
                        forwards.push(Forward::parse(listen, to).map_err(|e| e.to_string())?);
                    }
                    other => return Err(format!("unknown flag {other}")),
                }
            }
            Ok(Mode::Serve {
                connect: connect.ok_or("serve needs --connect")?,
                forwards,
                key,
                user,
            })
        }
        "forward" => {
            let mut forwards = Vec::new();
            let mut listen: Option<&String> = None;
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--listen" => listen = Some(value),
                    "--to" => {
                        let l = listen.take().ok_or("--to must follow --listen")?;
                        forwards.push(Forward::parse(l, value).map_err(|e| e.to_string())?);
                    }
                    other => return Err(format!("unknown flag {other}")),
                }
            }
            if listen.is_some() || forwards.is_empty() {
                return Err("each --listen needs a --to".into());
            }
            Ok(Mode::Forward { forwards })
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bottle-guest: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Version => {
            println!(
                "{} (protocol {})",
                agent::server::SOFTWARE,
                bottle_guest::proto::PROTOCOL_VERSION
            );
            ExitCode::SUCCESS
        }
        Mode::Init { stage2 } => run_init(stage2),
        Mode::Net { cmdline } => {
            let result = bottle_contract::BootConfig::parse(&cmdline)
                .map_err(|e| e.to_string())
                .and_then(|cfg| {
                    init::configure_network(cfg.net, cfg.mtu).map_err(|e| error_chain(&e))
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bottle-guest: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Serve {
            connect,
            forwards,
            key,
            user,
        } => {
            let _ = nix::sys::prctl::set_child_subreaper(true);
            run_runtime(Threads::Two, async move {
                start_forwards(forwards).await?;
                let reaper = Reaper::start().map_err(|e| e.to_string())?;
                agent::run(connect, reaper, key, user, announce_stdout).await;
                Ok(())
            })
        }
        Mode::Dial { target, key } => {
            let code = run_runtime(Threads::One, async move {
                let answer = agent::dial_once(&target, &key).await;
                println!("{answer}");
                match answer {
                    agent::DialAnswer::Welcome => Ok(()),
                    _ => Err("the host did not accept this connection as the guest".into()),
                }
            });
            code
        }
        Mode::Forward { forwards } => run_runtime(Threads::Two, async move {
            start_forwards(forwards).await?;
            std::future::pending::<()>().await;
            Ok(())
        }),
    }
}

async fn start_forwards(forwards: Vec<Forward>) -> Result<(), String> {
    for f in forwards {
        agent::forward::start(f)
            .await
            .map_err(|e| error_chain(&e))?;
    }
    Ok(())
}

/// How many threads the agent's runtime runs on.
#[derive(Clone, Copy)]
enum Threads {
    /// One: init in a VM, where every thread shares the guest's few vCPUs
    /// (under TCG a wake-up across threads is a context switch the guest
    /// pays for) and the network does not pass through the agent.
    One,
    /// Two workers: a container's agent, whose forwards carry the agent's
    /// proxy traffic.
    Two,
}

fn run_runtime(
    threads: Threads,
    fut: impl std::future::Future<Output = Result<(), String>>,
) -> ExitCode {
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::Two => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bottle-guest: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bottle-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn announce_stdout() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", agent::READY_MARKER);
    let _ = out.flush();
}

fn announce_console() {
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "{}", agent::READY_MARKER);
    } else {
        announce_stdout();
    }
}

/// Reports a fatal init error and powers off: PID 1 must never exit.
fn fatal(what: &str, e: &dyn std::error::Error) -> ExitCode {
    eprintln!("bottle-guest: init failed: {what}: {}", error_chain(e));
    init::power_off(false);
    loop {
        std::thread::park();
    }
}

fn run_init(stage2: bool) -> ExitCode {
    use bottle_guest::auth::{HANDOVER_KEY_PATH, INITRAMFS_KEY_PATH};
    let read_cmdline = || std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // The channel key is taken (read, then deleted) before anything else runs.
    let key;
    trace::step("init");
    if !stage2 {
        if let Err(e) = init::mount_early() {
            return fatal("mounts", &e);
        }
        trace::step("mounted");
        key = init::take_key(std::path::Path::new(INITRAMFS_KEY_PATH));
        let cfg = match bottle_contract::BootConfig::parse(&read_cmdline()) {
            Ok(c) => c,
            Err(e) => return fatal("kernel command line", &e),
        };
        if let Some(dev) = init::root_device(&cfg) {
            if let Err(e) = init::switch_root(dev) {
                return fatal("root switch", &e);
            }
            if std::path::Path::new(bottle_contract::GUEST_BINARY).exists() {
                use std::os::unix::process::CommandExt;
                let handover = std::path::Path::new(HANDOVER_KEY_PATH);
                if let Some(k) = &key {
                    if let Err(e) = init::hand_over_key(handover, k) {
                        return fatal("channel key", &e);
                    }
                }
                let err = std::process::Command::new(bottle_contract::GUEST_BINARY)
                    .args(["init", "--stage2"])
                    .exec();
                let _ = std::fs::remove_file(handover);
                eprintln!(
                    "bottle-guest: exec {}: {err}; continuing",
                    bottle_contract::GUEST_BINARY
                );
            }
        }
    } else {
        key = init::take_key(std::path::Path::new(HANDOVER_KEY_PATH));
    }
    let key = match key {
        Some(k) => KeySource::Fixed(k),
        None => {
            eprintln!(
                "bottle-guest: no channel key was delivered with this boot; the host will refuse this agent"
            );
            KeySource::None
        }
    };
    if let Err(e) = init::mount_tmp() {
        return fatal("/tmp", &e);
    }
    trace::step("tmp");
    let cfg = match bottle_contract::BootConfig::parse(&read_cmdline()) {
        Ok(c) => c,
        Err(e) => return fatal("kernel command line", &e),
    };
    if let Err(e) = init::configure_network(cfg.net, cfg.mtu) {
        return fatal("network", &e);
    }
    trace::step("network");
    if let Err(e) = init::write_files(&cfg) {
        return fatal("guest files", &e);
    }
    trace::step("configured");
    let code = run_runtime(Threads::One, async move {
        trace::step("runtime");
        let reaper = Reaper::start().map_err(|e| e.to_string())?;
        trace::step("reaper");
        agent::run(
            Target::Boot(cfg.channel),
            reaper,
            key,
            None,
            announce_console,
        )
        .await;
        Ok(())
    });
    if std::process::id() == 1 {
        init::power_off(false);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn serve_takes_a_socket_and_forwards() {
        let m = parse_args(&args("serve --connect unix:/run/bottle/agent.sock --forward 127.0.0.1:8888=unix:/run/bottle/proxy.sock")).unwrap();
        let Mode::Serve {
            connect,
            forwards,
            key,
            user,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(connect, Target::Unix("/run/bottle/agent.sock".into()));
        assert_eq!(forwards.len(), 1);
        assert!(matches!(key, KeySource::None));
        assert_eq!(user, None);
        let m = parse_args(&args(
            "serve --connect unix:/s --key-file /run/bottle/agent.key --user 1000",
        ))
        .unwrap();
        let Mode::Serve { key, user, .. } = m else {
            panic!("{m:?}")
        };
        assert!(
            matches!(key, KeySource::File(p) if p == std::path::Path::new("/run/bottle/agent.key"))
        );
        assert_eq!(user, Some(User::Uid(1000)));
    }

    #[test]
    fn forward_pairs_listen_with_to() {
        let m = parse_args(&args(
            "forward --listen 127.0.0.1:1 --to unix:/a --listen 127.0.0.1:2 --to unix:/b",
        ))
        .unwrap();
        let Mode::Forward { forwards } = m else {
            panic!("{m:?}")
        };
        assert_eq!(forwards.len(), 2);
        assert!(parse_args(&args("forward --listen 127.0.0.1:1")).is_err());
        assert!(matches!(
            parse_args(&args("dial unix:/s --key-file /k")).unwrap(),
            Mode::Dial {
                key: KeySource::File(_),
                ..
            }
        ));
        assert!(parse_args(&args("dial unix:/s --other")).is_err());
        assert!(parse_args(&args("serve")).is_err());
    }
}
