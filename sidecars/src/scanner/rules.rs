//! Gitleaks-format rule files: the TOML schema we accept and its compilation
//! into [`Rule`]s.
//!
//! Accepted: `title`, `minVersion`, a global `[allowlist]` or `[[allowlists]]`,
//! and `[[rules]]` with `id`, `description`, `regex`, `secretGroup`, `entropy`,
//! `keywords`, `path` (ignored), `tags`, `[rules.allowlist]` or
//! `[[rules.allowlists]]`. Anything else (e.g. `[extend]`, `required`) is
//! refused so a rule never silently does less than its author meant.

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use super::allowlist::{Allowlist, AllowlistSpec};
use super::ScannerError;

/// Prefix reserved for the literal secrets of egress routes.
pub(crate) const ROUTE_TOKEN_PREFIX: &str = "route-token:";

/// Upper bound on a compiled regex, so a rule cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    #[serde(default)]
    #[allow(dead_code)]
    title: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    min_version: Option<String>,
    #[serde(default)]
    extend: Option<toml::Value>,
    #[serde(default)]
    allowlist: Option<AllowlistSpec>,
    #[serde(default)]
    allowlists: Vec<AllowlistSpec>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    /// Path rules make no sense for request bodies and blobs: ignored.
    #[serde(default)]
    #[allow(dead_code)]
    path: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    tags: Vec<String>,
    #[serde(default)]
    allowlist: Option<AllowlistSpec>,
    #[serde(default)]
    allowlists: Vec<AllowlistSpec>,
}

/// One compiled regex rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub id: String,
    pub description: String,
    pub regex: Regex,
    /// Capture group holding the secret; `None` means whole match.
    pub secret_group: Option<usize>,
    /// Minimum Shannon entropy (bits per byte) of the secret.
    pub entropy: Option<f64>,
    /// Lower-cased keywords; empty means the rule always runs.
    pub keywords: Vec<String>,
    pub allowlists: Vec<Allowlist>,
    /// `generic-*` rules yield to a specific rule that found the same bytes.
    pub generic: bool,
}

/// A parsed rule file: its rules and its global allowlists.
#[derive(Debug)]
pub(crate) struct RuleSet {
    pub rules: Vec<Rule>,
    pub global: Vec<Allowlist>,
}

/// Parse and compile a gitleaks-format TOML rule file.
pub(crate) fn parse(src: &str) -> Result<RuleSet, ScannerError> {
    let file: RuleFile = toml::from_str(src).map_err(|e| ScannerError::Toml(e.to_string()))?;
    if file.extend.is_some() {
        return Err(ScannerError::Toml(
            "`[extend]` is not supported: write every rule in the file".into(),
        ));
    }
    let mut global = Vec::new();
    for spec in file.allowlist.iter().chain(file.allowlists.iter()) {
        global.push(Allowlist::compile(spec, "allowlist")?);
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(file.rules.len());
    for spec in file.rules {
        if rules.iter().any(|r| r.id == spec.id) {
            return Err(bad(&spec.id, "duplicate rule id"));
        }
        rules.push(compile_rule(spec)?);
    }
    Ok(RuleSet { rules, global })
}

fn bad(id: &str, why: impl Into<String>) -> ScannerError {
    ScannerError::BadRule {
        id: id.to_string(),
        why: why.into(),
    }
}

/// Rule ids are short tokens that appear in logs and manifests.
pub(crate) fn check_id(id: &str) -> Result<(), ScannerError> {
    if id.is_empty() {
        return Err(bad(id, "empty rule id"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(
            id,
            "rule id may only hold ASCII letters, digits, `-`, `_`, `.`",
        ));
    }
    Ok(())
}

fn compile_rule(spec: RuleSpec) -> Result<Rule, ScannerError> {
    let id = spec.id;
    check_id(&id)?;
    let Some(pattern) = spec.regex else {
        return Err(bad(&id, "no `regex` (path-only rules are not supported)"));
    };
    let regex = compile_regex(&pattern).map_err(|why| bad(&id, why))?;
    if let Some(g) = spec.secret_group {
        if g >= regex.captures_len() {
            return Err(bad(
                &id,
                format!(
                    "secretGroup {g} but the regex has {} group(s)",
                    regex.captures_len() - 1
                ),
            ));
        }
    }
    if let Some(e) = spec.entropy {
        if !(0.0..=8.0).contains(&e) {
            return Err(bad(
                &id,
                format!("entropy {e} is outside 0..=8 bits per byte"),
            ));
        }
    }
    let mut keywords = Vec::with_capacity(spec.keywords.len());
    for k in spec.keywords {
        if k.is_empty() {
            return Err(bad(&id, "empty keyword"));
        }
        keywords.push(k.to_lowercase());
    }
    let mut allowlists = Vec::new();
    for a in spec.allowlist.iter().chain(spec.allowlists.iter()) {
        allowlists.push(Allowlist::compile(a, &id)?);
    }
    Ok(Rule {
        generic: id.starts_with("generic-"),
        description: if spec.description.is_empty() {
            id.clone()
        } else {
            spec.description
        },
        id,
        regex,
        secret_group: spec.secret_group.filter(|g| *g > 0),
        entropy: spec.entropy.filter(|e| *e > 0.0),
        keywords,
        allowlists,
    })
}

/// Compile a Go (RE2) pattern with Go's semantics where they differ: `\w`,
/// `\d`, `\s` and `\b` are ASCII. Patterns that need Unicode classes
/// (`\pL`) fall back to Unicode mode. Syntax Rust's engine lacks (lookaround,
/// backreferences) is refused with the engine's own explanation.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    let build = |unicode: bool| {
        RegexBuilder::new(pattern)
            .unicode(unicode)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    match build(false) {
        Ok(re) => Ok(re),
        Err(ascii_err) => build(true).map_err(|e| match e {
            regex::Error::Syntax(s) => format!("unsupported regex: {s}"),
            other => format!("unsupported regex: {other} ({ascii_err})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Result<RuleSet, ScannerError> {
        parse(src)
    }

    #[test]
    fn a_minimal_rule_compiles_with_lowercased_keywords() {
        let set =
            one("[[rules]]\nid = \"x\"\nregex = 'ab(c)'\nsecretGroup = 1\nkeywords = [\"AB\"]\n")
                .unwrap();
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].keywords, vec!["ab".to_string()]);
        assert_eq!(set.rules[0].secret_group, Some(1));
        assert_eq!(set.rules[0].description, "x");
    }

    #[test]
    fn lookahead_is_refused_naming_the_rule() {
        let err = one("[[rules]]\nid = \"peek\"\nregex = 'a(?=b)'\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("peek"), "{msg}");
        assert!(msg.contains("look-around"), "{msg}");
    }

    #[test]
    fn backreference_is_refused() {
        let err = one("[[rules]]\nid = \"br\"\nregex = '(a)\\1'\n").unwrap_err();
        assert!(
            matches!(err, ScannerError::BadRule { ref id, .. } if id == "br"),
            "{err}"
        );
    }

    #[test]
    fn secret_group_beyond_the_regex_groups_is_refused() {
        let err = one("[[rules]]\nid = \"g\"\nregex = 'a(b)'\nsecretGroup = 2\n").unwrap_err();
        assert!(err.to_string().contains("secretGroup 2"), "{err}");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let err = one("[[rules]]\nid = \"d\"\nregex = 'a'\n[[rules]]\nid = \"d\"\nregex = 'b'\n")
            .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn unknown_keys_and_extend_are_refused() {
        assert!(one("[[rules]]\nid = \"u\"\nregex = 'a'\nsecretgroup = 1\n").is_err());
        assert!(one("[extend]\nuseDefault = true\n").is_err());
    }

    #[test]
    fn path_only_rules_and_bad_entropy_are_refused() {
        assert!(one("[[rules]]\nid = \"p\"\npath = 'x'\n").is_err());
        assert!(one("[[rules]]\nid = \"e\"\nregex = 'a'\nentropy = 9.5\n").is_err());
    }

    #[test]
    fn ids_with_spaces_or_the_route_prefix_are_refused() {
        assert!(one("[[rules]]\nid = \"a b\"\nregex = 'a'\n").is_err());
        assert!(one("[[rules]]\nid = \"route-token:x\"\nregex = 'a'\n").is_err());
    }

    #[test]
    fn go_classes_are_ascii_but_unicode_classes_still_compile() {
        let re = compile_regex(r"\w+").unwrap();
        assert_eq!(re.find("é".as_bytes()), None);
        assert!(compile_regex(r"\p{Greek}+").is_ok());
    }

    #[test]
    fn path_tags_title_and_rule_allowlists_are_accepted() {
        let src = r#"
title = "t"
[allowlist]
paths = ['''x''']
[[rules]]
id = "r"
regex = '''a'''
path = '''\.go$'''
tags = ["t"]
[rules.allowlist]
stopwords = ["s"]
[[rules.allowlists]]
regexes = ['''q''']
regexTarget = "line"
"#;
        let set = one(src).unwrap();
        assert_eq!(set.rules[0].allowlists.len(), 2);
        assert_eq!(set.global.len(), 1);
    }
}
