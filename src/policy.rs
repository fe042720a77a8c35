//! The plan's policy as the guards' values (`bottle_sidecars::policy`).

use crate::plan::Plan;
use bottle_sidecars::policy::{
    DlpAction, DlpPolicy, HostPattern, Policy, RequestRule, Route, TokenSource,
};

/// Why the plan's policy could not be built (the manifest checks make this rare).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("host pattern `{0}`: {1}")]
    Host(String, bottle_sidecars::policy::HostPatternError),
    #[error("cannot read upstream CA {path}")]
    Ca {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn host(raw: &str) -> Result<HostPattern, PolicyError> {
    HostPattern::parse(raw).map_err(|e| PolicyError::Host(raw.to_string(), e))
}

/// Build the proxy policy for a plan.
pub fn policy_for(plan: &Plan) -> Result<Policy, PolicyError> {
    let bottle = plan.source.bottle.as_ref();
    let routes = bottle.map_or_else(Vec::new, |b| b.routes.clone());
    Ok(Policy {
        allow: plan
            .allow
            .iter()
            .map(|h| host(h))
            .collect::<Result<_, _>>()?,
        allow_ports: plan.allow_ports.clone(),
        passthrough: plan
            .passthrough
            .iter()
            .map(|h| host(h))
            .collect::<Result<_, _>>()?,
        allow_ips: plan.allow_ips.clone(),
        rules: plan
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
        routes: routes
            .iter()
            .map(|r| {
                let token = match (&r.token.env, &r.token.file, &r.token.command) {
                    (Some(v), _, _) => TokenSource::Env(v.clone()),
                    (_, Some(f), _) => {
                        TokenSource::File(crate::plan::expand_home(&plan.source.base_dir, f))
                    }
                    (_, _, Some(c)) => TokenSource::Command(c.clone()),
                    _ => TokenSource::Env(String::new()),
                };
                Ok(Route {
                    name: crate::manifest::route_name(r),
                    host: host(&r.host)?,
                    header: r.header.clone(),
                    prefix: r.prefix.clone(),
                    token,
                })
            })
            .collect::<Result<_, PolicyError>>()?,
        dlp: DlpPolicy {
            action: if plan.dlp_action == "warn" {
                DlpAction::Warn
            } else {
                DlpAction::Block
            },
            disable_rules: plan.dlp_disabled_rules.clone(),
        },
    })
}

/// The PEM text of the bottle's `upstream_ca` files.
pub fn upstream_ca_pems(plan: &Plan) -> Result<Vec<String>, PolicyError> {
    let files = plan
        .source
        .bottle
        .as_ref()
        .map_or_else(Vec::new, |b| b.upstream_ca.clone());
    files
        .iter()
        .map(|f| {
            let path = crate::plan::expand_home(&plan.source.base_dir, f);
            std::fs::read_to_string(&path).map_err(|source| PolicyError::Ca { path, source })
        })
        .collect()
}
