//! Finding the project's guest kernel, built by `scripts/build-kernel.sh`.
//!
//! Cache layout: `<cache>/kernel/<key>/vmlinux` where `<key>` is the first 16
//! hex digits of sha256("<source id>\n" + fragment) and `<source id>` is the
//! source tarball's name without `.tar.xz`, a dash and its size in bytes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::VmmError;

/// The config fragment, as committed.
pub const FRAGMENT: &str = include_str!("../kernel/bottle.config");

/// The guest kernel to boot: `BOTTLE_KERNEL`, else the cached build for this
/// source and fragment.
pub fn locate() -> Result<PathBuf, VmmError> {
    if let Some(p) = std::env::var_os("BOTTLE_KERNEL").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VmmError::KernelMissing(p))
        };
    }
    let dir = crate::paths::cache_root().join("kernel");
    if let Some(src) = source_tarball() {
        let p = dir
            .join(cache_key(&source_id(&src)?, FRAGMENT))
            .join("vmlinux");
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VmmError::KernelMissing(p))
        };
    }
    // No source installed: any build of this same fragment will do.
    find_by_fragment(&dir).ok_or(VmmError::KernelMissing(dir))
}

/// `<name without .tar.xz>-<size>`.
pub fn source_id(tarball: &Path) -> Result<String, VmmError> {
    let size = std::fs::metadata(tarball)
        .map_err(VmmError::io("stat kernel source", tarball))?
        .len();
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".tar.xz").unwrap_or(&name);
    Ok(format!("{stem}-{size}"))
}

/// The cache key, as scripts/build-kernel.sh computes it.
pub fn cache_key(source_id: &str, fragment: &str) -> String {
    let mut h = Sha256::new();
    h.update(source_id.as_bytes());
    h.update(b"\n");
    h.update(fragment.as_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// `LINUX_SOURCE`, else /usr/src/linux-source-6.1.tar.xz, else the newest
/// /usr/src/linux-source-*.tar.xz: the script's choice.
pub fn source_tarball() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LINUX_SOURCE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let pref = PathBuf::from("/usr/src/linux-source-6.1.tar.xz");
    if pref.is_file() {
        return Some(pref);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with("linux-source-") && n.ends_with(".tar.xz")
        })
        .collect();
    found.sort_by_key(|p| version_key(p));
    found.pop()
}

fn version_key(p: &Path) -> Vec<u64> {
    p.to_string_lossy()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn find_by_fragment(dir: &Path) -> Option<PathBuf> {
    let want = hex::encode(Sha256::digest(FRAGMENT.as_bytes()));
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let got = std::fs::read_to_string(e.path().join("fragment.sha256")).ok()?;
        let v = e.path().join("vmlinux");
        (got.trim() == want && v.is_file()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_matches_the_shell_script() {
        // printf 'linux-source-6.1-1\nCONFIG_X=y\n' | sha256sum | cut -c1-16
        assert_eq!(
            cache_key("linux-source-6.1-1", "CONFIG_X=y\n"),
            "063dd49bd45805b8"
        );
    }

    #[test]
    fn fragment_turns_off_modules_and_on_pvh() {
        assert!(FRAGMENT.contains("# CONFIG_MODULES is not set"));
        assert!(FRAGMENT.lines().any(|l| l == "CONFIG_PVH=y"));
        assert!(FRAGMENT
            .lines()
            .any(|l| l == "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y"));
    }

    #[test]
    fn newer_source_sorts_last() {
        assert!(
            version_key(Path::new("linux-source-6.10.tar.xz"))
                > version_key(Path::new("linux-source-6.9.tar.xz"))
        );
    }
}
