//! The audit log: one JSON line per decision, each carrying the SHA-256 of the
//! line before it, so an edited, dropped or reordered line breaks the chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why an audit log could not be read or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit line {line} is not a valid record: {why}")]
    Parse { line: usize, why: String },
    #[error(
        "audit line {line} does not chain to the line before it (edited, dropped or reordered)"
    )]
    Broken { line: usize },
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub identity: String,
    pub peer: String,
    pub method: String,
    pub host: String,
    pub path: String,
    /// `allow`, `deny` or `warn`.
    pub decision: String,
    pub rule: String,
    /// Request body bytes sent upstream.
    pub bytes: u64,
    /// SHA-256 (hex) of the previous line, [`GENESIS`] for the first.
    pub prev: String,
}

/// Appends chained records to a file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<Option<(File, String)>>,
}

impl AuditLog {
    /// Open (or create) `path`, continuing the chain of what it holds.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io_err = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let last = match File::open(path) {
            Ok(f) => last_line_hash(BufReader::new(f)).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => GENESIS.to_string(),
            Err(e) => return Err(io_err(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(Some((file, last))),
        })
    }

    /// A log that records nothing (no audit path configured).
    pub fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            state: Mutex::new(None),
        }
    }

    /// Append `record` (its `prev` is filled here).
    pub fn append(&self, mut record: AuditRecord) -> Result<(), AuditError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((file, last)) = guard.as_mut() else {
            return Ok(());
        };
        record.prev = last.clone();
        let line = serde_json::to_string(&record).map_err(|e| AuditError::Parse {
            line: 0,
            why: e.to_string(),
        })?;
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        file.write_all(&bytes).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        *last = hex::encode(Sha256::digest(line.as_bytes()));
        Ok(())
    }
}

fn last_line_hash(reader: impl BufRead) -> io::Result<String> {
    let mut last = GENESIS.to_string();
    for line in reader.lines() {
        let line = line?;
        if !line.is_empty() {
            last = hex::encode(Sha256::digest(line.as_bytes()));
        }
    }
    Ok(last)
}

/// Read every record of `path`, checking the chain from the first line.
pub fn read_verified(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    verify_lines(BufReader::new(file)).map_err(|e| match e {
        AuditError::Io { source, .. } => AuditError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })
}

fn verify_lines(reader: impl BufRead) -> Result<Vec<AuditRecord>, AuditError> {
    let mut expected = GENESIS.to_string();
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|source| AuditError::Io {
            path: PathBuf::new(),
            source,
        })?;
        let record: AuditRecord = serde_json::from_str(&line).map_err(|e| AuditError::Parse {
            line: n,
            why: e.to_string(),
        })?;
        if record.prev != expected {
            return Err(AuditError::Broken { line: n });
        }
        expected = hex::encode(Sha256::digest(line.as_bytes()));
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str) -> AuditRecord {
        AuditRecord {
            time: "2026-01-01T00:00:00Z".into(),
            identity: "agent-abcde".into(),
            peer: "guest".into(),
            method: "GET".into(),
            host: host.into(),
            path: "/".into(),
            decision: "allow".into(),
            rule: "allow".into(),
            bytes: 0,
            prev: String::new(),
        }
    }

    #[test]
    fn appended_records_read_back_verified_and_chain_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(record("a.test")).unwrap();
        log.append(record("b.test")).unwrap();
        drop(log);
        AuditLog::open(&path)
            .unwrap()
            .append(record("c.test"))
            .unwrap();
        let records = read_verified(&path).unwrap();
        assert_eq!(
            records.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
            ["a.test", "b.test", "c.test"]
        );
        assert_eq!(records[0].prev, GENESIS);
    }

    #[test]
    fn an_edited_line_breaks_the_chain_at_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for h in ["a.test", "b.test", "c.test"] {
            log.append(record(h)).unwrap();
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replacen("b.test", "x.test", 1);
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            read_verified(&path),
            Err(AuditError::Broken { line: 3 })
        ));
    }

    #[test]
    fn a_dropped_line_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for h in ["a.test", "b.test", "c.test"] {
            log.append(record(h)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 0)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&path, kept.join("\n")).unwrap();
        assert!(matches!(
            read_verified(&path),
            Err(AuditError::Broken { line: 1 })
        ));
    }
}
