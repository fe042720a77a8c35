//! One allowed exchange in the log: its `decided` line is written before
//! anything is dialled, its `completed` line when it ends — however it ends.
//! Dropping an [`Exchange`] that was not completed (the client went away, the
//! task was cancelled) writes it as `cancelled`.

use super::log::AuditLog;
use super::record::{AuditRecord, Event, Outcome};
use super::AuditError;
use std::sync::Arc;
use std::time::Instant;

/// How an exchange ended, for its `completed` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub outcome: Outcome,
    /// HTTP status the client got (none for a tunnel).
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why, when refused after the decision (`ssrf`, `over-budget`…).
    pub rule: Option<String>,
}

impl Completion {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            rule: None,
        }
    }
}

/// A decided exchange awaiting its end.
#[derive(Debug)]
pub struct Exchange {
    log: Arc<AuditLog>,
    template: AuditRecord,
    seq: u64,
    started: Instant,
    /// Bytes sent upstream, reported if the exchange is dropped.
    pub bytes_up: u64,
    done: bool,
}

impl AuditLog {
    /// Write `record` as the `decided` line of an exchange. On error nothing
    /// may be dialled: the caller refuses the request.
    pub fn decide(self: &Arc<Self>, mut record: AuditRecord) -> Result<Exchange, AuditError> {
        record.event = Event::Decided;
        let seq = self.append(record.clone())?;
        let mut template = record;
        template.event = Event::Completed;
        template.of = Some(seq);
        template.query = None;
        template.bytes = 0;
        template.time.clear();
        Ok(Exchange {
            log: self.clone(),
            template,
            seq,
            started: Instant::now(),
            bytes_up: 0,
            done: false,
        })
    }
}

impl Exchange {
    /// `seq` of the decided line (0 when the log is disabled).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Write the `completed` line. The exchange is over whatever happens; a
    /// failed write is reported to the caller (and to the bundle's log).
    pub fn complete(mut self, completion: Completion) -> Result<(), AuditError> {
        self.done = true;
        self.write(completion)
    }

    fn write(&self, c: Completion) -> Result<(), AuditError> {
        let mut record = self.template.clone();
        record.outcome = Some(c.outcome);
        record.status = c.status;
        record.bytes_up = Some(c.bytes_up);
        record.bytes_down = Some(c.bytes_down);
        record.duration_ms =
            Some(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        if let Some(rule) = c.rule {
            record.rule = rule;
        }
        let result = self.log.append(record).map(|_| ());
        if let Err(e) = &result {
            tracing::error!(error = %e, "cannot write an audit line");
        }
        result
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.done {
            let mut c = Completion::new(Outcome::Cancelled);
            c.bytes_up = self.bytes_up;
            let _ = self.write(c);
        }
    }
}
