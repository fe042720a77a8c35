//! A bottle's audit counts, kept up to date by reading only what was
//! appended to its log since the last refresh: the byte offset, the inode
//! and the chain's last hash and position are remembered per log. The
//! first read (and any read after the log was rotated, replaced or cut)
//! verifies the whole chain, rotated files and head included; after that
//! each new line must continue the chain (its `prev` is the hash of the
//! line before it, its `seq` the next position), else the counts say the
//! log does not verify from there on.

use super::model::{counts_into, AuditCounts};
use bottle_sidecars::audit::record::{AuditRecord, Event, Kind};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What was read of one log so far.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    /// The live file's (device, inode) when it was read.
    file: Option<(u64, u64)>,
    /// Bytes of the live file read (whole lines only).
    offset: u64,
    /// Hash and position of the last line read.
    last_hash: String,
    last: u64,
    pub counts: AuditCounts,
}

impl Tail {
    /// Bring the counts up to date with the log at `path`; returns how many
    /// bytes were read this time (0: nothing changed).
    pub fn update(&mut self, path: &Path) -> u64 {
        let Ok(meta) = std::fs::metadata(path) else {
            *self = Tail::default();
            return 0;
        };
        let file = (meta.dev(), meta.ino());
        if self.file != Some(file) || meta.len() < self.offset {
            return self.full(path, file);
        }
        if meta.len() == self.offset {
            return 0;
        }
        self.append(path)
    }

    /// Verify and count the whole chain.
    fn full(&mut self, path: &Path, file: (u64, u64)) -> u64 {
        *self = Tail {
            file: Some(file),
            ..Tail::default()
        };
        let head = bottle_sidecars::audit::log::read_head(path).ok().flatten();
        let mut records = Vec::new();
        let mut live = 0u64;
        let verified =
            bottle_sidecars::audit::verify::verify_chain(path, head.as_ref(), |line, r| {
                // The live file starts at the last rotation marker.
                if r.kind == Kind::Log && r.event == Event::Rotated {
                    live = 0;
                }
                live += line.len() as u64 + 1;
                records.push(r.clone());
            });
        match verified {
            Ok(v) => {
                self.offset = live;
                self.last_hash = v.last_hash;
                self.last = v.last;
                counts_into(&mut self.counts, &records);
                live
            }
            Err(e) => {
                // Count the plain lines, and say why the chain does not verify.
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let whole = text.rfind('\n').map_or(0, |i| i + 1);
                let records: Vec<AuditRecord> = text[..whole]
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                self.offset = whole as u64;
                self.counts.unverified = Some(e.to_string());
                counts_into(&mut self.counts, &records);
                self.offset
            }
        }
    }

    /// Read what was appended since `offset`.
    fn append(&mut self, path: &Path) -> u64 {
        let mut bytes = Vec::new();
        let read = std::fs::File::open(path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.read_to_end(&mut bytes)
        });
        if read.is_err() {
            return 0;
        }
        // Whole lines only: a line being written is read next time.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return 0;
        };
        let text = String::from_utf8_lossy(&bytes[..=end]);
        let mut records = Vec::new();
        for line in text.lines() {
            let record: Option<AuditRecord> = serde_json::from_str(line).ok();
            if self.counts.unverified.is_none() {
                let next = self.last + 1;
                let ok = record
                    .as_ref()
                    .is_some_and(|r| r.prev == self.last_hash && r.seq.is_none_or(|s| s == next));
                if ok {
                    self.last = next;
                    self.last_hash = hex::encode(Sha256::digest(line.as_bytes()));
                } else {
                    self.counts.unverified = Some(format!(
                        "line {next} does not continue the chain (the log was changed)"
                    ));
                }
            }
            records.extend(record);
        }
        counts_into(&mut self.counts, &records);
        self.offset += end as u64 + 1;
        end as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_sidecars::audit::log::{AuditLog, AuditOptions};

    fn deny(host: &str) -> AuditRecord {
        let mut r = AuditRecord::new(Kind::Request, Event::Decided);
        r.decision = "deny".into();
        r.method = "GET".into();
        r.host = host.into();
        r
    }

    #[test]
    fn only_the_appended_lines_are_read_and_they_must_continue_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, AuditOptions::new("claude-aaaaa")).unwrap();
        for i in 0..100 {
            log.append(deny(&format!("h{i}.test"))).unwrap();
        }
        let mut tail = Tail::default();
        let first = tail.update(&path);
        assert_eq!(first, std::fs::metadata(&path).unwrap().len());
        assert_eq!(tail.counts.denied, 100);
        assert_eq!(tail.counts.unverified, None);
        // Nothing new: nothing read.
        assert_eq!(tail.update(&path), 0);
        // One more line: only its bytes are read.
        log.append(deny("new.test")).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(tail.update(&path), len - first);
        assert_eq!(tail.counts.denied, 101);
        assert_eq!(tail.counts.recent.last().unwrap().what, "GET new.test");
        assert_eq!(tail.counts.recent.len(), super::super::model::RECENT);
        assert_eq!(tail.counts.unverified, None);
        // A line appended by someone else does not continue the chain.
        let mut forged = deny("forged.test");
        forged.prev = "00".repeat(32);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            format!("{}\n", serde_json::to_string(&forged).unwrap()).as_bytes(),
        )
        .unwrap();
        tail.update(&path);
        assert_eq!(tail.counts.denied, 102);
        assert!(
            tail.counts
                .unverified
                .as_deref()
                .unwrap_or("")
                .contains("line 102"),
            "{:?}",
            tail.counts.unverified
        );
        // A log replaced by another file is read whole again.
        drop(log);
        std::fs::remove_file(&path).unwrap();
        let log = AuditLog::open(&path, AuditOptions::new("claude-aaaaa")).unwrap();
        log.append(deny("again.test")).unwrap();
        tail.update(&path);
        assert_eq!(
            (tail.counts.denied, tail.counts.unverified.clone()),
            (1, None)
        );
    }

    #[test]
    fn a_rotated_log_is_read_whole_once_then_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut options = AuditOptions::new("claude-aaaaa");
        options.max_bytes = 2000;
        options.keep = 100;
        let log = AuditLog::open(&path, options).unwrap();
        for i in 0..40 {
            log.append(deny(&format!("h{i}.test"))).unwrap();
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files > 3, "rotated into {files} files");
        let mut tail = Tail::default();
        tail.update(&path);
        assert_eq!(tail.counts.unverified, None);
        assert_eq!(tail.counts.denied, 40);
        // The offset is the live file's length, not the chain's.
        assert_eq!(tail.update(&path), 0);
        log.append(deny("last.test")).unwrap();
        tail.update(&path);
        assert_eq!(tail.counts.denied, 41);
        assert_eq!(tail.counts.unverified, None, "{:?}", tail.counts.unverified);
    }
}
