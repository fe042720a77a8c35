//! Host paths a manifest names for copying into a bottle (`skills`,
//! `prompt_file`) or for the proxy to read (`upstream_ca`): where they resolve
//! and which of them are refused.
//!
//! A relative path is resolved against the manifest's directory (never the
//! working directory), `~/` against `$HOME`; then symlinks and `..` are
//! resolved, and a path inside a well-known secret location (or one that
//! contains such a location, like `~` itself) is refused unless the manifest
//! sets `allow_secret_paths = true` on the agent or bottle.

use std::path::{Component, Path, PathBuf};

/// A manifest path that points at (or contains) a place where secrets live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{key}: {} resolves to {}, {relation} {location}, where secrets live; bottle does not copy \
     it into a bottle. Remove it from the manifest, or, if you really mean it, set \
     `allow_secret_paths = true` in {owner}",
    given.display(),
    resolved.display()
)]
pub struct SecretPath {
    /// `agents.NAME.skills`, `agents.NAME.prompt_file`, `bottles.NAME.upstream_ca`.
    pub key: String,
    /// `[agents.NAME]` or `[bottles.NAME]`: where the opt-in goes.
    pub owner: String,
    pub given: PathBuf,
    pub resolved: PathBuf,
    /// `~/.ssh`, `/etc`, …
    pub location: String,
    /// `inside` or `which contains`.
    pub relation: &'static str,
}

/// Which manifest entry a path comes from, for messages.
#[derive(Debug, Clone, Copy)]
pub struct PathKey<'a> {
    /// `agents` or `bottles`.
    pub table: &'static str,
    /// The agent's or bottle's name.
    pub name: &'a str,
    /// `skills`, `prompt_file`, `upstream_ca`.
    pub key: &'static str,
    /// The table's `allow_secret_paths`.
    pub allow_secret_paths: bool,
}

/// `~/` against `$HOME`, a relative path against `base` (the manifest's directory).
pub fn expand(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = home() {
            return home.join(rest);
        }
    }
    base.join(p)
}

/// [`expand`], then resolve symlinks and `..`: the real path where it exists,
/// else the real path of its longest existing ancestor with the rest appended
/// (`..` removed lexically).
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    real(&expand(base, p))
}

/// Resolve `p` (see [`resolve`]) and refuse it when it is in, or contains, a
/// secret location and the table does not allow that.
pub fn checked(base: &Path, p: &Path, key: PathKey<'_>) -> Result<PathBuf, Box<SecretPath>> {
    let resolved = resolve(base, p);
    if key.allow_secret_paths {
        return Ok(resolved);
    }
    match secret_location(&resolved) {
        Some((location, relation)) => Err(Box::new(SecretPath {
            key: format!("{}.{}.{}", key.table, key.name, key.key),
            owner: format!("[{}.{}]", key.table, key.name),
            given: p.to_path_buf(),
            resolved,
            location,
            relation,
        })),
        None => Ok(resolved),
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Well-known places that hold credentials, as (label, path).
fn secret_locations() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let home = home();
    if let Some(home) = &home {
        for rel in HOME_SECRETS {
            out.push((format!("~/{rel}"), home.join(rel)));
        }
    }
    for abs in SYSTEM_SECRETS {
        let path = PathBuf::from(abs);
        // When /root is the user's own home its secret directories are listed
        // above; the rest of it (the user's projects) is not off limits.
        if *abs == "/root" && home.as_deref().map(real).as_deref() == Some(&real(&path)) {
            continue;
        }
        out.push(((*abs).to_string(), path));
    }
    out
}

/// Below `$HOME`.
const HOME_SECRETS: &[&str] = &[
    ".ssh",
    ".aws",
    ".gnupg",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".config/gh",
    ".password-store",
    ".local/share/keyrings",
];
/// Absolute; `/proc` because `/proc/self/environ` is bottle's own
/// environment, which holds the tokens routes read from `env`.
const SYSTEM_SECRETS: &[&str] = &["/etc", "/root", "/proc"];

/// The secret location `resolved` (a real path) is in or contains.
fn secret_location(resolved: &Path) -> Option<(String, &'static str)> {
    for (label, path) in secret_locations() {
        // Compare with the location as written and as its real path, so a
        // symlinked `~/.ssh` is recognised either way.
        for loc in [normalize(&path), real(&path)] {
            if resolved.starts_with(&loc) {
                return Some((label, "inside"));
            }
            if loc.starts_with(resolved) {
                return Some((label, "which contains"));
            }
        }
    }
    None
}

/// The real path of `p` as the kernel resolves it (a `..` after a symlink
/// goes up from the symlink's target), or, where `p` does not exist, the real
/// path of its longest existing ancestor with the rest appended (`.` and `..`
/// in the rest resolved lexically).
fn real(p: &Path) -> PathBuf {
    if let Ok(r) = std::fs::canonicalize(p) {
        return r;
    }
    let parts: Vec<Component<'_>> = p.components().collect();
    for i in (1..parts.len()).rev() {
        let prefix: PathBuf = parts[..i].iter().collect();
        if let Ok(mut r) = std::fs::canonicalize(&prefix) {
            for c in &parts[i..] {
                match c {
                    Component::CurDir => {}
                    Component::ParentDir => {
                        r.pop();
                    }
                    other => r.push(other.as_os_str()),
                }
            }
            return r;
        }
    }
    normalize(p)
}

/// Remove `.` and resolve `..` lexically (`/a/b/../c` → `/a/c`, never above `/`).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !p.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(allow: bool) -> PathKey<'static> {
        PathKey {
            table: "agents",
            name: "a",
            key: "skills",
            allow_secret_paths: allow,
        }
    }

    #[test]
    fn normalize_resolves_dot_segments_lexically() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn relative_paths_resolve_against_the_base_not_the_cwd() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("skill")).unwrap();
        let got = resolve(base.path(), Path::new("skill"));
        assert_eq!(got, base.path().canonicalize().unwrap().join("skill"));
    }

    #[test]
    fn etc_and_dot_dot_into_etc_are_refused_and_allowed_on_request() {
        let base = tempfile::tempdir().unwrap();
        let up = "../".repeat(base.path().components().count() + 2);
        let sneaky = PathBuf::from(format!("{up}etc/passwd"));
        let err = checked(base.path(), &sneaky, key(false)).unwrap_err();
        assert_eq!(err.location, "/etc");
        assert_eq!(err.resolved, PathBuf::from("/etc/passwd"));
        assert!(
            err.to_string().contains("allow_secret_paths = true"),
            "{err}"
        );
        assert!(err.to_string().contains("agents.a.skills"), "{err}");
        assert!(checked(base.path(), &sneaky, key(true)).is_ok());
    }

    #[test]
    fn a_symlink_into_a_secret_location_is_refused() {
        let base = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self", base.path().join("innocent")).unwrap();
        let err = checked(base.path(), Path::new("innocent"), key(false)).unwrap_err();
        assert_eq!(err.location, "/proc");
        assert_eq!(err.relation, "inside");
    }

    #[test]
    fn dot_dot_after_a_symlink_goes_up_from_its_target() {
        let base = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self", base.path().join("link")).unwrap();
        // Lexically `link/../x` is `base/x`; the kernel reads `/proc/x`.
        let err = checked(base.path(), Path::new("link/../cpuinfo"), key(false)).unwrap_err();
        assert_eq!(err.resolved, PathBuf::from("/proc/cpuinfo"));
    }

    #[test]
    fn a_missing_path_resolves_through_its_existing_ancestor() {
        let base = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self", base.path().join("link")).unwrap();
        let err = checked(base.path(), Path::new("link/no/such/file"), key(false)).unwrap_err();
        assert_eq!(err.location, "/proc");
        assert!(checked(base.path(), Path::new("no/such/../file"), key(false)).is_ok());
    }

    #[test]
    fn the_root_directory_contains_secret_locations() {
        let err = checked(Path::new("/tmp"), Path::new("/"), key(false)).unwrap_err();
        assert_eq!(err.relation, "which contains");
    }

    #[test]
    fn an_ordinary_directory_is_fine() {
        let base = tempfile::tempdir().unwrap();
        assert!(checked(base.path(), Path::new("skills/x"), key(false)).is_ok());
    }
}
