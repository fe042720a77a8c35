//! `prepare`: (manifest, agent, backend, cwd) → a [`Plan`] that says exactly
//! what a launch will do, and holds everything the launch needs: after
//! `prepare`, nothing reads the manifest again. Building a plan touches
//! nothing: no state dir, no process, no file. Token values never appear in
//! it, only where they come from.

pub(crate) mod engine;
mod render;

pub use engine::{Engine, UnknownEngine};
pub use render::render_command;

use crate::manifest::paths::{self, PathKey, SecretPath};
use crate::manifest::trust::TrustStatus;
use crate::manifest::{self, validate, Agent, BackendName, Bottle, DlpAction, Loaded, Route};
use bottle_docker::RuntimeChoice;
use bottle_sidecars::policy::{GitRemote, Policy, TokenSource};
use bottle_vmm::EngineChoice;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
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
    #[error("the policy of bottle `{bottle}`")]
    Policy {
        bottle: String,
        #[source]
        source: crate::policy::PolicyError,
    },
}

/// A bottle's own image, its host paths resolved.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CustomImagePlan {
    pub packages: Vec<String>,
    pub claude: bool,
    pub setup: Vec<String>,
    /// Path in the image → real path on the host.
    pub files: BTreeMap<String, PathBuf>,
}

/// The image name and definition of `bottle` (host paths checked).
fn image_plan(
    bottle_name: &str,
    bottle: &Bottle,
    base_dir: &Path,
) -> Result<(String, Option<CustomImagePlan>), PlanError> {
    match &bottle.image {
        manifest::ImageSpec::Name(name) => Ok((name.clone(), None)),
        manifest::ImageSpec::Custom(c) => {
            let files = c
                .files
                .iter()
                .map(|(guest, host)| {
                    let key = PathKey {
                        table: "bottles",
                        name: bottle_name,
                        key: "image.files",
                        allow_secret_paths: bottle.allow_secret_paths,
                    };
                    Ok((guest.clone(), paths::checked(base_dir, host, key)?))
                })
                .collect::<Result<BTreeMap<_, _>, PlanError>>()?;
            Ok((
                format!("custom-{bottle_name}"),
                Some(CustomImagePlan {
                    packages: c.packages.clone(),
                    claude: c.claude,
                    setup: c.setup.clone(),
                    files,
                }),
            ))
        }
    }
}

/// Where the agent's credential for a route comes from (never the value).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoutePlan {
    pub name: String,
    pub host: String,
    pub header: String,
    pub prefix: String,
    /// `env ANTHROPIC_API_KEY`, `file /path`, `command prog …` in JSON.
    #[serde(serialize_with = "token_text")]
    pub token_from: TokenSource,
    /// What the agent holds instead of the token.
    pub placeholder: String,
}

/// A token source as one line: `env VAR`, `file PATH`, `command ARGV…`.
pub fn describe_token(source: &TokenSource) -> String {
    match source {
        TokenSource::Env(v) => format!("env {v}"),
        TokenSource::File(f) => format!("file {}", f.display()),
        TokenSource::Command(c) => format!("command {}", c.join(" ")),
    }
}

fn token_text<S: Serializer>(source: &TokenSource, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&describe_token(source))
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

/// An IPv4 network, `10.0.2.0/24` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetworkPlan {
    pub dns_name: &'static str,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub guest: Ipv4Addr,
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

/// The agent's prompt: `"inline"` or its file's path in JSON (the text
/// itself is not printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Inline(String),
    /// Resolved and checked against secret locations.
    File(PathBuf),
}

impl Serialize for Prompt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Prompt::Inline(_) => s.serialize_str("inline"),
            Prompt::File(p) => p.serialize(s),
        }
    }
}

/// What the user asked of the backend: `--engine`/`--runtime`, else the
/// bottle's `[vm] engine` / `[docker] runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Requested {
    pub engine: EngineChoice,
    pub runtime: RuntimeChoice,
}

/// Everything a launch will do, for the preflight and `bottle plan --json`,
/// and everything it needs (the `skip`ped fields are not printed).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub identity: String,
    pub agent: String,
    pub bottle: String,
    pub manifest: String,
    /// The manifest's file (none: the built-in one), recorded for `resume`.
    #[serde(skip)]
    pub manifest_path: Option<PathBuf>,
    /// `bottle resume`: what the stopped bottle kept, copied in instead.
    #[serde(skip)]
    pub resume: Option<crate::kept::ResumeFrom>,
    /// Whether `bottle run` may act on the manifest.
    pub trust: TrustStatus,
    /// What the manifest runs and reads on the host.
    pub host_access: HostAccess,
    pub backend: BackendName,
    pub backend_reason: String,
    /// VM engine or container runtime (set by the backend's `prepare`), and why.
    pub engine: Option<Engine>,
    pub engine_reason: Option<String>,
    /// VM with a pool running (`bottle pool`): whether a pooled guest will
    /// be claimed (`warm: …`) or why the bottle boots cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip)]
    pub requested: Requested,
    pub warnings: Vec<String>,
    /// The image's name: a built-in one, or `custom-<bottle>`.
    pub image: String,
    /// The bottle's own image definition (`[bottles.NAME.image]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_image: Option<CustomImagePlan>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Docker: the container's process limit.
    #[serde(skip)]
    pub pids_limit: u32,
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub copy_cwd: bool,
    pub prompt: Option<Prompt>,
    /// As written, `~` and relative paths expanded (the last component
    /// names the skill in the guest); checked again when copied.
    pub skills: Vec<PathBuf>,
    /// The names of the agent's environment variables.
    pub env: Vec<String>,
    /// The agent's own variables (`[agents.NAME] env`), with their values.
    #[serde(skip)]
    pub agent_env: BTreeMap<String, String>,
    /// Whether `prompt_file` and `skills` may be in secret locations.
    #[serde(skip)]
    pub allow_secret_paths: bool,
    pub network: NetworkPlan,
    pub limits: crate::manifest::Limits,
    pub allow: Vec<String>,
    pub allow_ports: Vec<u16>,
    pub allow_ips: Vec<String>,
    /// Names the proxy resolves to fixed addresses.
    pub resolve: BTreeMap<String, String>,
    pub passthrough: Vec<String>,
    pub rules: Vec<RulePlan>,
    pub routes: Vec<RoutePlan>,
    pub git: Vec<GitPlan>,
    pub tls_interception: TlsPlan,
    pub dlp_action: DlpAction,
    pub dlp_disabled_rules: Vec<String>,
    /// Per-host DLP actions (host pattern → action).
    pub dlp_hosts: BTreeMap<String, DlpAction>,
    pub supervise: bool,
    /// What the proxy enforces.
    #[serde(skip)]
    pub policy: Policy,
    /// What git-gate serves.
    #[serde(skip)]
    pub git_remotes: Vec<GitRemote>,
    /// Extra roots for upstream TLS (resolved and checked; read at launch).
    #[serde(skip)]
    pub upstream_ca: Vec<PathBuf>,
}

/// A bottle network's subnet (`[bottles.NAME.network] subnet`; an invalid
/// one means the default 10.0.2.0/24), the gateway (`proxy.internal`, .2)
/// and the guest's address (.15, or the last host of a smaller subnet).
pub fn addresses(subnet: &str) -> (Subnet, Ipv4Addr, Ipv4Addr) {
    let (net, prefix) = validate::parse_subnet(subnet).unwrap_or((Ipv4Addr::new(10, 0, 2, 0), 24));
    let octets = u32::from(net) & (u32::MAX << (32 - u32::from(prefix)));
    let gateway = Ipv4Addr::from(octets + 2);
    let guest = Ipv4Addr::from(octets + 15.min((1u32 << (32 - u32::from(prefix))) - 2));
    let subnet = Subnet {
        network: Ipv4Addr::from(octets),
        prefix_len: prefix,
    };
    (subnet, gateway, guest)
}

/// Inputs of [`prepare`].
#[derive(Debug)]
pub struct PlanInputs<'a> {
    pub loaded: &'a Loaded,
    pub agent: &'a str,
    pub cwd: &'a Path,
    pub backend: BackendName,
    pub backend_reason: String,
    /// `--engine`, over the bottle's `[vm] engine`.
    pub engine: Option<EngineChoice>,
    /// `--runtime`, over the bottle's `[docker] runtime`.
    pub runtime: Option<RuntimeChoice>,
    pub command_override: Option<Vec<String>>,
    pub identity: String,
}

/// The guard ports the guest reaches on `proxy.internal` (see the contract).
pub use bottle_contract::{GIT_PORT, PROXY_PORT, SUPERVISE_PORT};

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
    let prompt = match (&agent.prompt, &agent.prompt_file) {
        (Some(text), _) => Some(Prompt::Inline(text.clone())),
        (None, Some(p)) => Some(Prompt::File(paths::checked(
            &base_dir,
            p,
            agent_key("prompt_file"),
        )?)),
        (None, None) => None,
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
    let prompt_file = match &prompt {
        Some(Prompt::File(p)) => Some(p.as_path()),
        _ => None,
    };
    let (image, custom_image) = image_plan(&agent.bottle, bottle, &base_dir)?;
    let mut host_access = host_access(bottle, &base_dir, prompt_file, &real_skills, &upstream_ca);
    if let Some(c) = &custom_image {
        for line in &c.setup {
            host_access.commands.push(HostCommand {
                argv: vec!["/bin/sh".into(), "-ec".into(), line.clone()],
                why: format!("image setup, as root in a chroot of {image} at build time"),
            });
        }
        for (guest, host) in &c.files {
            host_access.files.push(HostFile {
                path: host.clone(),
                why: format!("copied into the image as {guest}"),
            });
        }
    }
    let policy_error = |source| PlanError::Policy {
        bottle: agent.bottle.clone(),
        source,
    };
    let policy = crate::policy::build(bottle, &base_dir).map_err(policy_error)?;
    let routes = bottle
        .routes
        .iter()
        .map(|r| route_plan(r, &base_dir))
        .collect::<Result<Vec<_>, _>>()
        .map_err(policy_error)?;
    let (subnet, gateway, guest) = addresses(&bottle.network.subnet);
    let (octets, prefix) = (u32::from(subnet.network), subnet.prefix_len);
    let mut ports = vec![(PROXY_PORT, "proxy (firewall + egress)")];
    if !bottle.git.is_empty() {
        ports.push((GIT_PORT, "git-gate"));
    }
    if bottle.supervise {
        ports.push((SUPERVISE_PORT, "supervise (MCP)"));
    }
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
    env.extend(placeholder_env(&routes).into_iter().map(|(k, _)| k));
    env.sort();
    env.dedup();
    Ok(Plan {
        identity: inputs.identity,
        agent: inputs.agent.to_string(),
        bottle: agent.bottle.clone(),
        manifest: inputs.loaded.origin.describe(),
        manifest_path: inputs.loaded.origin.path().map(Path::to_path_buf),
        resume: None,
        trust: inputs.loaded.trust.clone(),
        host_access,
        backend: inputs.backend,
        backend_reason: inputs.backend_reason,
        engine: None,
        engine_reason: None,
        start: None,
        requested: Requested {
            engine: inputs.engine.unwrap_or(bottle.vm.engine),
            runtime: inputs.runtime.unwrap_or(bottle.docker.runtime),
        },
        warnings: Vec::new(),
        image,
        custom_image,
        cpus: bottle.cpus,
        memory_mib: bottle.memory_mib,
        pids_limit: u32::try_from(bottle.docker.pids_limit).unwrap_or(u32::MAX),
        limits: bottle.limits,
        command: inputs
            .command_override
            .unwrap_or_else(|| agent.command.clone()),
        cwd: inputs.cwd.to_path_buf(),
        copy_cwd: agent.copy_cwd,
        prompt,
        skills,
        env,
        agent_env: agent.env.clone(),
        allow_secret_paths: agent.allow_secret_paths,
        network: NetworkPlan {
            dns_name: bottle_contract::PROXY_HOST,
            subnet: Subnet {
                network: Ipv4Addr::from(octets),
                prefix_len: prefix,
            },
            gateway,
            guest,
            mtu: bottle.network.mtu,
            ports,
        },
        allow: bottle.allow.clone(),
        allow_ports: bottle.allow_ports.clone(),
        allow_ips: bottle.allow_ips.clone(),
        resolve: bottle.resolve.clone(),
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
                gate_url: bottle_contract::git_gate_url(&g.name),
                host_key_fingerprint: g
                    .known_host_key
                    .as_deref()
                    .and_then(validate::host_key_fingerprint)
                    .unwrap_or_default(),
                identity_file: g
                    .identity_file
                    .as_ref()
                    .map(|p| paths::expand(&base_dir, p)),
                allow_force_push: g.allow_force_push,
            })
            .collect(),
        tls_interception: TlsPlan {
            enabled: true,
            ca: "per-bottle ECDSA P-256, in memory, made at launch",
            ca_fingerprint: None,
        },
        dlp_action: bottle.dlp.action,
        dlp_disabled_rules: bottle.dlp.disable_rules.clone(),
        dlp_hosts: bottle.dlp.hosts.clone(),
        supervise: bottle.supervise,
        policy,
        git_remotes: crate::policy::git_remotes(bottle, &base_dir),
        upstream_ca,
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

/// Environment variables that carry route placeholders in the guest: the
/// variable the real token is read from on the host (for `env` sources), plus
/// the names Claude Code reads when a route covers Anthropic's API.
pub fn placeholder_env(routes: &[RoutePlan]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for route in routes {
        if let TokenSource::Env(var) = &route.token_from {
            env.push((var.clone(), route.placeholder.clone()));
        }
        if route.host.eq_ignore_ascii_case("api.anthropic.com") {
            let var = if route.header.eq_ignore_ascii_case("authorization") {
                "CLAUDE_CODE_OAUTH_TOKEN"
            } else {
                "ANTHROPIC_API_KEY"
            };
            env.push((var.to_string(), route.placeholder.clone()));
        }
    }
    env.sort();
    env.dedup_by(|a, b| a.0 == b.0);
    env
}

fn route_plan(route: &Route, base_dir: &Path) -> Result<RoutePlan, crate::policy::PolicyError> {
    let name = manifest::route_name(route);
    let token_from = crate::policy::token_source(&route.token, base_dir)
        .ok_or_else(|| crate::policy::PolicyError::NoToken(name.clone()))?;
    Ok(RoutePlan {
        placeholder: format!("bottle-placeholder-{name}"),
        name,
        host: route.host.clone(),
        header: route.header.clone(),
        prefix: route.prefix.clone(),
        token_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, header: &str, from: TokenSource) -> RoutePlan {
        RoutePlan {
            name: "r".into(),
            host: host.into(),
            header: header.into(),
            prefix: String::new(),
            token_from: from,
            placeholder: "bottle-placeholder-r".into(),
        }
    }

    #[test]
    fn anthropic_api_key_route_gives_placeholder_api_key() {
        let env = placeholder_env(&[route(
            "api.anthropic.com",
            "x-api-key",
            TokenSource::File("/k".into()),
        )]);
        assert_eq!(
            env,
            vec![(
                "ANTHROPIC_API_KEY".to_string(),
                "bottle-placeholder-r".to_string()
            )]
        );
    }

    #[test]
    fn anthropic_bearer_route_gives_oauth_placeholder_and_env_source_name() {
        let env = placeholder_env(&[route(
            "api.anthropic.com",
            "Authorization",
            TokenSource::Env("MY_TOKEN".into()),
        )]);
        let names: Vec<_> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["CLAUDE_CODE_OAUTH_TOKEN", "MY_TOKEN"]);
    }
}
