//! A token bucket: a steady rate with bursts.

use std::time::{Duration, Instant};

/// Allows `rate` events per second on average with bursts of up to `burst`.
/// It starts full. The caller passes the time, so it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens a second, at most `burst` saved up.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self::with_rate(f64::from(rate), burst, now)
    }

    /// `count` tokens per `window` (bursts of up to `count`).
    pub fn per_window(count: u32, window: Duration, now: Instant) -> Self {
        let secs = window.as_secs_f64().max(f64::MIN_POSITIVE);
        Self::with_rate(f64::from(count) / secs, count, now)
    }

    fn with_rate(rate: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_allowed_then_refills_with_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn per_window_allows_the_count_then_refills_over_the_window() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_window(2, Duration::from_secs(10), t0);
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0 + Duration::from_secs(1)));
        assert!(b.take(t0 + Duration::from_secs(5)));
        assert!(!b.take(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn time_going_backwards_does_not_refill() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let mut b = TokenBucket::new(1, 1, t1);
        assert!(b.take(t1));
        assert!(!b.take(t0));
        assert!(!b.take(t1));
    }
}
