//! `--save`: write an operator's change into the manifest file a bottle was
//! launched from. The change is made with [`crate::manifest::edit`] (the
//! user's formatting and comments stay), shown as a diff, confirmed on a
//! terminal (or `--yes`), written atomically next to the file, and the
//! manifest stays trusted when it was trusted before: the operator just
//! confirmed the only change bottle made.

use super::UsageError;
use crate::manifest::edit::{self, Edit};
use crate::manifest::{self, trust};
use crate::state::Metadata;
use anyhow::Context;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// A change to a manifest, computed and checked, not yet written.
#[derive(Debug)]
pub struct Pending {
    /// The manifest's real path.
    path: PathBuf,
    old: String,
    new: String,
    /// Whether the manifest as it is now may be used (trusted, or in the config dir).
    was_trusted: bool,
}

/// The manifest file bottle `meta` was launched from; the built-in one has none.
pub fn manifest_of(meta: &Metadata) -> anyhow::Result<PathBuf> {
    let Some(path) = &meta.manifest else {
        return Err(UsageError(format!(
            "bottle {} runs the built-in manifest, which has no file to save to; nothing was \
             changed. Write the bottle into a bottle.toml (or a file you pass with `--manifest \
             PATH`), run it from there, and save to that",
            meta.identity
        ))
        .into());
    };
    Ok(if path.is_absolute() {
        path.clone()
    } else {
        meta.cwd.join(path)
    })
}

/// Compute `edits` to bottle `meta.bottle` of its manifest; none when the
/// manifest already says so.
pub fn prepare(meta: &Metadata, edits: &[Edit]) -> anyhow::Result<Option<Pending>> {
    let given = manifest_of(meta)?;
    let (path, old) = manifest::read(&given)
        .with_context(|| format!("cannot read the manifest {} to save to", given.display()))?;
    let new = edit::apply(&old, &meta.bottle, edits).map_err(|e| {
        UsageError(format!(
            "cannot save to {}: {e}; nothing was changed",
            path.display()
        ))
    })?;
    if new == old {
        return Ok(None);
    }
    manifest::parse(&path.display().to_string(), &new).with_context(|| {
        format!(
            "the changed manifest would not load, so {} was not changed",
            path.display()
        )
    })?;
    let store = trust::Store::open().ok();
    let was_trusted = trust::status(
        &path,
        old.as_bytes(),
        trust::config_dir().as_deref(),
        store.as_ref(),
    )
    .is_trusted();
    Ok(Some(Pending {
        path,
        old,
        new,
        was_trusted,
    }))
}

impl Pending {
    /// Show the diff (on stderr) and ask; `yes` does not ask. Without a
    /// terminal and without `yes`, refuse: nothing is written.
    pub fn confirm(&self, yes: bool) -> anyhow::Result<()> {
        let mut err = std::io::stderr();
        write!(
            err,
            "--- {p}\n+++ {p} (after --save)\n{}",
            edit::line_diff(&self.old, &self.new),
            p = self.path.display()
        )?;
        if yes {
            return Ok(());
        }
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(UsageError(format!(
                "no terminal to confirm the change to {} on: pass --yes to write it without \
                 asking; nothing was changed",
                self.path.display()
            ))
            .into());
        }
        write!(err, "Write this change to {}? [y/N] ", self.path.display())?;
        err.flush()?;
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        match answer.trim() {
            "y" | "Y" | "yes" | "Yes" => Ok(()),
            _ => Err(UsageError(format!(
                "not confirmed: {} was not changed",
                self.path.display()
            ))
            .into()),
        }
    }

    /// Write the change (refused if the file changed since it was read),
    /// then record its new hash when the old content was trusted. Returns
    /// what happened, for the user.
    pub fn write(&self) -> anyhow::Result<String> {
        let (_, now) = manifest::read(&self.path)?;
        if now != self.old {
            anyhow::bail!(
                "{} changed on disk since bottle read it; nothing was written. Run the command \
                 again to save to the new content",
                self.path.display()
            );
        }
        write_atomic(&self.path, self.new.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        let config = trust::config_dir();
        if trust::in_config_dir(&self.path, config.as_deref()) {
            return Ok(format!(
                "saved to {} (in your config dir: trusted as before)",
                self.path.display()
            ));
        }
        if !self.was_trusted {
            return Ok(format!(
                "saved to {}; it was not trusted before this change, so `bottle run` still \
                 refuses it: review it, then run `{}`",
                self.path.display(),
                trust::trust_command(&self.path)
            ));
        }
        let sha = trust::sha256_hex(self.new.as_bytes());
        trust::Store::open()?
            .put(&self.path, &sha)
            .with_context(|| format!("cannot record trust in {}", self.path.display()))?;
        Ok(format!(
            "saved to {}; it stays trusted (sha256 {}): you confirmed the only change bottle made",
            self.path.display(),
            trust::short(&sha)
        ))
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory
/// (same permissions as the file it replaces), synced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.bottle-save.{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mode = std::fs::metadata(path).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    })?;
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(manifest: Option<PathBuf>, cwd: &Path) -> Metadata {
        Metadata {
            version: crate::state::METADATA_VERSION,
            identity: "b-x1".into(),
            agent: "a".into(),
            bottle: "t".into(),
            cwd: cwd.to_path_buf(),
            backend: crate::manifest::BackendName::Docker,
            engine: None,
            started_at: crate::state::now_rfc3339(),
            status: crate::state::Status::Running,
            bundle_pid: None,
            vm_pid: None,
            container_id: None,
            cgroup: None,
            command: vec![],
            audit_head: None,
            manifest,
            pooled: None,
        }
    }

    #[test]
    fn the_builtin_manifest_cannot_be_saved_to() {
        let e = manifest_of(&meta(None, Path::new("/w"))).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("built-in manifest") && text.contains("--manifest"),
            "{text}"
        );
        assert_eq!(
            manifest_of(&meta(Some("m/bottle.toml".into()), Path::new("/w"))).unwrap(),
            Path::new("/w/m/bottle.toml")
        );
    }

    #[test]
    fn the_file_is_replaced_whole_with_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("bottle.toml");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }
}
