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

/// A value remembered on disk under a key made of [`file_stamp`]s, in
/// `<cache root>/<name>`: what costs a process run or a hash of megabytes,
/// asked once per version of the files it depends on. A cache that cannot
/// be read or written only costs the next caller the work again.
pub(crate) struct StampCache {
    path: std::path::PathBuf,
}

impl StampCache {
    pub(crate) fn new(name: &str) -> StampCache {
        StampCache::at(cache_root().join(name))
    }

    fn at(path: std::path::PathBuf) -> StampCache {
        StampCache { path }
    }

    fn load(&self) -> std::collections::BTreeMap<String, String> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.load().remove(key)
    }

    pub(crate) fn put(&self, key: String, value: String) {
        /// Entries kept: stamps of files since rebuilt are never asked
        /// again. Past it the first keys in order go, never the one put.
        const KEEP: usize = 32;
        let mut all = self.load();
        while all.len() >= KEEP {
            all.pop_first();
        }
        all.insert(key, value);
        if let Ok(bytes) = serde_json::to_vec_pretty(&all) {
            let _ = write_atomic(&self.path, &bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_cache_remembers_keeps_at_most_32_entries_and_always_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StampCache::at(dir.path().join("sub").join("c.json"));
        assert_eq!(cache.get("a"), None);
        cache.put("a".into(), "1".into());
        assert_eq!(cache.get("a").as_deref(), Some("1"));
        // A fresh handle reads what the first wrote.
        let again = StampCache::at(dir.path().join("sub").join("c.json"));
        assert_eq!(again.get("a").as_deref(), Some("1"));
        for i in 0..40 {
            cache.put(format!("k{i:02}"), i.to_string());
        }
        assert_eq!(cache.load().len(), 32);
        assert_eq!(cache.get("k39").as_deref(), Some("39"));
        // A file that is not JSON is an empty cache, not an error.
        std::fs::write(dir.path().join("sub").join("c.json"), "not json").unwrap();
        assert_eq!(cache.get("k39"), None);
    }

    #[test]
    fn a_file_stamp_changes_when_the_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, "one").unwrap();
        let first = file_stamp(&f).unwrap();
        std::fs::write(&f, "two!").unwrap();
        assert_ne!(file_stamp(&f).unwrap(), first);
        assert_eq!(file_stamp(&dir.path().join("missing")), None);
    }
}
