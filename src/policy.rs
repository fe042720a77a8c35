//! The manifest's bottle as the guards' values (`bottle_sidecars::policy`):
//! built once, by `prepare`, into the plan; the bundle gets them as they are.

use crate::manifest::paths;
use crate::manifest::{self, Bottle, TokenSpec};
use bottle_sidecars::policy::{
    DlpHost, DlpPolicy, GitRemote, HostPattern, Policy, RequestRule, Route, TokenSource,
};
use std::path::{Path, PathBuf};

/// Why the bottle's policy could not be built (the manifest checks make this rare).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("host pattern `{0}`: {1}")]
    Host(String, bottle_sidecars::policy::HostPatternError),
    #[error("route `{0}` has no token source; write exactly one of `env`, `file` or `command`")]
    NoToken(String),
    #[error("cannot read upstream CA {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn host(raw: &str) -> Result<HostPattern, PolicyError> {
    HostPattern::parse(raw).map_err(|e| PolicyError::Host(raw.to_string(), e))
}

/// Where a route's token comes from; a file is resolved against the
/// manifest's directory (`base_dir`). `None` when the spec names none (the
/// manifest checks refuse that).
pub fn token_source(spec: &TokenSpec, base_dir: &Path) -> Option<TokenSource> {
    match (&spec.env, &spec.file, &spec.command) {
        (Some(v), _, _) => Some(TokenSource::Env(v.clone())),
        (_, Some(f), _) => Some(TokenSource::File(paths::expand(base_dir, f))),
        (_, _, Some(c)) => Some(TokenSource::Command(c.clone())),
        _ => None,
    }
}

/// The proxy policy of a bottle.
pub fn build(bottle: &Bottle, base_dir: &Path) -> Result<Policy, PolicyError> {
    let hosts = |list: &[String]| list.iter().map(|h| host(h)).collect::<Result<_, _>>();
    Ok(Policy {
        allow: hosts(&bottle.allow)?,
        allow_ports: bottle.allow_ports.clone(),
        deny: Vec::new(),
        passthrough: hosts(&bottle.passthrough)?,
        allow_ips: bottle.allow_ips.clone(),
        rules: bottle
            .rules
            .iter()
            .map(|r| {
                Ok(RequestRule {
                    host: host(&r.host)?,
                    methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                    paths: r.paths.clone(),
                })
            })
            .collect::<Result<_, PolicyError>>()?,
        routes: bottle
            .routes
            .iter()
            .map(|r| {
                let name = manifest::route_name(r);
                let token = token_source(&r.token, base_dir)
                    .ok_or_else(|| PolicyError::NoToken(name.clone()))?;
                Ok(Route {
                    name,
                    host: host(&r.host)?,
                    header: r.header.clone(),
                    prefix: r.prefix.clone(),
                    token,
                })
            })
            .collect::<Result<_, PolicyError>>()?,
        dlp: DlpPolicy {
            action: bottle.dlp.action,
            disable_rules: bottle.dlp.disable_rules.clone(),
            hosts: bottle
                .dlp
                .hosts
                .iter()
                .map(|(h, a)| {
                    Ok(DlpHost {
                        host: host(h)?,
                        action: *a,
                    })
                })
                .collect::<Result<_, PolicyError>>()?,
        },
        supervise: bottle.supervise,
    })
}

/// The bottle's git remotes, as git-gate serves them.
pub fn git_remotes(bottle: &Bottle, base_dir: &Path) -> Vec<GitRemote> {
    bottle
        .git
        .iter()
        .map(|g| GitRemote {
            name: g.name.clone(),
            upstream: g.upstream.clone(),
            identity_file: g.identity_file.as_ref().map(|p| paths::expand(base_dir, p)),
            known_host_key: g.known_host_key.clone().unwrap_or_default(),
            extra_hosts: g.extra_hosts.clone(),
            allow_force_push: g.allow_force_push,
            allow_non_commit_refs: g.allow_non_commit_refs,
        })
        .collect()
}

/// The PEM text of the upstream CA files (read at launch, never when planning).
pub fn read_pems(files: &[PathBuf]) -> Result<Vec<String>, PolicyError> {
    files
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Ca {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_sidecars::policy::DlpAction;

    #[test]
    fn dlp_host_actions_reach_the_proxy_policy() {
        let m = manifest::parse(
            "t",
            "[bottles.b]\ndlp = { action = \"warn\", hosts = { \"api.anthropic.com\" = \"redact\" } }\n",
        )
        .unwrap();
        let p = build(&m.bottles["b"], Path::new("/")).unwrap();
        assert_eq!(p.dlp.action, DlpAction::Warn);
        assert_eq!(p.dlp.action_for("api.anthropic.com"), DlpAction::Redact);
        assert_eq!(p.dlp.action_for("github.com"), DlpAction::Warn);
    }
}
