//! What one audit line holds. Every field added after the first format is
//! optional (`serde(default)`), so lines written by older bottles still parse
//! and still verify: the chain hashes each line's exact text, never a
//! re-serialisation.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which guard (or the log itself) wrote a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An HTTP request through the proxy (lines without `kind` are these).
    #[default]
    Request,
    /// A passthrough CONNECT tunnel (spliced, not intercepted).
    Tunnel,
    /// A git-gate fetch or push.
    Git,
    /// A periodic summary of what the netstack refused.
    Netstack,
    /// A refused connection on the host↔guest channel (a second guest, a
    /// wrong key).
    Channel,
    /// The log itself (rotation).
    Log,
    /// A supervise request from the agent, or the operator's decision on it.
    Supervise,
    /// A kind this build does not know (written by a newer bottle).
    #[serde(other)]
    Other,
}

/// Where in an exchange a line was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The decision, written when it is made: before anything is dialled. A
    /// `deny` is complete in this one line; an `allow`/`warn` is followed by
    /// a `completed` line naming it in `of`.
    #[default]
    Decided,
    /// The end of an allowed exchange.
    Completed,
    /// A periodic summary.
    Summary,
    /// The first line of a new file after rotation.
    Rotated,
    #[serde(other)]
    Other,
}

/// How an allowed exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The response (or the tunnel) ran to its end.
    Ok,
    /// The client went away first (or the bottle stopped).
    Cancelled,
    /// The upstream could not be reached or broke off.
    UpstreamFailed,
    /// Refused after the decision (SSRF at dial time, response over budget
    /// or unscannable); `rule` says why.
    Refused,
    #[serde(other)]
    Other,
}

/// Fields of a git-gate line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitFields {
    /// The remote's name in the manifest.
    pub remote: String,
    /// `fetch` or `push`.
    pub service: String,
    /// Refs the push updates (`refs/heads/main`…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    /// The commit a refusal is about (first finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The file (or `(commit message)`, `(tag message)`) of the first finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Secrets found in the push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<usize>,
}

/// One line of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub identity: String,
    /// Position in the chain (1 for the first line the bottle wrote), across
    /// rotated files. Absent in lines of older bottles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub event: Event,
    /// A `completed` line: the `seq` of its `decided` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The request path, secrets redacted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The query string (without `?`), secrets redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `allow`, `deny`, `warn` or `redact` (empty on summary and rotation
    /// lines).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// Request body bytes (the `decided` line of a request).
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// HTTP status the client got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes sent towards the upstream (request body, or tunnel client→upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes sent back to the client (response body, or tunnel upstream→client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitFields>,
    /// A netstack summary: what was refused since the last summary, by reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<BTreeMap<String, u64>>,
    /// A rotation line: the `seq` of the oldest line still kept on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_from: Option<u64>,
    /// A `redact` decision: rule id → secrets replaced in the request body
    /// (never the secrets themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<BTreeMap<String, u64>>,
    /// Free text (the file a rotation continues, a git refusal's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// SHA-256 (hex) of the previous line, [`super::GENESIS`] for the first.
    pub prev: String,
}

/// A git-gate decision, for [`super::AuditLog::record_git`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitAudit {
    /// Who connected (guest address or `container`).
    pub peer: String,
    /// `allow` (fetch served, push forwarded) or `deny`.
    pub decision: String,
    /// Why: `fetch`, `push`, or the refusal's rule (`dlp:<rule id>`,
    /// `force-push`, `unknown-repo`, `upstream-unreachable`…).
    pub rule: String,
    pub fields: GitFields,
    /// A short human reason (never the secret itself).
    pub detail: Option<String>,
}

impl GitAudit {
    /// The `decided` line of this decision (`kind` `git`; the remote as
    /// `host`, the service as `method`). For a push that is then forwarded,
    /// pass it to [`super::AuditLog::decide`] and complete the exchange with
    /// the upstream's answer.
    pub fn into_record(self) -> AuditRecord {
        let mut record = AuditRecord::new(Kind::Git, Event::Decided);
        record.peer = self.peer;
        record.method = self.fields.service.clone();
        record.host = self.fields.remote.clone();
        record.decision = self.decision;
        record.rule = self.rule;
        record.detail = self.detail;
        record.git = Some(self.fields);
        record
    }
}

impl AuditRecord {
    /// A line of `kind`/`event`; the log fills time, identity, seq and prev.
    pub fn new(kind: Kind, event: Event) -> Self {
        Self {
            kind,
            event,
            ..Self::default()
        }
    }
}
