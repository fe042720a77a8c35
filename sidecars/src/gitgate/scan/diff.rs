//! Reading `git log -p -U0` output as a stream of events: which commit,
//! which file, which blob a file became, and the added lines (in pieces, so
//! one long line never has to fit in memory).

use std::io::BufRead;

use super::objects::PIECE;

/// One thing read from the diff.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// A new commit's diff starts (its full id).
    Commit(&'a [u8]),
    /// A file's diff starts: the new path as git printed it after `+++ `
    /// (maybe C-quoted, with its `b/` prefix).
    File(&'a [u8]),
    /// The blob the file became (from `index <old>..<new>`).
    NewBlob(&'a [u8]),
    /// An added line starts, at this line number of the new file.
    AddedStart(usize),
    /// Bytes of the added line (without the leading `+` and the newline).
    Added(&'a [u8]),
    /// The added line ends.
    AddedEnd,
}

/// Hunk state while reading `-U0` diff output.
#[derive(Debug, Default)]
struct Hunk {
    old_left: usize,
    new_left: usize,
    next_new_line: usize,
}

/// What the line being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Removed,
    Other,
}

/// Reads a stream as pieces of lines of at most `max` bytes.
#[derive(Debug)]
struct Pieces<R> {
    reader: R,
    at_line_start: bool,
}

impl<R: BufRead> Pieces<R> {
    /// The next piece into `out` (without its newline): `(starts a line,
    /// ends a line)`, or `None` at the end of the stream.
    fn next(&mut self, out: &mut Vec<u8>, max: usize) -> std::io::Result<Option<(bool, bool)>> {
        out.clear();
        let start = self.at_line_start;
        loop {
            let avail = self.reader.fill_buf()?;
            if avail.is_empty() {
                if start && out.is_empty() {
                    return Ok(None);
                }
                self.at_line_start = true;
                return Ok(Some((start, true)));
            }
            let room = max - out.len();
            let window = &avail[..avail.len().min(room)];
            if let Some(p) = window.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&window[..p]);
                self.reader.consume(p + 1);
                self.at_line_start = true;
                return Ok(Some((start, true)));
            }
            let n = window.len();
            out.extend_from_slice(window);
            self.reader.consume(n);
            if out.len() == max {
                self.at_line_start = false;
                return Ok(Some((start, false)));
            }
        }
    }
}

/// Parse `git log -p -U0 --full-index --format=%x01%H` output, handing
/// events to `emit`. Returns the number of commits seen.
pub(super) fn parse(
    reader: impl BufRead,
    emit: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
) -> Result<usize, String> {
    let mut pieces = Pieces {
        reader,
        at_line_start: true,
    };
    let mut piece = Vec::with_capacity(PIECE);
    let mut hunk: Option<Hunk> = None;
    let mut file_open = false;
    let mut kind = Kind::Other;
    let mut commits = 0usize;
    while let Some((start, end)) = pieces.next(&mut piece, PIECE).map_err(|e| e.to_string())? {
        if start {
            kind = Kind::Other;
            if let Some(h) = hunk.as_mut() {
                match piece.split_first() {
                    Some((b'+', added)) => {
                        kind = Kind::Added;
                        if file_open {
                            emit(Event::AddedStart(h.next_new_line))?;
                            emit(Event::Added(added))?;
                        }
                    }
                    Some((b'-', _)) => kind = Kind::Removed,
                    Some((b'\\', _)) => {}
                    _ => return Err("unexpected line inside a diff hunk".into()),
                }
            } else if let Some(oid) = piece.strip_prefix(b"\x01") {
                emit(Event::Commit(oid))?;
                file_open = false;
                commits += 1;
            } else if piece.starts_with(b"diff --git ") {
                file_open = false;
            } else if let Some(rest) = piece.strip_prefix(b"index ") {
                let range = rest.split(|&b| b == b' ').next().unwrap_or_default();
                if let Some(pos) = range.windows(2).position(|w| w == b"..") {
                    let new = &range[pos + 2..];
                    if !new.is_empty() && new.iter().any(|&b| b != b'0') {
                        emit(Event::NewBlob(new))?;
                    }
                }
            } else if let Some(path) = piece.strip_prefix(b"+++ ") {
                file_open = path != b"/dev/null";
                if file_open {
                    emit(Event::File(path))?;
                }
            } else if piece.starts_with(b"@@ ") {
                let h = parse_hunk_header(&piece).ok_or("malformed diff hunk header")?;
                if h.old_left > 0 || h.new_left > 0 {
                    hunk = Some(h);
                }
            }
        } else if kind == Kind::Added && file_open {
            emit(Event::Added(&piece))?;
        }
        if end {
            let Some(h) = hunk.as_mut() else { continue };
            match kind {
                Kind::Added => {
                    if file_open {
                        emit(Event::AddedEnd)?;
                    }
                    h.next_new_line += 1;
                    h.new_left = h.new_left.saturating_sub(1);
                }
                Kind::Removed => h.old_left = h.old_left.saturating_sub(1),
                Kind::Other => {}
            }
            if h.old_left == 0 && h.new_left == 0 {
                hunk = None;
            }
        }
    }
    Ok(commits)
}

/// `@@ -a[,b] +c[,d] @@…` → counts of old and new lines and the first new line.
fn parse_hunk_header(line: &[u8]) -> Option<Hunk> {
    let text = std::str::from_utf8(line.get(..line.len().min(256))?).ok()?;
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

/// A `+++ ` path as shown to the pusher: git's quoting kept, `b/` dropped.
pub(super) fn shown_path(raw: &[u8]) -> Vec<u8> {
    match raw.strip_prefix(b"\"") {
        Some(inner) => {
            let inner = inner.strip_prefix(b"b/").unwrap_or(inner);
            [b"\"".as_slice(), inner].concat()
        }
        None => raw.strip_prefix(b"b/").unwrap_or(raw).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events as owned values, pieces of one added line joined.
    fn events(input: &[u8]) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let n = parse(input, &mut |e| {
            let item = match e {
                Event::Commit(c) => format!("commit {}", String::from_utf8_lossy(c)),
                Event::File(p) => format!("file {}", String::from_utf8_lossy(p)),
                Event::NewBlob(b) => format!("blob {}", String::from_utf8_lossy(b)),
                Event::AddedStart(l) => format!("+{l}:"),
                Event::Added(b) => {
                    let last = out.pop().unwrap_or_default();
                    format!("{last}{}", String::from_utf8_lossy(b))
                }
                Event::AddedEnd => return Ok(()),
            };
            out.push(item);
            Ok(())
        })
        .unwrap();
        (out, n)
    }

    #[test]
    fn added_lines_files_and_blobs_are_reported() {
        let diff = b"\x01c1\n\ndiff --git a/a.txt b/a.txt\nindex 1111..2222 100644\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1,2 @@\n-old\n+new\n+++ b/not-a-header\n\x01c2\ndiff --git a/x b/x\ndeleted file mode 100644\nindex 3333..0000\n--- a/x\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n";
        let (ev, n) = events(diff);
        assert_eq!(n, 2);
        assert_eq!(
            ev,
            vec![
                "commit c1",
                "blob 2222",
                "file b/a.txt",
                "+1:new",
                "+2:++ b/not-a-header",
                "commit c2",
            ]
        );
    }

    #[test]
    fn a_line_longer_than_a_piece_arrives_in_pieces() {
        let long = "y".repeat(3 * PIECE + 5);
        let diff = format!("\x01c\ndiff --git a/f b/f\n+++ b/f\n@@ -0,0 +7 @@\n+{long}\n");
        let mut pieces = 0;
        let mut total = 0;
        parse(diff.as_bytes(), &mut |e| {
            if let Event::Added(b) = e {
                pieces += 1;
                total += b.len();
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(total, long.len());
        assert!(pieces >= 4);
    }

    #[test]
    fn hunk_header_without_counts_means_one_line() {
        let h = parse_hunk_header(b"@@ -3 +4 @@ fn x()").unwrap();
        assert_eq!((h.old_left, h.new_left, h.next_new_line), (1, 1, 4));
        let h = parse_hunk_header(b"@@ -0,0 +1,3 @@").unwrap();
        assert_eq!((h.old_left, h.new_left, h.next_new_line), (0, 3, 1));
        assert!(parse_hunk_header(b"@@ garbage").is_none());
    }

    #[test]
    fn shown_paths_keep_quoting_and_drop_the_prefix() {
        assert_eq!(shown_path(b"b/src/x.rs"), b"src/x.rs");
        assert_eq!(shown_path(b"\"b/a\\tb\""), b"\"a\\tb\"");
    }
}
