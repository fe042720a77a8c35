//! The plan as the human preflight text.

use super::Plan;
use crate::manifest::BackendName;

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
        if let Some(start) = &self.start {
            let _ = writeln!(o, "  start          : {start}");
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
        match self.backend {
            BackendName::Docker => {
                let _ = writeln!(o, "  network        : none (loopback only); {} is 127.0.0.1, forwarded to the guards' unix sockets", self.network.dns_name);
            }
            BackendName::Vm => {
                let _ = writeln!(
                    o,
                    "  network        : only {} = {} ({} /{}), MTU {}",
                    self.network.dns_name,
                    self.network.gateway,
                    self.network.guest,
                    self.network.subnet.prefix_len,
                    self.network.mtu
                );
            }
        }
        for (port, what) in &self.network.ports {
            let _ = writeln!(o, "                   :{port} → {what}");
        }
        let _ = writeln!(o, "  allow          : {}", list(&self.allow));
        let ports: Vec<String> = self.allow_ports.iter().map(u16::to_string).collect();
        let _ = writeln!(o, "  allow ports    : {}", list(&ports));
        for (host, pin) in &self.resolve {
            let _ = writeln!(o, "  resolve        : {host} → {pin} (not DNS)");
        }
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
            "  dlp            : {}{}{}",
            self.dlp_action.as_str(),
            self.dlp_hosts
                .iter()
                .map(|(host, action)| format!("; {host}: {}", action.as_str()))
                .collect::<String>(),
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
                r.host,
                r.header,
                super::describe_token(&r.token_from),
                r.placeholder
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
        if self.supervise {
            let port = bottle_contract::SUPERVISE_PORT;
            let _ = writeln!(
                o,
                "  supervise      : on: MCP server `bottle` at http://proxy.internal:{port}/mcp (decide with `bottle requests`/`approve`/`reject`)"
            );
        } else {
            let _ = writeln!(o, "  supervise      : off");
        }
        let _ = writeln!(o, "  env            : {}", list(&self.env));
        for w in &self.warnings {
            let _ = writeln!(o, "  warning        : {w}");
        }
        o
    }
}
