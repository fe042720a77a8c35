//! The streaming scan: bytes from many sources (diff lines, messages, tree
//! entry names, whole blobs) are cut into fixed-size chunks that worker
//! threads scan, so memory stays bounded whatever a push holds.
//!
//! Consecutive chunks overlap by at least [`OVERLAP`] bytes: a chunk reports
//! only findings that start before its overlap tail, and the next chunk
//! (which begins with that tail) reports the rest, so a secret no longer
//! than the overlap is found exactly once even when a cut runs through it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::finding::{ObjectKind, Place, PushFinding, Via};
use crate::scanner::{Finding, Scanner};

/// Bytes per chunk.
pub(super) const CHUNK: usize = 1 << 20;
/// Least overlap between consecutive chunks (longest secret found across a cut).
pub(super) const OVERLAP: usize = 16 << 10;
/// Most bytes of a name shown in a finding.
const NAME_SHOWN: usize = 256;

/// Where scanned bytes come from.
#[derive(Debug)]
pub(super) struct Source {
    pub kind: ObjectKind,
    pub oid: String,
    pub via: Option<Via>,
    pub what: What,
}

/// What part of the object the bytes are.
#[derive(Debug)]
pub(super) enum What {
    /// File content; the path as shown, secrets in it redacted.
    File(String),
    /// One entry name per line; the tree's path as shown ("" for a root).
    TreeNames(String),
    CommitHeader,
    CommitMessage,
    TagHeader,
    TagMessage,
    RefName,
}

/// From `offset` on, the buffer holds line `line` of `source` (and the lines
/// after it, counted by newlines, until the next mark).
#[derive(Debug)]
struct Mark {
    offset: usize,
    line: usize,
    source: Arc<Source>,
}

#[derive(Debug)]
struct Job {
    /// (stream, position in it): findings are reported in this order.
    order: (usize, usize),
    buf: Vec<u8>,
    marks: Vec<Mark>,
    /// Findings starting at or after this offset belong to the next job.
    report_before: usize,
}

/// The workers' queue; each [`Chunker`] feeds one ordered stream into it.
#[derive(Debug)]
pub(super) struct Pipe {
    tx: SyncSender<Job>,
    bytes: AtomicU64,
    broken: AtomicBool,
}

impl Pipe {
    /// A chunker for stream number `stream` (findings of lower streams are
    /// listed first). Call [`Chunker::finish`] when done.
    pub fn chunker(&self, stream: usize) -> Chunker<'_> {
        Chunker {
            pipe: self,
            tx: self.tx.clone(),
            buf: Vec::with_capacity(CHUNK + OVERLAP),
            marks: Vec::new(),
            stream,
            seq: 0,
            line: 0,
            line_has_newline: false,
            expect: None,
            bytes: 0,
        }
    }
}

/// Collects lines into chunks and hands them to the workers.
#[derive(Debug)]
pub(super) struct Chunker<'p> {
    pipe: &'p Pipe,
    tx: SyncSender<Job>,
    buf: Vec<u8>,
    marks: Vec<Mark>,
    stream: usize,
    seq: usize,
    /// Line number of the line being written.
    line: usize,
    line_has_newline: bool,
    /// Line of the last mark's source that may follow without a new mark.
    expect: Option<usize>,
    bytes: u64,
}

impl Chunker<'_> {
    /// Start line `line` of `source`. Every `begin` is closed by [`Chunker::end`].
    pub fn begin(&mut self, source: &Arc<Source>, line: usize) {
        let contiguous = self.expect == Some(line)
            && self
                .marks
                .last()
                .is_some_and(|m| Arc::ptr_eq(&m.source, source));
        if !contiguous {
            self.marks.push(Mark {
                offset: self.buf.len(),
                line,
                source: Arc::clone(source),
            });
        }
        self.line = line;
        self.line_has_newline = false;
        self.expect = None;
    }

    /// Bytes of the current line (more lines when `data` holds newlines).
    pub fn extend(&mut self, mut data: &[u8]) {
        if data.contains(&b'\n') {
            self.line_has_newline = true;
        }
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let n = CHUNK.saturating_sub(self.buf.len()).clamp(1, data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= CHUNK {
                self.flush(false);
            }
        }
    }

    /// End the current line.
    pub fn end(&mut self) {
        self.buf.push(b'\n');
        self.expect = (!self.line_has_newline).then_some(self.line + 1);
        if self.buf.len() >= CHUNK {
            self.flush(false);
        }
    }

    /// Send the buffer to the workers, keeping its tail for the next chunk
    /// unless `last`.
    fn flush(&mut self, last: bool) {
        let report_before = if last {
            self.buf.len()
        } else {
            tail_start(&self.buf)
        };
        let mut tail_marks = Vec::new();
        let mut tail = Vec::with_capacity(CHUNK + OVERLAP);
        if !last {
            tail.extend_from_slice(&self.buf[report_before..]);
            let i = self.marks.partition_point(|m| m.offset <= report_before);
            if let Some(cover) = i.checked_sub(1).and_then(|c| self.marks.get(c)) {
                tail_marks.push(Mark {
                    offset: 0,
                    line: cover.line + newlines(&self.buf[cover.offset..report_before]),
                    source: Arc::clone(&cover.source),
                });
            }
            tail_marks.extend(self.marks.drain(i..).map(|m| Mark {
                offset: m.offset - report_before,
                ..m
            }));
        }
        let job = Job {
            order: (self.stream, self.seq),
            buf: std::mem::replace(&mut self.buf, tail),
            marks: std::mem::replace(&mut self.marks, tail_marks),
            report_before,
        };
        self.seq += 1;
        if self.tx.send(job).is_err() {
            self.pipe.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Scan what is left of this stream.
    pub fn finish(mut self) {
        if !self.buf.is_empty() {
            self.flush(true);
        }
        self.pipe.bytes.fetch_add(self.bytes, Ordering::Relaxed);
    }
}

/// Where the kept tail of a full buffer starts: at least [`OVERLAP`] bytes
/// from the end, at a line start when one is within another `OVERLAP`.
fn tail_start(buf: &[u8]) -> usize {
    let hi = buf.len().saturating_sub(OVERLAP);
    let lo = hi.saturating_sub(OVERLAP);
    buf[lo..hi]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(hi, |p| lo + p + 1)
}

fn newlines(data: &[u8]) -> usize {
    data.iter().filter(|&&b| b == b'\n').count()
}

/// What a scan fed through [`run`] found.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    pub findings: Vec<PushFinding>,
    pub bytes: u64,
}

/// Run `feed` with a [`Pipe`] whose chunks are scanned on up to 4 worker
/// threads. Findings come back ordered by stream, then by the order their
/// bytes were fed.
pub(super) fn run<T>(
    scanner: &Scanner,
    feed: impl FnOnce(&Pipe) -> Result<T, String>,
) -> Result<(T, Scanned), String> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let (tx, rx) = sync_channel::<Job>(workers * 2);
    // Only the workers hold the receiver: if they all die, sending fails
    // instead of blocking forever.
    let rx = Arc::new(Mutex::new(rx));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = Arc::clone(&rx);
                s.spawn(move || work(&rx, scanner))
            })
            .collect();
        drop(rx);
        let pipe = Pipe {
            tx,
            bytes: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        };
        let fed = feed(&pipe);
        // The last sender goes: workers stop once the queue is empty.
        let Pipe { tx, bytes, broken } = pipe;
        drop(tx);
        let (bytes, broken) = (bytes.into_inner(), broken.into_inner());
        let mut found = Vec::new();
        let mut failed = broken;
        for h in handles {
            match h.join() {
                Ok(f) => found.extend(f),
                Err(_) => failed = true,
            }
        }
        let value = fed?;
        if failed {
            return Err("scanner thread failed".into());
        }
        found.sort_by_key(|(order, start, _)| (*order, *start));
        let findings = found.into_iter().map(|(_, _, f)| f).collect();
        Ok((value, Scanned { findings, bytes }))
    })
}

type Found = ((usize, usize), usize, PushFinding);

fn work(rx: &Mutex<Receiver<Job>>, scanner: &Scanner) -> Vec<Found> {
    let mut out = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => break,
        };
        let Ok(job) = job else { break };
        for f in scanner.scan(&job.buf) {
            if f.start < job.report_before {
                out.push((job.order, f.start, resolve(&job, &f, scanner)));
            }
        }
    }
    out
}

/// Turn a finding in a chunk into a push finding: which source, which line.
fn resolve(job: &Job, f: &Finding, scanner: &Scanner) -> PushFinding {
    let i = job.marks.partition_point(|m| m.offset <= f.start);
    let mark = i.checked_sub(1).and_then(|i| job.marks.get(i));
    let (line, source) = match mark {
        Some(m) => (
            m.line + newlines(&job.buf[m.offset..f.start]),
            Some(&m.source),
        ),
        None => (0, None),
    };
    let (place, line) = match source.map(|s| &s.what) {
        Some(What::File(path)) => (Place::File(path.clone()), line),
        Some(What::TreeNames(dir)) => {
            let name = shown_line(scanner, &job.buf, f.start);
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            (Place::FileName(path), 0)
        }
        Some(What::CommitHeader) => (Place::CommitHeader, line),
        Some(What::CommitMessage) => (Place::CommitMessage, line),
        Some(What::TagHeader) => (Place::TagHeader, line),
        Some(What::TagMessage) => (Place::TagMessage, line),
        Some(What::RefName) => (Place::RefName(shown_line(scanner, &job.buf, f.start)), 0),
        None => (Place::File("?".into()), 0),
    };
    PushFinding {
        rule_id: f.rule_id.clone(),
        description: f.description.clone(),
        redacted: f.redacted.clone(),
        place,
        line,
        kind: source.map_or(ObjectKind::Blob, |s| s.kind),
        oid: source.map(|s| s.oid.clone()).unwrap_or_default(),
        via: source.and_then(|s| s.via.clone()),
    }
}

/// The line of `buf` around `pos`, cut to [`NAME_SHOWN`] bytes, with every
/// secret in it redacted.
fn shown_line(scanner: &Scanner, buf: &[u8], pos: usize) -> String {
    let lo = pos.saturating_sub(NAME_SHOWN);
    let start = buf[lo..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(lo, |p| lo + p + 1);
    let hi = (start + NAME_SHOWN).min(buf.len()).max(pos);
    let end = buf[pos..hi]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(hi, |p| pos + p);
    redact_all(scanner, &buf[start..end])
}

/// `bytes` as text for a message: every secret the scanner finds in it
/// redacted, control characters escaped.
pub(super) fn redact_all(scanner: &Scanner, bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for f in scanner.scan(bytes) {
        if f.start < at {
            continue;
        }
        out.extend_from_slice(&bytes[at..f.start]);
        out.extend_from_slice(f.redacted.as_bytes());
        at = f.end;
    }
    out.extend_from_slice(&bytes[at..]);
    let mut text = String::with_capacity(out.len());
    for c in String::from_utf8_lossy(&out).chars() {
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_KEY: &str = "AKIAZ7VRSQ5TJ2NXKQ4P";

    fn source(what: What) -> Arc<Source> {
        Arc::new(Source {
            kind: ObjectKind::Blob,
            oid: "b".repeat(40),
            via: None,
            what,
        })
    }

    fn scan(feed: impl FnOnce(&mut Chunker)) -> Scanned {
        let scanner = Scanner::builtin().unwrap();
        run(&scanner, |pipe| {
            let mut c = pipe.chunker(0);
            feed(&mut c);
            c.finish();
            Ok(())
        })
        .unwrap()
        .1
    }

    #[test]
    fn a_secret_across_every_chunk_cut_is_found_once_on_its_line() {
        // Secrets placed so that cuts fall before, inside and after them.
        let src = source(What::File("big.txt".into()));
        let line = "x".repeat(99);
        let mut expected = Vec::new();
        let found = scan(|c| {
            c.begin(&src, 1);
            let mut n = 1;
            let mut written = 0usize;
            while written < 5 * CHUNK {
                let text = if n % 997 == 0 {
                    expected.push(n);
                    format!("key {AWS_KEY} {}\n", &line[..80])
                } else {
                    format!("{line}\n")
                };
                c.extend(text.as_bytes());
                written += text.len();
                n += 1;
            }
            c.end();
        });
        let lines: Vec<usize> = found.findings.iter().map(|f| f.line).collect();
        assert_eq!(lines, expected);
        assert!(found
            .findings
            .iter()
            .all(|f| f.place == Place::File("big.txt".into())));
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_scanned_in_pieces() {
        let src = source(What::File("min.js".into()));
        let found = scan(|c| {
            c.begin(&src, 3);
            for i in 0..3 * CHUNK / 1000 {
                if i == CHUNK / 1000 {
                    c.extend(format!(";k=\"{AWS_KEY}\";").as_bytes());
                }
                c.extend(&[b'a'; 1000]);
            }
            c.end();
        });
        assert_eq!(found.findings.len(), 1, "{:?}", found.findings);
        assert_eq!(found.findings[0].line, 3);
    }

    #[test]
    fn sparse_lines_keep_their_own_numbers_and_sources() {
        let a = source(What::File("a.txt".into()));
        let b = source(What::File("b.txt".into()));
        let found = scan(|c| {
            for (src, line, text) in [
                (&a, 10, "clean"),
                (&a, 11, AWS_KEY),
                (&b, 4, "clean"),
                (&a, 40, AWS_KEY),
            ] {
                c.begin(src, line);
                c.extend(text.as_bytes());
                c.end();
            }
        });
        let got: Vec<(Place, usize)> = found
            .findings
            .iter()
            .map(|f| (f.place.clone(), f.line))
            .collect();
        assert_eq!(
            got,
            vec![
                (Place::File("a.txt".into()), 11),
                (Place::File("a.txt".into()), 40)
            ]
        );
    }

    #[test]
    fn names_are_shown_with_the_secret_redacted() {
        let src = source(What::TreeNames("keys".into()));
        let found = scan(|c| {
            c.begin(&src, 1);
            c.extend(b"README");
            c.end();
            c.begin(&src, 2);
            c.extend(format!("{AWS_KEY}.txt").as_bytes());
            c.end();
        });
        assert_eq!(found.findings.len(), 1);
        assert_eq!(
            found.findings[0].place,
            Place::FileName("keys/AKIA….txt".into())
        );
    }

    #[test]
    fn redact_all_masks_secrets_and_escapes_control_characters() {
        let s = Scanner::builtin().unwrap();
        let text = redact_all(&s, format!("a\n{AWS_KEY}\x1b").as_bytes());
        assert_eq!(text, "a\\nAKIA…\\u{1b}");
    }
}
