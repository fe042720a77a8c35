//! Why git-gate refused a push: typed, so callers (logs, the audit trail)
//! get rule, object and place; `Display` is the message the pusher sees,
//! ending with what to do about it.

use std::fmt;

use super::scan::{short, ObjectKind, Place, PushFinding, Via};

/// Most findings listed in a message.
const MAX_LISTED: usize = 20;

/// A refused push. Nothing was sent upstream unless the variant says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefusal {
    /// The hook's request makes no sense (malformed ref updates, a
    /// quarantine outside the mirror).
    BadRequest(String),
    /// A ref deletion while the remote does not allow force pushes.
    Deletion { ref_name: String, remote: String },
    /// A non-fast-forward update while the remote does not allow force pushes.
    NonFastForward { ref_name: String, remote: String },
    /// A ref that would point at a tree or blob (directly, or through
    /// annotated tags when `tagged`).
    RefTarget {
        ref_name: String,
        oid: String,
        kind: ObjectKind,
        tagged: bool,
        remote: String,
    },
    /// A blob larger than the gate scans.
    TooLarge {
        oid: String,
        /// Path it was reached at (maybe empty), secrets redacted.
        path: String,
        size: u64,
        limit: u64,
        via: Option<Via>,
    },
    /// Secrets in the pushed objects.
    Secrets(Vec<PushFinding>),
    /// The gate could not finish its checks (a git command failed).
    CannotCheck(String),
    /// The push was clean but upstream refused it; its output, verbatim.
    Upstream { remote: String, output: String },
}

impl PushRefusal {
    /// Stable name of what refused the push, for logs and audit lines.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Deletion { .. } => "deletion",
            Self::NonFastForward { .. } => "non-fast-forward",
            Self::RefTarget { .. } => "ref-target",
            Self::TooLarge { .. } => "blob-too-large",
            Self::Secrets(_) => "secret",
            Self::CannotCheck(_) => "cannot-check",
            Self::Upstream { .. } => "upstream-rejected",
        }
    }
}

const REFUSED: &str = "git-gate: push refused:";

impl fmt::Display for PushRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(why) => write!(f, "{REFUSED} {why}"),
            Self::Deletion { ref_name, remote } => write!(
                f,
                "{REFUSED} deleting {ref_name} is not allowed for remote `{remote}` (allow_force_push is off)"
            ),
            Self::NonFastForward { ref_name, remote } => write!(
                f,
                "{REFUSED} {ref_name} is not a fast-forward; force pushes are not allowed for remote `{remote}` (allow_force_push is off).\n\
                 git-gate: fetch, rebase onto upstream and push again."
            ),
            Self::RefTarget {
                ref_name,
                oid,
                kind,
                tagged,
                remote,
            } => write!(
                f,
                "{REFUSED} {ref_name} points at a {kind}{}, not at a commit ({kind} {}); nothing was sent upstream.\n\
                 git-gate: only refs that point at a commit or at an annotated tag of a commit are forwarded: a tree or blob on a ref carries files that no commit brings.\n\
                 git-gate: point the ref at a commit (or delete it locally) and push again; if remote `{remote}` needs such refs, the manifest can set `allow_non_commit_refs = true` for it (the object is then secret-scanned like any file).",
                if *tagged { " (through an annotated tag)" } else { "" },
                short(oid),
            ),
            Self::TooLarge {
                oid,
                path,
                size,
                limit,
                via,
            } => {
                write!(f, "{REFUSED} ")?;
                if !path.is_empty() {
                    write!(f, "{path} (")?;
                }
                write!(f, "blob {}", short(oid))?;
                match via {
                    Some(Via::Commit(c)) => write!(f, " of commit {}", short(c))?,
                    Some(Via::Ref(r)) => write!(f, " on {r}")?,
                    None => {}
                }
                if !path.is_empty() {
                    write!(f, ")")?;
                }
                write!(
                    f,
                    " is {size} bytes; git-gate scans files up to {limit} bytes ({} MiB) and refuses larger ones; nothing was sent upstream.\n\
                     git-gate: keep the file out of git history (e.g. Git LFS) and push again.",
                    limit >> 20
                )
            }
            Self::Secrets(findings) => write_secrets(f, findings),
            Self::CannotCheck(why) => write!(
                f,
                "{REFUSED} the push could not be checked ({why}); nothing was sent upstream.\n\
                 git-gate: try again; if it keeps failing, the gate's log says more."
            ),
            Self::Upstream { remote, output } => write!(
                f,
                "git-gate: upstream `{remote}` rejected the push (nothing was updated here):\n{output}"
            ),
        }
    }
}

impl std::error::Error for PushRefusal {}

fn write_secrets(f: &mut fmt::Formatter<'_>, findings: &[PushFinding]) -> fmt::Result {
    writeln!(
        f,
        "{REFUSED} {} secret(s) found in the pushed objects; nothing was sent upstream.",
        findings.len()
    )?;
    for finding in findings.iter().take(MAX_LISTED) {
        writeln!(f, "git-gate:   {finding}")?;
    }
    if findings.len() > MAX_LISTED {
        writeln!(f, "git-gate:   … and {} more", findings.len() - MAX_LISTED)?;
    }
    let in_commits = findings.iter().any(|x| {
        matches!(x.place, Place::CommitMessage | Place::CommitHeader)
            || x.kind == ObjectKind::Commit && matches!(x.place, Place::File(_))
            || matches!(x.via, Some(Via::Commit(_)))
    });
    let in_tags = findings
        .iter()
        .any(|x| matches!(x.place, Place::TagMessage | Place::TagHeader));
    let on_refs = findings.iter().any(|x| {
        matches!(x.kind, ObjectKind::Blob | ObjectKind::Tree) && matches!(x.via, Some(Via::Ref(_)))
    });
    let in_names = findings
        .iter()
        .any(|x| matches!(x.place, Place::RefName(_)));
    if in_commits {
        writeln!(
            f,
            "git-gate: remove the secret from every commit that has it (e.g. `git rebase -i`, then amend; rename a file whose name holds it) and push again."
        )?;
    }
    if in_tags {
        writeln!(
            f,
            "git-gate: recreate the tag without the secret (`git tag -d NAME`, then `git tag -a NAME …`) and push again."
        )?;
    }
    if on_refs {
        writeln!(
            f,
            "git-gate: the secret is in a tree or blob a ref points at: point the ref at a clean object or delete it locally, and push again."
        )?;
    }
    if in_names {
        writeln!(
            f,
            "git-gate: push under a ref name that does not hold the secret."
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_target_message_names_ref_object_and_the_way_out() {
        let r = PushRefusal::RefTarget {
            ref_name: "refs/tags/data".into(),
            oid: "0123456789abcdef0123".into(),
            kind: ObjectKind::Blob,
            tagged: false,
            remote: "app".into(),
        };
        let msg = r.to_string();
        assert!(msg.starts_with(
            "git-gate: push refused: refs/tags/data points at a blob, not at a commit (blob 0123456789ab)"
        ));
        assert!(msg.contains("allow_non_commit_refs = true"), "{msg}");
        assert_eq!(r.rule(), "ref-target");
    }

    #[test]
    fn secret_message_lists_findings_and_says_what_to_do() {
        let finding = PushFinding {
            rule_id: "github-pat".into(),
            description: "GitHub".into(),
            redacted: "ghp_…".into(),
            place: Place::TagMessage,
            line: 3,
            kind: ObjectKind::Tag,
            oid: "abcdef0123456789".into(),
            via: Some(Via::Ref("refs/tags/v1".into())),
        };
        let msg = PushRefusal::Secrets(vec![finding]).to_string();
        assert!(msg.contains("1 secret(s) found"), "{msg}");
        assert!(
            msg.contains("github-pat: (tag message) line 3 in tag abcdef012345 (refs/tags/v1)"),
            "{msg}"
        );
        assert!(msg.contains("git tag -d NAME"), "{msg}");
        assert!(!msg.contains("git rebase"), "{msg}");
    }

    #[test]
    fn too_large_message_names_the_file_and_the_limit() {
        let msg = PushRefusal::TooLarge {
            oid: "abcdef0123456789".into(),
            path: "data/big.bin".into(),
            size: 200 << 20,
            limit: 100 << 20,
            via: Some(Via::Commit("0123456789abcdef".into())),
        }
        .to_string();
        assert!(
            msg.starts_with("git-gate: push refused: data/big.bin (blob abcdef012345 of commit 0123456789ab) is 209715200 bytes"),
            "{msg}"
        );
        assert!(msg.contains("(100 MiB)"), "{msg}");
    }
}
