//! Logging of guest-triggerable errors through a rate limit, so a guest
//! cannot flood the host's logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `per_window` messages per window; the rest are counted and the
/// count is reported with the next message that gets through.
#[derive(Debug)]
pub struct RateLimitedLog {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    sent: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(Window {
                start: Instant::now(),
                sent: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a message may be written now; returns the number of messages
    /// suppressed since the last one that was written.
    pub fn admit(&self) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(w.start) >= self.window {
            w.start = now;
            w.sent = 0;
        }
        if w.sent >= self.per_window {
            w.suppressed += 1;
            return None;
        }
        w.sent += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    /// Log a warning if the limit allows it.
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.admit() {
            if suppressed > 0 {
                tracing::warn!(suppressed, "{message}");
            } else {
                tracing::warn!("{message}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_beyond_the_limit_are_counted_and_reported_later() {
        let log = RateLimitedLog::new(2, Duration::from_secs(3600));
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None);
        assert_eq!(log.admit(), None);
        log.state.lock().unwrap().start -= Duration::from_secs(7200);
        assert_eq!(log.admit(), Some(2));
    }
}
