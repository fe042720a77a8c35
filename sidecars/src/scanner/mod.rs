//! Secret scanner shared by the proxy (URLs, headers, bodies) and git-gate
//! (pushed blobs and commit messages).
//!
//! API contract (other modules code against it; the implementation fills it):
//! `Scanner::builtin()`, `Scanner::from_toml(src)`, `Scanner::disable_rules(ids)`,
//! `Scanner::with_literal_secrets(secrets)`, `Scanner::scan(bytes) -> Vec<Finding>`,
//! `Scanner::rule_ids()`.

use std::fmt;

/// Why a rule file or rule set was refused.
#[derive(Debug, thiserror::Error)]
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
        write!(f, "{} ({}) at line {}: {}", self.rule_id, self.description, self.line, self.redacted)
    }
}

/// A compiled rule set.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    rule_ids: Vec<String>,
}

impl Scanner {
    /// The rules shipped with bottle.
    pub fn builtin() -> Result<Self, ScannerError> {
        Ok(Self::default())
    }

    /// Compile gitleaks-format TOML rules.
    pub fn from_toml(_src: &str) -> Result<Self, ScannerError> {
        Ok(Self::default())
    }

    /// Switch off rules by id; an unknown id is an error.
    pub fn disable_rules(self, ids: &[String]) -> Result<Self, ScannerError> {
        if let Some(id) = ids.iter().find(|id| !self.rule_ids.contains(id)) {
            return Err(ScannerError::UnknownRule(id.clone()));
        }
        Ok(self)
    }

    /// Add literal secrets (label, bytes), e.g. the real tokens of routes.
    pub fn with_literal_secrets(self, _secrets: Vec<(String, Vec<u8>)>) -> Self {
        self
    }

    /// Ids of the active rules.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rule_ids.iter().map(String::as_str)
    }

    /// Scan bytes; findings ordered by position.
    pub fn scan(&self, _data: &[u8]) -> Vec<Finding> {
        Vec::new()
    }
}
