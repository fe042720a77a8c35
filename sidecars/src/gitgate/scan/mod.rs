//! Scan everything a push brings before it goes upstream.
//!
//! * Every updated ref must point at a commit or at an annotated tag of a
//!   commit (a tree or blob only when the remote allows it).
//! * The new objects are listed with `rev-list --objects` over the new
//!   range (every new commit, tree and blob, and tag objects at any depth).
//! * Scanned: ref names, raw commit and tag objects (headers and messages),
//!   the entry names of every new tree, the added lines of each new commit's
//!   diff against its first parent, and every new blob no such diff covered
//!   (a blob or tree on a tag, say) in full.
//!
//! Everything is streamed through fixed-size chunks ([`chunk`]); a blob
//! larger than [`MAX_BLOB_SIZE`] refuses the push instead of being scanned.

mod chunk;
mod diff;
mod finding;
mod objects;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::process::{Command, Stdio};
use std::sync::Arc;

pub use finding::{short, ObjectKind, Place, PushFinding, Via};
pub use objects::Peeled;

use super::refusal::PushRefusal;
use crate::policy::GitRemote;
use crate::scanner::Scanner;
use chunk::{redact_all, Chunker, Source, What};
use objects::{Contents, Listed};

/// Largest blob a push may carry (GitHub refuses larger files too): a
/// larger one refuses the push, since it is neither diffed nor scanned.
pub const MAX_BLOB_SIZE: u64 = 100 << 20;

/// The all-zero object id that marks a created or deleted ref.
pub fn is_zero_oid(oid: &str) -> bool {
    !oid.is_empty() && oid.bytes().all(|b| b == b'0')
}

/// Whether `oid` is a full hex object id (SHA-1 or SHA-256).
pub fn is_oid(oid: &str) -> bool {
    (oid.len() == 40 || oid.len() == 64) && oid.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One line of pre-receive input: `<old> <new> <ref>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    pub fn is_delete(&self) -> bool {
        is_zero_oid(&self.new)
    }
    pub fn is_create(&self) -> bool {
        is_zero_oid(&self.old)
    }
}

/// Parse pre-receive stdin; anything unexpected is an error (fail closed).
pub fn parse_updates(input: &str) -> Result<Vec<RefUpdate>, String> {
    let mut out = Vec::new();
    for line in input.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.split(' ');
        let (Some(old), Some(new), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "malformed ref update line `{}`",
                line.escape_debug()
            ));
        };
        let name_ok = name.starts_with("refs/")
            && !name.contains("..")
            && name.bytes().all(|b| b.is_ascii_graphic());
        if !is_oid(old) || !is_oid(new) || !name_ok {
            return Err(format!(
                "malformed ref update line `{}`",
                line.escape_debug()
            ));
        }
        out.push(RefUpdate {
            old: old.into(),
            new: new.into(),
            name: name.into(),
        });
    }
    Ok(out)
}

/// What the scan allows, per remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Remote name, for messages.
    pub remote: String,
    /// Whether a ref may point at a tree or blob.
    pub allow_non_commit_refs: bool,
    /// Largest blob scanned; a larger one refuses the push.
    pub max_blob_size: u64,
}

impl ScanOptions {
    pub fn for_remote(remote: &GitRemote) -> Self {
        Self {
            remote: remote.name.clone(),
            allow_non_commit_refs: remote.allow_non_commit_refs,
            max_blob_size: MAX_BLOB_SIZE,
        }
    }
}

/// Statistics of one scan, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// New commits (messages and diffs scanned).
    pub commits: usize,
    /// Trees, tags and whole blobs scanned.
    pub objects: usize,
    /// Bytes handed to the scanner.
    pub bytes: u64,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub findings: Vec<PushFinding>,
    pub stats: ScanStats,
}

/// Runs git against one repository (with the quarantine environment when
/// called from a pre-receive hook).
pub trait GitRunner: Sync {
    fn command(&self) -> Command;
}

/// What an update's old and new objects are (`None` for the zero id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeeledUpdate {
    pub old: Option<Peeled>,
    pub new: Option<Peeled>,
}

/// Type and peeled target of both sides of every update.
pub fn peel_updates(
    git: &dyn GitRunner,
    updates: &[RefUpdate],
) -> Result<Vec<PeeledUpdate>, PushRefusal> {
    let mut oids: Vec<&str> = Vec::new();
    for u in updates {
        if !u.is_create() {
            oids.push(&u.old);
        }
        if !u.is_delete() {
            oids.push(&u.new);
        }
    }
    let mut peeled = objects::peel(git, &oids)
        .map_err(PushRefusal::CannotCheck)?
        .into_iter();
    let mut out = Vec::with_capacity(updates.len());
    for u in updates {
        let old = if u.is_create() { None } else { peeled.next() };
        let new = if u.is_delete() { None } else { peeled.next() };
        out.push(PeeledUpdate { old, new });
    }
    Ok(out)
}

/// Refuse an update whose new object is not a commit or an annotated tag
/// of one, unless the remote allows it.
pub fn check_targets(
    updates: &[RefUpdate],
    peeled: &[PeeledUpdate],
    options: &ScanOptions,
) -> Result<(), PushRefusal> {
    if options.allow_non_commit_refs {
        return Ok(());
    }
    for (u, p) in updates.iter().zip(peeled) {
        if let Some(n) = &p.new {
            if n.target_kind != ObjectKind::Commit {
                return Err(PushRefusal::RefTarget {
                    ref_name: u.name.clone(),
                    oid: n.target.clone(),
                    kind: n.target_kind,
                    tagged: n.kind == ObjectKind::Tag,
                    remote: options.remote.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Scan every object the updates bring. Secrets come back as findings;
/// a blob too large to scan or a failing git is a refusal.
pub fn scan_updates(
    git: &dyn GitRunner,
    scanner: &Scanner,
    updates: &[RefUpdate],
    peeled: &[PeeledUpdate],
    options: &ScanOptions,
) -> Result<ScanReport, PushRefusal> {
    let cannot = PushRefusal::CannotCheck;
    let mut live: Vec<(&RefUpdate, &Peeled)> = Vec::new();
    let mut commit_tips: Vec<String> = Vec::new();
    let mut loose: Vec<String> = Vec::new();
    let mut loose_refs: HashMap<&str, &str> = HashMap::new();
    let mut seen_tips = HashSet::new();
    for (u, p) in updates.iter().zip(peeled) {
        let Some(n) = &p.new else { continue };
        live.push((u, n));
        if n.target_kind == ObjectKind::Commit && seen_tips.insert(n.target.as_str()) {
            commit_tips.push(n.target.clone());
        }
        if n.kind != ObjectKind::Commit && !loose_refs.contains_key(u.new.as_str()) {
            loose_refs.insert(&u.new, &u.name);
            loose.push(u.new.clone());
        }
    }

    let mut listed: Vec<Listed> = Vec::new();
    if !commit_tips.is_empty() {
        // Oldest commit first; each commit's new trees and blobs follow it.
        let mut current = None;
        for mut o in objects::list(git, &["--reverse", "--in-commit-order"], &commit_tips, &[])
            .map_err(cannot)?
        {
            if o.kind == ObjectKind::Commit {
                current = Some(o.oid.clone());
            } else {
                o.via = current.clone().map(Via::Commit);
            }
            listed.push(o);
        }
    }
    if !loose.is_empty() {
        // Tags, and trees or blobs on refs: what they reach outside the new commits.
        let known: HashSet<String> = listed.iter().map(|o| o.oid.clone()).collect();
        let mut current = None;
        for mut o in objects::list(git, &[], &loose, &commit_tips).map_err(cannot)? {
            if let Some(r) = loose_refs.get(o.oid.as_str()) {
                current = Some(r.to_string());
            }
            if known.contains(&o.oid) {
                continue;
            }
            o.via = current.clone().map(Via::Ref);
            listed.push(o);
        }
    }
    if let Some(big) = listed
        .iter()
        .find(|o| o.kind == ObjectKind::Blob && o.size > options.max_blob_size)
    {
        return Err(PushRefusal::TooLarge {
            oid: big.oid.clone(),
            path: redact_all(scanner, &big.path),
            size: big.size,
            limit: options.max_blob_size,
            via: big.via.clone(),
        });
    }

    let commits: Vec<&str> = listed
        .iter()
        .filter(|o| o.kind == ObjectKind::Commit)
        .map(|o| o.oid.as_str())
        .collect();
    let (objects, scanned) = chunk::run(scanner, |pipe| {
        // Diffs are read while names and messages are: two streams.
        let (structure, covered) = std::thread::scope(|s| {
            let diffs = s.spawn(|| {
                let mut ch = pipe.chunker(1);
                let covered = scan_diffs(git, scanner, &mut ch, &commits);
                ch.finish();
                covered
            });
            let mut ch = pipe.chunker(0);
            scan_ref_names(&mut ch, &live);
            let structure = scan_structure(git, scanner, &mut ch, &listed);
            ch.finish();
            let covered = diffs
                .join()
                .unwrap_or_else(|_| Err("diff reader failed".into()));
            (structure, covered)
        });
        let (structure, covered) = (structure?, covered?);
        let mut ch = pipe.chunker(2);
        let blobs = scan_blobs(git, scanner, &mut ch, &listed, &covered);
        ch.finish();
        Ok(structure + blobs?)
    })
    .map_err(cannot)?;
    Ok(ScanReport {
        findings: scanned.findings,
        stats: ScanStats {
            commits: commits.len(),
            objects,
            bytes: scanned.bytes,
        },
    })
}

fn scan_ref_names(ch: &mut Chunker<'_>, live: &[(&RefUpdate, &Peeled)]) {
    for (u, n) in live {
        let source = Arc::new(Source {
            kind: n.kind,
            oid: u.new.clone(),
            via: None,
            what: What::RefName,
        });
        ch.begin(&source, 1);
        ch.extend(u.name.as_bytes());
        ch.end();
    }
}

/// Scan commits and tags (raw, headers and message) and the entry names of
/// trees, in listing order. Returns how many trees and tags were scanned.
fn scan_structure(
    git: &dyn GitRunner,
    scanner: &Scanner,
    ch: &mut Chunker<'_>,
    listed: &[Listed],
) -> Result<usize, String> {
    let list: Vec<&Listed> = listed
        .iter()
        .filter(|o| o.kind != ObjectKind::Blob)
        .collect();
    if list.is_empty() {
        return Ok(0);
    }
    let oids: Vec<&str> = list.iter().map(|o| o.oid.as_str()).collect();
    let mut contents = Contents::spawn(git, &oids)?;
    let mut others = 0;
    let mut seen_paths = HashSet::new();
    for o in list {
        let source = |what| {
            Arc::new(Source {
                kind: o.kind,
                oid: o.oid.clone(),
                via: o.via.clone(),
                what,
            })
        };
        let kind = match o.kind {
            ObjectKind::Commit | ObjectKind::Tag => {
                let (header, message) = if o.kind == ObjectKind::Commit {
                    (What::CommitHeader, What::CommitMessage)
                } else {
                    (What::TagHeader, What::TagMessage)
                };
                let (header, message) = (source(header), source(message));
                let mut split = HeaderSplit::default();
                ch.begin(&header, 1);
                let (kind, _) =
                    contents.next(&o.oid, &mut |piece| split.feed(piece, ch, &message))?;
                ch.end();
                kind
            }
            _ => {
                let dir = redact_all(scanner, &o.path);
                let hash_len = o.oid.len() / 2;
                let mut names = TreeNames::new(
                    source(What::TreeNames(dir)),
                    hash_len,
                    &o.path,
                    &mut seen_paths,
                );
                let (kind, _) = contents.next(&o.oid, &mut |piece| names.feed(piece, ch))?;
                names.finish(ch, &o.oid)?;
                kind
            }
        };
        if kind != o.kind {
            return Err(format!("object {} changed type while scanning", o.oid));
        }
        if o.kind != ObjectKind::Commit {
            others += 1;
        }
    }
    contents.finish()?;
    Ok(others)
}

/// Splits a raw commit or tag into its header and its message (after the
/// first empty line), each numbered from line 1.
#[derive(Debug)]
struct HeaderSplit {
    in_header: bool,
    prev_newline: bool,
}

impl Default for HeaderSplit {
    fn default() -> Self {
        Self {
            in_header: true,
            prev_newline: false,
        }
    }
}

impl HeaderSplit {
    fn feed(&mut self, piece: &[u8], ch: &mut Chunker<'_>, message: &Arc<Source>) {
        if self.in_header {
            for (i, &b) in piece.iter().enumerate() {
                if b == b'\n' && self.prev_newline {
                    ch.extend(&piece[..i]);
                    ch.end();
                    ch.begin(message, 1);
                    ch.extend(&piece[i + 1..]);
                    self.in_header = false;
                    return;
                }
                self.prev_newline = b == b'\n';
            }
        }
        ch.extend(piece);
    }
}

/// Longest name kept to skip names already scanned; longer ones are
/// streamed to the scanner every time.
const NAME_KEPT: usize = 4096;

/// Streams the entry names of a raw tree (`<mode> <name>\0<hash>`…), one
/// per line. A path already scanned in another new tree (another version
/// of the same directory) is skipped: its name is the same bytes.
#[derive(Debug)]
struct TreeNames<'a> {
    source: Arc<Source>,
    hash_len: usize,
    state: TreeState,
    entries: usize,
    /// The tree's own path, with a trailing `/` unless it is a root.
    dir: Vec<u8>,
    name: Vec<u8>,
    /// The current name is being streamed (too long to keep).
    streaming: bool,
    seen: &'a mut HashSet<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeState {
    Mode,
    Name,
    Hash(usize),
}

impl<'a> TreeNames<'a> {
    fn new(
        source: Arc<Source>,
        hash_len: usize,
        path: &[u8],
        seen: &'a mut HashSet<Vec<u8>>,
    ) -> Self {
        let mut dir = path.to_vec();
        if !dir.is_empty() {
            dir.push(b'/');
        }
        Self {
            source,
            hash_len,
            state: TreeState::Mode,
            entries: 0,
            dir,
            name: Vec::new(),
            streaming: false,
            seen,
        }
    }

    fn feed(&mut self, mut piece: &[u8], ch: &mut Chunker<'_>) {
        while !piece.is_empty() {
            match self.state {
                TreeState::Mode => match piece.iter().position(|&b| b == b' ') {
                    Some(p) => {
                        piece = &piece[p + 1..];
                        self.entries += 1;
                        self.name.clear();
                        self.streaming = false;
                        self.state = TreeState::Name;
                    }
                    None => piece = &[],
                },
                TreeState::Name => {
                    let (part, done) = match piece.iter().position(|&b| b == 0) {
                        Some(p) => (&piece[..p], true),
                        None => (piece, false),
                    };
                    piece = if done { &piece[part.len() + 1..] } else { &[] };
                    if !self.streaming && self.name.len() + part.len() > NAME_KEPT {
                        ch.begin(&self.source, self.entries);
                        ch.extend(&self.name);
                        self.streaming = true;
                    }
                    if self.streaming {
                        ch.extend(part);
                    } else {
                        self.name.extend_from_slice(part);
                    }
                    if done {
                        self.end_name(ch);
                        self.state = TreeState::Hash(self.hash_len);
                    }
                }
                TreeState::Hash(left) => {
                    let n = left.min(piece.len());
                    piece = &piece[n..];
                    self.state = if n == left {
                        TreeState::Mode
                    } else {
                        TreeState::Hash(left - n)
                    };
                }
            }
        }
    }

    fn end_name(&mut self, ch: &mut Chunker<'_>) {
        if self.streaming {
            ch.end();
            return;
        }
        let path = [self.dir.as_slice(), &self.name].concat();
        if self.seen.insert(path) {
            ch.begin(&self.source, self.entries);
            ch.extend(&self.name);
            ch.end();
        }
    }

    fn finish(&mut self, ch: &mut Chunker<'_>, oid: &str) -> Result<(), String> {
        match self.state {
            TreeState::Mode => Ok(()),
            TreeState::Name => {
                if self.streaming {
                    ch.end();
                }
                Err(format!("tree {oid} is malformed"))
            }
            TreeState::Hash(_) => Err(format!("tree {oid} is malformed")),
        }
    }
}

/// Scan the added lines of every commit's diff against its first parent.
/// Returns the blobs those diffs produced (their other lines came from the
/// parent, which is upstream or scanned too).
fn scan_diffs(
    git: &dyn GitRunner,
    scanner: &Scanner,
    ch: &mut Chunker<'_>,
    commits: &[&str],
) -> Result<HashSet<Vec<u8>>, String> {
    let mut covered = HashSet::new();
    if commits.is_empty() {
        return Ok(covered);
    }
    let mut child = git
        .command()
        .args([
            "-c",
            "core.quotePath=false",
            "log",
            "--no-walk=unsorted",
            "--stdin",
            "--root",
            "--diff-merges=first-parent",
            "-p",
            "--unified=0",
            "--full-index",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            "--text",
            "--format=format:%x01%H",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git log: {e}"))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("cannot talk to git log".into());
    };
    let list: String = commits.iter().map(|c| format!("{c}\n")).collect();
    let writer = objects::write_in_background(stdin, list.into_bytes());
    let stderr = objects::read_in_background(stderr);
    let mut file: Option<Arc<Source>> = None;
    let mut commit = String::new();
    let parsed = diff::parse(
        BufReader::with_capacity(objects::PIECE, stdout),
        &mut |event| {
            match event {
                diff::Event::Commit(c) => {
                    commit = String::from_utf8_lossy(c).into_owned();
                    file = None;
                }
                diff::Event::File(path) => {
                    file = Some(Arc::new(Source {
                        kind: ObjectKind::Commit,
                        oid: commit.clone(),
                        via: None,
                        what: What::File(redact_all(scanner, &diff::shown_path(path))),
                    }));
                }
                diff::Event::NewBlob(b) => {
                    covered.insert(b.to_vec());
                }
                diff::Event::AddedStart(line) => match &file {
                    Some(f) => ch.begin(f, line),
                    None => return Err("added line outside a file".into()),
                },
                diff::Event::Added(bytes) => ch.extend(bytes),
                diff::Event::AddedEnd => ch.end(),
            }
            Ok(())
        },
    );
    if parsed.is_err() {
        let _ = child.kill();
    }
    let _ = writer.join();
    let status = child.wait().map_err(|e| e.to_string())?;
    let err = stderr.join().unwrap_or_default();
    let seen = parsed?;
    if !status.success() {
        return Err(format!("git log failed: {}", err.trim()));
    }
    if seen != commits.len() {
        return Err(format!("diff covered {seen} of {} commits", commits.len()));
    }
    Ok(covered)
}

/// Scan in full every new blob no diff covered. Returns how many.
fn scan_blobs(
    git: &dyn GitRunner,
    scanner: &Scanner,
    ch: &mut Chunker<'_>,
    listed: &[Listed],
    covered: &HashSet<Vec<u8>>,
) -> Result<usize, String> {
    let list: Vec<&Listed> = listed
        .iter()
        .filter(|o| o.kind == ObjectKind::Blob && !covered.contains(o.oid.as_bytes()))
        .collect();
    if list.is_empty() {
        return Ok(0);
    }
    let oids: Vec<&str> = list.iter().map(|o| o.oid.as_str()).collect();
    let mut contents = Contents::spawn(git, &oids)?;
    for o in &list {
        let source = Arc::new(Source {
            kind: ObjectKind::Blob,
            oid: o.oid.clone(),
            via: o.via.clone(),
            what: What::File(redact_all(scanner, &o.path)),
        });
        ch.begin(&source, 1);
        let (kind, _) = contents.next(&o.oid, &mut |piece| ch.extend(piece))?;
        ch.end();
        if kind != ObjectKind::Blob {
            return Err(format!("object {} changed type while scanning", o.oid));
        }
    }
    contents.finish()?;
    Ok(list.len())
}
