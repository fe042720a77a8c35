//! Secrets out of the string values of a JSON document: every string
//! literal (keys too) is decoded, handed to a finder, and where the finder
//! reports secrets the literal is re-encoded with each one replaced by
//! [`marker`]. Every other byte of the document is kept as it was (key order,
//! numbers, white space), so the result is valid JSON whenever the input was.
//! Secrets written with escapes (`\u0041KIA…`, `\/`) are found because the
//! finder sees the decoded text.

use std::collections::BTreeMap;
use std::ops::Range;

/// What replaces a secret found by rule `rule`.
pub fn marker(rule: &str) -> String {
    format!("[secret redacted by bottle: {rule}]")
}

/// A secret in a decoded string: byte range and the rule that found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub rule: String,
}

/// A rewritten document and how many secrets of each rule it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub body: Vec<u8>,
    /// Rule id → number of secrets replaced (empty: nothing was found).
    pub counts: BTreeMap<String, u64>,
}

/// Why a body was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError<B> {
    /// The body is not one JSON document (or holds a string that does not
    /// decode, such as a lone surrogate escape).
    #[error("the body is not JSON ({0})")]
    NotJson(String),
    /// The finder refused a string outright.
    #[error("a string value cannot be redacted")]
    Refused(B),
}

/// Rewrite `body`, asking `find` about each decoded string (and the byte
/// range of its literal, quotes included, in `body`).
pub fn redact<B>(
    body: &[u8],
    mut find: impl FnMut(&str, Range<usize>) -> Result<Vec<Span>, B>,
) -> Result<Redacted, RedactError<B>> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| RedactError::NotJson(e.to_string()))?;
    let mut out = Vec::new();
    let mut counts = BTreeMap::new();
    let mut copied = 0;
    let mut i = 0;
    // The document is valid JSON: outside strings a `"` opens one, inside
    // one a `\` escapes the next byte and a `"` closes it.
    while i < body.len() {
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < body.len() && body[i] != b'"' {
            i += if body[i] == b'\\' { 2 } else { 1 };
        }
        i += 1;
        let end = i.min(body.len());
        let literal = &body[start..end];
        let text: String =
            serde_json::from_slice(literal).map_err(|e| RedactError::NotJson(e.to_string()))?;
        let spans = find(&text, start..end).map_err(RedactError::Refused)?;
        if spans.is_empty() {
            continue;
        }
        let replaced = replace(&text, spans, &mut counts);
        let encoded =
            serde_json::to_string(&replaced).map_err(|e| RedactError::NotJson(e.to_string()))?;
        if out.is_empty() {
            out.reserve(body.len());
        }
        out.extend_from_slice(&body[copied..start]);
        out.extend_from_slice(encoded.as_bytes());
        copied = end;
    }
    if copied == 0 {
        return Ok(Redacted {
            body: body.to_vec(),
            counts,
        });
    }
    out.extend_from_slice(&body[copied..]);
    Ok(Redacted { body: out, counts })
}

/// `text` with each span (widened to whole characters, overlapping ones
/// merged under the first one's rule) replaced by its marker.
fn replace(text: &str, mut spans: Vec<Span>, counts: &mut BTreeMap<String, u64>) -> String {
    spans.sort_by_key(|s| (s.start, s.end));
    let mut out = String::with_capacity(text.len());
    let mut kept = 0;
    let mut current: Option<Span> = None;
    let flush = |span: Span, out: &mut String, kept: &mut usize| {
        out.push_str(text.get(*kept..span.start).unwrap_or_default());
        out.push_str(&marker(&span.rule));
        *kept = span.end;
    };
    for mut span in spans {
        *counts.entry(span.rule.clone()).or_insert(0) += 1;
        span.end = span.end.min(text.len());
        span.start = span.start.min(span.end);
        while !text.is_char_boundary(span.start) {
            span.start -= 1;
        }
        while !text.is_char_boundary(span.end) {
            span.end += 1;
        }
        current = match current.take() {
            Some(mut cur) if span.start < cur.end => {
                cur.end = cur.end.max(span.end);
                Some(cur)
            }
            Some(cur) => {
                flush(cur, &mut out, &mut kept);
                Some(span)
            }
            None => Some(span),
        };
    }
    if let Some(cur) = current {
        flush(cur, &mut out, &mut kept);
    }
    out.push_str(text.get(kept..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds every `SECRET…` run of upper-case letters and digits.
    fn secrets(text: &str, _: Range<usize>) -> Result<Vec<Span>, String> {
        if text.contains("FORBIDDEN") {
            return Err("forbidden".into());
        }
        let mut spans = Vec::new();
        let mut from = 0;
        while let Some(at) = text[from..].find("SECRET") {
            let start = from + at;
            let len = text[start..]
                .bytes()
                .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                .count();
            spans.push(Span {
                start,
                end: start + len,
                rule: "test-rule".into(),
            });
            from = start + len;
        }
        Ok(spans)
    }

    fn run(body: &str) -> Redacted {
        redact(body.as_bytes(), secrets).unwrap()
    }

    #[test]
    fn only_the_secret_is_replaced_and_everything_else_is_kept_byte_for_byte() {
        let body = r#"{ "b": 1.50e3, "a": ["x SECRET42 y", {"SECRET1": null}] , "z":"ok" }"#;
        let r = run(body);
        let text = String::from_utf8(r.body).unwrap();
        assert_eq!(
            text,
            r#"{ "b": 1.50e3, "a": ["x [secret redacted by bottle: test-rule] y", {"[secret redacted by bottle: test-rule]": null}] , "z":"ok" }"#
        );
        assert_eq!(r.counts["test-rule"], 2);
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }

    #[test]
    fn secrets_written_with_escapes_are_found_and_the_result_is_valid_json() {
        let body = r#"{"t":"line1\nkey=\u0053ECRET9\"quoted\" \\ back\/slash é \ud83d\ude00"}"#;
        let r = run(body);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["t"],
            "line1\nkey=[secret redacted by bottle: test-rule]\"quoted\" \\ back/slash é 😀"
        );
    }

    #[test]
    fn a_document_without_findings_comes_back_unchanged() {
        let body = r#"{"a":"plain","b":[1,2,3]}"#;
        let r = run(body);
        assert_eq!(r.body, body.as_bytes());
        assert!(r.counts.is_empty());
    }

    #[test]
    fn non_json_and_undecodable_strings_are_refused() {
        for body in [
            "key=SECRET1",
            "{\"a\": \"SECRET1\"",
            "{\"a\": 1} trailing",
            "",
            "{\"a\": \"\\ud800\"}",
        ] {
            assert!(
                matches!(
                    redact(body.as_bytes(), secrets),
                    Err(RedactError::NotJson(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn a_refusing_finder_stops_the_rewrite() {
        assert_eq!(
            redact(br#"{"a":"FORBIDDEN"}"#, secrets),
            Err(RedactError::Refused("forbidden".to_string()))
        );
    }

    #[test]
    fn overlapping_and_mid_character_spans_are_merged_and_widened() {
        let mut counts = BTreeMap::new();
        let text = "aé-bcdef";
        // 'é' is bytes 1..3; a span starting inside it is widened.
        let spans = vec![
            Span {
                start: 2,
                end: 5,
                rule: "r1".into(),
            },
            Span {
                start: 4,
                end: 6,
                rule: "r2".into(),
            },
        ];
        let out = replace(text, spans, &mut counts);
        assert_eq!(out, "a[secret redacted by bottle: r1]def");
        assert_eq!(counts.len(), 2);
    }
}
