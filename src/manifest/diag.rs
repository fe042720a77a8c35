//! Manifest problems and how they are shown: file, line, column, key path,
//! what is wrong and what to write instead.

use std::fmt;
use std::ops::Range;

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `bottles.demo.routes[0].token`.
    pub key_path: String,
    /// Byte range in the source, when known.
    pub span: Option<Range<usize>>,
    pub message: String,
    /// What to write instead.
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(
        key_path: String,
        span: Option<Range<usize>>,
        message: String,
        hint: Option<String>,
    ) -> Self {
        Self {
            key_path,
            span,
            message,
            hint,
        }
    }
}

/// Every problem of one manifest file, ready to print.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// Where the manifest came from (a path, or `<embedded default manifest>`).
    pub origin: String,
    pub problems: Vec<Problem>,
    /// 1-based (line, column) of each problem, computed from the source.
    positions: Vec<Option<(usize, usize)>>,
}

impl Diagnostics {
    pub fn new(origin: String, source: &str, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| p.span.as_ref().map_or(usize::MAX, |s| s.start));
        let positions = problems
            .iter()
            .map(|p| p.span.as_ref().map(|s| line_col(source, s.start)))
            .collect();
        Self {
            origin,
            problems,
            positions,
        }
    }

    /// (line, column) of the problem at `index`.
    pub fn position(&self, index: usize) -> Option<(usize, usize)> {
        self.positions.get(index).copied().flatten()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for (index, problem) in self.problems.iter().enumerate() {
            match self.position(index) {
                Some((line, col)) => write!(f, "  {}:{line}:{col}: ", self.origin)?,
                None => write!(f, "  {}: ", self.origin)?,
            }
            writeln!(f, "{}: {}", problem.key_path, problem.message)?;
            if let Some(hint) = &problem.hint {
                writeln!(f, "      fix: {hint}")?;
            }
        }
        write!(f, "Fix the manifest and run the command again.")
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 8), (2, 3));
    }
}
