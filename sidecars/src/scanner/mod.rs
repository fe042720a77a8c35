//! Secret scanner shared by the proxy (URLs, headers, bodies) and git-gate
//! (pushed blobs and commit messages).
//!
//! API contract (other modules code against it):
//! `Scanner::builtin()`, `Scanner::from_toml(src)`, `Scanner::disable_rules(ids)`,
//! `Scanner::with_literal_secrets(secrets)`, `Scanner::scan(bytes) -> Vec<Finding>`,
//! `Scanner::rule_ids()`.
//!
//! Pipeline per scan: one case-insensitive Aho-Corasick pass over the input
//! finds the rules whose keywords occur (rules without keywords always run) →
//! each active rule's regex → secret group → entropy → rule and global
//! allowlists. Then the BIP-39 detector and the literal secrets (route
//! tokens). A `Scanner` is compiled once and cloned cheaply (`Arc`).

mod allowlist;
mod bip39;
mod entropy;
mod redact;
mod rules;

use std::fmt;
use std::sync::{Arc, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use allowlist::{Allowlist, Candidate};
use redact::{redact, LineCounter};
use rules::{Rule, ROUTE_TOKEN_PREFIX};

/// The rule file shipped with bottle.
pub const BUILTIN_RULES: &str = include_str!("../../rules/secrets.toml");
/// Rule id of the BIP-39 seed-phrase detector (part of [`Scanner::builtin`]).
pub const BIP39_RULE_ID: &str = bip39::RULE_ID;

/// Why a rule file or rule set was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScannerError {
    #[error("rule file is not valid TOML: {0}")]
    Toml(String),
    #[error("rule `{id}`: {why}")]
    BadRule { id: String, why: String },
    #[error("unknown rule id `{0}`")]
    UnknownRule(String),
}

/// One secret found in scanned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Rule id, e.g. `aws-access-token`, or `route-token:<name>` for a literal.
    pub rule_id: String,
    /// Human description of the rule.
    pub description: String,
    /// Byte range of the secret in the scanned input.
    pub start: usize,
    pub end: usize,
    /// 1-based line of `start`.
    pub line: usize,
    /// The secret with all but its first 4 characters masked, safe to log.
    pub redacted: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) at line {}: {}",
            self.rule_id, self.description, self.line, self.redacted
        )
    }
}

/// A compiled rule set. Cloning is cheap (one `Arc`).
#[derive(Clone, Default)]
pub struct Scanner {
    inner: Arc<Inner>,
}

/// Everything a scan needs, built once.
#[derive(Default)]
struct Inner {
    rules: Vec<Arc<Rule>>,
    global: Arc<Vec<Allowlist>>,
    bip39: bool,
    /// Keyword automaton; pattern `i` activates `keyword_rules[i]`.
    keywords: Option<AhoCorasick>,
    keyword_rules: Vec<Vec<usize>>,
    /// Rules without keywords.
    always: Vec<usize>,
    literals: Literals,
}

/// The literal secrets (route tokens) and their automaton.
#[derive(Default)]
struct Literals {
    /// (rule id `route-token:<label>`, secret bytes).
    secrets: Vec<(String, Vec<u8>)>,
    /// `None` when empty, or when the automaton could not be built (then a
    /// plain search is used: slower, never weaker).
    automaton: Option<AhoCorasick>,
}

impl fmt::Debug for Scanner {
    /// Never prints a literal secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("rules", &self.rule_ids().collect::<Vec<_>>())
            .field("literal_secrets", &self.inner.literals.secrets.len())
            .finish()
    }
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Rule(usize),
    Bip39,
    Literal(usize),
}

#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    source: Source,
}

impl Scanner {
    /// The rules shipped with bottle (`rules/secrets.toml`) plus the BIP-39
    /// detector. Compiled once per process (~5 ms); later calls clone it,
    /// and a call made while another thread compiles it waits for that one
    /// (so a thread can compile it ahead of time, see the bundle's start).
    pub fn builtin() -> Result<Self, ScannerError> {
        static BUILTIN: OnceLock<Result<Scanner, ScannerError>> = OnceLock::new();
        BUILTIN.get_or_init(Self::compile_builtin).clone()
    }

    fn compile_builtin() -> Result<Self, ScannerError> {
        if !bip39::wordlist_ok() {
            return Err(ScannerError::BadRule {
                id: BIP39_RULE_ID.into(),
                why: "embedded wordlist is not the 2048-word BIP-39 list".into(),
            });
        }
        let set = rules::parse(BUILTIN_RULES)?;
        let rules = set.rules.into_iter().map(Arc::new).collect();
        Self::build(rules, Arc::new(set.global), true, Vec::new())
    }

    /// Compile gitleaks-format TOML rules (without the BIP-39 detector).
    pub fn from_toml(src: &str) -> Result<Self, ScannerError> {
        let set = rules::parse(src)?;
        let rules = set.rules.into_iter().map(Arc::new).collect();
        Self::build(rules, Arc::new(set.global), false, Vec::new())
    }

    /// Switch off rules by id; an unknown (or already disabled) id is an error.
    pub fn disable_rules(self, ids: &[String]) -> Result<Self, ScannerError> {
        if let Some(id) = ids
            .iter()
            .find(|id| !self.rule_ids().any(|r| r == id.as_str()))
        {
            return Err(ScannerError::UnknownRule(id.clone()));
        }
        if ids.is_empty() {
            return Ok(self);
        }
        let inner = &self.inner;
        let rules = inner
            .rules
            .iter()
            .filter(|r| !ids.contains(&r.id))
            .cloned()
            .collect();
        let bip39 = inner.bip39 && !ids.iter().any(|id| id == BIP39_RULE_ID);
        Self::build(
            rules,
            inner.global.clone(),
            bip39,
            inner.literals.secrets.clone(),
        )
    }

    /// Add literal secrets (label, bytes), e.g. the real tokens of routes.
    /// Findings carry rule id `route-token:<label>`. Empty secrets are ignored.
    pub fn with_literal_secrets(self, secrets: Vec<(String, Vec<u8>)>) -> Self {
        let inner = &self.inner;
        let mut all = inner.literals.secrets.clone();
        all.extend(
            secrets
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(label, s)| (format!("{ROUTE_TOKEN_PREFIX}{label}"), s)),
        );
        let next = Inner {
            rules: inner.rules.clone(),
            global: inner.global.clone(),
            bip39: inner.bip39,
            keywords: inner.keywords.clone(),
            keyword_rules: inner.keyword_rules.clone(),
            always: inner.always.clone(),
            literals: Literals::new(all),
        };
        Self {
            inner: Arc::new(next),
        }
    }

    /// Ids of the active rules (regex rules, then `bip39-seed-phrase`).
    /// Literal secrets are not rules and are not listed.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        let bip = self.inner.bip39.then_some(BIP39_RULE_ID);
        self.inner.rules.iter().map(|r| r.id.as_str()).chain(bip)
    }

    /// Scan bytes (any encoding; regexes see raw bytes); findings ordered by
    /// position.
    pub fn scan(&self, data: &[u8]) -> Vec<Finding> {
        let inner = &*self.inner;
        let mut hits = Vec::new();
        let active = inner.active_rules(data);
        for (ix, rule) in inner.rules.iter().enumerate() {
            if active[ix] {
                inner.scan_rule(ix, rule, data, &mut hits);
            }
        }
        if inner.bip39 {
            hits.extend(bip39::find(data).into_iter().map(|(start, end)| Hit {
                start,
                end,
                source: Source::Bip39,
            }));
        }
        inner.literals.find(data, &mut hits);
        inner.drop_shadowed_generic(&mut hits);
        hits.sort_by(|a, b| {
            (a.start, a.end)
                .cmp(&(b.start, b.end))
                .then_with(|| inner.id(a.source).cmp(inner.id(b.source)))
        });
        hits.dedup_by(|a, b| a.start == b.start && a.end == b.end && a.source == b.source);
        let mut lines = LineCounter::default();
        hits.into_iter()
            .map(|h| Finding {
                rule_id: inner.id(h.source).to_string(),
                description: inner.description(h.source),
                start: h.start,
                end: h.end,
                line: lines.line_at(data, h.start),
                redacted: redact(&data[h.start..h.end]),
            })
            .collect()
    }

    fn build(
        rules: Vec<Arc<Rule>>,
        global: Arc<Vec<Allowlist>>,
        bip39: bool,
        literals: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, ScannerError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        for (ix, rule) in rules.iter().enumerate() {
            if rule.keywords.is_empty() {
                always.push(ix);
            }
            for k in &rule.keywords {
                match patterns.iter().position(|p| p == k) {
                    Some(p) => keyword_rules[p].push(ix),
                    None => {
                        patterns.push(k.clone());
                        keyword_rules.push(vec![ix]);
                    }
                }
            }
        }
        let keywords = if patterns.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                // A full DFA: one table lookup per input byte, since the
                // keyword pass touches every byte of every scan.
                .kind(Some(AhoCorasickKind::DFA))
                .build(&patterns)
                .map_err(|e| ScannerError::BadRule {
                    id: "keywords".into(),
                    why: e.to_string(),
                })?;
            Some(ac)
        };
        if bip39 && rules.iter().any(|r| r.id == BIP39_RULE_ID) {
            return Err(ScannerError::BadRule {
                id: BIP39_RULE_ID.into(),
                why: "id is reserved for the built-in seed-phrase detector".into(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                rules,
                global,
                bip39,
                keywords,
                keyword_rules,
                always,
                literals: Literals::new(literals),
            }),
        })
    }
}

impl Inner {
    /// Which rules run on `data`: keyword-less ones plus those whose keyword
    /// occurs (ASCII case-insensitive).
    fn active_rules(&self, data: &[u8]) -> Vec<bool> {
        let mut active = vec![false; self.rules.len()];
        for &ix in &self.always {
            active[ix] = true;
        }
        let Some(ac) = &self.keywords else {
            return active;
        };
        let mut remaining = self.rules.len() - self.always.len();
        for m in ac.find_overlapping_iter(data) {
            for &ix in &self.keyword_rules[m.pattern().as_usize()] {
                if !active[ix] {
                    active[ix] = true;
                    remaining -= 1;
                }
            }
            if remaining == 0 {
                break;
            }
        }
        active
    }

    fn scan_rule(&self, ix: usize, rule: &Rule, data: &[u8], hits: &mut Vec<Hit>) {
        let mut push = |whole: (usize, usize), secret: (usize, usize)| {
            let secret_bytes = &data[secret.0..secret.1];
            if secret_bytes.is_empty() {
                return;
            }
            if let Some(min) = rule.entropy {
                if entropy::shannon(secret_bytes) < min {
                    return;
                }
            }
            let cand = Candidate {
                secret: secret_bytes,
                whole: &data[whole.0..whole.1],
                line: line_around(data, whole.0, whole.1),
            };
            if rule
                .allowlists
                .iter()
                .chain(self.global.iter())
                .any(|a| a.allows(cand))
            {
                return;
            }
            hits.push(Hit {
                start: secret.0,
                end: secret.1,
                source: Source::Rule(ix),
            });
        };
        if rule.regex.captures_len() == 1 {
            for m in rule.regex.find_iter(data) {
                push((m.start(), m.end()), (m.start(), m.end()));
            }
            return;
        }
        for caps in rule.regex.captures_iter(data) {
            let Some(whole) = caps.get(0) else { continue };
            let group = match rule.secret_group {
                Some(g) => caps.get(g),
                None => caps.iter().skip(1).flatten().find(|m| !m.is_empty()),
            };
            let secret = group.filter(|m| !m.is_empty()).unwrap_or(whole);
            push((whole.start(), whole.end()), (secret.start(), secret.end()));
        }
    }

    /// A `generic-*` hit yields to a specific rule's hit over the same bytes.
    fn drop_shadowed_generic(&self, hits: &mut Vec<Hit>) {
        let is_generic = |h: &Hit| matches!(h.source, Source::Rule(i) if self.rules[i].generic);
        if !hits.iter().any(is_generic) {
            return;
        }
        let mut specific: Vec<(usize, usize)> = hits
            .iter()
            .filter(|h| !is_generic(h))
            .map(|h| (h.start, h.end))
            .collect();
        specific.sort_unstable();
        // max_end[i] = largest end among specific[..=i].
        let max_end: Vec<usize> = specific
            .iter()
            .scan(0usize, |m, &(_, e)| {
                *m = (*m).max(e);
                Some(*m)
            })
            .collect();
        hits.retain(|h| {
            if !is_generic(h) {
                return true;
            }
            // Specific spans starting before h.end; one of them overlaps h
            // when the largest of their ends passes h.start.
            let n = specific.partition_point(|&(s, _)| s < h.end);
            n == 0 || max_end[n - 1] <= h.start
        });
    }

    fn id(&self, source: Source) -> &str {
        match source {
            Source::Rule(i) => &self.rules[i].id,
            Source::Bip39 => BIP39_RULE_ID,
            Source::Literal(i) => &self.literals.secrets[i].0,
        }
    }

    fn description(&self, source: Source) -> String {
        match source {
            Source::Rule(i) => self.rules[i].description.clone(),
            Source::Bip39 => bip39::DESCRIPTION.to_string(),
            Source::Literal(i) => {
                let label = self.literals.secrets[i]
                    .0
                    .trim_start_matches(ROUTE_TOKEN_PREFIX);
                format!("real credential of egress route `{label}`")
            }
        }
    }
}

impl Literals {
    fn new(secrets: Vec<(String, Vec<u8>)>) -> Self {
        let automaton = if secrets.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(secrets.iter().map(|(_, s)| s))
                .ok()
        };
        Self { secrets, automaton }
    }

    fn find(&self, data: &[u8], hits: &mut Vec<Hit>) {
        if self.secrets.is_empty() {
            return;
        }
        if let Some(ac) = &self.automaton {
            for m in ac.find_overlapping_iter(data) {
                hits.push(Hit {
                    start: m.start(),
                    end: m.end(),
                    source: Source::Literal(m.pattern().as_usize()),
                });
            }
            return;
        }
        for (i, (_, s)) in self.secrets.iter().enumerate() {
            for (start, w) in data.windows(s.len()).enumerate() {
                if w == s.as_slice() {
                    hits.push(Hit {
                        start,
                        end: start + s.len(),
                        source: Source::Literal(i),
                    });
                }
            }
        }
    }
}

/// How far the `line` allowlist target reaches on either side of a match,
/// so a megabyte-long minified line costs the same as a short one.
const LINE_CONTEXT: usize = 1024;

/// The line holding `data[start..end]` (without its newline), cut to
/// [`LINE_CONTEXT`] bytes either side of the match.
fn line_around(data: &[u8], start: usize, end: usize) -> &[u8] {
    let lo = start.saturating_sub(LINE_CONTEXT);
    let from = data[lo..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(lo, |p| lo + p + 1);
    let hi = end.saturating_add(LINE_CONTEXT).min(data.len());
    let to = data[end..hi]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(hi, |p| end + p);
    &data[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_RULES: &str = r#"
[[rules]]
id = "tok"
description = "test token"
regex = '''\b(tok_[a-z0-9]{16})\b'''
keywords = ["tok_"]

[[rules]]
id = "generic-assign"
regex = '''key\s*=\s*([a-z0-9_]{8,})'''
entropy = 2.0
keywords = ["key"]
"#;

    fn ids(found: &[Finding]) -> Vec<&str> {
        found.iter().map(|f| f.rule_id.as_str()).collect()
    }

    #[test]
    fn findings_carry_position_line_and_a_redacted_value() {
        let s = Scanner::from_toml(TWO_RULES).unwrap();
        let data = b"first line\nx = tok_abcdef0123456789 y";
        let found = s.scan(data);
        assert_eq!(ids(&found), vec!["tok"]);
        let f = &found[0];
        assert_eq!(&data[f.start..f.end], b"tok_abcdef0123456789");
        assert_eq!(f.line, 2);
        assert_eq!(f.redacted, "tok_…");
        assert!(!f.to_string().contains("abcdef0123456789"));
    }

    #[test]
    fn a_rule_whose_keyword_is_absent_does_not_run() {
        let s = Scanner::from_toml(
            "[[rules]]\nid = \"r\"\nregex = 'secret[0-9]+'\nkeywords = [\"absent\"]\n",
        )
        .unwrap();
        assert!(s.scan(b"secret1234").is_empty());
        assert_eq!(s.scan(b"ABSENT secret1234").len(), 1);
    }

    #[test]
    fn a_rule_without_keywords_always_runs() {
        let s = Scanner::from_toml("[[rules]]\nid = \"r\"\nregex = 'secret[0-9]+'\n").unwrap();
        assert_eq!(s.scan(b"x secret1234").len(), 1);
    }

    #[test]
    fn low_entropy_secrets_are_skipped() {
        let s = Scanner::from_toml(TWO_RULES).unwrap();
        assert!(s.scan(b"key = aaaaaaaaaaaa").is_empty());
        assert_eq!(ids(&s.scan(b"key = q8w7e6r5t4y3")), vec!["generic-assign"]);
    }

    #[test]
    fn a_generic_hit_yields_to_a_specific_rule_on_the_same_bytes() {
        let s = Scanner::from_toml(TWO_RULES).unwrap();
        assert_eq!(ids(&s.scan(b"key = tok_abcdef0123456789")), vec!["tok"]);
    }

    #[test]
    fn without_secret_group_the_first_nonempty_group_is_the_secret() {
        let s = Scanner::from_toml("[[rules]]\nid = \"r\"\nregex = 'k=(x*)([0-9]+)'\n").unwrap();
        let data = b"k=1234";
        let f = &s.scan(data)[0];
        assert_eq!(&data[f.start..f.end], b"1234");
    }

    #[test]
    fn global_and_rule_allowlists_suppress_findings() {
        let src = r#"
[allowlist]
stopwords = ["fake"]
[[rules]]
id = "r"
regex = '''tok_[a-z]+'''
[[rules.allowlists]]
regexes = ['''nosecret''']
regexTarget = "line"
"#;
        let s = Scanner::from_toml(src).unwrap();
        assert!(s.scan(b"tok_fakeone").is_empty());
        assert!(s.scan(b"tok_abc # nosecret").is_empty());
        assert_eq!(s.scan(b"tok_abc\n# nosecret").len(), 1);
    }

    #[test]
    fn findings_are_ordered_by_position_across_sources() {
        let s = Scanner::from_toml(TWO_RULES)
            .unwrap()
            .with_literal_secrets(vec![("api".into(), b"REALTOKEN99".to_vec())]);
        let found = s.scan(b"REALTOKEN99 then tok_abcdef0123456789 then REALTOKEN99");
        assert_eq!(
            ids(&found),
            vec!["route-token:api", "tok", "route-token:api"]
        );
        assert!(found.windows(2).all(|w| w[0].start <= w[1].start));
        assert_eq!(
            found[0].description,
            "real credential of egress route `api`"
        );
    }

    #[test]
    fn empty_literal_secrets_are_ignored() {
        let s = Scanner::from_toml("")
            .unwrap()
            .with_literal_secrets(vec![("e".into(), Vec::new())]);
        assert!(s.scan(b"anything").is_empty());
    }

    #[test]
    fn debug_output_never_shows_literal_secrets() {
        let s = Scanner::from_toml("")
            .unwrap()
            .with_literal_secrets(vec![("a".into(), b"TOPSECRET42".to_vec())]);
        assert!(!format!("{s:?}").contains("TOPSECRET42"));
    }

    #[test]
    fn disabling_an_unknown_rule_is_an_error_and_a_known_one_removes_it() {
        let s = Scanner::from_toml(TWO_RULES).unwrap();
        let err = s.clone().disable_rules(&["nope".into()]).unwrap_err();
        assert!(matches!(err, ScannerError::UnknownRule(ref id) if id == "nope"));
        let s = s.disable_rules(&["tok".into()]).unwrap();
        assert_eq!(s.rule_ids().collect::<Vec<_>>(), vec!["generic-assign"]);
        assert!(s.scan(b"tok_abcdef0123456789").is_empty());
    }

    #[test]
    fn disabling_keeps_literal_secrets() {
        let s = Scanner::from_toml(TWO_RULES)
            .unwrap()
            .with_literal_secrets(vec![("r".into(), b"LITERAL77".to_vec())])
            .disable_rules(&["tok".into()])
            .unwrap();
        assert_eq!(ids(&s.scan(b"LITERAL77")), vec!["route-token:r"]);
    }

    #[test]
    fn builtin_includes_the_seed_phrase_detector_and_can_disable_it() {
        let s = Scanner::builtin().unwrap();
        assert!(s.rule_ids().any(|id| id == BIP39_RULE_ID));
        let p = b"legal winner thank year wave sausage worth useful legal winner thank yellow";
        assert_eq!(ids(&s.scan(p)), vec![BIP39_RULE_ID]);
        let off = s.disable_rules(&[BIP39_RULE_ID.to_string()]).unwrap();
        assert!(off.scan(p).is_empty());
    }

    #[test]
    fn a_scanner_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<Scanner>();
        let s = Scanner::from_toml(TWO_RULES).unwrap();
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.scan(b"tok_abcdef0123456789").len())
        };
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn the_line_around_a_match_excludes_its_newlines() {
        assert_eq!(line_around(b"a\nbXc\nd", 3, 4), b"bXc");
        assert_eq!(line_around(b"X", 0, 1), b"X");
        let long = [b"a".repeat(5000), b"X".to_vec(), b"b".repeat(5000)].concat();
        assert_eq!(line_around(&long, 5000, 5001).len(), 2 * LINE_CONTEXT + 1);
    }
}
