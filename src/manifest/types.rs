//! Typed manifest values, deserialised with serde after the structural pass
//! in [`super::structure`] has accepted the document.

pub use bottle_docker::RuntimeChoice;
pub use bottle_vmm::EngineChoice;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A whole `bottle.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub bottles: BTreeMap<String, Bottle>,
    #[serde(default)]
    pub agents: BTreeMap<String, Agent>,
}

/// `backend = "vm" | "docker"`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    #[default]
    Vm,
    Docker,
}

impl BackendName {
    /// Every backend, in the order auto-selection tries them.
    pub const ALL: [BackendName; 2] = [BackendName::Vm, BackendName::Docker];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::Docker => "docker",
        }
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a backend; use `vm` or `docker`")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendName {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

/// `[bottles.NAME]`: the policy and shape of one sandbox.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bottle {
    #[serde(default = "default_image")]
    pub image: ImageSpec,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "default_allow_ports")]
    pub allow_ports: Vec<u16>,
    #[serde(default)]
    pub passthrough: Vec<String>,
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Names the proxy resolves to a fixed address (`"ADDR"` or
    /// `"ADDR:PORT"`) instead of asking DNS, like curl's `--resolve`.
    #[serde(default)]
    pub resolve: std::collections::BTreeMap<String, String>,
    /// PEM files with extra roots the proxy trusts for upstream TLS.
    #[serde(default)]
    pub upstream_ca: Vec<PathBuf>,
    /// Let `upstream_ca` name files in secret locations (`/etc`, `~/.ssh`, …).
    #[serde(default)]
    pub allow_secret_paths: bool,
    #[serde(default)]
    pub dlp: Dlp,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub rules: Vec<RequestRule>,
    #[serde(default)]
    pub git: Vec<GitRemote>,
    #[serde(default)]
    pub supervise: bool,
    pub backend: Option<BackendName>,
    #[serde(default)]
    pub vm: VmSection,
    #[serde(default)]
    pub docker: DockerSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub limits: Limits,
}

/// `[bottles.NAME.limits]`: what the agent can make the host hold. Every
/// cap refuses the excess (503, RST, a closed socket), never the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Proxy client connections open at once (tunnels included); on Docker
    /// also each guard socket's connections.
    pub connections: u32,
    /// MiB of request and response bodies the proxy buffers at once, across
    /// all requests; over it a request gets 503.
    pub buffered_mib: u32,
    /// VM: TCP flows the netstack keeps at once; more SYNs get RST.
    pub flows: u32,
    /// Size in MiB at which the audit log is rotated (the chain continues).
    pub audit_file_mib: u32,
    /// Rotated audit files kept besides the current one.
    pub audit_files_kept: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 1024,
            buffered_mib: 256,
            flows: 2048,
            audit_file_mib: 64,
            audit_files_kept: 4,
        }
    }
}

impl Limits {
    /// The smallest `buffered_mib`: one body at the proxy's cap, raw and decoded.
    pub const MIN_BUFFERED_MIB: u32 = 32;
    pub const MAX_CONNECTIONS: u32 = 65_536;
    pub const MAX_FLOWS: u32 = 65_536;
}

pub fn default_image() -> ImageSpec {
    ImageSpec::Name("tiny".to_string())
}

/// `image = "NAME"` (a built-in image), or `[bottles.NAME.image]`: the
/// bottle's own image, defined here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ImageSpec {
    Name(String),
    Custom(CustomImage),
}

/// `[bottles.NAME.image]`: a Debian image with this bottle's toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomImage {
    /// The image it is built on; only `"debian"` (bookworm) today.
    #[serde(default = "default_base")]
    pub base: String,
    /// Debian packages, installed with apt at build time.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Claude Code from npm (the version the `claude` image pins).
    #[serde(default)]
    pub claude: bool,
    /// Shell lines run as root in the image at build time (with the host's
    /// registry access; the bottle itself has no network).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Files copied into the image: path in the image → path on the host.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, PathBuf>,
}

pub fn default_base() -> String {
    "debian".to_string()
}
pub fn default_cpus() -> u32 {
    2
}
pub fn default_memory_mib() -> u32 {
    1024
}
pub fn default_allow_ports() -> Vec<u16> {
    vec![443, 80]
}

/// `dlp = { action = "block" | "warn" | "redact", disable_rules = [...],
/// hosts = { "api.example.com" = "redact", ... } }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dlp {
    #[serde(default)]
    pub action: DlpAction,
    #[serde(default)]
    pub disable_rules: Vec<String>,
    /// Per-host actions: host pattern (as in `allow`) → action.
    #[serde(default)]
    pub hosts: BTreeMap<String, DlpAction>,
}

/// The proxy's own type: the manifest spells the same three actions.
pub use bottle_sidecars::policy::DlpAction;

/// `[[bottles.NAME.routes]]`: credential injection for one host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional name; defaults to the host with dots replaced by dashes.
    pub name: Option<String>,
    pub host: String,
    pub header: String,
    #[serde(default)]
    pub prefix: String,
    pub token: TokenSpec,
}

/// `token = { env = "..." }` / `{ file = "..." }` / `{ command = [...] }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub command: Option<Vec<String>>,
}

/// `[[bottles.NAME.rules]]`: restrict methods and paths on a host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRule {
    pub host: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `[[bottles.NAME.git]]`: a remote served through git-gate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitRemote {
    pub name: String,
    pub upstream: String,
    pub identity_file: Option<PathBuf>,
    pub known_host_key: Option<String>,
    #[serde(default)]
    pub extra_hosts: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_force_push: bool,
    /// Let a ref point at a tree or blob (scanned like any file).
    #[serde(default)]
    pub allow_non_commit_refs: bool,
}

/// `[bottles.NAME.vm]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    /// `auto`, `libkrun` or `qemu`.
    #[serde(default = "default_engine")]
    pub engine: EngineChoice,
}

impl Default for VmSection {
    fn default() -> Self {
        Self {
            engine: default_engine(),
        }
    }
}

pub fn default_engine() -> EngineChoice {
    EngineChoice::Auto
}

/// `[bottles.NAME.docker]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    /// `auto`, `runc` or `runsc`.
    #[serde(default)]
    pub runtime: RuntimeChoice,
    /// Maximum number of processes in the container.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: i64,
}

pub fn default_pids_limit() -> i64 {
    1024
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            runtime: RuntimeChoice::default(),
            pids_limit: default_pids_limit(),
        }
    }
}

/// `[bottles.NAME.network]`: the guest-side addresses of the netstack.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    #[serde(default = "default_subnet")]
    pub subnet: String,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            subnet: default_subnet(),
            mtu: default_mtu(),
        }
    }
}

pub fn default_subnet() -> String {
    "10.0.2.0/24".to_string()
}
pub fn default_mtu() -> u32 {
    1500
}

/// `[agents.NAME]`: what runs in a bottle.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub bottle: String,
    #[serde(default = "default_command")]
    pub command: Vec<String>,
    pub prompt: Option<String>,
    pub prompt_file: Option<PathBuf>,
    #[serde(default)]
    pub skills: Vec<PathBuf>,
    /// Let `skills` and `prompt_file` name paths in secret locations (`~/.ssh`, `/etc`, …).
    #[serde(default)]
    pub allow_secret_paths: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_true")]
    pub copy_cwd: bool,
}

pub fn default_command() -> Vec<String> {
    vec!["claude".to_string()]
}
fn default_true() -> bool {
    true
}
