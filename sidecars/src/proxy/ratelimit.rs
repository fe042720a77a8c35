//! Logging of guest-triggerable errors through a rate limit, so a guest
//! cannot flood the host's logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bottle_util::TokenBucket;

/// At most `per_window` messages per window on average (a token bucket
/// that holds `per_window`); the rest are counted and the count is reported
/// with the next message that gets through.
#[derive(Debug)]
pub struct RateLimitedLog {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    bucket: TokenBucket,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                bucket: TokenBucket::per_window(per_window, window, Instant::now()),
                suppressed: 0,
            }),
        }
    }

    /// Whether a message may be written now; returns the number of messages
    /// suppressed since the last one that was written.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.bucket.take(now) {
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
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
        let t0 = Instant::now();
        assert_eq!(log.admit_at(t0), Some(0));
        assert_eq!(log.admit_at(t0), Some(0));
        assert_eq!(log.admit_at(t0), None);
        assert_eq!(log.admit_at(t0), None);
        assert_eq!(log.admit_at(t0 + Duration::from_secs(1800)), Some(2));
        assert_eq!(log.admit_at(t0 + Duration::from_secs(1800)), None);
    }
}
