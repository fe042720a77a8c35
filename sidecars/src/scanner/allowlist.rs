//! Allowlists: conditions under which a candidate secret is not reported.
//!
//! Gitleaks semantics: `regexes` are tried against the secret (default), the
//! whole match (`regexTarget = "match"`) or its line (`"line"`); `stopwords`
//! match when the secret contains one (case-insensitive). `condition = "OR"`
//! (default) allows when any criterion holds, `"AND"` when all the given ones
//! hold. `paths` and `commits` cannot be known for a request body: under OR
//! they never hold, under AND they make the allowlist never apply
//! (fail closed: report rather than wave through).

use regex::bytes::Regex;
use serde::Deserialize;

use super::rules::compile_regex;
use super::ScannerError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AllowlistSpec {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    commits: Vec<String>,
}

/// What an allowlist regex is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Secret,
    Match,
    Line,
}

/// The bytes a candidate offers to allowlists.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub secret: &'a [u8],
    pub whole: &'a [u8],
    pub line: &'a [u8],
}

/// A compiled allowlist.
#[derive(Debug)]
pub(crate) struct Allowlist {
    all: bool,
    target: Target,
    regexes: Vec<Regex>,
    stopwords: Vec<Vec<u8>>,
    /// `paths` or `commits` were given: criteria we can never satisfy.
    unknowable: bool,
}

impl Allowlist {
    /// Compile `spec`; `owner` names the rule (or `allowlist`) in errors.
    pub(crate) fn compile(spec: &AllowlistSpec, owner: &str) -> Result<Self, ScannerError> {
        let bad = |why: String| ScannerError::BadRule {
            id: owner.to_string(),
            why,
        };
        let all = match spec
            .condition
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("OR") => false,
            Some("AND") => true,
            Some(other) => {
                return Err(bad(format!(
                    "allowlist condition `{other}` is not OR or AND"
                )))
            }
        };
        let target = match spec.regex_target.as_deref() {
            None | Some("secret") => Target::Secret,
            Some("match") => Target::Match,
            Some("line") => Target::Line,
            Some(other) => {
                return Err(bad(format!(
                    "allowlist regexTarget `{other}` is not secret, match or line"
                )))
            }
        };
        let mut regexes = Vec::with_capacity(spec.regexes.len());
        for r in &spec.regexes {
            regexes.push(compile_regex(r).map_err(|e| bad(format!("allowlist {e}")))?);
        }
        let mut stopwords = Vec::with_capacity(spec.stopwords.len());
        for s in &spec.stopwords {
            if s.is_empty() {
                return Err(bad("empty allowlist stopword".into()));
            }
            stopwords.push(s.to_ascii_lowercase().into_bytes());
        }
        Ok(Self {
            all,
            target,
            regexes,
            stopwords,
            unknowable: !spec.paths.is_empty() || !spec.commits.is_empty(),
        })
    }

    /// Whether this allowlist excuses the candidate.
    pub(crate) fn allows(&self, c: Candidate<'_>) -> bool {
        let target = match self.target {
            Target::Secret => c.secret,
            Target::Match => c.whole,
            Target::Line => c.line,
        };
        let regex_hit = || self.regexes.iter().any(|r| r.is_match(target));
        let stop_hit = || {
            self.stopwords
                .iter()
                .any(|s| contains_ignore_case(c.secret, s))
        };
        if self.all {
            if self.unknowable || (self.regexes.is_empty() && self.stopwords.is_empty()) {
                return false;
            }
            (self.regexes.is_empty() || regex_hit()) && (self.stopwords.is_empty() || stop_hit())
        } else {
            regex_hit() || stop_hit()
        }
    }
}

/// `needle` must already be ASCII-lowercase.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(src: &str) -> Allowlist {
        let spec: AllowlistSpec = toml::from_str(src).unwrap();
        Allowlist::compile(&spec, "t").unwrap()
    }

    fn cand<'a>(secret: &'a str, whole: &'a str, line: &'a str) -> Candidate<'a> {
        Candidate {
            secret: secret.as_bytes(),
            whole: whole.as_bytes(),
            line: line.as_bytes(),
        }
    }

    #[test]
    fn stopwords_match_inside_the_secret_ignoring_case() {
        let a = list("stopwords = [\"example\"]");
        assert!(a.allows(cand("AKIAEXAMPLE", "", "")));
        assert!(!a.allows(cand("AKIAREAL", "", "")));
    }

    #[test]
    fn regex_target_selects_secret_match_or_line() {
        let s = list("regexes = ['^abc$']");
        assert!(s.allows(cand("abc", "k=abc", "x k=abc")));
        let m = list("regexes = ['^k=']\nregexTarget = \"match\"");
        assert!(m.allows(cand("abc", "k=abc", "x k=abc")));
        assert!(!m.allows(cand("abc", "j=abc", "k=abc")));
        let l = list("regexes = ['nosec']\nregexTarget = \"line\"");
        assert!(l.allows(cand("abc", "k=abc", "k=abc # nosec")));
        assert!(!l.allows(cand("abc", "k=abc", "k=abc")));
    }

    #[test]
    fn and_condition_needs_every_given_criterion() {
        let a = list("condition = \"AND\"\nregexes = ['^ab']\nstopwords = [\"zz\"]");
        assert!(a.allows(cand("abzz", "", "")));
        assert!(!a.allows(cand("abyy", "", "")));
        assert!(!a.allows(cand("cczz", "", "")));
    }

    #[test]
    fn paths_never_allow_under_or_and_block_and_conditions() {
        let or = list("paths = ['.*']");
        assert!(!or.allows(cand("x", "x", "x")));
        let and = list("condition = \"AND\"\npaths = ['.*']\nstopwords = [\"x\"]");
        assert!(!and.allows(cand("x", "x", "x")));
    }

    #[test]
    fn bad_condition_or_target_is_refused() {
        let spec: AllowlistSpec = toml::from_str("condition = \"XOR\"").unwrap();
        assert!(Allowlist::compile(&spec, "t").is_err());
        let spec: AllowlistSpec = toml::from_str("regexTarget = \"file\"").unwrap();
        assert!(Allowlist::compile(&spec, "t").is_err());
    }
}
