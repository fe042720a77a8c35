//! Scan exactly the commits a push adds: added lines of each commit's diff
//! (against its first parent) and the raw commit object (message and
//! headers), plus annotated tag objects.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use crate::scanner::Scanner;

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

/// A secret found in a pushed commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFinding {
    pub commit: String,
    /// File path, or `(commit message)` / `(tag message)`.
    pub location: String,
    pub line: usize,
    pub rule_id: String,
    pub description: String,
    pub redacted: String,
}

impl std::fmt::Display for PushFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} line {} in commit {}: {} ({})",
            self.rule_id,
            self.location,
            self.line,
            self.commit.get(..12).unwrap_or(&self.commit),
            self.redacted,
            self.description
        )
    }
}

/// Statistics of one scan, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub commits: usize,
    pub bytes: u64,
}

/// Runs git against one repository (with the quarantine environment when
/// called from a pre-receive hook).
pub trait GitRunner {
    fn command(&self) -> Command;
}

/// Scan every commit the updates add. Returns all findings.
pub fn scan_updates(
    git: &dyn GitRunner,
    scanner: &Scanner,
    updates: &[RefUpdate],
) -> Result<(Vec<PushFinding>, ScanStats), String> {
    let mut findings = Vec::new();
    let mut stats = ScanStats::default();
    let mut commits: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for u in updates.iter().filter(|u| !u.is_delete()) {
        if object_type(git, &u.new)? == "tag" {
            let body = cat_file(git, "tag", &u.new)?;
            stats.bytes += body.len() as u64;
            findings.extend(scanner.scan(&body).into_iter().map(|f| PushFinding {
                commit: u.new.clone(),
                location: "(tag object)".into(),
                line: f.line,
                rule_id: f.rule_id,
                description: f.description,
                redacted: f.redacted,
            }));
        }
        let mut cmd = git.command();
        cmd.args(["rev-list", "--reverse"]);
        if u.is_create() {
            cmd.args([u.new.as_str(), "--not", "--all"]);
        } else {
            cmd.arg(format!("{}..{}", u.old, u.new));
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run git rev-list: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git rev-list failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        for c in String::from_utf8_lossy(&out.stdout).lines() {
            if is_oid(c) && seen.insert(c.to_string()) {
                commits.push(c.to_string());
            }
        }
    }
    if commits.is_empty() {
        return Ok((findings, stats));
    }
    stats.commits = commits.len();
    scan_commit_objects(git, scanner, &commits, &mut findings, &mut stats)?;
    scan_diffs(git, scanner, &commits, &mut findings, &mut stats)?;
    Ok((findings, stats))
}

fn object_type(git: &dyn GitRunner, oid: &str) -> Result<String, String> {
    let out = git
        .command()
        .args(["cat-file", "-t", oid])
        .output()
        .map_err(|e| format!("cannot run git cat-file: {e}"))?;
    if !out.status.success() {
        return Err(format!("object {oid} is missing"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cat_file(git: &dyn GitRunner, kind: &str, oid: &str) -> Result<Vec<u8>, String> {
    let out = git
        .command()
        .args(["cat-file", kind, oid])
        .output()
        .map_err(|e| format!("cannot run git cat-file: {e}"))?;
    if !out.status.success() {
        return Err(format!("object {oid} is missing"));
    }
    Ok(out.stdout)
}

/// Scan each raw commit object (headers + message), read with the
/// length-prefixed `cat-file --batch`, so no message content can confuse a parser.
fn scan_commit_objects(
    git: &dyn GitRunner,
    scanner: &Scanner,
    commits: &[String],
    findings: &mut Vec<PushFinding>,
    stats: &mut ScanStats,
) -> Result<(), String> {
    let mut child = git
        .command()
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run git cat-file: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let list: String = commits.iter().map(|c| format!("{c}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let mut reader = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    for commit in commits {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(|e| e.to_string())?;
        let mut parts = header.split_whitespace();
        let (Some(oid), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("cannot read commit {commit}"));
        };
        let size: usize = size
            .parse()
            .map_err(|_| format!("cannot read commit {commit}"))?;
        if oid != commit || kind != "commit" {
            return Err(format!("cannot read commit {commit}"));
        }
        let mut body = vec![0u8; size];
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        let mut nl = [0u8; 1];
        reader.read_exact(&mut nl).map_err(|e| e.to_string())?;
        stats.bytes += size as u64;
        // Line numbers count from the start of the message (after the headers).
        let header_lines = body.windows(2).position(|w| w == b"\n\n").map_or(0, |p| {
            body[..p + 1].iter().filter(|&&b| b == b'\n').count() + 1
        });
        findings.extend(scanner.scan(&body).into_iter().map(|f| PushFinding {
            commit: commit.clone(),
            location: if f.line > header_lines {
                "(commit message)".into()
            } else {
                "(commit header)".into()
            },
            line: f.line.saturating_sub(header_lines),
            rule_id: f.rule_id,
            description: f.description,
            redacted: f.redacted,
        }));
    }
    drop(reader);
    let _ = writer.join();
    let _ = child.wait();
    Ok(())
}

/// The added lines of one commit, with where each came from.
#[derive(Debug, Default)]
struct AddedLines {
    /// Position of the commit in the scan, to report findings in order.
    order: usize,
    commit: String,
    files: Vec<String>,
    buf: Vec<u8>,
    /// For each line of `buf`: (index into `files`, line number in the file).
    origin: Vec<(usize, usize)>,
}

impl AddedLines {
    /// Scan the collected lines; findings carry the file and line they came from.
    fn scan(&self, scanner: &Scanner) -> Vec<PushFinding> {
        if self.buf.is_empty() {
            return Vec::new();
        }
        scanner
            .scan(&self.buf)
            .into_iter()
            .map(|f| {
                let (location, line) = self
                    .origin
                    .get(f.line.saturating_sub(1))
                    .map_or(("?".to_string(), 0), |&(fi, l)| {
                        (self.files.get(fi).cloned().unwrap_or_default(), l)
                    });
                PushFinding {
                    commit: self.commit.clone(),
                    location,
                    line,
                    rule_id: f.rule_id,
                    description: f.description,
                    redacted: f.redacted,
                }
            })
            .collect()
    }
}

/// Hunk state while reading `-U0` diff output.
#[derive(Debug, Default)]
struct Hunk {
    old_left: usize,
    new_left: usize,
    next_new_line: usize,
}

/// Scan the added lines of every commit's diff against its first parent.
fn scan_diffs(
    git: &dyn GitRunner,
    scanner: &Scanner,
    commits: &[String],
    findings: &mut Vec<PushFinding>,
    stats: &mut ScanStats,
) -> Result<(), String> {
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
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let list: String = commits.iter().map(|c| format!("{c}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let reader = BufReader::with_capacity(1 << 16, child.stdout.take().ok_or("no stdout")?);

    // The scanner is the slow part: commits are scanned on worker threads
    // while this thread reads the diff.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let (tx, rx) = std::sync::mpsc::sync_channel::<AddedLines>(workers * 4);
    let rx = std::sync::Mutex::new(rx);
    let (parsed, mut found) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut found = Vec::new();
                    let mut bytes = 0u64;
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok(job) = job else { break };
                        bytes += job.buf.len() as u64;
                        found.extend(job.scan(scanner).into_iter().map(|f| (job.order, f)));
                    }
                    (found, bytes)
                })
            })
            .collect();
        let parsed = parse_diff(reader, &mut |job| tx.send(job).is_ok());
        drop(tx);
        let mut found = Vec::new();
        for h in handles {
            match h.join() {
                Ok((f, bytes)) => {
                    found.extend(f);
                    stats.bytes += bytes;
                }
                Err(_) => return (Err("scanner thread failed".to_string()), found),
            }
        }
        (parsed, found)
    });
    let seen_commits = parsed?;
    found.sort_by_key(|(order, _)| *order);
    findings.extend(found.into_iter().map(|(_, f)| f));
    let _ = writer.join();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("git log failed: {}", err.trim()));
    }
    if seen_commits != commits.len() {
        return Err(format!(
            "diff covered {seen_commits} of {} commits",
            commits.len()
        ));
    }
    Ok(())
}

/// Read `git log -p -U0 --format=%x01%H` output and hand each commit's added
/// lines to `emit` (which returns false to stop). Returns the commit count.
fn parse_diff(
    mut reader: impl BufRead,
    emit: &mut dyn FnMut(AddedLines) -> bool,
) -> Result<usize, String> {
    let mut current = AddedLines::default();
    let mut hunk: Option<Hunk> = None;
    let mut file_idx: Option<usize> = None;
    let mut seen_commits = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some(h) = hunk.as_mut() {
            match text.split_first() {
                Some((b'+', added)) => {
                    if let Some(fi) = file_idx {
                        current.buf.extend_from_slice(added);
                        current.buf.push(b'\n');
                        current.origin.push((fi, h.next_new_line));
                    }
                    h.next_new_line += 1;
                    h.new_left = h.new_left.saturating_sub(1);
                }
                Some((b'-', _)) => h.old_left = h.old_left.saturating_sub(1),
                Some((b'\\', _)) => {}
                _ => return Err("unexpected line inside a diff hunk".into()),
            }
            if h.old_left == 0 && h.new_left == 0 {
                hunk = None;
            }
            continue;
        }
        if let Some(oid) = text.strip_prefix(b"\x01") {
            let next = AddedLines {
                order: seen_commits,
                commit: String::from_utf8_lossy(oid).into_owned(),
                ..AddedLines::default()
            };
            let done = std::mem::replace(&mut current, next);
            if seen_commits > 0 && !emit(done) {
                return Err("scanner stopped".into());
            }
            file_idx = None;
            seen_commits += 1;
        } else if text.starts_with(b"diff --git ") {
            file_idx = None;
        } else if let Some(path) = text.strip_prefix(b"+++ ") {
            if path == b"/dev/null" {
                file_idx = None;
            } else {
                let path = String::from_utf8_lossy(path);
                let path = path.trim_matches('"');
                let path = path.strip_prefix("b/").unwrap_or(path);
                current.files.push(path.to_string());
                file_idx = Some(current.files.len() - 1);
            }
        } else if text.starts_with(b"@@ ") {
            let h = parse_hunk_header(text).ok_or("malformed diff hunk header")?;
            if h.old_left > 0 || h.new_left > 0 {
                hunk = Some(h);
            }
        }
    }
    if seen_commits > 0 && !emit(current) {
        return Err("scanner stopped".into());
    }
    Ok(seen_commits)
}

/// `@@ -a[,b] +c[,d] @@…` → counts of old and new lines and the first new line.
fn parse_hunk_header(line: &[u8]) -> Option<Hunk> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    let _ = parts.next()?;
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let range = |r: &str| -> Option<(usize, usize)> {
        match r.split_once(',') {
            Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (_, old_count) = range(old)?;
    let (new_start, new_count) = range(new)?;
    Some(Hunk {
        old_left: old_count,
        new_left: new_count,
        next_new_line: new_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn updates_parse_and_classify() {
        let u = parse_updates(&format!(
            "{Z} {A} refs/heads/new\n{A} {Z} refs/heads/gone\n"
        ))
        .unwrap();
        assert!(u[0].is_create() && !u[0].is_delete());
        assert!(u[1].is_delete());
    }

    #[test]
    fn malformed_update_lines_are_refused() {
        for bad in [
            "x y z",
            &format!("{A} {A}"),
            &format!("{A} {A} HEAD"),
            &format!("{A} {A} refs/a b"),
        ] {
            assert!(parse_updates(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hunk_header_without_counts_means_one_line() {
        let h = parse_hunk_header(b"@@ -3 +4 @@ fn x()").unwrap();
        assert_eq!((h.old_left, h.new_left, h.next_new_line), (1, 1, 4));
        let h = parse_hunk_header(b"@@ -0,0 +1,3 @@").unwrap();
        assert_eq!((h.old_left, h.new_left, h.next_new_line), (0, 3, 1));
        assert!(parse_hunk_header(b"@@ garbage").is_none());
    }

    const AWS_KEY: &str = "AKIAZ7VRSQ5TJ2NXKQ4P";

    /// A work repo; `GitRunner` over its `.git`.
    struct Repo(tempfile::TempDir);

    impl GitRunner for Repo {
        fn command(&self) -> Command {
            let mut c = crate::gitgate::mirror::git(&self.0.path().join(".git"));
            c.current_dir(self.0.path())
                .env("GIT_WORK_TREE", self.0.path())
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t");
            c
        }
    }

    impl Repo {
        fn new() -> Self {
            let r = Repo(tempfile::tempdir().unwrap());
            let ok = crate::gitgate::mirror::git_plain()
                .args(["init", "-q", "--initial-branch", "main"])
                .arg(r.0.path())
                .status()
                .unwrap();
            assert!(ok.success());
            r
        }
        fn git(&self, args: &[&str]) -> String {
            let out = self.command().args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }
        fn commit(&self, file: &str, content: &[u8], msg: &str) -> String {
            std::fs::write(self.0.path().join(file), content).unwrap();
            self.git(&["add", file]);
            self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
            self.git(&["rev-parse", "HEAD"])
        }
    }

    fn scan_range(repo: &Repo, old: &str, new: &str) -> Vec<PushFinding> {
        let u = RefUpdate {
            old: old.into(),
            new: new.into(),
            name: "refs/heads/main".into(),
        };
        let scanner = Scanner::builtin().unwrap();
        scan_updates(repo, &scanner, &[u]).unwrap().0
    }

    #[test]
    fn added_lines_that_look_like_diff_headers_are_still_scanned() {
        let repo = Repo::new();
        let base = repo.commit("a.txt", b"x\n", "base");
        let content = format!("++ b/fake\n+++ b/other\n\x01deadbeef\n@@ -1 +1 @@\nkey={AWS_KEY}\n");
        let tip = repo.commit("a.txt", content.as_bytes(), "tricky");
        let f = scan_range(&repo, &base, &tip);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].location.as_str(), f[0].line, f[0].commit.as_str()),
            ("a.txt", 5, tip.as_str())
        );
    }

    #[test]
    fn secret_in_binary_file_is_found() {
        let repo = Repo::new();
        let base = repo.commit("a.txt", b"x\n", "base");
        let mut blob = vec![0u8, 1, 2, 255, b'\n'];
        blob.extend_from_slice(format!("{AWS_KEY}\n").as_bytes());
        let tip = repo.commit("blob.bin", &blob, "binary");
        let f = scan_range(&repo, &base, &tip);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].location, "blob.bin");
    }

    #[test]
    fn lines_only_removed_are_not_findings() {
        let repo = Repo::new();
        let base = repo.commit("a.txt", format!("{AWS_KEY}\n").as_bytes(), "old secret");
        let tip = repo.commit("a.txt", b"clean\n", "remove it");
        assert!(scan_range(&repo, &base, &tip).is_empty());
    }

    #[test]
    fn merge_commit_is_scanned_against_its_first_parent() {
        let repo = Repo::new();
        let base = repo.commit("a.txt", b"a\n", "base");
        repo.git(&["checkout", "-q", "-b", "side"]);
        repo.commit("s.txt", format!("{AWS_KEY}\n").as_bytes(), "side");
        repo.git(&["checkout", "-q", "main"]);
        repo.commit("m.txt", b"m\n", "main");
        repo.git(&["merge", "-q", "--no-edit", "side"]);
        let tip = repo.git(&["rev-parse", "HEAD"]);
        let f = scan_range(&repo, &base, &tip);
        // Found in the side commit and again in the merge's first-parent diff.
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|x| x.location == "s.txt"));
    }

    #[test]
    fn finding_display_names_rule_file_line_and_commit() {
        let f = PushFinding {
            commit: "abcdef0123456789".into(),
            location: "src/x.rs".into(),
            line: 7,
            rule_id: "aws-access-token".into(),
            description: "AWS".into(),
            redacted: "AKIA****".into(),
        };
        assert_eq!(
            f.to_string(),
            "aws-access-token: src/x.rs line 7 in commit abcdef012345: AKIA**** (AWS)"
        );
    }
}
