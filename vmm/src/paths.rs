//! Where bottle keeps its caches: `${XDG_CACHE_HOME:-$HOME/.cache}/bottle`.

use std::path::PathBuf;

/// The cache root. Falls back to /tmp/bottle-cache-<uid> without HOME.
pub fn cache_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("bottle");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("bottle");
    }
    PathBuf::from(format!("/tmp/bottle-cache-{}", nix::unistd::getuid()))
}

/// Writes `bytes` to `path` atomically (temp file + rename in the same dir).
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// `path|inode|size|mtime` of a file, or `None` when it cannot be read: what
/// a cached answer about the file is keyed by (a rebuild or an upgrade
/// changes it).
pub(crate) fn file_stamp(p: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(format!(
        "{}|{}|{}|{}.{}",
        p.display(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}
