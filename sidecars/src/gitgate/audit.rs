//! git-gate's decisions in the bottle's hash-chained audit log: a refusal
//! is one `deny` line; a served fetch or a forwarded push is a `decided`
//! line written before upstream is contacted and a `completed` line when it
//! ends. An allow that cannot be written is not acted on (fail closed).

use std::sync::Arc;

use crate::audit::{AuditError, AuditLog, Completion, Exchange, GitAudit, GitFields, Outcome};

use super::refusal::PushRefusal;
use super::scan::{Place, Via};

/// Longest `detail` written for a refusal (its first line, cut).
const MAX_DETAIL: usize = 300;

/// The audit context of one git-gate connection.
#[derive(Debug, Clone, Default)]
pub struct GateAudit {
    log: Option<Arc<AuditLog>>,
    peer: String,
    remote: String,
}

/// A fetch or push whose `decided` line is written, awaiting its end.
#[derive(Debug)]
pub struct GateExchange(Option<Exchange>);

impl GateAudit {
    /// No log (tests, benchmarks): every decision stands, nothing is written.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn new(log: Option<Arc<AuditLog>>, peer: &str) -> Self {
        Self {
            log,
            peer: peer.to_string(),
            remote: String::new(),
        }
    }

    /// The same connection, now known to be about remote `name`.
    pub fn for_remote(&self, name: &str) -> Self {
        Self {
            remote: name.to_string(),
            ..self.clone()
        }
    }

    /// A request refused before any service ran (`unknown-repo`,
    /// `bad-request`, `upstream-unreachable`…). The refusal stands even when
    /// the line cannot be written.
    pub fn refused(&self, service: &str, rule: &str, message: &str) {
        self.deny(
            GitAudit {
                rule: rule.to_string(),
                fields: self.fields(service),
                detail: Some(first_line(message)),
                ..GitAudit::default()
            },
            rule,
        );
    }

    /// A push the gate refused: rule, and for secrets the first finding's
    /// place (paths already redacted) and the count, never the secret.
    pub fn refused_push(&self, refusal: &PushRefusal) {
        let mut fields = self.fields("push");
        let detail = match refusal {
            PushRefusal::Secrets(findings) => {
                fields.findings = Some(findings.len());
                if let Some(first) = findings.first() {
                    fields.file = Some(place_name(&first.place));
                    fields.commit = Some(match &first.via {
                        Some(Via::Commit(c)) => c.clone(),
                        _ => first.oid.clone(),
                    });
                }
                let mut rules: Vec<&str> = findings.iter().map(|f| f.rule_id.as_str()).collect();
                rules.sort_unstable();
                rules.dedup();
                format!("{} secret(s): {}", findings.len(), rules.join(", "))
            }
            other => first_line(&other.to_string()),
        };
        self.deny(
            GitAudit {
                rule: refusal.rule().to_string(),
                fields,
                detail: Some(detail),
                ..GitAudit::default()
            },
            refusal.rule(),
        );
    }

    /// The `decided` line of a fetch about to be served, or of a push about
    /// to be forwarded (`refs` it updates). On error the caller refuses.
    pub fn allow(&self, service: &str, refs: Vec<String>) -> Result<GateExchange, AuditError> {
        let Some(log) = &self.log else {
            return Ok(GateExchange(None));
        };
        let mut fields = self.fields(service);
        fields.refs = refs;
        let record = GitAudit {
            peer: self.peer.clone(),
            decision: "allow".to_string(),
            rule: service.to_string(),
            fields,
            detail: None,
        }
        .into_record();
        log.decide(record).map(|e| GateExchange(Some(e)))
    }

    fn fields(&self, service: &str) -> GitFields {
        GitFields {
            remote: self.remote.clone(),
            service: service.to_string(),
            ..GitFields::default()
        }
    }

    fn deny(&self, mut git: GitAudit, rule: &str) {
        let Some(log) = &self.log else { return };
        git.peer = self.peer.clone();
        git.decision = "deny".to_string();
        if let Err(e) = log.record_git(git) {
            tracing::warn!(
                rule,
                "git-gate: cannot write the audit line of a refusal: {e}"
            );
        }
    }
}

impl GateExchange {
    /// The `completed` line: `ok`, or `upstream-failed` when upstream
    /// refused or could not be reached.
    pub fn complete(self, ok: bool) {
        let Some(exchange) = self.0 else { return };
        let outcome = if ok {
            Outcome::Ok
        } else {
            Outcome::UpstreamFailed
        };
        if let Err(e) = exchange.complete(Completion::new(outcome)) {
            tracing::warn!("git-gate: cannot write an audit completion: {e}");
        }
    }
}

fn place_name(place: &Place) -> String {
    match place {
        Place::File(path) | Place::FileName(path) => path.clone(),
        Place::CommitMessage => "(commit message)".into(),
        Place::CommitHeader => "(commit header)".into(),
        Place::TagMessage => "(tag message)".into(),
        Place::TagHeader => "(tag header)".into(),
        Place::RefName(name) => format!("(ref name {name})"),
    }
}

fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let mut end = line.len().min(MAX_DETAIL);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}
