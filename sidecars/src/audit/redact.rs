//! Secrets out of what the log records of a URL (host, path, query): the
//! log must never become the place a blocked secret ends up.

use crate::scanner::Scanner;
use std::borrow::Cow;

/// `text` with every secret the scanner finds replaced by
/// `[redacted:<rule>]`: in the raw text, then component by component
/// (split at `/ & ; = ?`) percent-decoded, so `%41KIA…` is caught too. If a
/// secret still shows (one spanning components in decoded form), the whole
/// text is replaced.
pub fn redact_url_part<'a>(scanner: &Scanner, text: &'a str) -> Cow<'a, str> {
    if text.is_empty() || is_clean(scanner, text) {
        return Cow::Borrowed(text);
    }
    let mut out = redact_raw(scanner, text);
    out = out
        .split_inclusive(is_separator)
        .map(|piece| {
            let (body, sep) = match piece.char_indices().last() {
                Some((i, c)) if is_separator(c) => (&piece[..i], &piece[i..]),
                _ => (piece, ""),
            };
            match first_rule(scanner, &percent_decode(body)) {
                Some(rule) => format!("[redacted:{rule}]{sep}"),
                None => piece.to_string(),
            }
        })
        .collect();
    if finds(scanner, out.as_bytes()) || finds_decoded(scanner, &out) {
        let rule = first_rule(scanner, out.as_bytes())
            .or_else(|| first_rule(scanner, &percent_decode(&out)))
            .unwrap_or_default();
        return Cow::Owned(format!("[redacted:{rule}]"));
    }
    Cow::Owned(out)
}

/// Whether the scanner finds nothing in `text`, raw or percent-decoded (one
/// check over several fields joined by `\n` saves scanning each).
pub fn is_clean(scanner: &Scanner, text: &str) -> bool {
    !finds(scanner, text.as_bytes()) && !finds_decoded(scanner, text)
}

fn is_separator(c: char) -> bool {
    matches!(c, '/' | '&' | ';' | '=' | '?')
}

fn finds(scanner: &Scanner, data: &[u8]) -> bool {
    !scanner.scan(data).is_empty()
}

fn finds_decoded(scanner: &Scanner, text: &str) -> bool {
    let decoded = percent_decode(text);
    decoded != text.as_bytes() && finds(scanner, &decoded)
}

fn first_rule(scanner: &Scanner, data: &[u8]) -> Option<String> {
    scanner.scan(data).into_iter().next().map(|f| f.rule_id)
}

/// Replace the byte ranges the scanner finds in `text`.
fn redact_raw(scanner: &Scanner, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in scanner.scan(text.as_bytes()) {
        if f.start < at || !text.is_char_boundary(f.start) || !text.is_char_boundary(f.end) {
            continue;
        }
        out.push_str(&text[at..f.start]);
        out.push_str(&format!("[redacted:{}]", f.rule_id));
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

fn percent_decode(text: &str) -> Vec<u8> {
    crate::proxy::dlp::percent_decode(text.as_bytes(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS: &str = "AKIAFAKEAU4PCZL6HT4D";

    fn scanner() -> Scanner {
        Scanner::builtin().unwrap()
    }

    #[test]
    fn secrets_in_a_query_are_redacted_and_the_rest_kept() {
        let s = scanner();
        let q = format!("a=1&key={AWS}&b=two");
        let out = redact_url_part(&s, &q);
        assert_eq!(out, "a=1&key=[redacted:aws-access-key-id]&b=two");
        assert_eq!(redact_url_part(&s, "a=1&b=2"), "a=1&b=2");
    }

    #[test]
    fn percent_encoded_secrets_are_redacted() {
        let s = scanner();
        let encoded: String = AWS.bytes().map(|b| format!("%{b:02X}")).collect();
        let query = format!("x=1&k={encoded}");
        let out = redact_url_part(&s, &query);
        assert!(!out.contains(&encoded), "{out}");
        assert!(out.starts_with("x=1&k=[redacted:"), "{out}");
    }

    #[test]
    fn literal_secrets_in_a_path_are_redacted() {
        let s = scanner().with_literal_secrets(vec![(
            "api".into(),
            b"literal-route-token-0123456789".to_vec(),
        )]);
        let out = redact_url_part(&s, "/v1/literal-route-token-0123456789/x");
        assert_eq!(out, "/v1/[redacted:route-token:api]/x");
    }
}
