//! Child reaping: one `waitpid(-1)` loop for the whole agent (its PID 1 duty),
//! handing each exit status to whoever spawned that child.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::sync::oneshot;

use crate::proto::ExitStatus;

/// Errors starting the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot watch SIGCHLD")]
    Signal(#[source] std::io::Error),
}

/// Spawns children and collects their exit statuses.
#[derive(Debug, Clone)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>>,
}

impl Reaper {
    /// Starts the reaping task; must run inside a tokio runtime.
    pub fn start() -> Result<Reaper, ReaperError> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map_err(ReaperError::Signal)?;
        let reaper = Reaper {
            waiting: Arc::default(),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn reap(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(tx) = waiting.remove(&status.0.as_raw()) {
                let _ = tx.send(status.1);
            }
        }
    }

    /// Runs `spawn` (which starts a child and returns its pid); the receiver
    /// yields the child's exit status. Holding the lock across the spawn
    /// means the child cannot be reaped before it is known.
    pub fn spawn(
        &self,
        spawn: impl FnOnce() -> std::io::Result<libc::pid_t>,
    ) -> std::io::Result<(libc::pid_t, oneshot::Receiver<ExitStatus>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok((pid, rx))
    }
}
