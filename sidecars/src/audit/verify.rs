//! Reading a chain back: every line must carry the hash of the line before
//! it, across rotated files in order; the chain may start mid-way only where
//! rotation deleted older files (and then exactly where the last rotation
//! says the kept lines begin); and it must reach the recorded head.

use super::log::{read_head, rotated_files, Head};
use super::record::{AuditRecord, Event, Kind};
use super::{AuditError, GENESIS};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// What a verified chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Files read, oldest first.
    pub files: Vec<PathBuf>,
    /// Position of the first line on disk (above 1 when rotation deleted
    /// older files), and of the last.
    pub first: u64,
    pub last: u64,
    /// Hash of the last line ([`GENESIS`] when empty).
    pub last_hash: String,
    /// Whether a recorded head was checked.
    pub head_checked: bool,
}

/// Verify the chain of `path` and its rotated files, calling `visit` with
/// each line (verbatim) and its record, oldest first. With `head`, the chain
/// must contain the head's line: a log that ends before it was cut; a
/// different line at that position means its tail was rewritten. Lines
/// after the head are accepted (written after the head was read).
pub fn verify_chain(
    path: &Path,
    head: Option<&Head>,
    mut visit: impl FnMut(&str, &AuditRecord),
) -> Result<Verified, AuditError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AuditError::Io { path: p, source }
    };
    let mut files: Vec<PathBuf> = rotated_files(path)
        .map_err(io_err(path))?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    let mut out = Verified {
        files: files.clone(),
        first: 0,
        last: 0,
        last_hash: GENESIS.to_string(),
        head_checked: false,
    };
    let mut kept_from: Option<u64> = None;
    let mut head_hash: Option<String> = None;
    for file in &files {
        let reader = BufReader::new(File::open(file).map_err(io_err(file))?);
        for (i, line) in reader.lines().enumerate() {
            let n = i + 1;
            let line = line.map_err(io_err(file))?;
            let broken = || AuditError::Broken {
                file: file.clone(),
                line: n,
            };
            let record: AuditRecord =
                serde_json::from_str(&line).map_err(|e| AuditError::Parse {
                    file: file.clone(),
                    line: n,
                    why: e.to_string(),
                })?;
            let seq = if out.last == 0 && out.first == 0 {
                // The first line: from the genesis, or a rotation line that
                // continues files rotation has deleted.
                let seq = if record.prev == GENESIS {
                    1
                } else if record.kind == Kind::Log && record.event == Event::Rotated {
                    record.seq.ok_or_else(broken)?
                } else {
                    return Err(broken());
                };
                out.first = seq;
                seq
            } else {
                if record.prev != out.last_hash {
                    return Err(broken());
                }
                out.last + 1
            };
            if record.seq.is_some_and(|s| s != seq) {
                return Err(broken());
            }
            if record.kind == Kind::Log && record.event == Event::Rotated {
                kept_from = record.kept_from.or(kept_from);
            }
            out.last_hash = hex::encode(Sha256::digest(line.as_bytes()));
            out.last = seq;
            if head.is_some_and(|h| h.count == seq) {
                head_hash = Some(out.last_hash.clone());
            }
            visit(&line, &record);
        }
    }
    if let Some(from) = kept_from {
        if out.first > from {
            return Err(AuditError::Missing {
                file: files.first().cloned().unwrap_or_default(),
                from,
                to: out.first - 1,
            });
        }
    }
    if let Some(head) = head {
        if head.count > out.last {
            return Err(AuditError::Cut {
                file: files.last().cloned().unwrap_or_else(|| path.to_path_buf()),
                last: out.last,
                head: head.count,
            });
        }
        if head.count >= out.first && head.count > 0 {
            if head_hash.as_deref() != Some(head.hash.as_str()) {
                return Err(AuditError::HeadMismatch { line: head.count });
            }
            out.head_checked = true;
        }
    }
    Ok(out)
}

/// Read every record of `path` (and its rotated files), checking the chain
/// and, when the head file next to it exists, that nothing was cut.
pub fn read_verified(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let head = read_head(path)?;
    let mut records = Vec::new();
    verify_chain(path, head.as_ref(), |_, r| records.push(r.clone()))?;
    Ok(records)
}
