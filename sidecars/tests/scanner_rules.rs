//! Every built-in rule against its positive and negative cases
//! (`rules/secrets_cases.toml`).
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

use std::collections::BTreeSet;

use bottle_sidecars::scanner::Scanner;
use serde::Deserialize;

const CASES: &str = include_str!("../rules/secrets_cases.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    rule: String,
    positive: Vec<String>,
    negative: Vec<String>,
    #[serde(default)]
    also: Vec<String>,
}

fn cases() -> Vec<Case> {
    toml::from_str::<Cases>(CASES).unwrap().case
}

fn found_ids(scanner: &Scanner, text: &str) -> BTreeSet<String> {
    scanner
        .scan(text.as_bytes())
        .into_iter()
        .map(|f| f.rule_id)
        .collect()
}

#[test]
fn every_builtin_rule_has_a_positive_and_a_negative_case() {
    let scanner = Scanner::builtin().unwrap();
    let cases = cases();
    let mut missing = Vec::new();
    for id in scanner.rule_ids() {
        let has = |f: &dyn Fn(&Case) -> bool| cases.iter().any(|c| c.rule == id && f(c));
        if !has(&|c| !c.positive.is_empty()) || !has(&|c| !c.negative.is_empty()) {
            missing.push(id.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "rules without a positive and a negative case: {missing:?}"
    );
}

#[test]
fn every_case_names_an_existing_rule() {
    let scanner = Scanner::builtin().unwrap();
    let ids: BTreeSet<&str> = scanner.rule_ids().collect();
    for c in cases() {
        assert!(
            ids.contains(c.rule.as_str()),
            "case for unknown rule `{}`",
            c.rule
        );
        for a in &c.also {
            assert!(
                ids.contains(a.as_str()),
                "case `{}` expects unknown rule `{a}`",
                c.rule
            );
        }
    }
}

#[test]
fn builtin_ships_at_least_thirty_rules() {
    assert!(Scanner::builtin().unwrap().rule_ids().count() >= 30);
}

#[test]
fn positives_are_found_by_their_rule_and_only_expected_others() {
    let scanner = Scanner::builtin().unwrap();
    let mut failures = Vec::new();
    for c in cases() {
        for p in &c.positive {
            let ids = found_ids(&scanner, p);
            let unexpected: Vec<_> = ids
                .iter()
                .filter(|id| **id != c.rule && !c.also.contains(id))
                .collect();
            if !ids.contains(&c.rule) || !unexpected.is_empty() {
                failures.push(format!("{}: {p:?} -> {ids:?}", c.rule));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "positives not found as expected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn negatives_are_not_found_by_their_rule() {
    let scanner = Scanner::builtin().unwrap();
    let mut failures = Vec::new();
    for c in cases() {
        for n in &c.negative {
            let ids = found_ids(&scanner, n);
            if ids.contains(&c.rule) {
                failures.push(format!("{}: {n:?} -> {ids:?}", c.rule));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "negatives found:\n{}",
        failures.join("\n")
    );
}

#[test]
fn positives_are_found_inside_a_larger_source_file() {
    let scanner = Scanner::builtin().unwrap();
    for c in cases() {
        for p in &c.positive {
            let text = format!("fn main() {{\n    let x = 1;\n}}\n// config\n{p}\n// end\n");
            let found = scanner.scan(text.as_bytes());
            let f = found.iter().find(|f| f.rule_id == c.rule);
            let f = f.unwrap_or_else(|| panic!("{}: not found in context", c.rule));
            assert_eq!(f.line, 5, "{}: wrong line", c.rule);
            assert!(
                f.redacted.chars().count() <= 5,
                "{}: redaction too long",
                c.rule
            );
        }
    }
}
