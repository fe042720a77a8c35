//! What the DLP action for a request's host does with what the scan found:
//! `block` refuses, `warn` lets it through, `redact` rewrites the secrets
//! out of a JSON body and refuses everything it cannot rewrite (findings in
//! the URL or headers, bodies that are not JSON, secrets that are still there
//! after the rewrite). Route placeholders and real route tokens are refused
//! under every action.

use super::decide::Refusal;
use super::dlp::{Dlp, Hit};
use super::redact_json::{self, RedactError, Span};
use crate::policy::DlpAction;
use http::{header, HeaderMap};
use std::collections::BTreeMap;

/// The outcome for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Nothing was found.
    Clean,
    /// Found, let through (`warn`); `rule` is the first finding's.
    Warn { rule: String },
    /// The body was rewritten; `counts` is rule id → secrets replaced.
    Redacted {
        body: Vec<u8>,
        counts: BTreeMap<String, u64>,
        rule: String,
    },
    /// Refused because of this finding.
    Block(Hit),
    /// Refused for a reason of the rewrite.
    Refuse(Refusal),
}

/// Apply `action` to `hits` (from [`Dlp::scan_request`] over the same
/// `headers` and decoded `body`) of a request to `host`.
pub fn apply(
    dlp: &Dlp,
    action: DlpAction,
    hits: Vec<Hit>,
    headers: &HeaderMap,
    body: &[u8],
    host: &str,
) -> Verdict {
    let Some(first) = hits.first() else {
        return Verdict::Clean;
    };
    let rule = first.rule();
    let refused = |keep: fn(&Hit) -> bool| hits.iter().find(|h| !keep(h)).cloned();
    match action {
        DlpAction::Block => Verdict::Block(first.clone()),
        DlpAction::Warn => match refused(|h| matches!(h, Hit::Secret { .. })) {
            Some(hit) => Verdict::Block(hit),
            None => Verdict::Warn { rule },
        },
        DlpAction::Redact => match refused(|h| matches!(h, Hit::Secret { .. }) && h.in_body()) {
            Some(hit) => Verdict::Block(hit),
            None => redact_body(dlp, headers, body, host, first),
        },
    }
}

fn redact_body(dlp: &Dlp, headers: &HeaderMap, body: &[u8], host: &str, first: &Hit) -> Verdict {
    // Pass 1: every decoded string value on its own.
    let pass1 = redact_json::redact(body, |text, _| {
        Ok(dlp
            .secrets_in("body", text.as_bytes())?
            .into_iter()
            .map(|f| Span {
                start: f.start,
                end: f.end,
                rule: f.rule_id,
            })
            .collect())
    });
    let mut redacted = match pass1 {
        Ok(r) => r,
        Err(RedactError::Refused(hit)) => return Verdict::Block(hit),
        Err(RedactError::NotJson(why)) => {
            return Verdict::Refuse(Refusal::forbidden(
                first.rule(),
                format!(
                    "a secret matching DLP rule `{}` is in the body of a request to `{host}`, and \
                     the DLP action for this host is `redact`, which only rewrites JSON bodies: \
                     {why}. Remove the secret from what the agent sends, or send the body as JSON.",
                    rule_id(first)
                ),
            ))
        }
    };
    // Pass 2: secrets the scan only sees in the document's own text, such as
    // `{"aws_secret_access_key": "…"}` (the rule needs the key before the
    // value): each one inside a string literal is replaced there.
    let in_text = dlp.scanner.scan(&redacted.body);
    if !in_text.is_empty() {
        let pass2 = redact_json::redact::<()>(&redacted.body, |text, raw| {
            Ok(in_text
                .iter()
                .filter(|f| raw.start < f.start && f.end < raw.end)
                .flat_map(|f| {
                    let secret = String::from_utf8_lossy(&redacted.body[f.start..f.end]);
                    text.match_indices(secret.as_ref())
                        .map(|(at, s)| Span {
                            start: at,
                            end: at + s.len(),
                            rule: f.rule_id.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .collect())
        });
        if let Ok(more) = pass2 {
            for (rule, n) in more.counts {
                *redacted.counts.entry(rule).or_insert(0) += n;
            }
            redacted.body = more.body;
        }
    }
    // Fail closed: whatever the scan still finds in the rewritten body (a
    // secret split across values, in a number, …) refuses the request.
    let mut only_type = HeaderMap::new();
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        only_type.insert(header::CONTENT_TYPE, ct.clone());
    }
    if let Some(left) = dlp
        .scan_request("", &only_type, &redacted.body)
        .into_iter()
        .next()
    {
        return Verdict::Refuse(Refusal::forbidden(
            left.rule(),
            format!(
                "a secret matching DLP rule `{}` is in the body of a request to `{host}` and is \
                 not inside one JSON string value, so redaction cannot remove it. Remove the \
                 secret from what the agent sends.",
                rule_id(&left)
            ),
        ));
    }
    let rule = redacted
        .counts
        .keys()
        .next()
        .map_or_else(|| first.rule(), |r| format!("dlp:{r}"));
    Verdict::Redacted {
        body: redacted.body,
        counts: redacted.counts,
        rule,
    }
}

fn rule_id(hit: &Hit) -> String {
    match hit {
        Hit::Secret { rule, .. } => rule.clone(),
        other => other.rule(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::routes::Literals;
    use crate::scanner::Scanner;

    const AWS: &str = "AKIAFAKEAU4PCZL6HT4D";

    fn verdict(action: DlpAction, url: &str, headers: &HeaderMap, body: &str) -> Verdict {
        let scanner = Scanner::builtin().unwrap();
        let literals = Literals::new(&[]);
        let dlp = Dlp {
            scanner: &scanner,
            literals: &literals,
            route_names: &[],
        };
        let hits = dlp.scan_request(url, headers, body.as_bytes());
        apply(&dlp, action, hits, headers, body.as_bytes(), "api.test")
    }

    fn json() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    #[test]
    fn redact_rewrites_json_bodies_and_counts_by_rule() {
        let body = format!(r#"{{"messages":[{{"content":"AWS_ACCESS_KEY_ID={AWS} and {AWS}"}}]}}"#);
        match verdict(DlpAction::Redact, "/v1/messages", &json(), &body) {
            Verdict::Redacted { body, counts, rule } => {
                let text = String::from_utf8(body).unwrap();
                assert!(!text.contains(AWS), "{text}");
                assert!(
                    text.contains("[secret redacted by bottle: aws-access-key-id]"),
                    "{text}"
                );
                serde_json::from_str::<serde_json::Value>(&text).unwrap();
                assert_eq!(counts["aws-access-key-id"], 2);
                assert_eq!(rule, "dlp:aws-access-key-id");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redact_blocks_what_it_cannot_rewrite() {
        // Not JSON.
        let v = verdict(
            DlpAction::Redact,
            "/",
            &HeaderMap::new(),
            &format!("k={AWS}"),
        );
        match v {
            Verdict::Refuse(r) => {
                assert_eq!(r.rule, "dlp:aws-access-key-id");
                assert!(r.message.contains("only rewrites JSON"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        // In the URL or a header.
        assert!(matches!(
            verdict(DlpAction::Redact, &format!("/?k={AWS}"), &json(), "{}"),
            Verdict::Block(_)
        ));
        let mut h = json();
        h.insert("x-key", AWS.parse().unwrap());
        assert!(matches!(
            verdict(DlpAction::Redact, "/", &h, "{}"),
            Verdict::Block(_)
        ));
        // An assignment written as the document's own key and value.
        let pair = r#"{"aws_secret_access_key": "FAKEgzM/jppZxO4z7KdcwjOoGUI01iEFT059hgov"}"#;
        match verdict(DlpAction::Redact, "/", &json(), pair) {
            Verdict::Redacted { body, counts, .. } => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    v["aws_secret_access_key"],
                    "[secret redacted by bottle: aws-secret-access-key]"
                );
                assert_eq!(counts["aws-secret-access-key"], 1);
            }
            other => panic!("{other:?}"),
        }
        // A secret split across two values is not one secret to the scan.
        let across = format!(r#"{{"k":"{}","v":"{}"}}"#, &AWS[..10], &AWS[10..]);
        assert!(matches!(
            verdict(DlpAction::Redact, "/", &json(), &across),
            Verdict::Clean
        ));
        // A seed phrase spread over array elements: found in the document's
        // text, in no single value, so the request is refused.
        let words = "legal winner thank year wave sausage worth useful legal winner thank yellow";
        let list = serde_json::to_string(&words.split(' ').collect::<Vec<_>>()).unwrap();
        let body = format!(r#"{{"a":"{AWS}","w":{list}}}"#);
        match verdict(DlpAction::Redact, "/", &json(), &body) {
            Verdict::Refuse(r) => {
                assert_eq!(r.rule, "dlp:bip39-seed-phrase");
                assert!(
                    r.message.contains("redaction cannot remove"),
                    "{}",
                    r.message
                );
            }
            other => panic!("{other:?}"),
        }
        let number_key = format!(r#"{{"{AWS}":1}}"#);
        assert!(matches!(
            verdict(DlpAction::Redact, "/", &json(), &number_key),
            Verdict::Redacted { .. }
        ));
    }

    #[test]
    fn block_and_warn_keep_their_meaning() {
        let body = format!(r#"{{"a":"{AWS}"}}"#);
        assert!(matches!(
            verdict(DlpAction::Block, "/", &json(), &body),
            Verdict::Block(_)
        ));
        assert!(matches!(
            verdict(DlpAction::Warn, "/", &json(), &body),
            Verdict::Warn { .. }
        ));
        assert!(matches!(
            verdict(DlpAction::Redact, "/", &json(), r#"{"a":"clean"}"#),
            Verdict::Clean
        ));
    }
}
