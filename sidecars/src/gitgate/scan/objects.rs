//! Reading the push's objects with git: which objects are new
//! (`rev-list --objects`), what a ref points at (peeled), and their bytes
//! (`cat-file --batch`, streamed).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::thread::JoinHandle;

use super::finding::{ObjectKind, Via};
use super::GitRunner;

/// Bytes handed to a callback at a time.
pub(super) const PIECE: usize = 64 << 10;

/// Most stderr kept from a git command for an error message.
const STDERR_KEPT: u64 = 16 << 10;

/// One object the push brings.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub kind: ObjectKind,
    pub oid: String,
    pub size: u64,
    /// Path rev-list reached it at ("" for a commit, a root tree or a tip).
    pub path: Vec<u8>,
    pub via: Option<Via>,
}

/// `git rev-list --objects <extra> <tips> --not --all <negatives>`, each
/// object typed and sized by `cat-file --batch-check`.
pub(super) fn list(
    git: &dyn GitRunner,
    extra: &[&str],
    tips: &[String],
    negatives: &[String],
) -> Result<Vec<Listed>, String> {
    let mut rev_list = git
        .command()
        .args(["rev-list", "--objects"])
        .args(extra)
        .args(["--stdin", "--not", "--all"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git rev-list: {e}"))?;
    let (Some(rl_in), Some(rl_out), Some(rl_err)) = (
        rev_list.stdin.take(),
        rev_list.stdout.take(),
        rev_list.stderr.take(),
    ) else {
        let _ = rev_list.kill();
        return Err("cannot talk to git rev-list".into());
    };
    let check = git
        .command()
        .args([
            "cat-file",
            "--batch-check=%(objecttype) %(objectname) %(objectsize) %(rest)",
        ])
        .stdin(Stdio::from(rl_out))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut check = match check {
        Ok(c) => c,
        Err(e) => {
            let _ = rev_list.kill();
            let _ = rev_list.wait();
            return Err(format!("cannot run git cat-file: {e}"));
        }
    };
    let input: String = tips
        .iter()
        .map(|t| format!("{t}\n"))
        .chain(negatives.iter().map(|n| format!("^{n}\n")))
        .collect();
    let writer = write_in_background(rl_in, input.into_bytes());
    let rl_err = read_in_background(rl_err);
    let check_err = check.stderr.take().map(read_in_background);

    let mut out = Vec::new();
    let mut parse_error = None;
    if let Some(stdout) = check.stdout.take() {
        for line in BufReader::new(stdout).split(b'\n') {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    parse_error = Some(format!("cannot read git cat-file: {e}"));
                    let _ = rev_list.kill();
                    let _ = check.kill();
                    break;
                }
            };
            match parse_listed(&line) {
                Some(l) => out.push(l),
                None => {
                    parse_error.get_or_insert_with(|| {
                        format!(
                            "unexpected object listing `{}`",
                            String::from_utf8_lossy(&line).escape_debug()
                        )
                    });
                }
            }
        }
    }
    let _ = writer.join();
    let rl_status = rev_list.wait().map_err(|e| e.to_string())?;
    let check_status = check.wait().map_err(|e| e.to_string())?;
    let rl_err = rl_err.join().unwrap_or_default();
    if !rl_status.success() {
        return Err(format!("git rev-list failed: {}", rl_err.trim()));
    }
    if !check_status.success() {
        let err = check_err.and_then(|h| h.join().ok()).unwrap_or_default();
        return Err(format!("git cat-file failed: {}", err.trim()));
    }
    match parse_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// `<type> <oid> <size> <rest>`; `None` for anything else (`<oid> missing`).
fn parse_listed(line: &[u8]) -> Option<Listed> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let kind = ObjectKind::parse(parts.next()?)?;
    let oid = std::str::from_utf8(parts.next()?).ok()?;
    let size = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    if !super::is_oid(oid) {
        return None;
    }
    Some(Listed {
        kind,
        oid: oid.to_string(),
        size,
        path: parts.next().unwrap_or_default().to_vec(),
        via: None,
    })
}

/// What one object id is and what it peels to through annotated tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeled {
    pub kind: ObjectKind,
    /// The object at the end of the tag chain (the object itself if not a tag).
    pub target: String,
    pub target_kind: ObjectKind,
}

/// Type and peeled target of each of `oids`; a missing object is an error.
pub(super) fn peel(git: &dyn GitRunner, oids: &[&str]) -> Result<Vec<Peeled>, String> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let mut child = git
        .command()
        .args(["cat-file", "--batch-check=%(objecttype) %(objectname)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run git cat-file: {e}"))?;
    let input: String = oids.iter().map(|o| format!("{o}\n{o}^{{}}\n")).collect();
    let writer = child
        .stdin
        .take()
        .map(|stdin| write_in_background(stdin, input.into_bytes()));
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read git cat-file: {e}"))?;
    }
    if let Some(w) = writer {
        let _ = w.join();
    }
    let _ = child.wait();
    let mut lines = text.lines();
    let mut out = Vec::with_capacity(oids.len());
    for oid in oids {
        let (Some(own), Some(peeled)) = (lines.next(), lines.next()) else {
            return Err(format!("cannot read object {oid}"));
        };
        let kind = |line: &str| -> Option<(ObjectKind, String)> {
            let (kind, id) = line.split_once(' ')?;
            let kind = ObjectKind::parse(kind.as_bytes())?;
            super::is_oid(id).then(|| (kind, id.to_string()))
        };
        let (Some((own_kind, _)), Some((target_kind, target))) = (kind(own), kind(peeled)) else {
            return Err(format!("object {oid} is missing"));
        };
        out.push(Peeled {
            kind: own_kind,
            target,
            target_kind,
        });
    }
    Ok(out)
}

/// Objects read one after another from `git cat-file --batch`, their bytes
/// streamed in pieces of at most [`PIECE`].
#[derive(Debug)]
pub(super) struct Contents {
    child: Child,
    reader: BufReader<ChildStdout>,
    writer: Option<JoinHandle<()>>,
}

impl Contents {
    /// Start reading `oids`, in this order.
    pub fn spawn(git: &dyn GitRunner, oids: &[&str]) -> Result<Self, String> {
        let mut child = git
            .command()
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run git cat-file: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("cannot talk to git cat-file".into());
        };
        let input: String = oids.iter().map(|o| format!("{o}\n")).collect();
        Ok(Self {
            child,
            reader: BufReader::with_capacity(PIECE, stdout),
            writer: Some(write_in_background(stdin, input.into_bytes())),
        })
    }

    /// Read the next object, which must be `oid`, handing its bytes to
    /// `each`. Returns its kind and size.
    pub fn next(
        &mut self,
        oid: &str,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(ObjectKind, u64), String> {
        let cannot = || format!("cannot read object {oid}");
        let mut header = Vec::new();
        (&mut self.reader)
            .take(256)
            .read_until(b'\n', &mut header)
            .map_err(|_| cannot())?;
        let header = header.strip_suffix(b"\n").ok_or_else(cannot)?;
        let mut parts = header.split(|&b| b == b' ');
        let (Some(id), Some(kind), Some(size), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(cannot());
        };
        let kind = ObjectKind::parse(kind).ok_or_else(cannot)?;
        let size: u64 = std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(cannot)?;
        if id != oid.as_bytes() {
            return Err(cannot());
        }
        let mut left = size;
        while left > 0 {
            let buf = self.reader.fill_buf().map_err(|_| cannot())?;
            if buf.is_empty() {
                return Err(cannot());
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            each(&buf[..n]);
            self.reader.consume(n);
            left -= n as u64;
        }
        let mut nl = [0u8; 1];
        self.reader.read_exact(&mut nl).map_err(|_| cannot())?;
        if nl != *b"\n" {
            return Err(cannot());
        }
        Ok((kind, size))
    }

    /// Wait for git after the last object.
    pub fn finish(mut self) -> Result<(), String> {
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("git cat-file exited with {status}"))
        }
    }
}

impl Drop for Contents {
    fn drop(&mut self) {
        // Only still running when reading stopped early.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Write `data` to `to` from a thread (git reads its input while we read
/// its output), then close it.
pub(super) fn write_in_background(
    mut to: impl Write + Send + 'static,
    data: Vec<u8>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = to.write_all(&data);
    })
}

/// Read (at most [`STDERR_KEPT`] bytes of) `from` in a thread.
pub(super) fn read_in_background(from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut from = from;
        let _ = (&mut from).take(STDERR_KEPT).read_to_end(&mut kept);
        // Drain the rest so git never blocks on a full pipe.
        let _ = std::io::copy(&mut from, &mut std::io::sink());
        String::from_utf8_lossy(&kept).into_owned()
    })
}
