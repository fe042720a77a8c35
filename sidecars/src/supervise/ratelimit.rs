//! How fast one bottle may file requests: at most `limit` in any window of
//! `window` (a sliding window of filing times).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    limit: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RateLimit {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            recent: VecDeque::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Take one slot at `now`; false when the window is full.
    pub fn try_take(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.limit {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_window_refuses_until_the_oldest_leaves_it() {
        let mut r = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.try_take(t0));
        assert!(r.try_take(t0 + Duration::from_secs(1)));
        assert!(r.try_take(t0 + Duration::from_secs(2)));
        assert!(!r.try_take(t0 + Duration::from_secs(3)));
        assert!(!r.try_take(t0 + Duration::from_secs(59)));
        assert!(r.try_take(t0 + Duration::from_secs(60)));
        assert!(!r.try_take(t0 + Duration::from_secs(60)));
    }
}
