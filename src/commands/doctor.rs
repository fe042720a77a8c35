//! `bottle doctor`: check each real component bottle uses and explain how to
//! fix what is missing.

use super::print;
use crate::backend::{backend_for, Availability};
use crate::manifest::BackendName;

pub fn doctor(rules: bool) -> anyhow::Result<()> {
    let mut checks = crate::doctor::host_checks();
    for name in BackendName::ALL {
        checks.extend(backend_for(name).doctor());
    }
    let mut out = String::new();
    for c in &checks {
        out.push_str(&format!(
            "{} {}: {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("     fix: {fix}\n"));
        }
    }
    // Images for real agents: optional, so `--` rather than FAIL when missing.
    for name in ["debian", "claude"] {
        match crate::images::image_dir(name) {
            Ok(dir) => out.push_str(&format!("ok   {name} image: {}\n", dir.display())),
            Err(_) => out.push_str(&format!(
                "--   {name} image: not built for this guest agent (optional, for real agents: bottle image build {name})\n"
            )),
        }
    }
    let mut any_ready = false;
    for name in BackendName::ALL {
        match backend_for(name).availability() {
            Availability::Ready { detail } => {
                any_ready = true;
                out.push_str(&format!("backend {name}: ready ({detail})\n"));
            }
            Availability::Unavailable { why, fix } => out.push_str(&format!(
                "backend {name}: unavailable: {why}\n     fix: {fix}\n"
            )),
        }
    }
    if rules {
        let scanner = bottle_sidecars::scanner::Scanner::builtin()?;
        out.push_str("scanner rules:\n");
        for id in scanner.rule_ids() {
            out.push_str(&format!("  {id}\n"));
        }
    }
    print(&out)?;
    if any_ready {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "no backend can run bottles on this host; see the fixes above"
        ))
    }
}
