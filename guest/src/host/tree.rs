//! Host-side file trees: walking a directory to send it, and writing a tree
//! received from the (untrusted) guest into a fresh directory without ever
//! writing outside it.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::proto::EntryKind;

/// One entry of a host directory, in pre-order (a directory before its contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    pub rel: String,
    pub abs: PathBuf,
    pub mode: u32,
    pub kind: EntryKind,
}

/// Walks `root` without following symlinks; sockets, fifos and devices are skipped.
pub(crate) fn walk(root: &Path) -> std::io::Result<Vec<HostEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        let meta = fs::symlink_metadata(&abs)?;
        let mode = meta.mode() & 0o7777;
        let kind = if meta.file_type().is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&abs)?.to_string_lossy().into_owned(),
            }
        } else if meta.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&abs)?
                .filter_map(|d| d.ok())
                .map(|d| d.file_name())
                .collect();
            names.sort();
            for name in names.into_iter().rev() {
                let n = name.to_string_lossy();
                let child_rel = if rel.is_empty() {
                    n.into_owned()
                } else {
                    format!("{rel}/{n}")
                };
                stack.push((child_rel, abs.join(&name)));
            }
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File { len: meta.len() }
        } else {
            continue;
        };
        out.push(HostEntry {
            rel,
            abs,
            mode,
            kind,
        });
    }
    Ok(out)
}

/// Errors writing a received tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("unsafe path {0:?} from the guest")]
    UnsafePath(String),
    #[error("{0:?} is below a symlink")]
    BelowSymlink(String),
    #[error("symlink {path:?} points outside the copied tree ({target:?}); it is not written")]
    EscapingSymlink { path: String, target: String },
    #[error("the guest sent more than {0} entries; the copy was stopped")]
    TooManyEntries(usize),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Writes entries into `dest`, which must not exist yet. Paths must be
/// relative and plain; nothing is written through a symlink; set-id bits are
/// dropped.
#[derive(Debug)]
pub(crate) struct SafeWriter {
    dest: PathBuf,
    symlinks: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, u32)>,
    entries: usize,
    max_entries: usize,
}

/// Most entries one copy-out writes (a guest cannot fill the host's inode
/// table or spend its time on millions of empty files).
pub const MAX_COPY_OUT_ENTRIES: usize = 200_000;

/// Whether a symlink at `rel` with `target` stays inside the tree: relative,
/// and never climbing above the tree's root.
fn symlink_stays_inside(rel: &Path, target: &str) -> bool {
    let target = Path::new(target);
    if target.is_absolute() || target.as_os_str().is_empty() {
        return false;
    }
    let mut depth = rel.components().count().saturating_sub(1) as isize;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

impl SafeWriter {
    pub fn new(dest: &Path) -> SafeWriter {
        SafeWriter {
            dest: dest.to_path_buf(),
            symlinks: HashSet::new(),
            dirs: Vec::new(),
            entries: 0,
            max_entries: MAX_COPY_OUT_ENTRIES,
        }
    }

    #[cfg(test)]
    fn with_max_entries(mut self, max: usize) -> SafeWriter {
        self.max_entries = max;
        self
    }

    fn target(&self, rel: &str) -> Result<(PathBuf, PathBuf), TreeError> {
        let rel_path = Path::new(rel);
        let plain = rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if rel.contains('\0')
            || !plain
            || !rel_path
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(TreeError::UnsafePath(rel.to_string()));
        }
        let mut prefix = PathBuf::new();
        for c in rel_path.parent().into_iter().flat_map(|p| p.components()) {
            prefix.push(c);
            if self.symlinks.contains(&prefix) {
                return Err(TreeError::BelowSymlink(rel.to_string()));
            }
        }
        Ok((self.dest.join(rel_path), rel_path.to_path_buf()))
    }

    pub fn write(
        &mut self,
        rel: &str,
        mode: u32,
        kind: &EntryKind,
        data: &[u8],
    ) -> Result<(), TreeError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| TreeError::Io { path, source }
        };
        let mode = mode & 0o777;
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(TreeError::TooManyEntries(self.max_entries));
        }
        if rel.is_empty() {
            return match kind {
                EntryKind::Dir => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&self.dest)
                        .map_err(io(&self.dest))?;
                    self.dirs.push((self.dest.clone(), mode));
                    Ok(())
                }
                _ => Err(TreeError::UnsafePath("a non-directory as the root".into())),
            };
        }
        let (path, rel_path) = self.target(rel)?;
        match kind {
            EntryKind::Dir => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io(&path))?;
                self.dirs.push((path, mode));
                Ok(())
            }
            EntryKind::Symlink { target } => {
                if !symlink_stays_inside(&rel_path, target) {
                    return Err(TreeError::EscapingSymlink {
                        path: rel.to_string(),
                        target: target.clone(),
                    });
                }
                std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
                self.symlinks.insert(rel_path);
                Ok(())
            }
            EntryKind::File { .. } => {
                use std::io::Write;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io(&path))?;
                f.write_all(data).map_err(io(&path))
            }
        }
    }

    /// Applies directory modes (deferred so read-only directories can be filled).
    pub fn finish(self) -> Result<(), TreeError> {
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in self.dirs.iter().rev() {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(|source| {
                TreeError::Io {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_directories_before_their_contents_and_keeps_symlinks() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(".git/objects")).unwrap();
        fs::write(d.path().join(".git/HEAD"), "ref").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let rels: Vec<_> = walk(d.path()).unwrap().into_iter().map(|e| e.rel).collect();
        assert_eq!(rels, ["", ".git", ".git/HEAD", ".git/objects", "link"]);
    }

    #[test]
    fn guest_paths_cannot_escape_the_destination() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SafeWriter::new(&d.path().join("out"));
        w.write("", 0o755, &EntryKind::Dir, b"").unwrap();
        let file = EntryKind::File { len: 1 };
        assert!(matches!(
            w.write("../x", 0o644, &file, b"x"),
            Err(TreeError::UnsafePath(_))
        ));
        assert!(matches!(
            w.write("/etc/x", 0o644, &file, b"x"),
            Err(TreeError::UnsafePath(_))
        ));
        assert!(matches!(
            w.write("a/./b", 0o644, &file, b"x"),
            Err(TreeError::UnsafePath(_))
        ));
        w.write("sub", 0o755, &EntryKind::Dir, b"").unwrap();
        w.write(
            "l",
            0o777,
            &EntryKind::Symlink {
                target: "sub".to_string(),
            },
            b"",
        )
        .unwrap();
        assert!(matches!(
            w.write("l/x", 0o644, &file, b"x"),
            Err(TreeError::BelowSymlink(_))
        ));
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn symlinks_pointing_outside_the_tree_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SafeWriter::new(&d.path().join("out"));
        w.write("", 0o755, &EntryKind::Dir, b"").unwrap();
        w.write("a", 0o755, &EntryKind::Dir, b"").unwrap();
        let link = |t: &str| EntryKind::Symlink {
            target: t.to_string(),
        };
        for (at, target) in [
            ("abs", "/etc/passwd"),
            ("up", "../x"),
            ("a/up2", "../../x"),
            ("empty", ""),
        ] {
            assert!(
                matches!(
                    w.write(at, 0o777, &link(target), b""),
                    Err(TreeError::EscapingSymlink { .. })
                ),
                "{at} -> {target}"
            );
        }
        w.write("a/sibling", 0o777, &link("../a"), b"").unwrap();
        w.write("rel", 0o777, &link("a/./sibling"), b"").unwrap();
        assert!(!d.path().join("out/abs").exists());
    }

    #[test]
    fn a_copy_out_stops_at_its_entry_cap() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SafeWriter::new(&d.path().join("out")).with_max_entries(3);
        w.write("", 0o755, &EntryKind::Dir, b"").unwrap();
        let file = EntryKind::File { len: 0 };
        w.write("a", 0o644, &file, b"").unwrap();
        w.write("b", 0o644, &file, b"").unwrap();
        assert!(matches!(
            w.write("c", 0o644, &file, b""),
            Err(TreeError::TooManyEntries(3))
        ));
        assert!(!d.path().join("out/c").exists());
    }

    #[test]
    fn existing_destination_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SafeWriter::new(d.path());
        assert!(w.write("", 0o755, &EntryKind::Dir, b"").is_err());
    }

    #[test]
    fn set_id_bits_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SafeWriter::new(&d.path().join("o"));
        w.write("", 0o755, &EntryKind::Dir, b"").unwrap();
        w.write("s", 0o4755, &EntryKind::File { len: 0 }, b"")
            .unwrap();
        assert_eq!(
            fs::metadata(d.path().join("o/s")).unwrap().mode() & 0o7000,
            0
        );
    }
}
