//! The pinned SSH transport the gate uses towards an upstream: parse the
//! upstream URL, write a known_hosts file holding only the pinned key, and
//! build a `GIT_SSH_COMMAND` that trusts nothing else.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::policy::GitRemote;
use bottle_util::shell_quote;

/// Why a remote's SSH settings were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SshError {
    #[error(
        "upstream `{0}` is not an SSH URL (ssh://[user@]host[:port]/path or [user@]host:path)"
    )]
    NotSsh(String),
    #[error("upstream host `{0}` is not a valid host name")]
    BadHost(String),
    #[error("no pinned host key: set known_host_key to the upstream's `ssh-ed25519 AAAA…` key")]
    NoHostKey,
    #[error("pinned host key is not of the form `<type> <base64>`")]
    BadHostKey,
    #[error("extra_hosts maps `{0}` to `{1}`, which is not an IP address")]
    BadExtraHost(String, String),
    #[error("path `{0}` cannot be used in an ssh command line")]
    BadPath(PathBuf),
}

/// The host part of an SSH upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name as written (brackets of IPv6 literals removed).
    pub host: String,
}

/// Extract the host of `ssh://[user@]host[:port]/path`, `git+ssh://…`, or
/// scp-like `[user@]host:path`.
pub fn parse_upstream(url: &str) -> Result<SshTarget, SshError> {
    let not_ssh = || SshError::NotSsh(url.to_string());
    let authority = if let Some(rest) = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
    {
        rest.split('/').next().ok_or_else(not_ssh)?
    } else {
        if url.contains("://") {
            return Err(not_ssh());
        }
        // scp-like: a colon before any slash.
        let colon = url.find(':').ok_or_else(not_ssh)?;
        if url[..colon].contains('/') {
            return Err(not_ssh());
        }
        &url[..colon]
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    if !is_valid_host(host) {
        return Err(SshError::BadHost(host.to_string()));
    }
    Ok(SshTarget {
        host: host.to_string(),
    })
}

fn is_valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

/// Check the pinned key: `<type> <base64> [comment]`, one line. Returns
/// `<type> <base64>` without the comment.
pub fn check_host_key(key: &str) -> Result<String, SshError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(SshError::NoHostKey);
    }
    if key.contains(['\n', '\r']) {
        return Err(SshError::BadHostKey);
    }
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(SshError::BadHostKey);
    };
    let kind_ok = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    let blob_ok = blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !kind_ok || !blob_ok {
        return Err(SshError::BadHostKey);
    }
    Ok(format!("{kind} {blob}"))
}

/// Everything needed to talk to one upstream over pinned SSH.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub target: SshTarget,
    pub known_hosts: PathBuf,
    pub identity_file: Option<PathBuf>,
    /// Address to dial instead of resolving `target.host`.
    pub host_ip: Option<IpAddr>,
}

impl SshSettings {
    /// Validate a remote and decide where its known_hosts file lives.
    pub fn for_remote(remote: &GitRemote, known_hosts: PathBuf) -> Result<Self, SshError> {
        let target = parse_upstream(&remote.upstream)?;
        check_host_key(&remote.known_host_key)?;
        let host_ip = match remote.extra_hosts.get(&target.host) {
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| SshError::BadExtraHost(target.host.clone(), ip.clone()))?,
            ),
            None => None,
        };
        for (name, ip) in &remote.extra_hosts {
            if ip.parse::<IpAddr>().is_err() {
                return Err(SshError::BadExtraHost(name.clone(), ip.clone()));
            }
        }
        Ok(Self {
            target,
            known_hosts,
            identity_file: remote.identity_file.clone(),
            host_ip,
        })
    }

    /// The known_hosts content: the pinned key under the upstream's name only.
    pub fn known_hosts_line(&self, key: &str) -> Result<String, SshError> {
        Ok(format!("{} {}\n", self.target.host, check_host_key(key)?))
    }

    /// The `GIT_SSH_COMMAND` value (git runs it through `sh -c`).
    pub fn command(&self) -> Result<String, SshError> {
        let mut args: Vec<String> = vec!["ssh".into(), "-F".into(), "/dev/null".into()];
        let mut opt = |o: String| {
            args.push("-o".into());
            args.push(o);
        };
        opt("BatchMode=yes".into());
        opt("StrictHostKeyChecking=yes".into());
        opt(format!(
            "UserKnownHostsFile={}",
            path_arg(&self.known_hosts)?
        ));
        opt("GlobalKnownHostsFile=/dev/null".into());
        opt("UpdateHostKeys=no".into());
        opt("CheckHostIP=no".into());
        // The pinned key is stored under the upstream's name; the alias keeps
        // that name even when the port is not 22 or the address is overridden.
        opt(format!("HostKeyAlias={}", self.target.host));
        if let Some(ip) = self.host_ip {
            opt(format!("HostName={ip}"));
        }
        opt("IdentitiesOnly=yes".into());
        opt("IdentityAgent=none".into());
        opt("ForwardAgent=no".into());
        opt("ForwardX11=no".into());
        opt("ClearAllForwardings=yes".into());
        opt("PasswordAuthentication=no".into());
        opt("KbdInteractiveAuthentication=no".into());
        opt("ConnectTimeout=15".into());
        opt("ServerAliveInterval=15".into());
        opt("ServerAliveCountMax=4".into());
        match &self.identity_file {
            Some(path) => opt(format!("IdentityFile={}", path_arg(path)?)),
            None => opt("IdentityFile=none".into()),
        }
        Ok(args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "))
    }
}

/// Paths go into `-o Key=Value` through `sh -c`; refuse what ssh's own option
/// parser would split or misread.
fn path_arg(path: &Path) -> Result<String, SshError> {
    let s = path
        .to_str()
        .ok_or_else(|| SshError::BadPath(path.to_path_buf()))?;
    if s.is_empty()
        || s.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '%')
    {
        return Err(SshError::BadPath(path.to_path_buf()));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn remote(upstream: &str) -> GitRemote {
        GitRemote {
            name: "work".into(),
            upstream: upstream.into(),
            identity_file: Some("/keys/id".into()),
            known_host_key:
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl c"
                    .into(),
            extra_hosts: BTreeMap::new(),
            allow_force_push: false,
            allow_non_commit_refs: false,
        }
    }

    #[test]
    fn ssh_url_with_user_and_port_gives_host() {
        assert_eq!(
            parse_upstream("ssh://git@example.com:2222/o/r.git")
                .unwrap()
                .host,
            "example.com"
        );
    }

    #[test]
    fn scp_like_url_gives_host() {
        assert_eq!(
            parse_upstream("git@github.com:o/r.git").unwrap().host,
            "github.com"
        );
    }

    #[test]
    fn bracketed_ipv6_gives_bare_address() {
        assert_eq!(
            parse_upstream("ssh://git@[::1]:22/r.git").unwrap().host,
            "::1"
        );
    }

    #[test]
    fn https_and_local_paths_are_not_ssh() {
        for url in [
            "https://github.com/o/r.git",
            "/srv/r.git",
            "./a/b:c",
            "file:///r.git",
        ] {
            assert!(
                matches!(parse_upstream(url), Err(SshError::NotSsh(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn host_starting_with_dash_is_refused() {
        assert!(matches!(
            parse_upstream("ssh://-oProxyCommand=x/r.git"),
            Err(SshError::BadHost(_))
        ));
    }

    #[test]
    fn missing_host_key_fails_closed() {
        assert_eq!(check_host_key("  "), Err(SshError::NoHostKey));
        assert_eq!(check_host_key("ssh-ed25519"), Err(SshError::BadHostKey));
        assert_eq!(
            check_host_key("ssh-ed25519 AAAA\nevil.com ssh-rsa AAAA"),
            Err(SshError::BadHostKey)
        );
    }

    #[test]
    fn known_hosts_line_drops_the_comment() {
        let r = remote("git@github.com:o/r.git");
        let s = SshSettings::for_remote(&r, "/kh".into()).unwrap();
        let line = s.known_hosts_line(&r.known_host_key).unwrap();
        assert!(line.starts_with("github.com ssh-ed25519 AAAA"));
        assert!(line.ends_with("l9GKJl\n"));
    }

    #[test]
    fn command_pins_everything() {
        let mut r = remote("ssh://git@code.corp:2222/r.git");
        r.extra_hosts.insert("code.corp".into(), "10.1.2.3".into());
        let cmd = SshSettings::for_remote(&r, "/state/kh".into())
            .unwrap()
            .command()
            .unwrap();
        for want in [
            "'StrictHostKeyChecking=yes'",
            "'UserKnownHostsFile=/state/kh'",
            "'HostKeyAlias=code.corp'",
            "'HostName=10.1.2.3'",
            "'IdentitiesOnly=yes'",
            "'IdentityAgent=none'",
            "'BatchMode=yes'",
            "'IdentityFile=/keys/id'",
        ] {
            assert!(cmd.contains(want), "{want} missing from {cmd}");
        }
    }

    #[test]
    fn extra_host_that_is_not_an_ip_is_refused() {
        let mut r = remote("ssh://git@code.corp/r.git");
        r.extra_hosts
            .insert("code.corp".into(), "evil.example".into());
        assert!(matches!(
            SshSettings::for_remote(&r, "/kh".into()),
            Err(SshError::BadExtraHost(..))
        ));
    }

    #[test]
    fn identity_path_with_space_is_refused() {
        let mut r = remote("git@github.com:o/r.git");
        r.identity_file = Some("/a b/id".into());
        let s = SshSettings::for_remote(&r, "/kh".into()).unwrap();
        assert!(matches!(s.command(), Err(SshError::BadPath(_))));
    }
}
