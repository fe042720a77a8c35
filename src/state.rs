//! Per-bottle state on the host: `$XDG_STATE_HOME/bottle/<identity>/`.
//!
//! `metadata.json` is written temp-fsync-rename under an exclusive `flock` on
//! `<dir>/.lock`, so two `bottle` processes never interleave writes and a
//! reader never sees a half-written file. Directories whose metadata is
//! missing or unreadable are reported as such by [`list`], never a crash.

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Version of the metadata format.
pub const METADATA_VERSION: u32 = 1;
const METADATA: &str = "metadata.json";
const LOCK: &str = ".lock";

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot find a state directory: neither XDG_STATE_HOME nor HOME is set")]
    NoHome,
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no bottle `{0}` (see `bottle ls`)")]
    NotFound(String),
    #[error("state directory for `{0}` already exists")]
    Exists(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Lifecycle status recorded in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }
}

/// What `bottle ls`, `attach`, `exec`, `stop` and `cleanup` need to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u32,
    pub identity: String,
    pub agent: String,
    pub bottle: String,
    pub cwd: PathBuf,
    /// `vm` or `docker`.
    pub backend: crate::manifest::BackendName,
    /// The engine it runs on (`qemu-tcg`, `libkrun-kvm`, `runc`, `runsc`…);
    /// one this version does not know reads as `None`.
    #[serde(default, deserialize_with = "crate::plan::engine::lenient")]
    pub engine: Option<crate::plan::Engine>,
    /// RFC 3339.
    pub started_at: String,
    pub status: Status,
    #[serde(default)]
    pub bundle_pid: Option<u32>,
    #[serde(default)]
    pub vm_pid: Option<u32>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// The command the agent runs.
    #[serde(default)]
    pub command: Vec<String>,
    /// The cgroups the bundle (and the VM) run in, removed at teardown.
    #[serde(default)]
    pub cgroup: Option<crate::sys::cgroup::Confined>,
    /// The audit chain's last line (position and hash), copied from the
    /// bundle's `audit.head` at teardown: a log kept after the bottle stopped
    /// that ends before it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<bottle_sidecars::audit::Head>,
    /// The manifest file it was planned from (none: the built-in one), for
    /// `bottle resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// The pool entry it was claimed from (`bottle pool`): its bundle and
    /// VM were started under that name, which their command lines carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled: Option<String>,
}

impl Metadata {
    /// What the command lines of this bottle's bundle and VM contain (see
    /// [`crate::sys::process::pid_matches`]): its identity, or for a claimed
    /// pooled guest the name of its pool entry.
    pub fn process_tag(&self) -> &str {
        self.pooled.as_deref().unwrap_or(&self.identity)
    }
}

/// Root of all bottle state: `$BOTTLE_STATE_DIR`, else `$XDG_STATE_HOME/bottle`,
/// else `~/.local/state/bottle`.
pub fn state_root() -> Result<PathBuf, StateError> {
    if let Some(dir) = std::env::var_os("BOTTLE_STATE_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        // Absolute, so bundle command lines and container labels name it exactly.
        return Ok(if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir().map(|c| c.join(&dir)).unwrap_or(dir)
        });
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("bottle"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(StateError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/state/bottle"))
}

/// One bottle's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
    identity: String,
}

impl StateDir {
    /// Create the directory for a new identity (mode 0700). Fails if it exists.
    pub fn create(root: &Path, identity: &str) -> Result<Self, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io("create", root))?;
        let path = root.join(identity);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Self {
                path,
                identity: identity.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(identity.to_string()))
            }
            Err(e) => Err(StateError::Io {
                op: "create",
                path,
                source: e,
            }),
        }
    }

    /// Move the directory `from` (a claimed pool entry, on the same file
    /// system) to a new identity's place under `root`. Fails if that exists.
    pub fn adopt(root: &Path, identity: &str, from: &Path) -> Result<Self, StateError> {
        let path = root.join(identity);
        if path.exists() {
            return Err(StateError::Exists(identity.to_string()));
        }
        fs::rename(from, &path).map_err(io("move", from))?;
        Ok(Self {
            path,
            identity: identity.to_string(),
        })
    }

    /// Open an existing bottle's directory.
    pub fn open(root: &Path, identity: &str) -> Result<Self, StateError> {
        if !crate::identity::is_identity(identity) {
            return Err(StateError::NotFound(identity.to_string()));
        }
        let path = root.join(identity);
        if !path.is_dir() {
            return Err(StateError::NotFound(identity.to_string()));
        }
        Ok(Self {
            path,
            identity: identity.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// A file inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The last `lines` lines of a log file in the directory, for failure
    /// reports (or a line saying it is missing).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = self.file(name);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(_) => format!("({} is missing)", path.display()),
        }
    }

    fn lock(&self) -> Result<Flock<File>, StateError> {
        let lock_path = self.file(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StateError::Io {
            op: "lock",
            path: lock_path,
            source: errno.into(),
        })
    }

    /// Replace the metadata atomically.
    pub fn write_metadata(&self, meta: &Metadata) -> Result<(), StateError> {
        let _guard = self.lock()?;
        self.write_locked(meta)
    }

    /// Read, change and write the metadata under one lock.
    pub fn update_metadata(
        &self,
        change: impl FnOnce(&mut Metadata),
    ) -> Result<Metadata, StateError> {
        let _guard = self.lock()?;
        let mut meta = self.read_metadata()?;
        change(&mut meta);
        self.write_locked(&meta)?;
        Ok(meta)
    }

    fn write_locked(&self, meta: &Metadata) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|source| StateError::Corrupt {
            path: self.file(METADATA),
            source,
        })?;
        write_atomic(&self.file(METADATA), &bytes)
    }

    /// Read the metadata; a missing or corrupt file is an error naming it.
    pub fn read_metadata(&self) -> Result<Metadata, StateError> {
        let path = self.file(METADATA);
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Copy the audit log's head (kept next to it by the bundle) into the
    /// metadata, which is kept with the log after the bottle stopped. Call
    /// once the bundle has exited, so the head is final.
    pub fn record_audit_head(&self) -> Result<(), StateError> {
        let log = self.file(crate::bundle::files::AUDIT);
        let head = match bottle_sidecars::audit::read_head(&log) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(StateError::Io {
                    op: "read the audit head of",
                    path: log,
                    source: std::io::Error::other(e),
                })
            }
        };
        self.update_metadata(|m| m.audit_head = Some(head))
            .map(|_| ())
    }

    /// Keep what outlives the bottle — its audit log (all rotated files),
    /// metadata, session transcript and exit status — under
    /// `<root>/logs/<identity>/`, then remove the directory. What is kept
    /// is what `bottle logs ID` reads after the bottle stopped.
    pub fn retire(self) -> Result<(), StateError> {
        let root = self.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let archive = logs_root(&root).join(&self.identity);
        let keep: Vec<PathBuf> = match fs::read_dir(&self.path) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        ARCHIVED
                            .iter()
                            .any(|k| n == *k || (n.starts_with("audit") && n.ends_with(".jsonl")))
                    })
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("read", &self.path)(e)),
        };
        if !keep.is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&archive)
                .map_err(io("create", &archive))?;
            for p in &keep {
                if let Some(name) = p.file_name() {
                    let to = archive.join(name);
                    // A resumed bottle's new `kept/` replaces the old one.
                    if to.is_dir() {
                        fs::remove_dir_all(&to).map_err(io("replace", &to))?;
                    }
                    fs::rename(p, &to).map_err(io("archive", p))?;
                }
            }
            prune_archives(&logs_root(&root), MAX_ARCHIVES);
        }
        self.remove()
    }

    /// Remove the whole directory (sockets, logs, metadata).
    pub fn remove(self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Io {
                op: "remove",
                path: self.path,
                source: e,
            }),
        }
    }
}

/// The metadata in `dir`, a bottle's state directory or its kept logs.
pub fn read_metadata_in(dir: &Path) -> Result<Metadata, StateError> {
    let path = dir.join(METADATA);
    let bytes = fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
}

/// Files of a bottle kept after it stopped (besides `audit*.jsonl`).
const ARCHIVED: &[&str] = &[
    METADATA,
    "session.log",
    "session-exit.json",
    crate::kept::KEPT,
    // supervise's approved grants: `bottle resume` applies them again.
    bottle_sidecars::supervise::GRANTS_FILE,
    // supervise's requests and decisions: `bottle requests ID` lists them
    // after the stop, and `bottle resume` takes them along.
    bottle_sidecars::supervise::DIR,
    // Packages approved for the image: `bottle resume` rebuilds with them.
    crate::kept::IMAGE_ADDITIONS,
];
/// Stopped bottles whose logs are kept; older ones are removed first.
pub const MAX_ARCHIVES: usize = 200;

/// Where stopped bottles' logs are kept: `<root>/logs/`.
pub fn logs_root(root: &Path) -> PathBuf {
    root.join("logs")
}

/// The archived logs of a stopped bottle, if kept.
pub fn archived(root: &Path, identity: &str) -> Option<PathBuf> {
    if !crate::identity::is_identity(identity) {
        return None;
    }
    let dir = logs_root(root).join(identity);
    dir.is_dir().then_some(dir)
}

/// Keep the newest `keep` archives (by modification time).
fn prune_archives(logs: &Path, keep: usize) {
    let Ok(rd) = fs::read_dir(logs) else { return };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dirs.len() <= keep {
        return;
    }
    dirs.sort();
    for (_, old) in &dirs[..dirs.len() - keep] {
        let _ = fs::remove_dir_all(old);
    }
}

/// Write `bytes` to `path` through a temp file in the same directory: fsync the
/// file, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename", &tmp))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What `list` found in one directory.
#[derive(Debug)]
pub enum Entry {
    Ok(StateDir, Box<Metadata>),
    /// The directory exists but its metadata is missing or unreadable.
    Broken {
        dir: StateDir,
        reason: String,
    },
}

/// Every bottle directory under `root`, sorted by identity. Never fails on a
/// bad entry: it is returned as [`Entry::Broken`].
pub fn list(root: &Path) -> Result<Vec<Entry>, StateError> {
    let read = match fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StateError::Io {
                op: "read",
                path: root.to_path_buf(),
                source: e,
            })
        }
    };
    let mut entries = Vec::new();
    for item in read.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if !item.path().is_dir() || !crate::identity::is_identity(&name) {
            continue;
        }
        let dir = StateDir {
            path: item.path(),
            identity: name,
        };
        match dir.read_metadata() {
            Ok(meta) => entries.push(Entry::Ok(dir, Box::new(meta))),
            Err(e) => {
                let reason = match &e {
                    StateError::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        "no metadata.json (launch never finished)".to_string()
                    }
                    StateError::Corrupt { source, .. } => {
                        format!("corrupt metadata.json: {source}")
                    }
                    other => other.to_string(),
                };
                entries.push(Entry::Broken { dir, reason });
            }
        }
    }
    entries.sort_by(|a, b| a.identity().cmp(b.identity()));
    Ok(entries)
}

impl Entry {
    pub fn identity(&self) -> &str {
        match self {
            Entry::Ok(dir, _) | Entry::Broken { dir, .. } => dir.identity(),
        }
    }
}

/// Current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn meta(identity: &str) -> Metadata {
        Metadata {
            version: METADATA_VERSION,
            identity: identity.into(),
            agent: "a".into(),
            bottle: "b".into(),
            cwd: "/w".into(),
            backend: crate::manifest::BackendName::Vm,
            engine: None,
            started_at: now_rfc3339(),
            status: Status::Running,
            bundle_pid: None,
            vm_pid: None,
            container_id: None,
            cgroup: None,
            command: vec![],
            audit_head: None,
            manifest: None,
            pooled: None,
        }
    }

    #[test]
    fn metadata_round_trips_and_leaves_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "a-abcde").unwrap();
        dir.write_metadata(&meta("a-abcde")).unwrap();
        assert_eq!(
            dir.read_metadata().unwrap(),
            meta("a-abcde").clone_with_time(&dir.read_metadata().unwrap())
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp.")),
            "{names:?}"
        );
    }

    #[test]
    fn metadata_written_before_the_typed_engine_still_reads() {
        let old = r#"{"version": 1, "identity": "a-abcde", "agent": "a", "bottle": "b",
            "cwd": "/w", "backend": "docker", "engine": "runsc",
            "started_at": "2026-01-01T00:00:00Z", "status": "running", "bundle_pid": 7}"#;
        let meta: Metadata = serde_json::from_str(old).unwrap();
        assert_eq!(meta.backend, crate::manifest::BackendName::Docker);
        assert_eq!(
            meta.engine,
            Some(crate::plan::Engine::Container(
                bottle_docker::Runtime::Runsc
            ))
        );
        let vm = old
            .replace("\"docker\"", "\"vm\"")
            .replace("\"runsc\"", "\"qemu-tcg\"");
        let meta: Metadata = serde_json::from_str(&vm).unwrap();
        assert_eq!(
            meta.engine,
            Some(crate::plan::Engine::Vm(
                bottle_vmm::EngineKind::Qemu,
                bottle_vmm::Accel::Tcg
            ))
        );
        // An engine a later version added does not make the bottle unreadable.
        let future = old.replace("\"runsc\"", "\"firecracker-kvm\"");
        let meta: Metadata = serde_json::from_str(&future).unwrap();
        assert_eq!((meta.engine, meta.bundle_pid), (None, Some(7)));
        // And what this version writes is what it always wrote.
        let written = serde_json::to_value(&meta).unwrap();
        assert_eq!(written["backend"], "docker");
    }

    #[test]
    fn creating_an_existing_identity_fails() {
        let root = tempfile::tempdir().unwrap();
        StateDir::create(root.path(), "a-abcde").unwrap();
        assert!(matches!(
            StateDir::create(root.path(), "a-abcde"),
            Err(StateError::Exists(_))
        ));
    }

    #[test]
    fn corrupt_and_partial_state_are_listed_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let good = StateDir::create(root.path(), "a-aaaaa").unwrap();
        good.write_metadata(&meta("a-aaaaa")).unwrap();
        let corrupt = StateDir::create(root.path(), "a-bbbbb").unwrap();
        fs::write(corrupt.file(METADATA), b"{\"version\": 1, \"ident").unwrap();
        StateDir::create(root.path(), "a-ccccc").unwrap();
        fs::create_dir(root.path().join("not-an-identity")).unwrap();
        let entries = list(root.path()).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(matches!(entries[0], Entry::Ok(..)));
        assert!(matches!(&entries[1], Entry::Broken { reason, .. } if reason.contains("corrupt")));
        assert!(
            matches!(&entries[2], Entry::Broken { reason, .. } if reason.contains("no metadata"))
        );
    }

    #[test]
    fn open_refuses_paths_that_are_not_identities() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            StateDir::open(root.path(), "../x-abcde"),
            Err(StateError::NotFound(_))
        ));
    }

    impl Metadata {
        fn clone_with_time(&self, other: &Metadata) -> Metadata {
            Metadata {
                started_at: other.started_at.clone(),
                ..self.clone()
            }
        }
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;

    const CHILD_ENV: &str = "BOTTLE_STATE_STRESS_DIR";
    const ROUNDS: usize = 200;

    /// Run by the child processes of the test below.
    #[test]
    fn state_stress_child() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let path = PathBuf::from(path);
        let dir = StateDir {
            identity: path.file_name().unwrap().to_string_lossy().into_owned(),
            path,
        };
        for _ in 0..ROUNDS {
            dir.update_metadata(|m| m.command.push(std::process::id().to_string()))
                .unwrap();
        }
    }

    #[test]
    fn two_processes_updating_metadata_lose_nothing() {
        if std::env::var_os(CHILD_ENV).is_some() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::create(root.path(), "s-stres").unwrap();
        let mut meta = super::tests::meta("s-stres");
        meta.command.clear();
        dir.write_metadata(&meta).unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "state::concurrency_tests::state_stress_child",
                        "--nocapture",
                    ])
                    .env(CHILD_ENV, dir.path())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let meta = dir.read_metadata().unwrap();
        assert_eq!(meta.command.len(), 2 * ROUNDS, "an update was lost");
    }
}
