//! Approved egress: what the operator added to the manifest's policy, each
//! with an optional end. Kept in the state directory
//! (`policy-grants.json`, written atomically) so a restarted bundle applies
//! them again; [`effective`] is the policy the proxy enforces.

use super::SuperviseError;
use crate::policy::{HostPattern, Policy, RequestRule, Route};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One approved egress request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The request it approves.
    pub request: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Seconds since the epoch; none: as long as the bottle exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl Grant {
    pub fn live(&self, now: u64) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub grants: Vec<Grant>,
    /// Hosts the operator denied (`bottle policy ID deny`): removed from
    /// the allowlist, the manifest's entries included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
    /// Egress routes the operator added (`bottle policy ID route add`):
    /// where each token is read from, never the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Hosts whose manifest routes the operator removed or replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrouted: Vec<String>,
}

impl Grants {
    /// The grants in `path`; none when it does not exist.
    pub fn load(path: &Path) -> Result<Self, SuperviseError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                SuperviseError::Invalid(format!(
                    "{} is not a grants file ({e}); remove it to start without grants",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(SuperviseError::io(
                format!("cannot read {}", path.display()),
                e,
            )),
        }
    }

    /// Write atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), SuperviseError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| SuperviseError::Invalid(format!("cannot encode grants: {e}")))?;
        let tmp = path.with_extension(format!("{}.tmp", super::id::generate()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            SuperviseError::io(format!("cannot write {}", path.display()), e)
        })
    }

    /// Drop grants that ended by `now`; true if any did.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.grants.len();
        self.grants.retain(|g| g.live(now));
        self.grants.len() != before
    }

    /// The earliest end of a live grant.
    pub fn next_expiry(&self) -> Option<u64> {
        self.grants.iter().filter_map(|g| g.until).min()
    }
}

/// The manifest's policy plus the grants live at `now`. A grant adds its
/// host to `allow` (an IP address to `allow_ips`), its port to `allow_ports` (ports are per bottle, not per
/// host) and, with methods or paths, a rule for its host.
pub fn effective(base: &Policy, grants: &Grants, now: u64) -> Policy {
    let mut policy = base.clone();
    for g in grants.grants.iter().filter(|g| g.live(now)) {
        if let Some(port) = g.port {
            if !policy.allow_ports.contains(&port) {
                policy.allow_ports.push(port);
            }
        }
        if g.host.parse::<std::net::IpAddr>().is_ok() {
            if !policy.allow_ips.contains(&g.host) {
                policy.allow_ips.push(g.host.clone());
            }
            continue;
        }
        let Ok(host) = HostPattern::parse(&g.host) else {
            continue;
        };
        if !policy.allow.contains(&host) {
            policy.allow.push(host.clone());
        }
        if !g.methods.is_empty() || !g.paths.is_empty() {
            policy.rules.push(RequestRule {
                host,
                methods: g.methods.clone(),
                paths: g.paths.clone(),
            });
        }
    }
    if !grants.denied.is_empty() {
        policy
            .allow
            .retain(|h| !grants.denied.iter().any(|d| *d == h.to_string()));
        policy.allow_ips.retain(|ip| !grants.denied.contains(ip));
        // A denied host a wildcard still covers is refused before `allow`.
        for d in &grants.denied {
            if let Ok(p) = HostPattern::parse(d) {
                if !policy.deny.contains(&p) {
                    policy.deny.push(p);
                }
            }
        }
    }
    policy
        .routes
        .retain(|r| !grants.unrouted.contains(&r.host.to_string()));
    policy.routes.extend(grants.routes.iter().cloned());
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(host: &str, port: Option<u16>, until: Option<u64>) -> Grant {
        Grant {
            request: super::super::id::generate(),
            host: host.into(),
            port,
            methods: vec![],
            paths: vec![],
            until,
        }
    }

    #[test]
    fn live_grants_widen_the_policy_and_expired_ones_do_not() {
        let base = Policy {
            allow: vec![HostPattern::parse("a.test").unwrap()],
            allow_ports: vec![443],
            ..Policy::default()
        };
        let mut grants = Grants {
            grants: vec![
                grant("b.test", Some(8443), Some(100)),
                grant("a.test", None, None),
            ],
            denied: vec![],
            ..Grants::default()
        };
        let p = effective(&base, &grants, 50);
        assert_eq!(p.allow.len(), 2);
        assert!(p.allow.contains(&HostPattern::parse("b.test").unwrap()));
        assert_eq!(p.allow_ports, vec![443, 8443]);
        assert_eq!(effective(&base, &grants, 100), base);
        let ip = Grants {
            grants: vec![grant("127.0.0.1", None, None)],
            denied: vec![],
            ..Grants::default()
        };
        assert_eq!(effective(&base, &ip, 0).allow_ips, vec!["127.0.0.1"]);
        assert!(grants.expire(100));
        assert_eq!(grants.grants.len(), 1);
        assert!(!grants.expire(1000));
        assert_eq!(grants.next_expiry(), None);
    }

    #[test]
    fn a_denied_host_leaves_the_allowlist_even_from_the_manifest() {
        let base = Policy {
            allow: vec![
                HostPattern::parse("a.test").unwrap(),
                HostPattern::parse("b.test").unwrap(),
            ],
            ..Policy::default()
        };
        let grants = Grants {
            grants: vec![],
            denied: vec!["a.test".into()],
            ..Grants::default()
        };
        assert_eq!(
            effective(&base, &grants, 0).allow,
            vec![HostPattern::parse("b.test").unwrap()]
        );
    }

    #[test]
    fn a_denied_host_under_an_allowed_wildcard_is_refused_first() {
        let base = Policy {
            allow: vec![HostPattern::parse("*.example.com").unwrap()],
            allow_ports: vec![443],
            ..Policy::default()
        };
        let grants = Grants {
            denied: vec!["a.example.com".into()],
            ..Grants::default()
        };
        let p = effective(&base, &grants, 0);
        assert_eq!(p.allow, base.allow, "the wildcard stays");
        assert_eq!(p.deny, vec![HostPattern::parse("a.example.com").unwrap()]);
        let ips = crate::proxy::net::IpAllowlist::parse(&[]).unwrap();
        let target = |h: &str| crate::proxy::target::parse_host(h, 443).unwrap();
        let refused =
            crate::proxy::decide::check_target(&p, &ips, &target("a.example.com")).unwrap_err();
        assert_eq!(refused.rule, "host-denied");
        assert!(crate::proxy::decide::check_target(&p, &ips, &target("b.example.com")).is_ok());
    }

    #[test]
    fn added_routes_replace_the_manifests_for_their_host() {
        use crate::policy::TokenSource;
        let route = |host: &str, var: &str| Route {
            name: host.replace('.', "-"),
            host: HostPattern::parse(host).unwrap(),
            header: "x-api-key".into(),
            prefix: String::new(),
            token: TokenSource::Env(var.into()),
        };
        let base = Policy {
            routes: vec![route("a.test", "A"), route("b.test", "B")],
            ..Policy::default()
        };
        let grants = Grants {
            routes: vec![route("a.test", "A2")],
            unrouted: vec!["a.test".into()],
            ..Grants::default()
        };
        let p = effective(&base, &grants, 0);
        assert_eq!(p.routes, vec![route("b.test", "B"), route("a.test", "A2")]);
        let back: Grants = serde_json::from_str(&serde_json::to_string(&grants).unwrap()).unwrap();
        assert_eq!(back, grants);
    }

    #[test]
    fn grants_survive_a_reload_from_disk() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("policy-grants.json");
        assert_eq!(Grants::load(&path).unwrap(), Grants::default());
        let mut g = grant("b.test", None, Some(7));
        g.methods = vec!["GET".into()];
        let grants = Grants {
            grants: vec![g],
            denied: vec!["c.test".into()],
            ..Grants::default()
        };
        grants.save(&path).unwrap();
        assert_eq!(Grants::load(&path).unwrap(), grants);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
