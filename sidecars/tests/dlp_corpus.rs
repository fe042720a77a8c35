//! Precision and recall of the DLP scan on realistic agent requests
//! (`tests/dlp_corpus`, made by its `generate.py`): Anthropic Messages API
//! bodies holding source files, lockfiles with hashes, UUIDs, base64 images,
//! prose, diffs and digests. Every clean body must give no finding (in its
//! raw text, as the proxy scans it, and in its decoded string values, as the
//! `redact` action scans them); every planted secret must be found, and the
//! `redact` action must turn each planted body into valid JSON that holds
//! none of its secrets and a marker for each.
#![allow(clippy::unwrap_used)]

use bottle_sidecars::policy::DlpAction;
use bottle_sidecars::proxy::dlp::{Dlp, Hit};
use bottle_sidecars::proxy::dlp_action::{self, Verdict};
use bottle_sidecars::proxy::redact_json::{self, Span};
use bottle_sidecars::proxy::routes::Literals;
use bottle_sidecars::scanner::Scanner;
use http::{header, HeaderMap};
use std::path::{Path, PathBuf};

fn corpus(dir: &str) -> Vec<(String, Vec<u8>, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/dlp_corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap(), p)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "corpus {dir} is too small: {}",
        files.len()
    );
    files
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    h
}

/// Findings in the decoded string values (rule, decoded text of the secret).
fn decoded_findings(scanner: &Scanner, body: &[u8]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    redact_json::redact::<()>(body, |text, _| {
        for f in scanner.scan(text.as_bytes()) {
            found.push((f.rule_id, text[f.start..f.end].to_string()));
        }
        Ok(Vec::<Span>::new())
    })
    .unwrap();
    found
}

#[test]
fn the_clean_corpus_gives_no_finding_and_every_planted_secret_is_found_and_redacted() {
    let scanner = Scanner::builtin().unwrap();
    let literals = Literals::new(&[]);
    let dlp = Dlp {
        scanner: &scanner,
        literals: &literals,
        route_names: &[],
    };
    let headers = json_headers();
    let mut false_positives = Vec::new();
    let mut clean_bytes = 0;
    let clean = corpus("clean");
    for (name, body, _) in &clean {
        clean_bytes += body.len();
        serde_json::from_slice::<serde_json::Value>(body).unwrap();
        for hit in dlp.scan_request("/v1/messages", &headers, body) {
            false_positives.push(format!("clean/{name} (raw): {hit:?}"));
        }
        for (rule, text) in decoded_findings(&scanner, body) {
            false_positives.push(format!("clean/{name} (decoded): {rule} on {text:?}"));
        }
    }

    let mut expected = 0;
    let mut found = 0;
    let mut true_findings = 0;
    let mut missed = Vec::new();
    let mut not_redacted = Vec::new();
    let planted = corpus("planted");
    for (name, body, path) in &planted {
        let expect = std::fs::read_to_string(path.with_extension("expect")).unwrap();
        let expect: Vec<(&str, &str)> = expect
            .lines()
            .map(|l| l.split_once('\t').unwrap())
            .collect();
        // Positions of each expected secret in the raw body, as JSON writes it.
        let raw = scanner.scan(body);
        let mut matched = vec![false; raw.len()];
        for (rule, secret) in &expect {
            expected += 1;
            let escaped = serde_json::to_string(secret).unwrap();
            let escaped = escaped.trim_matches('"').as_bytes();
            let at = body
                .windows(escaped.len())
                .position(|w| w == escaped)
                .unwrap_or_else(|| panic!("planted/{name}: {rule} secret is not in the body"));
            let hit = raw.iter().enumerate().find(|(i, f)| {
                f.rule_id == *rule && f.start <= at + escaped.len() && f.end >= at && !matched[*i]
            });
            match hit {
                Some((i, _)) => {
                    matched[i] = true;
                    found += 1;
                }
                None => missed.push(format!("planted/{name}: {rule} ({secret})")),
            }
        }
        true_findings += matched.iter().filter(|m| **m).count();
        for (f, _) in raw.iter().zip(&matched).filter(|(_, m)| !**m) {
            false_positives.push(format!(
                "planted/{name}: unexpected {} on {:?}",
                f.rule_id,
                String::from_utf8_lossy(&body[f.start..f.end])
            ));
        }
        // The redact action rewrites the body: valid JSON, no secret left,
        // a marker for each rule, and a fresh scan finds nothing.
        let hits = dlp.scan_request("/v1/messages", &headers, body);
        assert!(hits.iter().all(Hit::in_body), "planted/{name}: {hits:?}");
        match dlp_action::apply(
            &dlp,
            DlpAction::Redact,
            hits,
            &headers,
            body,
            "api.anthropic.com",
        ) {
            Verdict::Redacted { body: out, .. } => {
                let value: serde_json::Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("planted/{name}: redacted body is not JSON: {e}"));
                let text = value.to_string();
                for (rule, secret) in &expect {
                    let secret = serde_json::to_string(secret).unwrap();
                    if text.contains(secret.trim_matches('"')) && *rule != "private-key" {
                        not_redacted.push(format!("planted/{name}: {rule} secret still there"));
                    }
                    if !text.contains(&format!("[secret redacted by bottle: {rule}]")) {
                        not_redacted.push(format!("planted/{name}: no marker for {rule}"));
                    }
                }
                assert!(
                    dlp.scan_request("/v1/messages", &headers, &out).is_empty(),
                    "planted/{name}: the redacted body still has findings"
                );
            }
            other => not_redacted.push(format!("planted/{name}: not redacted: {other:?}")),
        }
    }

    let fp = false_positives.len();
    let precision = true_findings as f64 / (true_findings + fp).max(1) as f64;
    let recall = found as f64 / expected.max(1) as f64;
    println!(
        "DLP corpus: {} clean bodies ({} KiB), {} planted bodies with {expected} secrets \
         ({} rules): {found} found, {fp} false positive(s); precision {:.3}, recall {:.3}",
        clean.len(),
        clean_bytes / 1024,
        planted.len(),
        scanner.rule_ids().count(),
        precision,
        recall
    );
    assert!(
        false_positives.is_empty(),
        "false positives:\n{}",
        false_positives.join("\n")
    );
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
    assert!(not_redacted.is_empty(), "{}", not_redacted.join("\n"));
}

#[test]
fn every_rule_has_a_planted_secret_in_the_corpus() {
    let scanner = Scanner::builtin().unwrap();
    let mut planted = std::collections::BTreeSet::new();
    for (_, _, path) in corpus("planted") {
        for line in std::fs::read_to_string(path.with_extension("expect"))
            .unwrap()
            .lines()
        {
            planted.insert(line.split_once('\t').unwrap().0.to_string());
        }
    }
    let missing: Vec<_> = scanner
        .rule_ids()
        .filter(|r| !planted.contains(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a planted secret: {missing:?}"
    );
}
