//! `bottle trust [PATH]`, `bottle trust --revoke [PATH]` (`bottle untrust`)
//! and `bottle trust --list`: the user's say-so for manifests bottle did not
//! write (see [`crate::manifest::trust`]).

use super::{print, UsageError};
use crate::manifest::trust::{self, Store};
use crate::manifest::{self, paths, Origin};
use anyhow::Context;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub fn trust(
    flag: Option<PathBuf>,
    path: Option<PathBuf>,
    revoke: bool,
    list: bool,
) -> anyhow::Result<()> {
    let store = Store::open()?;
    if list {
        return list_records(&store);
    }
    if let (Some(p), Some(f)) = (&path, &flag) {
        if p != f {
            return Err(UsageError(format!(
                "two manifests given ({} and --manifest {}): name one",
                p.display(),
                f.display()
            ))
            .into());
        }
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let target = path.or(flag);
    if revoke {
        return revoke_trust(&store, target, &cwd);
    }
    let origin = manifest::locate(target.as_deref(), &cwd, trust::config_home().as_deref())?;
    let Some(given) = origin.path() else {
        return print("the built-in manifest is always trusted: nothing to do.\n");
    };
    let (real, text) = manifest::read(given)?;
    let config = trust::config_dir();
    if trust::in_config_dir(&real, config.as_deref()) {
        return print(&format!(
            "{} is in your config dir ({}): it is trusted without `bottle trust`.\n",
            real.display(),
            config.as_deref().unwrap_or(Path::new("?")).display()
        ));
    }
    // Only a manifest that loads is trusted, and its summary comes from the
    // very bytes whose hash is recorded.
    let parsed = manifest::parse(&origin.describe(), &text)?;
    let sha256 = trust::sha256_hex(text.as_bytes());
    store
        .put(&real, &sha256)
        .with_context(|| format!("cannot record trust in {}", real.display()))?;
    let base = Origin::Flag(real.clone()).base_dir(&cwd);
    print(&summary(&real, &sha256, &parsed, &base))
}

/// What the user just trusted the manifest to do on this host.
fn summary(real: &Path, sha256: &str, m: &manifest::Manifest, base: &Path) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "trusted {} (sha256 {})",
        real.display(),
        trust::short(sha256)
    );
    let mut lines = Vec::new();
    for (name, bottle) in &m.bottles {
        let cas: Vec<PathBuf> = bottle
            .upstream_ca
            .iter()
            .map(|p| paths::resolve(base, p))
            .collect();
        let access = crate::plan::host_access(bottle, base, None, &[], &cas);
        for c in access.commands {
            lines.push(format!(
                "  runs   {}  (bottle {name}: {})",
                crate::plan::render_command(&c.argv),
                c.why
            ));
        }
        for f in access.files {
            lines.push(format!(
                "  reads  {}  (bottle {name}: {})",
                f.path.display(),
                f.why
            ));
        }
    }
    for (name, agent) in &m.agents {
        if agent.prompt.is_none() {
            if let Some(p) = &agent.prompt_file {
                lines.push(format!(
                    "  copies {}  (agent {name}: prompt)",
                    paths::resolve(base, p).display()
                ));
            }
        }
        for s in &agent.skills {
            lines.push(format!(
                "  copies {}  (agent {name}: skill)",
                paths::resolve(base, s).display()
            ));
        }
    }
    if lines.is_empty() {
        o.push_str("it runs no command and reads no file on this host.\n");
    } else {
        o.push_str("on this host, as you, it:\n");
        for l in lines {
            o.push_str(&l);
            o.push('\n');
        }
    }
    let _ = writeln!(
        o,
        "any change to the file needs `bottle trust` again; `bottle trust --revoke {}` undoes this.",
        real.display()
    );
    o
}

fn revoke_trust(store: &Store, target: Option<PathBuf>, cwd: &Path) -> anyhow::Result<()> {
    let given = match target {
        Some(p) => p,
        None => match manifest::locate(None, cwd, trust::config_home().as_deref())? {
            Origin::Embedded => {
                return print("no manifest here: the built-in one is always trusted.\n")
            }
            other => other.path().map(Path::to_path_buf).unwrap_or_default(),
        },
    };
    // A file that is gone is forgotten by the path it had.
    let real = std::fs::canonicalize(&given).unwrap_or_else(|_| cwd.join(&given));
    if store.remove(&real)? {
        print(&format!("revoked trust in {}\n", real.display()))
    } else {
        print(&format!("{} was not trusted\n", real.display()))
    }
}

fn list_records(store: &Store) -> anyhow::Result<()> {
    let mut out = String::new();
    for r in store.list()? {
        let status = match std::fs::read(&r.path) {
            Ok(bytes) if trust::sha256_hex(&bytes) == r.sha256 => "trusted",
            Ok(_) => "changed",
            Err(_) => "missing",
        };
        let _ = writeln!(
            out,
            "{status}\t{}\t{}\t{}",
            trust::short(&r.sha256),
            r.trusted_at,
            r.path.display()
        );
    }
    print(&out)
}
