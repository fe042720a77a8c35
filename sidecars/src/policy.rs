//! Policy values shared by the CLI (which builds them from the manifest) and the
//! guards (which enforce them). They are plain serde types so the CLI can hand
//! them to the bundle process as JSON; token *values* never appear here, only
//! where to read them from.

mod host;

pub use host::{normalize_host, HostPattern, HostPatternError};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the proxy does when the DLP scanner finds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    /// Refuse the request with 403 naming the rule (default).
    #[default]
    Block,
    /// Let the request through and write the finding to the audit log.
    Warn,
}

/// DLP settings of one bottle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DlpPolicy {
    pub action: DlpAction,
    /// Scanner rule ids that are switched off for this bottle.
    #[serde(default)]
    pub disable_rules: Vec<String>,
}

/// Where the real credential of an egress route is read from, at launch, on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// Name of an environment variable of the bottle process.
    Env(String),
    /// Path of a file whose content (trimmed) is the token.
    File(PathBuf),
    /// argv of a command whose stdout (trimmed) is the token.
    Command(Vec<String>),
}

/// An egress route: requests to `host` get `header: prefix + token` injected in
/// place of the placeholder the agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Route name, used in the placeholder `bottle-placeholder-<name>`.
    pub name: String,
    pub host: HostPattern,
    pub header: String,
    #[serde(default)]
    pub prefix: String,
    pub token: TokenSource,
}

impl Route {
    /// The value the agent holds instead of the real token.
    pub fn placeholder(&self) -> String {
        format!("bottle-placeholder-{}", self.name)
    }
}

/// Optional per-host restriction on methods and path prefixes. A host with at
/// least one rule only allows requests that match one of its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRule {
    pub host: HostPattern,
    /// Upper-case method names; empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefixes (starting with `/`); empty means any path.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// A git remote served by git-gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRemote {
    /// Name of the mirror, unique per bottle: `git://proxy.internal/<name>.git`.
    pub name: String,
    /// Upstream SSH URL as written in the manifest.
    pub upstream: String,
    /// Private key git-gate pushes and fetches with. Never enters the guest.
    pub identity_file: Option<PathBuf>,
    /// The one host key accepted for the upstream (`ssh-ed25519 AAAA…`).
    pub known_host_key: String,
    /// Names the gate resolves to fixed addresses instead of DNS.
    #[serde(default)]
    pub extra_hosts: BTreeMap<String, String>,
    /// Whether force pushes and ref deletions are forwarded (default: refused).
    #[serde(default)]
    pub allow_force_push: bool,
    /// Whether a ref may point at a tree or a blob (directly or through
    /// annotated tags); the object is then scanned. Default: refused.
    #[serde(default)]
    pub allow_non_commit_refs: bool,
}

/// Everything the proxy enforces for one bottle. Swapped atomically on reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Policy {
    /// Hosts the agent may reach.
    pub allow: Vec<HostPattern>,
    /// Destination ports the agent may reach.
    pub allow_ports: Vec<u16>,
    /// Hosts that are spliced without TLS interception (still allowlisted).
    #[serde(default)]
    pub passthrough: Vec<HostPattern>,
    /// Addresses or CIDRs exempt from the SSRF guard (and allowed as IP literals).
    #[serde(default)]
    pub allow_ips: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RequestRule>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dlp: DlpPolicy,
}
