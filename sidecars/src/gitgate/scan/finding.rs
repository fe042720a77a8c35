//! What a push scan reports: a secret, where it is, and the object holding it.

use std::fmt;

/// Kind of a git object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Commit,
    Tree,
    Blob,
    Tag,
}

impl ObjectKind {
    /// The kind as git names it (`commit`, `tree`, `blob`, `tag`).
    pub fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"commit" => Some(Self::Commit),
            b"tree" => Some(Self::Tree),
            b"blob" => Some(Self::Blob),
            b"tag" => Some(Self::Tag),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Tree => "tree",
            Self::Blob => "blob",
            Self::Tag => "tag",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What brought an object into the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A new commit whose tree holds it.
    Commit(String),
    /// A pushed ref that points at it (directly or through tags).
    Ref(String),
}

/// Where in an object a secret was found. Paths are shown the way git
/// quotes them, with any secret in them redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The content of a file (added lines of a commit's diff, or a whole blob).
    File(String),
    /// The name of an entry of a tree (full path).
    FileName(String),
    CommitMessage,
    CommitHeader,
    TagMessage,
    TagHeader,
    /// The name of a pushed ref.
    RefName(String),
}

/// A secret found in a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFinding {
    pub rule_id: String,
    pub description: String,
    /// The secret with all but its first characters masked.
    pub redacted: String,
    pub place: Place,
    /// 1-based line in the file or message; 0 where lines do not apply.
    pub line: usize,
    /// The object holding it: for added lines of a diff, the commit.
    pub kind: ObjectKind,
    pub oid: String,
    pub via: Option<Via>,
}

/// The first 12 hex digits of an object id.
pub fn short(oid: &str) -> &str {
    oid.get(..12).unwrap_or(oid)
}

impl fmt::Display for PushFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.rule_id)?;
        match &self.place {
            Place::File(path) if path.is_empty() => write!(f, "line {}", self.line)?,
            Place::File(path) => write!(f, "{path} line {}", self.line)?,
            Place::FileName(path) => write!(f, "file name `{path}`")?,
            Place::CommitMessage => write!(f, "(commit message) line {}", self.line)?,
            Place::CommitHeader => write!(f, "(commit header) line {}", self.line)?,
            Place::TagMessage => write!(f, "(tag message) line {}", self.line)?,
            Place::TagHeader => write!(f, "(tag header) line {}", self.line)?,
            Place::RefName(name) => write!(f, "ref name `{name}`")?,
        }
        match (&self.place, self.kind, &self.via) {
            (Place::RefName(_), _, _) => {}
            // A tree's names belong to the commit that brought the tree.
            (Place::FileName(_), ObjectKind::Tree, Some(Via::Commit(c))) => {
                write!(f, " in commit {}", short(c))?
            }
            (_, kind, via) => {
                write!(f, " in {kind} {}", short(&self.oid))?;
                match via {
                    Some(Via::Commit(c)) => write!(f, " of commit {}", short(c))?,
                    Some(Via::Ref(r)) => write!(f, " ({r})")?,
                    None => {}
                }
            }
        }
        write!(f, ": {} ({})", self.redacted, self.description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(place: Place, kind: ObjectKind, via: Option<Via>) -> PushFinding {
        PushFinding {
            rule_id: "aws-access-key-id".into(),
            description: "AWS".into(),
            redacted: "AKIA…".into(),
            place,
            line: 7,
            kind,
            oid: "abcdef0123456789".into(),
            via,
        }
    }

    #[test]
    fn display_names_rule_place_line_and_object() {
        let f = finding(Place::File("src/x.rs".into()), ObjectKind::Commit, None);
        assert_eq!(
            f.to_string(),
            "aws-access-key-id: src/x.rs line 7 in commit abcdef012345: AKIA… (AWS)"
        );
        let f = finding(
            Place::File(String::new()),
            ObjectKind::Blob,
            Some(Via::Ref("refs/tags/k".into())),
        );
        assert_eq!(
            f.to_string(),
            "aws-access-key-id: line 7 in blob abcdef012345 (refs/tags/k): AKIA… (AWS)"
        );
        let f = finding(
            Place::FileName("keys/AKIA….txt".into()),
            ObjectKind::Tree,
            Some(Via::Commit("0123456789abcdef".into())),
        );
        assert_eq!(
            f.to_string(),
            "aws-access-key-id: file name `keys/AKIA….txt` in commit 0123456789ab: AKIA… (AWS)"
        );
        let f = finding(
            Place::TagMessage,
            ObjectKind::Tag,
            Some(Via::Ref("refs/tags/v1".into())),
        );
        assert_eq!(
            f.to_string(),
            "aws-access-key-id: (tag message) line 7 in tag abcdef012345 (refs/tags/v1): AKIA… (AWS)"
        );
        let f = finding(
            Place::RefName("refs/heads/AKIA…".into()),
            ObjectKind::Commit,
            None,
        );
        assert_eq!(
            f.to_string(),
            "aws-access-key-id: ref name `refs/heads/AKIA…`: AKIA… (AWS)"
        );
    }
}
