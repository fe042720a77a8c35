//! Appending chained lines: size cap with rotation, and the head (the last
//! line's hash and position) rewritten in place after every append so that a
//! cut tail can be told from a log that simply ended.

use super::record::{AuditRecord, Event, GitAudit, Kind};
use super::{AuditError, GENESIS};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Default size of one audit file before it is rotated: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Default number of rotated files kept besides the current one (so at most
/// five files, 320 MiB, per bottle); older ones are deleted.
pub const DEFAULT_KEEP: usize = 4;

/// How a log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Bottle identity, written in every line.
    pub identity: String,
    /// A file reaching this size is renamed `<stem>.<n>.jsonl` and a new one
    /// started (a line is never split; one line may go over).
    pub max_bytes: u64,
    /// Rotated files kept; the oldest beyond this are deleted.
    pub keep: usize,
}

impl AuditOptions {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// The newest line of a chain: its position and the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub count: u64,
    pub hash: String,
}

/// Appends chained records; safe to share between tasks (one lock, held for
/// the write of one line and its head).
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    options: AuditOptions,
    state: Mutex<Option<Writer>>,
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// `<stem>.head`, rewritten in place.
    head: File,
    /// Bytes in the current file (0 for a device such as /dev/full).
    len: u64,
    last: String,
    count: u64,
    next_index: u64,
    /// Set when the file may hold a torn line (a write failed and could not
    /// be undone): every later append fails.
    failed: Option<String>,
}

impl AuditLog {
    /// Open (or create) `path`, continuing the chain of what it and its
    /// rotated files hold.
    pub fn open(path: &Path, options: AuditOptions) -> Result<Self, AuditError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| AuditError::Io { path: p, source }
        };
        let rotated = rotated_files(path).map_err(io_err(path))?;
        let next_index = rotated.last().map_or(1, |(n, _)| n + 1);
        let regular = match fs::metadata(path) {
            Ok(m) => m.is_file(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err(path)(e)),
        };
        // The chain continues from the current file, or from the newest
        // rotated one when a rotation was cut before the new file got a line.
        let mut tail = Tail::default();
        if regular {
            if let Some((_, newest)) = rotated.last() {
                tail = Tail::read(newest).map_err(io_err(newest))?;
            }
            let current = Tail::read(path).map_err(io_err(path))?;
            if current.lines > 0 {
                tail = current;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        let head_file = head_path(path);
        let head = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&head_file)
            .map_err(io_err(&head_file))?;
        let len = if regular {
            file.metadata().map_err(io_err(path))?.len()
        } else {
            0
        };
        Ok(Self {
            path: path.to_path_buf(),
            options,
            state: Mutex::new(Some(Writer {
                file,
                head,
                len,
                last: tail.hash,
                count: tail.count,
                next_index,
                failed: None,
            })),
        })
    }

    /// A log that records nothing (no audit path configured).
    pub fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            options: AuditOptions::new(""),
            state: Mutex::new(None),
        }
    }

    /// The current file (empty when disabled).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &str {
        &self.options.identity
    }

    /// The newest line written (`None` when disabled).
    pub fn head(&self) -> Option<Head> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|w| Head {
            count: w.count,
            hash: w.last.clone(),
        })
    }

    /// Append `record`, filling `seq` and `prev` (and `time` and `identity`
    /// when empty); returns its `seq` (0 when the log is disabled). On error
    /// nothing was recorded and the caller must not act on the decision.
    pub fn append(&self, mut record: AuditRecord) -> Result<u64, AuditError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            return Ok(0);
        };
        if let Some(why) = &w.failed {
            return Err(AuditError::Closed {
                path: self.path.clone(),
                why: why.clone(),
            });
        }
        if record.time.is_empty() {
            record.time = now();
        }
        if record.identity.is_empty() {
            record.identity = self.options.identity.clone();
        }
        let mut line = self.chained(w, &mut record)?;
        let mut doomed = Vec::new();
        if w.len > 0 && w.len + line.len() as u64 + 1 > self.options.max_bytes {
            doomed = self.rotate(w)?;
            line = self.chained(w, &mut record)?;
        }
        self.write_line(w, &line)?;
        let seq = w.count;
        drop(guard);
        remove_in_background(doomed);
        Ok(seq)
    }

    /// Record a git-gate decision in the chain (one line). On error the
    /// caller refuses: a fetch is not served, a push not forwarded.
    pub fn record_git(&self, git: GitAudit) -> Result<u64, AuditError> {
        self.append(git.into_record())
    }

    fn chained(&self, w: &Writer, record: &mut AuditRecord) -> Result<String, AuditError> {
        record.seq = Some(w.count + 1);
        record.prev = w.last.clone();
        serde_json::to_string(record).map_err(|e| AuditError::Encode(e.to_string()))
    }

    /// Write one line and the head. A failed write is undone (the file cut
    /// back to its length before) so no torn line stays; when even that
    /// fails, the log refuses every later append.
    fn write_line(&self, w: &mut Writer, line: &str) -> Result<(), AuditError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(source) = w.file.write_all(&bytes) {
            if w.file.set_len(w.len).is_err() {
                w.failed = Some(source.to_string());
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                source,
            });
        }
        w.len += bytes.len() as u64;
        w.count += 1;
        w.last = hex::encode(Sha256::digest(line.as_bytes()));
        let head = Head {
            count: w.count,
            hash: w.last.clone(),
        };
        write_head(&w.head, &head).map_err(|source| AuditError::Io {
            path: head_path(&self.path),
            source,
        })
    }

    /// Rename the current file to the next `<stem>.<n>.jsonl`, start a new
    /// one whose first line (a `rotated` line) chains to the old last line;
    /// returns the rotated files beyond `keep`, for the caller to delete.
    fn rotate(&self, w: &mut Writer) -> Result<Vec<PathBuf>, AuditError> {
        let fail = |w: &mut Writer, path: &Path, source: io::Error| {
            w.failed = Some(format!("rotation failed: {source}"));
            AuditError::Io {
                path: path.to_path_buf(),
                source,
            }
        };
        let to = rotated_name(&self.path, w.next_index);
        if let Err(e) = fs::rename(&self.path, &to) {
            return Err(fail(w, &to, e));
        }
        w.next_index += 1;
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                w.file = f;
                w.len = 0;
            }
            Err(e) => return Err(fail(w, &self.path, e)),
        }
        let mut rotated = rotated_files(&self.path).map_err(|e| fail(w, &self.path, e))?;
        let excess = rotated.len().saturating_sub(self.options.keep);
        let doomed: Vec<PathBuf> = rotated.drain(..excess).map(|(_, p)| p).collect();
        let kept_from = match rotated.first() {
            Some((_, oldest)) => first_seq(oldest),
            None => Some(w.count + 1),
        };
        let mut marker = AuditRecord::new(Kind::Log, Event::Rotated);
        marker.time = now();
        marker.identity = self.options.identity.clone();
        marker.kept_from = kept_from;
        marker.detail = Some(format!(
            "continues {}",
            to.file_name().unwrap_or_default().to_string_lossy()
        ));
        let line = self.chained(w, &mut marker)?;
        self.write_line(w, &line)?;
        Ok(doomed)
    }
}

/// Delete rotated files off the request path: unlinking a 64 MiB file takes
/// ~20 ms on ext4 (measured). A file left behind (the delete failed) only
/// means more lines kept than `keep` says; verification accepts it.
fn remove_in_background(files: Vec<PathBuf>) {
    if files.is_empty() {
        return;
    }
    let remove = move || {
        for f in files {
            if let Err(e) = fs::remove_file(&f) {
                tracing::warn!("cannot remove rotated audit file {}: {e}", f.display());
            }
        }
    };
    if std::thread::Builder::new()
        .name("audit-prune".into())
        .spawn(remove.clone())
        .is_err()
    {
        remove();
    }
}

/// The last line of one file: its hash, its position and how many lines.
#[derive(Debug)]
struct Tail {
    hash: String,
    count: u64,
    lines: u64,
}

impl Default for Tail {
    fn default() -> Self {
        Self {
            hash: GENESIS.to_string(),
            count: 0,
            lines: 0,
        }
    }
}

impl Tail {
    fn read(path: &Path) -> io::Result<Self> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let mut tail = Self::default();
        let mut last = String::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            if !line.is_empty() {
                tail.lines += 1;
                last = line;
            }
        }
        if tail.lines > 0 {
            tail.hash = hex::encode(Sha256::digest(last.as_bytes()));
            // Lines of older bottles carry no seq: one file, counted.
            tail.count = serde_json::from_str::<AuditRecord>(&last)
                .ok()
                .and_then(|r| r.seq)
                .unwrap_or(tail.lines);
        }
        Ok(tail)
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `seq` of the first line of `path`.
fn first_seq(path: &Path) -> Option<u64> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut line)
        .ok()?;
    serde_json::from_str::<AuditRecord>(line.trim_end())
        .ok()?
        .seq
}

fn split_name(path: &Path) -> (PathBuf, String, String) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "jsonl".into());
    (dir, stem, ext)
}

/// `<dir>/<stem>.<n>.<ext>`: the `n`-th file rotated out of `path`.
pub fn rotated_name(path: &Path, n: u64) -> PathBuf {
    let (dir, stem, ext) = split_name(path);
    dir.join(format!("{stem}.{n}.{ext}"))
}

/// `<dir>/<stem>.head`: where the head of `path`'s chain is kept.
pub fn head_path(path: &Path) -> PathBuf {
    let (dir, stem, _) = split_name(path);
    dir.join(format!("{stem}.head"))
}

/// The rotated files of `path`, oldest first.
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (dir, stem, ext) = split_name(path);
    let listing = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir.as_path()
    };
    let entries = match fs::read_dir(listing) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let n = name
            .strip_prefix(&stem)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(&ext))
            .and_then(|r| r.strip_suffix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            found.push((n, dir.join(name)));
        }
    }
    found.sort();
    Ok(found)
}

/// Bytes of the head file: one JSON object padded with spaces, and `\n`.
const HEAD_LEN: usize = 127;

/// Rewrite the head in place: one `pwrite` of a fixed-size record, so the
/// file never holds a shorter or longer head than the last one written.
/// Not fsynced (neither are the lines it describes): it survives the bundle
/// being killed, not the host losing power. A rename per line would cost a
/// journal transaction each (~100 µs on ext4, measured); this costs a write.
fn write_head(file: &File, head: &Head) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut bytes = serde_json::to_vec(head).map_err(io::Error::other)?;
    if bytes.len() >= HEAD_LEN {
        return Err(io::Error::other("audit head too long"));
    }
    bytes.resize(HEAD_LEN, b' ');
    bytes.push(b'\n');
    file.write_all_at(&bytes, 0)
}

/// The head recorded next to `path` (`None` when there is none, or when
/// nothing was written yet). A read that races a rewrite could see half of
/// each, so two reads must agree.
pub fn read_head(path: &Path) -> Result<Option<Head>, AuditError> {
    let head = head_path(path);
    let read = || match fs::read(&head) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::Io {
            path: head.clone(),
            source,
        }),
    };
    let mut bytes = read()?;
    for _ in 0..10 {
        let again = read()?;
        if again == bytes {
            break;
        }
        bytes = again;
    }
    match bytes {
        None => Ok(None),
        Some(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AuditError::BadHead {
                path: head,
                why: e.to_string(),
            }),
    }
}
