//! `prepare`: (manifest, agent, backend, cwd) → a [`Plan`] that says exactly
//! what a launch will do. Building a plan touches nothing: no state dir, no
//! process, no file. Token values never appear in it, only where they come from.

use crate::backend::selection::Selected;
use crate::manifest::paths::{self, PathKey, SecretPath};
use crate::manifest::trust::TrustStatus;
use crate::manifest::{self, validate, Agent, Bottle, Loaded, Route};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no agent `{agent}` in {origin}{hint}")]
    UnknownAgent {
        agent: String,
        origin: String,
        hint: String,
    },
    #[error(transparent)]
    SecretPath(#[from] Box<SecretPath>),
}

/// Where the agent's credential for a route comes from (never the value).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoutePlan {
    pub name: String,
    pub host: String,
    pub header: String,
    pub prefix: String,
    /// `env ANTHROPIC_API_KEY`, `file /path`, `command prog …`.
    pub token_from: String,
    /// What the agent holds instead of the token.
    pub placeholder: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GitPlan {
    pub name: String,
    pub upstream: String,
    /// What the agent's git uses instead (via `insteadOf`).
    pub gate_url: String,
    pub host_key_fingerprint: String,
    pub identity_file: Option<PathBuf>,
    pub allow_force_push: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RulePlan {
    pub host: String,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TlsPlan {
    pub enabled: bool,
    pub ca: &'static str,
    /// Known only after launch.
    pub ca_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetworkPlan {
    pub dns_name: &'static str,
    pub subnet: String,
    pub gateway: String,
    pub guest: String,
    pub mtu: u32,
    pub ports: Vec<(u16, &'static str)>,
}

/// What the manifest makes bottle do on the host as the user: commands it
/// runs and files it reads (and copies into the guest), with why.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HostAccess {
    pub commands: Vec<HostCommand>,
    pub files: Vec<HostFile>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostCommand {
    pub argv: Vec<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostFile {
    pub path: PathBuf,
    pub why: String,
}

/// Everything a launch will do, for the preflight and `bottle plan --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub identity: String,
    pub agent: String,
    pub bottle: String,
    pub manifest: String,
    /// Whether `bottle run` may act on the manifest.
    pub trust: TrustStatus,
    /// What the manifest runs and reads on the host.
    pub host_access: HostAccess,
    pub backend: &'static str,
    pub backend_reason: String,
    /// VM engine or container runtime, and why.
    pub engine: Option<String>,
    pub engine_reason: Option<String>,
    pub warnings: Vec<String>,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub copy_cwd: bool,
    pub prompt: Option<String>,
    pub skills: Vec<PathBuf>,
    pub env: Vec<String>,
    pub network: NetworkPlan,
    pub allow: Vec<String>,
    pub allow_ports: Vec<u16>,
    pub allow_ips: Vec<String>,
    pub passthrough: Vec<String>,
    pub rules: Vec<RulePlan>,
    pub routes: Vec<RoutePlan>,
    pub git: Vec<GitPlan>,
    pub tls_interception: TlsPlan,
    pub dlp_action: &'static str,
    pub dlp_disabled_rules: Vec<String>,
    pub supervise: bool,
    #[serde(skip)]
    pub source: PlanSource,
}

/// The manifest pieces a launch needs beyond what the plan prints.
#[derive(Debug, Clone, Default)]
pub struct PlanSource {
    pub bottle: Option<Bottle>,
    pub agent: Option<Agent>,
    pub base_dir: PathBuf,
}

/// Inputs of [`prepare`].
#[derive(Debug)]
pub struct PlanInputs<'a> {
    pub loaded: &'a Loaded,
    pub agent: &'a str,
    pub cwd: &'a Path,
    pub selected: Selected,
    pub command_override: Option<Vec<String>>,
    pub identity: String,
}

/// The guard ports the guest reaches on `proxy.internal`.
pub const PROXY_PORT: u16 = 8888;
pub const GIT_PORT: u16 = 9418;
pub const SUPERVISE_PORT: u16 = 9100;

/// Find the agent (with a "did you mean" when it is missing).
pub fn find_agent<'m>(
    loaded: &'m Loaded,
    agent: &str,
) -> Result<(&'m Agent, &'m Bottle), PlanError> {
    let m = &loaded.manifest;
    match m.agents.get(agent) {
        Some(a) => {
            // The manifest checker guarantees the bottle exists.
            let b = m
                .bottles
                .get(&a.bottle)
                .ok_or_else(|| PlanError::UnknownAgent {
                    agent: agent.to_string(),
                    origin: loaded.origin.describe(),
                    hint: format!(": its bottle `{}` is not defined", a.bottle),
                })?;
            Ok((a, b))
        }
        None => {
            let known: Vec<&str> = m.agents.keys().map(String::as_str).collect();
            let hint = match manifest::did_you_mean(agent, &known) {
                Some(best) => format!(
                    "; did you mean `{best}`? Agents defined: {}",
                    known.join(", ")
                ),
                None if known.is_empty() => {
                    "; it defines no agents (add an `[agents.NAME]` table)".to_string()
                }
                None => format!("; agents defined: {}", known.join(", ")),
            };
            Err(PlanError::UnknownAgent {
                agent: agent.to_string(),
                origin: loaded.origin.describe(),
                hint,
            })
        }
    }
}

/// Build the plan. Writes nothing; reads only the inputs and, to resolve
/// symlinks, the host paths the manifest names (refusing secret locations).
pub fn prepare(inputs: PlanInputs<'_>) -> Result<Plan, PlanError> {
    let (agent, bottle) = find_agent(inputs.loaded, inputs.agent)?;
    let base_dir = inputs.loaded.origin.base_dir(inputs.cwd);
    let agent_key = |key| PathKey {
        table: "agents",
        name: inputs.agent,
        key,
        allow_secret_paths: agent.allow_secret_paths,
    };
    let prompt_file = match (&agent.prompt, &agent.prompt_file) {
        (None, Some(p)) => Some(paths::checked(&base_dir, p, agent_key("prompt_file"))?),
        _ => None,
    };
    // The plan keeps each skill's path as written (its last component names
    // the skill in the guest); its real path is checked and listed as host access.
    let real_skills = agent
        .skills
        .iter()
        .map(|s| paths::checked(&base_dir, s, agent_key("skills")))
        .collect::<Result<Vec<_>, _>>()?;
    let skills: Vec<PathBuf> = agent
        .skills
        .iter()
        .map(|s| paths::expand(&base_dir, s))
        .collect();
    let upstream_ca = bottle
        .upstream_ca
        .iter()
        .map(|p| {
            paths::checked(
                &base_dir,
                p,
                PathKey {
                    table: "bottles",
                    name: &agent.bottle,
                    key: "upstream_ca",
                    allow_secret_paths: bottle.allow_secret_paths,
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let host_access = host_access(
        bottle,
        &base_dir,
        prompt_file.as_deref(),
        &real_skills,
        &upstream_ca,
    );
    let (net, prefix) = validate::parse_subnet(&bottle.network.subnet)
        .unwrap_or((std::net::Ipv4Addr::new(10, 0, 2, 0), 24));
    let octets = u32::from(net) & (u32::MAX << (32 - u32::from(prefix)));
    let gateway = std::net::Ipv4Addr::from(octets + 2);
    let guest = std::net::Ipv4Addr::from(octets + 15.min((1u32 << (32 - u32::from(prefix))) - 2));
    let mut ports = vec![(PROXY_PORT, "proxy (firewall + egress)")];
    if !bottle.git.is_empty() {
        ports.push((GIT_PORT, "git-gate"));
    }
    if bottle.supervise {
        ports.push((SUPERVISE_PORT, "supervise (MCP)"));
    }
    let routes = bottle.routes.iter().map(route_plan).collect::<Vec<_>>();
    let mut env: Vec<String> = agent.env.keys().cloned().collect();
    env.extend(
        [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "NODE_EXTRA_CA_CERTS",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
        ]
        .map(String::from),
    );
    env.extend(
        crate::provision::placeholder_env(&routes)
            .into_iter()
            .map(|(k, _)| k),
    );
    env.sort();
    env.dedup();
    let selected = inputs.selected;
    Ok(Plan {
        identity: inputs.identity,
        agent: inputs.agent.to_string(),
        bottle: agent.bottle.clone(),
        manifest: inputs.loaded.origin.describe(),
        trust: inputs.loaded.trust.clone(),
        host_access,
        backend: selected.backend.as_str(),
        backend_reason: selected.reason,
        engine: selected.engine,
        engine_reason: selected.engine_reason,
        warnings: selected.warnings,
        image: bottle.image.clone(),
        cpus: bottle.cpus,
        memory_mib: bottle.memory_mib,
        command: inputs
            .command_override
            .unwrap_or_else(|| agent.command.clone()),
        cwd: inputs.cwd.to_path_buf(),
        copy_cwd: agent.copy_cwd,
        prompt: match (&agent.prompt, &prompt_file) {
            (Some(_), _) => Some("inline".to_string()),
            (None, Some(p)) => Some(p.display().to_string()),
            (None, None) => None,
        },
        skills,
        env,
        network: NetworkPlan {
            dns_name: "proxy.internal",
            subnet: format!("{}/{prefix}", std::net::Ipv4Addr::from(octets)),
            gateway: gateway.to_string(),
            guest: guest.to_string(),
            mtu: bottle.network.mtu,
            ports,
        },
        allow: bottle.allow.clone(),
        allow_ports: bottle.allow_ports.clone(),
        allow_ips: bottle.allow_ips.clone(),
        passthrough: bottle.passthrough.clone(),
        rules: bottle
            .rules
            .iter()
            .map(|r| RulePlan {
                host: r.host.clone(),
                methods: r.methods.clone(),
                paths: r.paths.clone(),
            })
            .collect(),
        routes,
        git: bottle
            .git
            .iter()
            .map(|g| GitPlan {
                name: g.name.clone(),
                upstream: g.upstream.clone(),
                gate_url: format!("git://proxy.internal/{}.git", g.name),
                host_key_fingerprint: g
                    .known_host_key
                    .as_deref()
                    .and_then(validate::host_key_fingerprint)
                    .unwrap_or_default(),
                identity_file: g.identity_file.as_ref().map(|p| expand_home(&base_dir, p)),
                allow_force_push: g.allow_force_push,
            })
            .collect(),
        tls_interception: TlsPlan {
            enabled: true,
            ca: "per-bottle ECDSA P-256, in memory, made at launch",
            ca_fingerprint: None,
        },
        dlp_action: match bottle.dlp.action {
            manifest::DlpAction::Block => "block",
            manifest::DlpAction::Warn => "warn",
        },
        dlp_disabled_rules: bottle.dlp.disable_rules.clone(),
        supervise: bottle.supervise,
        source: PlanSource {
            bottle: Some(bottle.clone()),
            agent: Some(agent.clone()),
            base_dir,
        },
    })
}

/// The commands and files of the manifest's bottle and agent that bottle
/// runs or reads on the host (paths already resolved, except token and key files).
pub fn host_access(
    bottle: &Bottle,
    base_dir: &Path,
    prompt_file: Option<&Path>,
    skills: &[PathBuf],
    upstream_ca: &[PathBuf],
) -> HostAccess {
    let mut access = HostAccess::default();
    for route in &bottle.routes {
        let why = format!("token of route {}", route.host);
        if let Some(argv) = &route.token.command {
            access.commands.push(HostCommand {
                argv: argv.clone(),
                why,
            });
        } else if let Some(f) = &route.token.file {
            access.files.push(HostFile {
                path: paths::resolve(base_dir, f),
                why: format!("{why}, sent to {} only", route.host),
            });
        }
    }
    if let Some(p) = prompt_file {
        access.files.push(HostFile {
            path: p.to_path_buf(),
            why: "prompt, copied into the bottle".to_string(),
        });
    }
    for s in skills {
        access.files.push(HostFile {
            path: s.clone(),
            why: "skill, copied into the bottle".to_string(),
        });
    }
    for c in upstream_ca {
        access.files.push(HostFile {
            path: c.clone(),
            why: "upstream CA, read by the proxy".to_string(),
        });
    }
    for g in &bottle.git {
        if let Some(key) = &g.identity_file {
            access.files.push(HostFile {
                path: paths::resolve(base_dir, key),
                why: format!("SSH key git-gate pushes {} with", g.upstream),
            });
        }
    }
    access
}

/// A command on one line: long scripts are summarised.
pub fn render_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.contains('\n') {
                format!("'<script, {} lines>'", a.lines().count())
            } else if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c))
            {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn route_plan(route: &Route) -> RoutePlan {
    let name = manifest::route_name(route);
    let t = &route.token;
    let token_from = match (&t.env, &t.file, &t.command) {
        (Some(v), _, _) => format!("env {v}"),
        (_, Some(f), _) => format!("file {}", f.display()),
        (_, _, Some(c)) => format!("command {}", c.join(" ")),
        _ => "nothing".to_string(),
    };
    RoutePlan {
        placeholder: format!("bottle-placeholder-{name}"),
        name,
        host: route.host.clone(),
        header: route.header.clone(),
        prefix: route.prefix.clone(),
        token_from,
    }
}

/// Resolve `~/` and relative paths against the manifest's directory.
pub fn expand_home(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    base.join(p)
}

impl Plan {
    /// The human preflight text.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(
            o,
            "bottle plan for agent `{}` (identity {})",
            self.agent, self.identity
        );
        let _ = writeln!(o, "  manifest       : {}", self.manifest);
        let _ = writeln!(o, "  manifest trust : {}", self.trust.describe());
        for c in &self.host_access.commands {
            let _ = writeln!(
                o,
                "  host command   : {}  ({}; runs on this host as you at launch)",
                render_command(&c.argv),
                c.why
            );
        }
        for f in &self.host_access.files {
            let _ = writeln!(o, "  host file      : {}  ({})", f.path.display(), f.why);
        }
        let _ = writeln!(o, "  bottle         : {}", self.bottle);
        let _ = writeln!(
            o,
            "  backend        : {} ({})",
            self.backend, self.backend_reason
        );
        if let Some(engine) = &self.engine {
            let _ = writeln!(
                o,
                "  engine         : {engine} ({})",
                self.engine_reason.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(
            o,
            "  image          : {}  ({} vCPU, {} MiB)",
            self.image, self.cpus, self.memory_mib
        );
        let _ = writeln!(o, "  command        : {}", render_command(&self.command));
        let _ = writeln!(
            o,
            "  workspace      : {}",
            if self.copy_cwd {
                format!("{} copied in (host tree never written)", self.cwd.display())
            } else {
                "not copied".to_string()
            }
        );
        if self.backend == "docker" {
            let _ = writeln!(o, "  network        : none (loopback only); {} is 127.0.0.1, forwarded to the guards' unix sockets", self.network.dns_name);
        } else {
            let _ = writeln!(
                o,
                "  network        : only {} = {} ({} /{}), MTU {}",
                self.network.dns_name,
                self.network.gateway,
                self.network.guest,
                self.network.subnet.rsplit('/').next().unwrap_or(""),
                self.network.mtu
            );
        }
        for (port, what) in &self.network.ports {
            let _ = writeln!(o, "                   :{port} → {what}");
        }
        let _ = writeln!(o, "  allow          : {}", list(&self.allow));
        let ports: Vec<String> = self.allow_ports.iter().map(u16::to_string).collect();
        let _ = writeln!(o, "  allow ports    : {}", list(&ports));
        if !self.allow_ips.is_empty() {
            let _ = writeln!(o, "  allow IPs      : {}", list(&self.allow_ips));
        }
        let _ = writeln!(o, "  passthrough    : {}", list(&self.passthrough));
        for r in &self.rules {
            let _ = writeln!(
                o,
                "  rule           : {} methods [{}] paths [{}]",
                r.host,
                list(&r.methods),
                list(&r.paths)
            );
        }
        let _ = writeln!(
            o,
            "  tls intercept  : {}",
            if self.tls_interception.enabled {
                self.tls_interception.ca
            } else {
                "off"
            }
        );
        let _ = writeln!(
            o,
            "  dlp            : {}{}",
            self.dlp_action,
            if self.dlp_disabled_rules.is_empty() {
                String::new()
            } else {
                format!(" (rules off: {})", self.dlp_disabled_rules.join(", "))
            }
        );
        for r in &self.routes {
            let _ = writeln!(
                o,
                "  route          : {} header {} ← {} (agent holds {})",
                r.host, r.header, r.token_from, r.placeholder
            );
        }
        for g in &self.git {
            let _ = writeln!(
                o,
                "  git remote     : {} → {} (host key {}){}",
                g.name,
                g.upstream,
                g.host_key_fingerprint,
                if g.allow_force_push {
                    ", force push allowed"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            o,
            "  supervise      : {}",
            if self.supervise {
                "on (MCP on :9100)"
            } else {
                "off"
            }
        );
        let _ = writeln!(o, "  env            : {}", list(&self.env));
        for w in &self.warnings {
            let _ = writeln!(o, "  warning        : {w}");
        }
        o
    }
}
