//! Periodic summaries of refusals counted elsewhere (the netstack's), written
//! into the chain only when something new was refused.

use super::log::AuditLog;
use super::record::{AuditRecord, Event, Kind};
use super::AuditError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Default period of the netstack summary.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

/// Turns running totals into per-period lines.
#[derive(Debug)]
pub struct RefusalSummary {
    log: Arc<AuditLog>,
    kind: Kind,
    last: BTreeMap<String, u64>,
}

impl RefusalSummary {
    pub fn new(log: Arc<AuditLog>, kind: Kind) -> Self {
        Self {
            log,
            kind,
            last: BTreeMap::new(),
        }
    }

    /// Write what grew since the last call (reasons with no new refusals
    /// left out); nothing when nothing grew. Returns whether a line was written.
    pub fn record(&mut self, totals: BTreeMap<String, u64>) -> Result<bool, AuditError> {
        let grown: BTreeMap<String, u64> = totals
            .iter()
            .filter_map(|(reason, n)| {
                let delta = n.saturating_sub(self.last.get(reason).copied().unwrap_or(0));
                (delta > 0).then(|| (reason.clone(), delta))
            })
            .collect();
        if grown.is_empty() {
            return Ok(false);
        }
        let mut record = AuditRecord::new(self.kind, Event::Summary);
        record.decision = "deny".into();
        record.rule = "summary".into();
        record.refused = Some(grown);
        self.log.append(record)?;
        self.last = totals;
        Ok(true)
    }
}

/// A summary written every `period` and once more when stopped.
#[derive(Debug)]
pub struct SummaryTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl SummaryTask {
    /// Start on the current tokio runtime; `read` returns running totals.
    pub fn spawn(
        log: Arc<AuditLog>,
        kind: Kind,
        period: Duration,
        read: impl Fn() -> BTreeMap<String, u64> + Send + 'static,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut summary = RefusalSummary::new(log, kind);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stopped => true,
                };
                if let Err(e) = summary.record(read()) {
                    tracing::error!(error = %e, "cannot write the refusal summary");
                }
                if last {
                    break;
                }
            }
        });
        Self { stop, task }
    }

    /// Write the last summary and end.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
