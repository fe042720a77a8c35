//! Command-line interface (clap derive).

use crate::manifest::{BackendName, EngineChoice, RuntimeChoice};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  bottle run --vm demo                 boot the demo bottle from the built-in manifest
  bottle run claude -- bash            run bash instead of the agent's command
  bottle plan claude --json            print the launch plan, touch nothing
  bottle ls                            list bottles on this host
  bottle exec claude-x1y2z -- git log  run a command in a running bottle
  bottle stop claude-x1y2z             stop it and remove everything it made
  bottle doctor                        check what this host can run";

#[derive(Debug, Parser)]
#[command(name = "bottle", version, about = "Run an AI coding agent in a microVM whose only way out is a set of guards", after_help = EXAMPLES)]
pub struct Cli {
    /// Manifest to use (default: ./bottle.toml, then $XDG_CONFIG_HOME/bottle/bottle.toml, then the built-in demo).
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// `--vm` / `--docker`, and the engine or runtime within the backend.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct BackendFlags {
    /// Run in a microVM (libkrun, or QEMU microvm).
    #[arg(long, conflicts_with = "docker")]
    pub vm: bool,
    /// Run in a Docker container with no network (runc or gVisor).
    #[arg(long)]
    pub docker: bool,
    /// VM engine (overrides the manifest's `[bottles.NAME.vm] engine`).
    #[arg(long, value_enum, value_name = "ENGINE", conflicts_with_all = ["docker", "runtime"])]
    pub engine: Option<EngineArg>,
    /// Docker runtime (overrides the manifest's `[bottles.NAME.docker] runtime`).
    #[arg(long, value_enum, value_name = "RUNTIME", conflicts_with = "vm")]
    pub runtime: Option<RuntimeArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RuntimeArg {
    Auto,
    Runc,
    Runsc,
}

impl From<RuntimeArg> for RuntimeChoice {
    fn from(r: RuntimeArg) -> Self {
        match r {
            RuntimeArg::Auto => Self::Auto,
            RuntimeArg::Runc => Self::Runc,
            RuntimeArg::Runsc => Self::Runsc,
        }
    }
}

impl BackendFlags {
    pub fn backend(self) -> Option<BackendName> {
        if self.vm {
            Some(BackendName::Vm)
        } else if self.docker {
            Some(BackendName::Docker)
        } else {
            None
        }
    }

    /// The VM engine asked for, over the manifest's.
    pub fn engine(self) -> Option<EngineChoice> {
        self.engine.map(EngineChoice::from)
    }

    /// The Docker runtime asked for, over the manifest's.
    pub fn runtime(self) -> Option<RuntimeChoice> {
        self.runtime.map(RuntimeChoice::from)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum EngineArg {
    Auto,
    Libkrun,
    Qemu,
}

impl From<EngineArg> for EngineChoice {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::Libkrun => EngineChoice::Libkrun,
            EngineArg::Qemu => EngineChoice::Qemu,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan, confirm and launch a bottle, then run the agent in it.
    #[command(
        after_help = "Examples:\n  bottle run --vm demo\n  bottle run --yes claude\n  bottle run claude --dry-run\n  bottle run claude -- bash -l"
    )]
    Run {
        /// Agent name from the manifest.
        agent: String,
        #[command(flatten)]
        backend: BackendFlags,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print the plan and stop; touches nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the command started; the bottle and its session keep running (`bottle attach ID` joins them).
        #[arg(long)]
        detach: bool,
        /// Command to run instead of the agent's.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Trust a manifest bottle did not write (its real path and content), after reading it.
    #[command(
        after_help = "A manifest outside $XDG_CONFIG_HOME/bottle can run commands on this host and copy host files into a bottle, so `bottle run` refuses it until it is trusted; any edit needs trusting again.\n\nExamples:\n  bottle trust                  the manifest `bottle run` would load (./bottle.toml)\n  bottle trust ../app/bottle.toml\n  bottle trust --list\n  bottle trust --revoke"
    )]
    Trust {
        /// Manifest (default: the one `bottle run` would load).
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
        /// Revoke trust instead (same as `bottle untrust`).
        #[arg(long, conflicts_with = "list")]
        revoke: bool,
        /// List trusted manifests (tab-separated: status, sha256, trusted at, path).
        #[arg(long, conflicts_with = "path")]
        list: bool,
    },
    /// Revoke trust in a manifest.
    Untrust {
        /// Manifest (default: the one `bottle run` would load).
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
    /// Print the launch plan for an agent; touches nothing.
    Plan {
        agent: String,
        #[command(flatten)]
        backend: BackendFlags,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List bottles on this host (tab-separated: backend, identity, agent, status, started).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Attach a terminal to a running bottle's agent session.
    Attach { id: String },
    /// Every bottle on this host in one screen: requests, stop, resume, attach.
    Dashboard,
    /// Run a command in a running bottle.
    Exec {
        id: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stop a bottle: keep its workspace and agent transcripts (for `bottle resume`), then remove everything it made.
    Stop {
        id: String,
        /// Keep nothing from the guest (the audit log and session output are still kept).
        #[arg(long)]
        discard: bool,
    },
    /// Rejoin a running bottle's session; restart a stopped one with its identity, manifest, workspace and transcripts (Claude Code with --continue).
    Resume {
        id: String,
        /// Return once the agent runs (as `run --detach`).
        #[arg(long)]
        detach: bool,
        /// Do not ask before restarting a stopped bottle.
        #[arg(long)]
        yes: bool,
    },
    /// Print where a bottle's transcripts are: its session output, the agent's transcripts, its audit log.
    Transcript { id: String },
    /// Copy between the host and a running bottle: `bottle cp ID:PATH DEST` or `bottle cp SRC ID:PATH`.
    Cp {
        /// `ID:GUEST_PATH` or a host path.
        src: String,
        /// A host path or `ID:GUEST_PATH`.
        dest: String,
    },
    /// Print a bottle's audit log (verifying its hash chain).
    Logs { id: String },
    /// Show or change a running bottle's effective policy (needs `supervise = true`).
    #[command(
        after_help = "Changes apply to the running proxy at once and are kept with the bottle (`bottle resume` keeps them); the manifest file changes only with --save.\n\nExamples:\n  bottle policy claude-x1y2z\n  bottle policy claude-x1y2z allow api.example.com --for 1h\n  bottle policy claude-x1y2z allow api.example.com:8443 --save\n  bottle policy claude-x1y2z deny api.example.com\n  bottle policy claude-x1y2z route add api.example.com --header authorization --prefix 'Bearer ' --from-env EXAMPLE_TOKEN\n  bottle policy claude-x1y2z route rm api.example.com"
    )]
    Policy {
        /// The bottle id.
        id: String,
        #[command(subcommand)]
        change: Option<PolicyChange>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show supervise requests (pending first) of one bottle, running or stopped, or of every running one.
    #[command(after_help = "Examples:\n  bottle requests\n  bottle requests claude-x1y2z --json")]
    Requests {
        /// A bottle id (a stopped bottle's kept requests too); without it, every running bottle.
        id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a bottle's supervise request; an egress request widens the running proxy's policy at once.
    #[command(
        after_help = "With --save, an approved egress request is also written to the bottle's `allow` (`allow_ips`, `allow_ports`, `rules`) and an approved Debian package to its `[bottles.NAME.image] packages`, in the manifest file it was launched from: the change is shown as a diff and confirmed first (--yes skips asking), the file's comments and formatting stay, and a manifest that was trusted stays trusted.\n\nExamples:\n  bottle approve claude-x1y2z abcdefghij23\n  bottle approve claude-x1y2z abcdefghij23 --for 10m\n  bottle approve claude-x1y2z abcdefghij23 --save"
    )]
    Approve {
        /// The bottle id.
        id: String,
        /// The request id (`bottle requests` lists them).
        request: String,
        /// How long the approval lasts (30s, 10m, 2h, 1d); default: until the bottle is removed.
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "save")]
        r#for: Option<String>,
        /// Also write the approval into the manifest file the bottle was launched from.
        #[arg(long)]
        save: bool,
        /// With --save: write without asking.
        #[arg(long, short = 'y', requires = "save")]
        yes: bool,
    },
    /// Reject a bottle's supervise request; the agent sees the reason.
    #[command(
        after_help = "Examples:\n  bottle reject claude-x1y2z abcdefghij23 --reason \"use the mirror\""
    )]
    Reject {
        /// The bottle id.
        id: String,
        /// The request id.
        request: String,
        /// A note for the agent.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Remove orphans: state without a live bottle, bottles without state.
    Cleanup {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check what this host can run, and how to fix what it cannot.
    Doctor {
        /// Also list the secret scanner's rule ids.
        #[arg(long)]
        rules: bool,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Build, list and remove guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Keep VM guests booted for `bottle run --vm` to claim (warm start): start, status, stop.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Internal: boot the pool's missing guests (started detached by `bottle run`).
    #[command(name = "__pool-refill", hide = true)]
    PoolRefill {
        /// Wait until this bottle is provisioned before booting.
        #[arg(long)]
        after: Option<String>,
    },
    /// Internal: one libkrun VM in this process (`krun_start_enter` never returns).
    #[command(name = "__krun", hide = true)]
    Krun { spec_json: String },
    /// Internal: holds a detached bottle's agent session (`bottle run --detach`).
    #[command(name = "__session", hide = true)]
    Session { state_dir: PathBuf },
}

/// `--save [--yes]`: also write a change into the manifest file.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct SaveFlags {
    /// Also write the change into the manifest file the bottle was launched from (shown as a diff, confirmed first).
    #[arg(long)]
    pub save: bool,
    /// With --save: write without asking.
    #[arg(long, short = 'y', requires = "save")]
    pub yes: bool,
}

/// A direct change of a running bottle's policy.
#[derive(Debug, Subcommand)]
pub enum PolicyChange {
    /// Allow HOST (and PORT) at once, without a request from the agent.
    Allow {
        /// HOST or HOST:PORT.
        #[arg(value_name = "HOST[:PORT]")]
        target: String,
        /// How long it lasts (30s, 10m, 2h, 1d); default: as long as the bottle exists.
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "save")]
        r#for: Option<String>,
        #[command(flatten)]
        save: SaveFlags,
    },
    /// Refuse HOST at once: its exact allowlist entry (the manifest's included) and its grants are removed, and HOST stays refused even where a wildcard such as `*.example.com` still allows its neighbours.
    Deny {
        /// The host (or `*.domain` pattern) to refuse; an IP address leaves `allow_ips`.
        host: String,
        #[command(flatten)]
        save: SaveFlags,
    },
    /// Add or remove an egress route: a credential the proxy injects as a header into requests to a host.
    #[command(subcommand)]
    Route(RouteChange),
}

/// `bottle policy ID route add|rm`.
#[derive(Debug, Subcommand)]
pub enum RouteChange {
    /// Inject HEADER: PREFIX+TOKEN into every HTTPS request to HOST; the token is read here, on the host, and never enters the bottle.
    #[command(
        after_help = "The token is read now by this command (from the environment variable, the file or the command's output) and handed to the running proxy; the bottle's state keeps only where it comes from, so `bottle resume` reads it again from the same source (export the variable before resuming). A route for HOST from the manifest or an earlier `route add` is replaced. The host must also be allowed (`allow` in the manifest, or `bottle policy ID allow HOST`).\n\nExamples:\n  bottle policy claude-x1y2z route add api.example.com --header authorization --prefix 'Bearer ' --from-env EXAMPLE_TOKEN\n  bottle policy claude-x1y2z route add api.example.com --header x-api-key --from-file ~/.config/example/key --save\n  bottle policy claude-x1y2z route add api.github.com --header authorization --prefix 'Bearer ' --from-command 'gh auth token'",
        group(clap::ArgGroup::new("token_source").required(true).multiple(false))
    )]
    Add {
        /// The host (or `*.domain` pattern) whose requests get the header.
        host: String,
        /// The header to set (e.g. `authorization`, `x-api-key`).
        #[arg(long, value_name = "NAME")]
        header: String,
        /// Text before the token in the header value (e.g. `Bearer `).
        #[arg(long, value_name = "TEXT", default_value = "")]
        prefix: String,
        /// The route's name (default: the host with dots as dashes).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Read the token from this environment variable of this command.
        #[arg(long, value_name = "VAR", group = "token_source")]
        from_env: Option<String>,
        /// Read the token from this file (trimmed).
        #[arg(long, value_name = "PATH", group = "token_source")]
        from_file: Option<PathBuf>,
        /// Read the token from what this command prints (trimmed), e.g. 'gh auth token'; split into words as a shell would, and run without a shell.
        #[arg(long, value_name = "COMMAND", group = "token_source")]
        from_command: Option<String>,
        #[command(flatten)]
        save: SaveFlags,
    },
    /// Remove the route for HOST (the manifest's included) from the running proxy.
    Rm { host: String },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Boot SIZE guests of one shape (image, vCPUs, memory, engine; the default network and limits) and keep that shape's pool full; another shape adds a pool.
    #[command(
        after_help = "A bottle whose plan has this shape claims a pooled guest instead of booting one; a detached refiller boots its replacement. See docs/pool.md.\n\nExamples:\n  bottle pool start\n  bottle pool start --size 2 --image debian --cpus 2 --memory 1024\n  bottle pool start --engine libkrun"
    )]
    Start {
        /// Guests kept booted (1-16).
        #[arg(long, default_value_t = 1)]
        size: u32,
        /// The image: tiny, debian, claude.
        #[arg(long, default_value = "tiny")]
        image: String,
        /// vCPUs of each guest (a bottle's `cpus` must match).
        #[arg(long, default_value_t = 2)]
        cpus: u8,
        /// Memory of each guest in MiB (a bottle's `memory_mib` must match).
        #[arg(long = "memory", default_value_t = 1024)]
        memory_mib: u32,
        /// VM engine of the guests (a bottle's engine must match; auto picks as `bottle run --vm` does).
        #[arg(long, value_enum, value_name = "ENGINE", default_value = "auto")]
        engine: EngineArg,
    },
    /// The pool's shape and guests (name, status, qemu and bundle pids, RSS, boot time).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop every pooled guest and forget the pool (bottles that claimed one keep running).
    Stop,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image: a built-in one (`tiny`, `debian`, `claude`), or the image a bottle of the manifest defines (`[bottles.NAME.image]`).
    Build {
        /// A built-in image, or a bottle's name.
        name: String,
        /// Add Claude Code (from npm) to the Debian image.
        #[arg(long)]
        claude: bool,
    },
    /// List built images: name, key, size, age, whether this binary uses it, which bottles of the manifest use it.
    Ls,
    /// Remove a built image (every build of that name).
    Rm { name: String },
    /// Remove every built image that neither this binary's built-in images nor a bottle of the manifest names.
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_and_docker_flags_conflict() {
        assert!(Cli::try_parse_from(["bottle", "run", "--vm", "--docker", "demo"]).is_err());
    }

    #[test]
    fn engine_goes_with_vm_and_runtime_with_docker() {
        let ok = |args: &[&str]| {
            let mut v = vec!["bottle", "run"];
            v.extend_from_slice(args);
            v.push("demo");
            Cli::try_parse_from(v).is_ok()
        };
        assert!(ok(&["--vm", "--engine", "libkrun"]));
        assert!(ok(&["--engine", "qemu"]));
        assert!(ok(&["--docker", "--runtime", "runsc"]));
        assert!(ok(&["--runtime", "runc"]));
        assert!(!ok(&["--docker", "--engine", "qemu"]));
        assert!(!ok(&["--vm", "--runtime", "runc"]));
        assert!(!ok(&["--engine", "qemu", "--runtime", "runc"]));
        assert!(!ok(&["--runtime", "crun"]));
    }

    #[test]
    fn command_after_double_dash_replaces_the_agents() {
        let cli = Cli::try_parse_from(["bottle", "run", "demo", "--", "ls", "-la"]).unwrap();
        match cli.command {
            Command::Run { command, .. } => assert_eq!(command, ["ls", "-la"]),
            other => panic!("{other:?}"),
        }
    }
}
