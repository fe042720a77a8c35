//! Semantic checks on a manifest that parsed: references between tables,
//! exclusive keys, host patterns, SSH URLs and pinned host keys.

use super::diag::Problem;
use super::types::{Limits, Manifest, TokenSpec};
use base64::Engine as _;
use bottle_sidecars::policy::HostPattern;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::ops::Range;
use toml_edit::ImDocument;

/// A step in a key path.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Byte span of the item at `path`, falling back to the closest parent.
pub fn span_of(doc: &ImDocument<String>, path: &[Seg<'_>]) -> Option<Range<usize>> {
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for seg in path {
        let next = match seg {
            Seg::Key(key) => item.get(key),
            Seg::Index(i) => item.get(*i),
        };
        match next {
            Some(n) => {
                item = n;
                if let Some(span) = n.span() {
                    best = Some(span);
                }
            }
            None => break,
        }
    }
    best
}

fn path_string(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

struct Checker<'d> {
    doc: &'d ImDocument<String>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(
        &mut self,
        path: &[Seg<'_>],
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.problems.push(Problem::new(
            path_string(path),
            span_of(self.doc, path),
            message.into(),
            hint.into(),
        ));
    }
}

/// Scanner rule ids that `dlp.disable_rules` may name.
pub type KnownRules<'a> = &'a dyn Fn(&str) -> bool;

/// Run every semantic check; returns all problems found.
pub fn check(
    manifest: &Manifest,
    doc: &ImDocument<String>,
    known_rule: KnownRules<'_>,
) -> Vec<Problem> {
    let mut c = Checker {
        doc,
        problems: Vec::new(),
    };
    for (name, bottle) in &manifest.bottles {
        let base = [Seg::Key("bottles"), Seg::Key(name)];
        let at = |rest: &[Seg<'static>]| -> Vec<Seg<'_>> {
            base.iter().copied().chain(rest.iter().copied()).collect()
        };
        for (key, list) in [
            ("allow", &bottle.allow),
            ("passthrough", &bottle.passthrough),
        ] {
            for (i, raw) in list.iter().enumerate() {
                if let Err(e) = HostPattern::parse(raw) {
                    let path: Vec<Seg<'_>> = base
                        .iter()
                        .copied()
                        .chain([Seg::Key(key), Seg::Index(i)])
                        .collect();
                    c.report(
                        &path,
                        format!("invalid host pattern: {e}"),
                        Some("write `example.com` or `*.example.com`".to_string()),
                    );
                }
            }
        }
        for (i, raw) in bottle.passthrough.iter().enumerate() {
            let covered = HostPattern::parse(raw).ok().is_some_and(|p| {
                bottle
                    .allow
                    .iter()
                    .filter_map(|a| HostPattern::parse(a).ok())
                    .any(|a| a == p || (!p.is_wildcard() && a.matches(p.name())))
            });
            if HostPattern::parse(raw).is_ok() && !covered {
                let path: Vec<Seg<'_>> = base
                    .iter()
                    .copied()
                    .chain([Seg::Key("passthrough"), Seg::Index(i)])
                    .collect();
                c.report(
                    &path,
                    format!("`{raw}` is passthrough but not allowed"),
                    Some(format!(
                        "add `{raw}` to `allow` too: passthrough only skips interception"
                    )),
                );
            }
        }
        for (i, raw) in bottle.allow_ips.iter().enumerate() {
            if parse_ip_or_cidr(raw).is_none() {
                let path: Vec<Seg<'_>> = base
                    .iter()
                    .copied()
                    .chain([Seg::Key("allow_ips"), Seg::Index(i)])
                    .collect();
                c.report(
                    &path,
                    format!("`{raw}` is not an IP address or CIDR"),
                    Some("write e.g. `192.0.2.10` or `192.0.2.0/24`".to_string()),
                );
            }
        }
        if let super::types::ImageSpec::Custom(image) = &bottle.image {
            for (i, p) in image.packages.iter().enumerate() {
                if !bottle_util::debian::is_package_name(p) {
                    let path: Vec<Seg<'_>> = base
                        .iter()
                        .copied()
                        .chain([Seg::Key("image"), Seg::Key("packages"), Seg::Index(i)])
                        .collect();
                    c.report(
                        &path,
                        format!("`{p}` is not a Debian package name"),
                        Some("write the package's name, e.g. `python3-requests` (no options, no versions)".to_string()),
                    );
                }
            }
            for guest in image.files.keys() {
                if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
                    let path: Vec<Seg<'_>> = base
                        .iter()
                        .copied()
                        .chain([Seg::Key("image"), Seg::Key("files"), Seg::Key(guest)])
                        .collect();
                    c.report(
                        &path,
                        format!("`{guest}` is not an absolute path in the image"),
                        Some(
                            "write the path the file gets in the image, e.g. `/etc/pip.conf`"
                                .to_string(),
                        ),
                    );
                }
            }
        }
        for (host, pin) in &bottle.resolve {
            let path: Vec<Seg<'_>> = base
                .iter()
                .copied()
                .chain([Seg::Key("resolve"), Seg::Key(host)])
                .collect();
            match HostPattern::parse(host) {
                Ok(p) if !p.is_wildcard() => {}
                _ => c.report(
                    &path,
                    format!("`{host}` is not a host name"),
                    Some("write a plain name such as `api.example.com` (no wildcard)".to_string()),
                ),
            }
            if bottle_sidecars::proxy::AddressPin::parse(pin).is_none() {
                c.report(
                    &path,
                    format!("`{pin}` is not an address"),
                    Some("write an IP address, optionally with a port: `10.1.2.3` or `127.0.0.1:8443`".to_string()),
                );
            }
        }
        for (i, port) in bottle.allow_ports.iter().enumerate() {
            if *port == 0 {
                let path: Vec<Seg<'_>> = base
                    .iter()
                    .copied()
                    .chain([Seg::Key("allow_ports"), Seg::Index(i)])
                    .collect();
                c.report(
                    &path,
                    "port 0 is not a port",
                    Some("write ports between 1 and 65535".to_string()),
                );
            }
        }
        if bottle.cpus == 0 || bottle.cpus > 64 {
            c.report(
                &at(&[Seg::Key("cpus")]),
                format!("{} vCPUs is out of range", bottle.cpus),
                Some("use 1 to 64".to_string()),
            );
        }
        if bottle.memory_mib < 128 || bottle.memory_mib > 65536 {
            c.report(
                &at(&[Seg::Key("memory_mib")]),
                format!("{} MiB is out of range", bottle.memory_mib),
                Some("use 128 to 65536".to_string()),
            );
        }
        if !(576..=65520).contains(&bottle.network.mtu) {
            c.report(
                &at(&[Seg::Key("network"), Seg::Key("mtu")]),
                format!("MTU {} is out of range", bottle.network.mtu),
                Some("use 576 to 65520 (default 1500)".to_string()),
            );
        }
        let limits = &bottle.limits;
        for (key, value, range, hint) in [
            (
                "connections",
                limits.connections,
                1..=Limits::MAX_CONNECTIONS,
                format!("use 1 to {} (default 1024)", Limits::MAX_CONNECTIONS),
            ),
            (
                "buffered_mib",
                limits.buffered_mib,
                Limits::MIN_BUFFERED_MIB..=65_536,
                format!(
                    "use {} to 65536 (default 256): the proxy must hold one 16 MiB body raw and decoded",
                    Limits::MIN_BUFFERED_MIB
                ),
            ),
            (
                "flows",
                limits.flows,
                16..=Limits::MAX_FLOWS,
                format!("use 16 to {} (default 2048)", Limits::MAX_FLOWS),
            ),
            (
                "audit_file_mib",
                limits.audit_file_mib,
                1..=4096,
                "use 1 to 4096 (default 64)".to_string(),
            ),
            (
                "audit_files_kept",
                limits.audit_files_kept,
                0..=1000,
                "use 0 to 1000 (default 4)".to_string(),
            ),
        ] {
            if !range.contains(&value) {
                c.report(
                    &at(&[Seg::Key("limits"), Seg::Key(key)]),
                    format!("{key} = {value} is out of range"),
                    Some(hint),
                );
            }
        }
        if parse_subnet(&bottle.network.subnet).is_none() {
            c.report(
                &at(&[Seg::Key("network"), Seg::Key("subnet")]),
                format!(
                    "`{}` is not a usable IPv4 /24-/29 subnet",
                    bottle.network.subnet
                ),
                Some("write e.g. `10.0.2.0/24`".to_string()),
            );
        }
        for (i, rule) in bottle.dlp.disable_rules.iter().enumerate() {
            if !known_rule(rule) {
                let path: Vec<Seg<'_>> = base
                    .iter()
                    .copied()
                    .chain([Seg::Key("dlp"), Seg::Key("disable_rules"), Seg::Index(i)])
                    .collect();
                c.report(
                    &path,
                    format!("unknown scanner rule `{rule}`"),
                    Some("`bottle doctor --rules` lists the rule ids".to_string()),
                );
            }
        }
        let mut dlp_hosts: Vec<(HostPattern, &str)> = Vec::new();
        for raw in bottle.dlp.hosts.keys() {
            let path: Vec<Seg<'_>> = base
                .iter()
                .copied()
                .chain([Seg::Key("dlp"), Seg::Key("hosts"), Seg::Key(raw)])
                .collect();
            match HostPattern::parse(raw) {
                Err(e) => c.report(
                    &path,
                    format!("invalid host pattern: {e}"),
                    Some("write `example.com` or `*.example.com`, as in `allow`".to_string()),
                ),
                Ok(p) => match dlp_hosts.iter().find(|(q, _)| *q == p) {
                    Some((_, first)) => c.report(
                        &path,
                        format!("`{raw}` and `{first}` are the same host pattern"),
                        Some("keep one of them".to_string()),
                    ),
                    None => dlp_hosts.push((p, raw)),
                },
            }
        }
        let mut route_names = BTreeSet::new();
        for (i, route) in bottle.routes.iter().enumerate() {
            let rp = |k: &'static str| -> Vec<Seg<'_>> {
                base.iter()
                    .copied()
                    .chain([Seg::Key("routes"), Seg::Index(i), Seg::Key(k)])
                    .collect()
            };
            if let Err(e) = HostPattern::parse(&route.host) {
                c.report(&rp("host"), format!("invalid host pattern: {e}"), None);
            }
            if route.header.is_empty()
                || !route
                    .header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                c.report(
                    &rp("header"),
                    format!("`{}` is not an HTTP header name", route.header),
                    Some("write e.g. `Authorization` or `x-api-key`".to_string()),
                );
            }
            let sources = token_sources(&route.token);
            if sources != 1 {
                let message = if sources == 0 {
                    "route has no token source"
                } else {
                    "route has more than one token source"
                };
                c.report(&rp("token"), message, Some("write exactly one of `token = { env = \"VAR\" }`, `{ file = \"PATH\" }` or `{ command = [\"prog\", \"arg\"] }`".to_string()));
            }
            if matches!(&route.token.command, Some(cmd) if cmd.is_empty()) {
                c.report(
                    &rp("token"),
                    "token command is empty",
                    Some("give the program and its arguments".to_string()),
                );
            }
            let name = super::route_name(route);
            if !route_names.insert(name.clone()) {
                c.report(
                    &rp("host"),
                    format!("two routes are named `{name}`"),
                    Some("give one of them a distinct `name`".to_string()),
                );
            }
        }
        for (i, rule) in bottle.rules.iter().enumerate() {
            let rp = |k: &'static str| -> Vec<Seg<'_>> {
                base.iter()
                    .copied()
                    .chain([Seg::Key("rules"), Seg::Index(i), Seg::Key(k)])
                    .collect()
            };
            if let Err(e) = HostPattern::parse(&rule.host) {
                c.report(&rp("host"), format!("invalid host pattern: {e}"), None);
            }
            for m in &rule.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    c.report(
                        &rp("methods"),
                        format!("`{m}` is not an HTTP method"),
                        Some("write e.g. `GET`, `HEAD`, `POST`".to_string()),
                    );
                }
            }
            for p in &rule.paths {
                if !p.starts_with('/') {
                    c.report(
                        &rp("paths"),
                        format!("path `{p}` does not start with `/`"),
                        Some("write a path prefix such as `/v1/messages`".to_string()),
                    );
                }
            }
        }
        let mut git_names = BTreeSet::new();
        for (i, git) in bottle.git.iter().enumerate() {
            let gp = |k: &'static str| -> Vec<Seg<'_>> {
                base.iter()
                    .copied()
                    .chain([Seg::Key("git"), Seg::Index(i), Seg::Key(k)])
                    .collect()
            };
            if !super::structure::valid_name(&git.name) {
                c.report(
                    &gp("name"),
                    format!("`{}` is not a valid remote name", git.name),
                    Some("use letters, digits, `-` and `_`".to_string()),
                );
            }
            if !git_names.insert(git.name.as_str()) {
                c.report(&gp("name"), format!("duplicate git remote name `{}`", git.name), Some("each remote of a bottle needs its own `name`: it names the mirror `git://proxy.internal/<name>.git`".to_string()));
            }
            if parse_ssh_upstream(&git.upstream).is_none() {
                c.report(
                    &gp("upstream"),
                    format!("`{}` is not an SSH URL", git.upstream),
                    Some(
                        "write `ssh://git@host[:port]/path.git` or `git@host:path.git`".to_string(),
                    ),
                );
            }
            match &git.known_host_key {
                None => {
                    let path: Vec<Seg<'_>> = base
                        .iter()
                        .copied()
                        .chain([Seg::Key("git"), Seg::Index(i)])
                        .collect();
                    c.report(&path, format!("git remote `{}` has no `known_host_key`", git.name), Some("pin the upstream's host key: add `known_host_key = \"ssh-ed25519 AAAA…\"` (from `ssh-keyscan HOST`); git-gate never trusts on first use".to_string()));
                }
                Some(key) => {
                    if host_key_fingerprint(key).is_none() {
                        c.report(&gp("known_host_key"), "not an SSH public host key", Some("write `<type> <base64>` as printed by `ssh-keyscan HOST`, e.g. `ssh-ed25519 AAAAC3Nza…`".to_string()));
                    }
                }
            }
            for (host, ip) in &git.extra_hosts {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    let path: Vec<Seg<'_>> = base
                        .iter()
                        .copied()
                        .chain([
                            Seg::Key("git"),
                            Seg::Index(i),
                            Seg::Key("extra_hosts"),
                            Seg::Key(host),
                        ])
                        .collect();
                    c.report(&path, format!("`{ip}` is not an IP address"), None);
                }
            }
        }
    }
    for (name, agent) in &manifest.agents {
        let base = [Seg::Key("agents"), Seg::Key(name)];
        let at = |k: &'static str| -> Vec<Seg<'_>> {
            base.iter().copied().chain([Seg::Key(k)]).collect()
        };
        if !manifest.bottles.contains_key(&agent.bottle) {
            let known: Vec<&str> = manifest.bottles.keys().map(String::as_str).collect();
            let hint = match super::suggest::did_you_mean(&agent.bottle, &known) {
                Some(best) => format!(
                    "did you mean `{best}`? Defined bottles: {}",
                    known.join(", ")
                ),
                None if known.is_empty() => "define it with a `[bottles.NAME]` table".to_string(),
                None => format!("defined bottles: {}", known.join(", ")),
            };
            c.report(
                &at("bottle"),
                format!(
                    "agent names bottle `{}`, which is not defined",
                    agent.bottle
                ),
                Some(hint),
            );
        }
        if agent.command.is_empty() || agent.command[0].is_empty() {
            c.report(
                &at("command"),
                "command is empty",
                Some("write the program and its arguments, e.g. `[\"claude\"]`".to_string()),
            );
        }
        if agent.prompt.is_some() && agent.prompt_file.is_some() {
            c.report(
                &at("prompt_file"),
                "both `prompt` and `prompt_file` are set",
                Some("keep one of them".to_string()),
            );
        }
        for key in agent.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                let path: Vec<Seg<'_>> = base
                    .iter()
                    .copied()
                    .chain([Seg::Key("env"), Seg::Key(key)])
                    .collect();
                c.report(
                    &path,
                    format!("`{key}` is not an environment variable name"),
                    None,
                );
            }
        }
    }
    c.problems
}

fn token_sources(t: &TokenSpec) -> usize {
    usize::from(t.env.is_some()) + usize::from(t.file.is_some()) + usize::from(t.command.is_some())
}

/// Parse `a.b.c.d` or `a.b.c.d/n` (IPv4 or IPv6).
pub fn parse_ip_or_cidr(raw: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match raw.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
        None => (raw, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

/// Parse the netstack subnet: IPv4, prefix 24..=29.
pub fn parse_subnet(raw: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (ip, len) = parse_ip_or_cidr(raw)?;
    match ip {
        std::net::IpAddr::V4(v4) if (16..=29).contains(&len) => Some((v4, len)),
        _ => None,
    }
}

/// Host and port of an SSH upstream URL (`ssh://user@host:port/path` or `user@host:path`).
pub fn parse_ssh_upstream(raw: &str) -> Option<(String, u16)> {
    if let Some(rest) = raw.strip_prefix("ssh://") {
        let (authority, path) = rest.split_once('/')?;
        if path.is_empty() {
            return None;
        }
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, 22),
        };
        return (!host.is_empty()).then(|| (host.to_string(), port));
    }
    let (user_host, path) = raw.split_once(':')?;
    let (user, host) = user_host.split_once('@')?;
    (!user.is_empty() && !host.is_empty() && !path.is_empty() && !host.contains('/'))
        .then(|| (host.to_string(), 22))
}

/// `SHA256:<base64>` fingerprint of an SSH public key line, as `ssh-keygen -l` prints it.
pub fn host_key_fingerprint(key: &str) -> Option<String> {
    let mut parts = key.split_whitespace();
    let kind = parts.next()?;
    let blob = parts.next()?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    // The blob starts with the length-prefixed key type; it must match.
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if bytes.get(4..4 + len)? != kind.as_bytes() {
        return None;
    }
    let digest = Sha256::digest(&bytes);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}
