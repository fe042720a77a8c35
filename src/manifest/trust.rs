//! Trust in manifests bottle did not write, the way direnv and mise do it.
//!
//! A manifest can run commands on the host (`token.command`) and copy host
//! files into a bottle, and `./bottle.toml` is found without asking, so a
//! manifest an agent or a cloned repository wrote would otherwise run as the
//! user. A manifest is used only if it is the built-in default, lives in the
//! user's config dir (`$XDG_CONFIG_HOME/bottle`, judged on its real path), or
//! was trusted with `bottle trust`: that records its real path and the sha256
//! of its content, so any edit (or the same content at another path) needs
//! trusting again.
//!
//! The records live in `<state root>/trust/<sha256 of the path>.json`, one
//! file per manifest, each written atomically (temp, fsync, rename).

use super::{Loaded, ManifestError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Directory of trust records under the state root.
pub const STORE_DIR: &str = "trust";

/// Whether the manifest in use may be acted on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TrustStatus {
    /// The manifest compiled into bottle.
    BuiltIn,
    /// Below the user's config dir.
    UserConfig { path: PathBuf },
    /// Trusted with `bottle trust`, unchanged since.
    Trusted { path: PathBuf, sha256: String },
    /// Never trusted.
    Untrusted {
        path: PathBuf,
        sha256: String,
        /// What to run once it has been reviewed.
        trust_command: String,
    },
    /// Trusted once, but its content changed since.
    Changed {
        path: PathBuf,
        sha256: String,
        trusted_sha256: String,
        trust_command: String,
    },
}

impl TrustStatus {
    /// Whether commands that act on the manifest may use it.
    pub fn is_trusted(&self) -> bool {
        matches!(
            self,
            Self::BuiltIn | Self::UserConfig { .. } | Self::Trusted { .. }
        )
    }

    /// One line for the preflight.
    pub fn describe(&self) -> String {
        match self {
            Self::BuiltIn => "built in".to_string(),
            Self::UserConfig { .. } => "in your config dir (trusted)".to_string(),
            Self::Trusted { sha256, .. } => {
                format!("trusted with `bottle trust` (sha256 {})", short(sha256))
            }
            Self::Untrusted { trust_command, .. } => format!(
                "NOT TRUSTED: `bottle run` refuses it until you have reviewed it and run `{trust_command}`"
            ),
            Self::Changed { trust_command, .. } => format!(
                "CHANGED since you trusted it: `bottle run` refuses it until you have reviewed it and run `{trust_command}`"
            ),
        }
    }
}

/// Why the trust store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One `bottle trust` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The manifest's real path.
    pub path: PathBuf,
    /// sha256 of its content when it was trusted.
    pub sha256: String,
    /// RFC 3339.
    pub trusted_at: String,
}

/// The trust records of this user.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under the user's state root (`BOTTLE_STATE_DIR`, …).
    pub fn open() -> Result<Self, StoreError> {
        Ok(Self::at(crate::state::state_root()?.join(STORE_DIR)))
    }

    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, path: &Path) -> PathBuf {
        let key = sha256_hex(path.as_os_str().as_encoded_bytes());
        self.dir.join(format!("{key}.json"))
    }

    /// The record for a real path; a missing, unreadable or foreign record is none.
    pub fn get(&self, path: &Path) -> Option<Record> {
        let bytes = std::fs::read(self.file(path)).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        (record.path == path).then_some(record)
    }

    /// Record `path` (a real path) as trusted with content hash `sha256`.
    pub fn put(&self, path: &Path, sha256: &str) -> Result<Record, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StoreError::Io {
                op: "create",
                path: self.dir.clone(),
                source,
            })?;
        let record = Record {
            path: path.to_path_buf(),
            sha256: sha256.to_string(),
            trusted_at: crate::state::now_rfc3339(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Io {
            op: "encode",
            path: self.file(path),
            source: e.into(),
        })?;
        crate::state::write_atomic(&self.file(path), &bytes)?;
        Ok(record)
    }

    /// Forget `path`; whether there was a record.
    pub fn remove(&self, path: &Path) -> Result<bool, StoreError> {
        let file = self.file(path);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                op: "remove",
                path: file,
                source,
            }),
        }
    }

    /// Every readable record, sorted by path.
    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "read",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut records: Vec<Record> = read
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        records.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(records)
    }
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
}

/// The user's config dir: `$XDG_CONFIG_HOME/bottle`, else `~/.config/bottle`.
pub fn config_dir() -> Option<PathBuf> {
    config_home().map(|c| c.join("bottle"))
}

/// Hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first 12 hex digits, for messages.
pub fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// `bottle trust PATH`, quoted for a POSIX shell where needed.
pub fn trust_command(path: &Path) -> String {
    let p = path.display().to_string();
    if p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
    {
        format!("bottle trust {p}")
    } else {
        format!("bottle trust '{}'", p.replace('\'', "'\\''"))
    }
}

/// Whether `real_path` (a real path) is below the (real) config dir.
pub fn in_config_dir(real_path: &Path, config_dir: Option<&Path>) -> bool {
    config_dir
        .and_then(|c| std::fs::canonicalize(c).ok())
        .is_some_and(|c| real_path.starts_with(c))
}

/// The trust status of the manifest at `real_path` whose content is `text`.
/// A store that cannot be read counts as trusting nothing.
pub fn status(
    real_path: &Path,
    text: &[u8],
    config_dir: Option<&Path>,
    store: Option<&Store>,
) -> TrustStatus {
    if in_config_dir(real_path, config_dir) {
        return TrustStatus::UserConfig {
            path: real_path.to_path_buf(),
        };
    }
    let sha256 = sha256_hex(text);
    let trust_command = trust_command(real_path);
    match store.and_then(|s| s.get(real_path)) {
        Some(r) if r.sha256 == sha256 => TrustStatus::Trusted {
            path: real_path.to_path_buf(),
            sha256,
        },
        Some(r) => TrustStatus::Changed {
            path: real_path.to_path_buf(),
            sha256,
            trusted_sha256: r.sha256,
            trust_command,
        },
        None => TrustStatus::Untrusted {
            path: real_path.to_path_buf(),
            sha256,
            trust_command,
        },
    }
}

/// Refuse a manifest that is not trusted, saying exactly what to run.
pub fn require(loaded: &Loaded) -> Result<(), ManifestError> {
    let config = config_dir()
        .map(|c| c.display().to_string())
        .unwrap_or_else(|| "~/.config/bottle".to_string());
    match &loaded.trust {
        TrustStatus::Untrusted {
            path,
            trust_command,
            ..
        } => Err(ManifestError::Untrusted {
            path: path.clone(),
            config,
            trust_command: trust_command.clone(),
        }),
        TrustStatus::Changed {
            path,
            sha256,
            trusted_sha256,
            trust_command,
        } => Err(ManifestError::Changed {
            path: path.clone(),
            was: short(trusted_sha256).to_string(),
            now: short(sha256).to_string(),
            trust_command: trust_command.clone(),
        }),
        TrustStatus::BuiltIn | TrustStatus::UserConfig { .. } | TrustStatus::Trusted { .. } => {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_is_keyed_by_path_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("trust"));
        let a = Path::new("/w/a/bottle.toml");
        let b = Path::new("/w/b/bottle.toml");
        assert!(matches!(
            status(a, b"x", None, Some(&store)),
            TrustStatus::Untrusted { .. }
        ));
        store.put(a, &sha256_hex(b"x")).unwrap();
        assert!(status(a, b"x", None, Some(&store)).is_trusted());
        assert!(matches!(
            status(a, b"x2", None, Some(&store)),
            TrustStatus::Changed { .. }
        ));
        // The same content at another path is not trusted.
        assert!(!status(b, b"x", None, Some(&store)).is_trusted());
        assert!(store.remove(a).unwrap());
        assert!(!store.remove(a).unwrap());
        assert!(!status(a, b"x", None, Some(&store)).is_trusted());
    }

    #[test]
    fn no_store_trusts_nothing_but_the_config_dir() {
        let cfg = tempfile::tempdir().unwrap();
        let real = cfg.path().canonicalize().unwrap().join("bottle.toml");
        assert!(status(&real, b"x", Some(cfg.path()), None).is_trusted());
        assert!(!status(Path::new("/w/bottle.toml"), b"x", Some(cfg.path()), None).is_trusted());
    }

    #[test]
    fn a_record_for_another_path_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().to_path_buf());
        let a = Path::new("/w/a/bottle.toml");
        store.put(a, "00").unwrap();
        // Swap the record's content for another path: it no longer vouches for `a`.
        let file = store.file(a);
        let mut r: Record = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        r.path = PathBuf::from("/elsewhere");
        std::fs::write(&file, serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(store.get(a), None);
    }

    #[test]
    fn trust_command_quotes_odd_paths() {
        assert_eq!(
            trust_command(Path::new("/a/b/bottle.toml")),
            "bottle trust /a/b/bottle.toml"
        );
        assert_eq!(
            trust_command(Path::new("/a b/it's.toml")),
            "bottle trust '/a b/it'\\''s.toml'"
        );
    }
}
