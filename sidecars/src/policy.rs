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
    /// Replace each finding in a JSON body's string values with a marker
    /// naming the rule and send the rewritten body; block anything else
    /// (findings in the URL or headers, bodies that are not JSON).
    Redact,
}

impl DlpAction {
    /// Every action, as written in a manifest.
    pub const NAMES: &'static [&'static str] = &["block", "warn", "redact"];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Warn => "warn",
            Self::Redact => "redact",
        }
    }
}

/// A per-host override of the bottle's DLP action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlpHost {
    pub host: HostPattern,
    pub action: DlpAction,
}

/// DLP settings of one bottle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DlpPolicy {
    /// The action for hosts without an override.
    pub action: DlpAction,
    /// Scanner rule ids that are switched off for this bottle.
    #[serde(default)]
    pub disable_rules: Vec<String>,
    /// Per-host actions (`dlp.hosts` in the manifest).
    #[serde(default)]
    pub hosts: Vec<DlpHost>,
}

impl DlpPolicy {
    /// The action for a request to `host` (already normalised, see
    /// [`normalize_host`]): an exact pattern wins over wildcards, a longer
    /// wildcard over a shorter one, and without a match the bottle's action.
    pub fn action_for(&self, host: &str) -> DlpAction {
        self.hosts
            .iter()
            .filter(|h| h.host.matches_normalized(host))
            .max_by_key(|h| (!h.host.is_wildcard(), h.host.name().len()))
            .map_or(self.action, |h| h.action)
    }
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
    /// Hosts refused even when `allow` covers them (the operator's `bottle
    /// policy ID deny`): checked before `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<HostPattern>,
    /// Addresses or CIDRs exempt from the SSRF guard (and allowed as IP literals).
    #[serde(default)]
    pub allow_ips: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RequestRule>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dlp: DlpPolicy,
    /// Whether supervise serves this bottle: refusals then name its
    /// `request_egress` tool instead of only the manifest key to change.
    #[serde(default)]
    pub supervise: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(pattern: &str, action: DlpAction) -> DlpHost {
        DlpHost {
            host: HostPattern::parse(pattern).unwrap(),
            action,
        }
    }

    #[test]
    fn the_most_specific_host_override_wins_and_others_get_the_default() {
        let p = DlpPolicy {
            action: DlpAction::Block,
            disable_rules: vec![],
            hosts: vec![
                host("*.example.com", DlpAction::Warn),
                host("api.example.com", DlpAction::Redact),
                host("*.eu.example.com", DlpAction::Block),
                host("*.anthropic.com", DlpAction::Redact),
            ],
        };
        assert_eq!(p.action_for("api.example.com"), DlpAction::Redact);
        assert_eq!(p.action_for("www.example.com"), DlpAction::Warn);
        assert_eq!(p.action_for("x.eu.example.com"), DlpAction::Block);
        assert_eq!(p.action_for("api.anthropic.com"), DlpAction::Redact);
        assert_eq!(p.action_for("example.com"), DlpAction::Block);
        assert_eq!(p.action_for("other.test"), DlpAction::Block);
    }

    #[test]
    fn old_policies_without_hosts_still_parse() {
        let p: DlpPolicy = serde_json::from_str(r#"{"action":"warn","disable_rules":[]}"#).unwrap();
        assert_eq!(p.action, DlpAction::Warn);
        assert!(p.hosts.is_empty());
        let back: DlpPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
