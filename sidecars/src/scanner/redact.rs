//! Turning a secret into something safe to log.

/// Characters shown at most; short secrets show fewer (a quarter of them).
const SHOWN: usize = 4;

/// The first few characters of `secret` followed by `…`; never the whole
/// secret. Invalid UTF-8 is shown as U+FFFD.
pub(crate) fn redact(secret: &[u8]) -> String {
    // Only the head is ever shown; long secrets need no full decoding.
    let head = &secret[..secret.len().min(64)];
    let text = String::from_utf8_lossy(head);
    let chars = if head.len() < secret.len() {
        usize::MAX
    } else {
        text.chars().count()
    };
    let shown = SHOWN.min(chars / 4);
    let mut out: String = text.chars().take(shown).collect();
    out.push('…');
    out
}

/// Incremental 1-based line numbers for increasing offsets.
#[derive(Debug, Default)]
pub(crate) struct LineCounter {
    pos: usize,
    line: usize,
}

impl LineCounter {
    /// Line of `offset`; offsets must not decrease between calls.
    pub(crate) fn line_at(&mut self, data: &[u8], offset: usize) -> usize {
        let offset = offset.min(data.len());
        if offset < self.pos {
            self.pos = 0;
            self.line = 0;
        }
        self.line += data[self.pos..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.pos = offset;
        self.line + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_secrets_show_their_first_four_characters() {
        assert_eq!(redact(b"ghp_abcdefghijklmnop"), "ghp_…");
    }

    #[test]
    fn short_secrets_show_at_most_a_quarter() {
        assert_eq!(redact(b"hunter22"), "hu…");
        assert_eq!(redact(b"abc"), "…");
    }

    #[test]
    fn huge_secrets_show_only_their_head() {
        assert_eq!(redact(&b"eyJ".repeat(1_000_000)), "eyJe…");
    }

    #[test]
    fn invalid_utf8_does_not_panic() {
        assert_eq!(redact(&[0xff; 20]), "\u{fffd}\u{fffd}\u{fffd}\u{fffd}…");
    }

    #[test]
    fn line_numbers_are_one_based_and_incremental() {
        let data = b"a\nb\nc";
        let mut lc = LineCounter::default();
        assert_eq!(lc.line_at(data, 0), 1);
        assert_eq!(lc.line_at(data, 2), 2);
        assert_eq!(lc.line_at(data, 4), 3);
        assert_eq!(lc.line_at(data, 1), 1);
    }
}
